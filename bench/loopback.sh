#!/usr/bin/env bash
# Loopback throughput: one seed -> one downloader of a 1 GiB file over
# loopback (seed 127.0.0.2, downloader 127.0.0.3), wall time, MiB/s, peak RSS
# and CPU time of each side (/usr/bin/time -v), beside `cp` of the same file
# and beside libtorrent (tests/interop/lt_client.py seed -> download).
#
#   bench/loopback.sh
#   SIZE_MIB=256 RUNS=3 bench/loopback.sh
#
# Environment:
#   SIZE_MIB=1024      file size
#   RUNS=1             repetitions of each measurement (the table shows the median)
#   CLIENTS="p2pfile libtorrent"
#   P2PFILE=PATH       use this binary instead of `cargo build --release`
#   BENCH_TMP=DIR      where the file and the copies go (default /tmp)
#   BENCH_PORT=42170   seed port (the downloader uses +1)
#
# The source file is read once before measuring, so every contender reads
# it from the page cache. Copies are written into the same file system
# (page cache; nothing is fsync'ed by cp). The downloader's time is its
# whole process, start to exit: session start, metadata from the seed
# (magnet), transfer, verification, shutdown; p2pfile's own `completed`
# event time is shown beside it. Every copy is compared with the source.
# Each p2pfile process gets a fresh state database (P2PFILE_STATE) per run.
# Results are appended to bench/results/loopback.jsonl. Traffic stays on
# 127.0.0.0/8.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-1}
CLIENTS=${CLIENTS:-p2pfile libtorrent}
PORT=${BENCH_PORT:-42170}
SEED_IP=127.0.0.2
DL_IP=127.0.0.3
LT_CLIENT=$ROOT/tests/interop/lt_client.py
TIME=/usr/bin/time

for v in SIZE_MIB RUNS PORT; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} == 0)); then
        echo "loopback: $v must be a positive integer" >&2
        exit 2
    fi
done

if [[ ! -x $TIME ]]; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get install -y -qq time >/dev/null
    else
        echo "loopback: needs /usr/bin/time (Debian package 'time')" >&2
        exit 1
    fi
fi

if [[ -z ${P2PFILE:-} ]]; then
    echo "loopback: cargo build --release" >&2
    (cd "$ROOT" && cargo build --release --quiet)
    P2PFILE=$ROOT/target/release/p2pfile
fi
P2PFILE=$(realpath "$P2PFILE")

