#!/usr/bin/env bash
# Many small files: a tree of 10,000 files of 1-8 KiB copied by `rsync -a`,
# by `tar | tar`, and downloaded by `p2pfile download` from a `p2pfile serve`
# seed over loopback (seed 127.0.0.2, downloader 127.0.0.3), on tmpfs.
#
#   bench/files.sh
#   FILES=2000 RUNS=5 bench/files.sh
#   P2PFILE_BASE=/tmp/old-p2pfile bench/files.sh    # A/B: old binary beside
#
# Environment:
#   FILES=10000        number of files
#   RUNS=3             rounds; each round runs every contender once, in turn
#                      (interleaved), and the table shows median and min-max
#   SEED=1             seed of the tree's random sizes and layout
#   P2PFILE=PATH       use this binary instead of `cargo build --release`
#   P2PFILE_BASE=PATH  also measure this binary in every round (rows "base")
#   BENCH_TMP=DIR      where the tree and the copies go (default /dev/shm)
#   BENCH_PORT=42210   seed port (the downloader uses +1)
#   SEED_IP=127.0.0.2  DL_IP=127.0.0.3   loopback addresses of the two sides
#
# The tree: FILES files of 1-8 KiB (uniform random sizes, random content),
# spread over directories one to three levels deep, about 100 files each,
# like a source tree. It is read once before measuring, so every contender
# reads it from the page cache (tmpfs, in fact).
#
# What is timed, every process from start to exit:
# - `rsync -a SRC DST/` and `tar -C SRC -cf - . | tar -C DST -xf -`;
# - hash: `p2pfile serve SRC` from start until its magnet line arrives on
#   stdout (through a FIFO, so the moment is exact): walk, open, hash of
#   every file, session start. Fresh state database (P2PFILE_STATE) each
#   round, so no stored hash is reused;
# - download: `p2pfile download MAGNET --dir DST` against that seed, already
#   running and hashed, start to exit 0: session start, metadata (the info
#   dictionary of 10,000 files) from the seed, transfer, verification,
#   placement of every file, shutdown. Fresh state database each round.
#   Its peak RSS comes from /usr/bin/time -f %M.
# Every copy is compared with the source (`diff -r`) and removed before the
# next contender runs. Results are appended to bench/results/files.jsonl,
# one line per round and contender. Traffic stays on 127.0.0.0/8.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
FILES=${FILES:-10000}
RUNS=${RUNS:-3}
SEED=${SEED:-1}
PORT=${BENCH_PORT:-42210}
SEED_IP=${SEED_IP:-127.0.0.2}
DL_IP=${DL_IP:-127.0.0.3}
TIME=/usr/bin/time

for v in FILES RUNS SEED PORT; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} == 0)); then
        echo "files: $v must be a positive integer" >&2
        exit 2
    fi
