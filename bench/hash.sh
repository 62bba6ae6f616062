#!/usr/bin/env bash
# Hashing speed of `p2pfile serve` against `openssl dgst -sha1`, on a 1 GiB
# file in the page cache.
#
#   bench/hash.sh
#   SIZE_MIB=256 RUNS=5 bench/hash.sh
#
# Environment:
#   SIZE_MIB=1024   file size
#   RUNS=3          repetitions of each (the median is reported)
#   P2PFILE=PATH    use this binary instead of `cargo build --release`
#   BENCH_TMP=DIR   where the file goes (default /tmp)
#   BENCH_PORT=42190
#
# p2pfile: the time from starting `p2pfile --ip 127.0.0.2 serve FILE` until
# its magnet line arrives on stdout (process start, session start, SHA-1 of
# every piece, magnet), read through a FIFO so the moment is exact; then the
# seed is stopped. Every run uses a fresh state database (P2PFILE_STATE),
# since serve would otherwise reuse the hashes it stored for an unchanged
# path. openssl: the whole `openssl dgst -sha1 FILE` process.
# The file is read once first (`cat FILE >/dev/null`) so both read it from
# the page cache. Results are appended to bench/results/hash.jsonl.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
PORT=${BENCH_PORT:-42190}

for v in SIZE_MIB RUNS PORT; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} == 0)); then
        echo "hash: $v must be a positive integer" >&2
        exit 2
    fi
done
command -v openssl >/dev/null || {
    echo "hash: needs openssl" >&2
    exit 1
}

if [[ -z ${P2PFILE:-} ]]; then
    echo "hash: cargo build --release" >&2
    (cd "$ROOT" && cargo build --release --quiet)
    P2PFILE=$ROOT/target/release/p2pfile
fi
P2PFILE=$(realpath "$P2PFILE")

WORK=
SEED_PID=
FD=
cleanup() {
    local rc=$? t
    trap - EXIT INT TERM HUP
    if [[ -n $SEED_PID ]]; then
        kill -TERM "$SEED_PID" 2>/dev/null || true
        for ((t = 0; t < 50; t++)); do
            kill -0 "$SEED_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SEED_PID" 2>/dev/null || true
    fi
    [[ -n $FD ]] && exec {FD}<&-
    cd /
    [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/p2pf-hash.XXXXXX")
cd "$WORK"
RESULTS=$HERE/results
mkdir -p "$RESULTS"
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
FILE=$WORK/hash-${SIZE_MIB}MiB.bin
echo "hash: writing $SIZE_MIB MiB of random data to $FILE" >&2
head -c "$((SIZE_MIB * 1048576))" /dev/urandom >"$FILE"
cat "$FILE" >/dev/null

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[++n] = $1 } END { print v[int((n + 1) / 2)] }'; }

time_openssl() {
    local t0 t1
    t0=$EPOCHREALTIME
    openssl dgst -sha1 "$FILE" >/dev/null
    t1=$EPOCHREALTIME
    elapsed "$t0" "$t1"
}

# Sets P_SECONDS (start -> magnet line).
time_p2pfile() {
    local fifo=$WORK/serve.fifo line t0 t1 t
    rm -f "$fifo"
    mkfifo "$fifo"
    # A fresh state database each run: p2pfile reuses the stored hashes of
    # an unchanged path, which would skip the hashing we measure.
    rm -f "$WORK"/state.db*
    t0=$EPOCHREALTIME
    P2PFILE_STATE=$WORK/state.db "$P2PFILE" --ip 127.0.0.2 --port "$PORT" serve "$FILE" \
        >"$fifo" 2>"$WORK/serve.err" &
    SEED_PID=$!
    exec {FD}<"$fifo"
    if ! IFS= read -r -t 300 -u "$FD" line || [[ $line != magnet:* ]]; then
        echo "hash: no magnet from p2pfile serve within 300 s; stderr:" >&2
        cat "$WORK/serve.err" >&2
        return 1
    fi
    t1=$EPOCHREALTIME
    kill -TERM "$SEED_PID"
    for ((t = 0; t < 100; t++)); do
        kill -0 "$SEED_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SEED_PID" 2>/dev/null || true
    wait "$SEED_PID" 2>/dev/null || true
    SEED_PID=
    exec {FD}<&-
    FD=
    P_SECONDS=$(elapsed "$t0" "$t1")
}

O=() P=()
for ((run = 1; run <= RUNS; run++)); do
    O+=("$(time_openssl)")
    time_p2pfile
    P+=("$P_SECONDS")
    echo "hash: run $run: openssl ${O[-1]} s, p2pfile serve ${P[-1]} s" >&2
done
o=$(median "${O[@]}")
p=$(median "${P[@]}")
read -r o_rate p_rate ratio < <(awk -v s="$SIZE_MIB" -v o="$o" -v p="$p" \
    'BEGIN { printf "%.0f %.0f %.2f\n", s / o, s / p, (s / p) / (s / o) }')
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
printf '{"stamp":"%s","rev":"%s","size_mib":%d,"runs":%d,"openssl_s":%s,"p2pfile_s":%s,"openssl_mib_s":%s,"p2pfile_mib_s":%s,"ratio":%s,"openssl_all":[%s],"p2pfile_all":[%s]}\n' \
    "$STAMP" "$REV" "$SIZE_MIB" "$RUNS" "$o" "$p" "$o_rate" "$p_rate" "$ratio" \
    "$(IFS=,; echo "${O[*]}")" "$(IFS=,; echo "${P[*]}")" >>"$RESULTS/hash.jsonl"

echo
echo "Hashing $SIZE_MIB MiB from page cache, median of $RUNS; rev $REV"
printf '%-28s %9s %8s\n' what "time (s)" MiB/s
printf '%-28s %9s %8s\n' "openssl dgst -sha1" "$o" "$o_rate"
printf '%-28s %9s %8s\n' "p2pfile serve -> magnet" "$p" "$p_rate"
echo "p2pfile / openssl speed: $ratio"
echo "results: $RESULTS/hash.jsonl"