WORK=
PIDS=()
cleanup() {
    local rc=$? p t
    trap - EXIT INT TERM HUP
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for ((t = 0; t < 50; t++)); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    cd /
    [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/p2pf-loopback.XXXXXX")
cd "$WORK" # nothing a client writes to its working directory lands in the tree
RESULTS=$HERE/results
mkdir -p "$RESULTS" "$WORK/src"
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
NAME=loop-${SIZE_MIB}MiB.bin
SRC=$WORK/src/$NAME
echo "loopback: writing $SIZE_MIB MiB of random data to $SRC" >&2
head -c "$((SIZE_MIB * 1048576))" /dev/urandom >"$SRC"
cat "$SRC" >/dev/null

now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# rss_mb FILE: peak RSS in MB from /usr/bin/time -v output.
rss_mb() { awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$1"; }
cpu_s() { awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.2f", s }' "$1"; }

# stop_time_child TIME_PID: SIGTERM the command /usr/bin/time runs (time
# itself would die of SIGTERM without writing its report), then wait.
stop_time_child() {
    local tpid=$1 child t
    child=$(ps -o pid= --ppid "$tpid" | tr -d ' ' || true)
    [[ -n $child ]] && kill -TERM "$child" 2>/dev/null
    for ((t = 0; t < 150; t++)); do
        kill -0 "$tpid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$tpid" 2>/dev/null; then
        [[ -n $child ]] && kill -KILL "$child" 2>/dev/null
    fi
    wait "$tpid" 2>/dev/null || true
}

# wait_line FILE PATTERN SECONDS PID: first line of FILE matching PATTERN.
wait_line() {
    local file=$1 pat=$2 secs=$3 pid=$4 t line
    for ((t = 0; t < secs * 10; t++)); do
        line=$(grep -m1 -e "$pat" "$file" 2>/dev/null || true)
        if [[ -n $line ]]; then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

verify() { # copy
    if ! cmp -s "$SRC" "$1"; then
        echo "loopback: $1 differs from the source" >&2
        return 1
    fi
}

# Each measurement sets: M_SECONDS M_EVENT_S M_SEED_RSS M_DL_RSS M_SEED_CPU M_DL_CPU
measure_cp() {
    local d=$WORK/cp t0 t1
    mkdir -p "$d"
    t0=$(now)
    cp "$SRC" "$d/"
    t1=$(now)
    verify "$d/$NAME"
    rm -rf "$d"
    M_SECONDS=$(elapsed "$t0" "$t1") M_EVENT_S=- M_SEED_RSS=- M_DL_RSS=- M_SEED_CPU=- M_DL_CPU=-
}

measure_p2pfile() {
    local d=$WORK/p2pfile log=$WORK/log-p2pfile line magnet tpid t0 t1 rc=0
    mkdir -p "$d" "$log"
    rm -f "$log"/*.db*
    P2PFILE_STATE=$log/seed.db $TIME -v -o "$log/seed.time" \
        "$P2PFILE" --ip "$SEED_IP" --port "$PORT" serve "$SRC" --json \
        >"$log/seed.out" 2>"$log/seed.err" &
    tpid=$!
    PIDS+=("$tpid")
    line=$(wait_line "$log/seed.out" '"event":"serving"' 120 "$tpid") || {
        echo "loopback: p2pfile seed did not start:" >&2
        cat "$log/seed.err" >&2
        return 1
    }
    magnet=$(sed -n 's/.*"magnet":"\([^"]*\)".*/\1/p' <<<"$line")
    t0=$(now)
    P2PFILE_STATE=$log/dl.db $TIME -v -o "$log/dl.time" \
        timeout 600 "$P2PFILE" --ip "$DL_IP" --port "$((PORT + 1))" \
        download "$magnet" --dir "$d" --json --timeout 60 >"$log/dl.out" 2>"$log/dl.err" || rc=$?
    t1=$(now)
    stop_time_child "$tpid"
    if ((rc != 0)); then
        echo "loopback: p2pfile download exited $rc:" >&2
        tail -n 20 "$log/dl.err" >&2
        return 1
    fi
    verify "$d/$NAME"
    rm -rf "$d"
    M_SECONDS=$(elapsed "$t0" "$t1")
    M_EVENT_S=$(grep -m1 '"event":"completed"' "$log/dl.out" | sed -n 's/.*"seconds":\([0-9.]*\).*/\1/p')
    M_SEED_RSS=$(rss_mb "$log/seed.time") M_DL_RSS=$(rss_mb "$log/dl.time")
    M_SEED_CPU=$(cpu_s "$log/seed.time") M_DL_CPU=$(cpu_s "$log/dl.time")
    # The download's time -v report is for `timeout`'s child too (time
    # counts waited-for descendants), so RSS and CPU are p2pfile's.
    if [[ -s $log/seed.err || -s $log/dl.err ]]; then
        echo "loopback: p2pfile stderr (seed, downloader):" >&2
        head -n 5 "$log/seed.err" "$log/dl.err" >&2
    fi
}

measure_libtorrent() {
    local d=$WORK/libtorrent log=$WORK/log-libtorrent magnet tpid t0 t1 rc=0
    mkdir -p "$d" "$log"
    $TIME -v -o "$log/seed.time" /usr/bin/python3 "$LT_CLIENT" seed --ip "$SEED_IP" \
        --port "$((PORT + 2))" --path "$SRC" --timeout 900 >"$log/seed.out" 2>"$log/seed.err" &
    tpid=$!
    PIDS+=("$tpid")
    magnet=$(wait_line "$log/seed.out" '^magnet:' 300 "$tpid") || {
        echo "loopback: libtorrent seed did not start:" >&2
        cat "$log/seed.err" >&2
        return 1
    }
    t0=$(now)
    $TIME -v -o "$log/dl.time" /usr/bin/python3 "$LT_CLIENT" download "$magnet" --ip "$DL_IP" \
        --port "$((PORT + 3))" --dir "$d" --timeout 600 >"$log/dl.out" 2>"$log/dl.err" || rc=$?
    t1=$(now)
    stop_time_child "$tpid"
    if ((rc != 0)); then
        echo "loopback: libtorrent download exited $rc:" >&2
        tail -n 20 "$log/dl.err" >&2
        return 1
    fi
    verify "$d/$NAME"
    rm -rf "$d"
    M_SECONDS=$(elapsed "$t0" "$t1") M_EVENT_S=-
    M_SEED_RSS=$(rss_mb "$log/seed.time") M_DL_RSS=$(rss_mb "$log/dl.time")
    M_SEED_CPU=$(cpu_s "$log/seed.time") M_DL_CPU=$(cpu_s "$log/dl.time")
}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
ROWS=()
for what in cp $CLIENTS; do
    case $what in
    cp | p2pfile) ;;
    libtorrent)
        if ! /usr/bin/python3 -c 'import libtorrent' 2>/dev/null || [[ ! -f $LT_CLIENT ]]; then
            echo "loopback: libtorrent (python3-libtorrent, $LT_CLIENT) not available, skipped" >&2
            continue
        fi
        ;;
    *)
        echo "loopback: unknown client $what" >&2
        exit 2
        ;;
    esac
    for ((run = 1; run <= RUNS; run++)); do
        echo "loopback: $what run $run" >&2
        "measure_$what"
        mibs=$(awk -v s="$SIZE_MIB" -v t="$M_SECONDS" 'BEGIN { printf "%.0f", s / t }')
        ROWS+=("$what $M_SECONDS $mibs $M_EVENT_S $M_SEED_RSS $M_DL_RSS $M_SEED_CPU $M_DL_CPU")
        printf '{"stamp":"%s","rev":"%s","what":"%s","run":%d,"size_mib":%d,"seconds":%s,"mib_s":%s,"event_seconds":"%s","seed_rss_mb":"%s","dl_rss_mb":"%s","seed_cpu_s":"%s","dl_cpu_s":"%s"}\n' \
            "$STAMP" "$REV" "$what" "$run" "$SIZE_MIB" "$M_SECONDS" "$mibs" "$M_EVENT_S" \
            "$M_SEED_RSS" "$M_DL_RSS" "$M_SEED_CPU" "$M_DL_CPU" >>"$RESULTS/loopback.jsonl"
    done
done

echo
echo "Loopback: $SIZE_MIB MiB, seed $SEED_IP -> downloader $DL_IP, $RUNS run(s) each, median by time; rev $REV"
printf '%-11s %9s %7s %10s %14s %12s %11s %9s\n' what "time (s)" MiB/s "event (s)" "seed RSS (MB)" "dl RSS (MB)" "seed CPU s" "dl CPU s"
for what in cp $CLIENTS; do
    printf '%s\n' "${ROWS[@]}" | awk -v w="$what" '$1 == w' | sort -k2,2 -g |
        awk '{ r[++n] = $0 } END { if (n) print r[int((n + 1) / 2)] }' |
        while read -r w s m e sr dr sc dc; do
            printf '%-11s %9s %7s %10s %14s %12s %11s %9s\n' "$w" "$s" "$m" "$e" "$sr" "$dr" "$sc" "$dc"
        done
done
echo "results: $RESULTS/loopback.jsonl"