done
for ip in "$SEED_IP" "$DL_IP"; do
    if ! [[ $ip =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
        echo "files: $ip is not a loopback address (127.0.0.0/8)" >&2
        exit 2
    fi
done
for tool in rsync tar python3 diff; do
    command -v "$tool" >/dev/null || {
        echo "files: needs $tool" >&2
        exit 1
    }
done
if [[ ! -x $TIME ]]; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get install -y -qq time >/dev/null
    else
        echo "files: needs /usr/bin/time (Debian package 'time')" >&2
        exit 1
    fi
fi

if [[ -z ${P2PFILE:-} ]]; then
    echo "files: cargo build --release" >&2
    (cd "$ROOT" && cargo build --release --quiet)
    P2PFILE=$ROOT/target/release/p2pfile
fi
P2PFILE=$(realpath "$P2PFILE")
BINS=(p2pfile)
if [[ -n ${P2PFILE_BASE:-} ]]; then
    P2PFILE_BASE=$(realpath "$P2PFILE_BASE")
    BINS+=(base)
fi

WORK=
SEED_PID=
DRAIN_PID=
FD=
stop_seed() {
    local t
    if [[ -n $SEED_PID ]]; then
        kill -TERM "$SEED_PID" 2>/dev/null || true
        for ((t = 0; t < 100; t++)); do
            kill -0 "$SEED_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$SEED_PID" 2>/dev/null || true
        wait "$SEED_PID" 2>/dev/null || true
        SEED_PID=
    fi
    if [[ -n $DRAIN_PID ]]; then
        wait "$DRAIN_PID" 2>/dev/null || true
        DRAIN_PID=
    fi
    if [[ -n $FD ]]; then
        exec {FD}<&-
        FD=
    fi
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    stop_seed
    cd /
    [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

WORK=$(mktemp -d "${BENCH_TMP:-/dev/shm}/p2pf-files.XXXXXX")
cd "$WORK" # nothing a client writes to its working directory lands in a tree
RESULTS=$HERE/results
mkdir -p "$RESULTS"
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
NAME=tree
SRC=$WORK/src/$NAME

echo "files: writing $FILES files of 1-8 KiB to $SRC" >&2
python3 - "$SRC" "$FILES" "$SEED" <<'EOF'
import os, random, sys
root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
ndirs = max(1, n // 100)
dirs = []
for i in range(ndirs):
    depth = rng.randint(1, 3)
    parts = [f"d{rng.randrange(max(2, ndirs // 10)):02d}"]
    parts += [f"s{rng.randrange(10)}" for _ in range(depth - 1)]
    dirs.append(os.path.join(root, *parts))
for d in dirs:
    os.makedirs(d, exist_ok=True)
for i in range(n):
    size = rng.randint(1024, 8192)
    path = os.path.join(rng.choice(dirs), f"f{i:05d}.dat")
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))
EOF
TOTAL_KIB=$(du -sk --apparent-size "$SRC" | cut -f1)
tar -C "$SRC" -cf - . >/dev/null

now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

verify() { # copy
    if ! diff -r -q "$SRC" "$1" >"$WORK/diff.out" 2>&1; then
        echo "files: $1 differs from the source:" >&2
        head -n 5 "$WORK/diff.out" >&2
        return 1
    fi
}

# Each measurement sets M_SECONDS, and for p2pfile M_HASH_S and M_RSS_MB.
measure_rsync() {
    local d=$WORK/copy t0 t1
    mkdir -p "$d"
    t0=$(now)
    rsync -a "$SRC" "$d/"
    t1=$(now)
    verify "$d/$NAME"
    rm -rf "$d"
    M_SECONDS=$(elapsed "$t0" "$t1") M_HASH_S=- M_RSS_MB=-
}

measure_tar() {
    local d=$WORK/copy t0 t1
    mkdir -p "$d/$NAME"
    t0=$(now)
    tar -C "$SRC" -cf - . | tar -C "$d/$NAME" -xf -
    t1=$(now)
    verify "$d/$NAME"
    rm -rf "$d"
    M_SECONDS=$(elapsed "$t0" "$t1") M_HASH_S=- M_RSS_MB=-
}

# measure_p2pfile BINARY
measure_p2pfile() {
    local bin=$1 d=$WORK/copy log=$WORK/log fifo=$WORK/serve.fifo line t0 t1 rc=0
    rm -rf "$log" "$fifo"
    mkdir -p "$d" "$log"
    mkfifo "$fifo"
    t0=$(now)
    P2PFILE_STATE=$log/seed.db "$bin" --ip "$SEED_IP" --port "$PORT" serve "$SRC" \
        >"$fifo" 2>"$log/seed.err" &
    SEED_PID=$!
    exec {FD}<"$fifo"
    if ! IFS= read -r -t 300 -u "$FD" line || [[ $line != magnet:* ]]; then
        echo "files: no magnet from p2pfile serve within 300 s; stderr:" >&2
        cat "$log/seed.err" >&2
        return 1
    fi
    t1=$(now)
    M_HASH_S=$(elapsed "$t0" "$t1")
    # Keep reading the seed's stdout so it never blocks on a full pipe.
    cat <&"$FD" >"$log/seed.out" &
    DRAIN_PID=$!
    t0=$(now)
    P2PFILE_STATE=$log/dl.db $TIME -f %M -o "$log/dl.time" \
        timeout 300 "$bin" --ip "$DL_IP" --port "$((PORT + 1))" \
        download "$line" --dir "$d" --timeout 120 >"$log/dl.out" 2>"$log/dl.err" || rc=$?
    t1=$(now)
    stop_seed
    if ((rc != 0)); then
        echo "files: p2pfile download exited $rc:" >&2
        tail -n 20 "$log/dl.err" >&2
        return 1
    fi
    verify "$d/$NAME"
    if [[ -n $(find "$d" -name '*.p2pfile-part' -print -quit) ]]; then
        echo "files: a part file was left under $d" >&2
        return 1
    fi
    rm -rf "$d"
    M_SECONDS=$(elapsed "$t0" "$t1")
    M_RSS_MB=$(awk '/^[0-9]+$/ { printf "%.1f", $1 / 1024 }' "$log/dl.time")
    if [[ -s $log/seed.err || -s $log/dl.err ]]; then
        echo "files: p2pfile stderr (seed, downloader):" >&2
        head -n 5 "$log/seed.err" "$log/dl.err" >&2
    fi
}
measure_p2pfile_new() { measure_p2pfile "$P2PFILE"; }
measure_p2pfile_base() { measure_p2pfile "$P2PFILE_BASE"; }

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WHATS=(rsync tar)
for b in "${BINS[@]}"; do WHATS+=("$b"); done
ROWS=()
for ((run = 1; run <= RUNS; run++)); do
    for what in "${WHATS[@]}"; do
        case $what in
        rsync | tar) "measure_$what" ;;
        p2pfile) measure_p2pfile_new ;;
        base) measure_p2pfile_base ;;
        esac
        echo "files: run $run: $what ${M_SECONDS} s (hash ${M_HASH_S} s, RSS ${M_RSS_MB} MB)" >&2
        ROWS+=("$what $M_SECONDS $M_HASH_S $M_RSS_MB")
        printf '{"stamp":"%s","rev":"%s","what":"%s","run":%d,"files":%d,"kib":%d,"seconds":%s,"hash_seconds":"%s","dl_rss_mb":"%s"}\n' \
            "$STAMP" "$REV" "$what" "$run" "$FILES" "$TOTAL_KIB" "$M_SECONDS" "$M_HASH_S" \
            "$M_RSS_MB" >>"$RESULTS/files.jsonl"
    done
done

# stats COLUMN WHAT: "median (min-max)" of a column over WHAT's rows.
stats() {
    printf '%s\n' "${ROWS[@]}" | awk -v w="$2" -v c="$1" '$1 == w && $c != "-" { print $c }' |
        sort -g | awk '{ v[++n] = $1 } END {
            if (!n) { print "-"; exit }
            printf "%s (%s-%s)\n", v[int((n + 1) / 2)], v[1], v[n] }'
}

echo
echo "Many files: $FILES files, $((TOTAL_KIB / 1024)) MiB, tmpfs $WORK, $RUNS round(s), median (min-max); rev $REV"
printf '%-26s %-22s %-22s %s\n' what "copy time (s)" "serve hash (s)" "download peak RSS (MB)"
for what in "${WHATS[@]}"; do
    case $what in
    rsync) label="rsync -a" ;;
    tar) label="tar | tar" ;;
    p2pfile) label="p2pfile download" ;;
    base) label="p2pfile download (base)" ;;
    esac
    printf '%-26s %-22s %-22s %s\n' "$label" "$(stats 2 "$what")" "$(stats 3 "$what")" "$(stats 4 "$what")"
done
echo "results: $RESULTS/files.jsonl"
