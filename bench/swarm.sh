#!/usr/bin/env bash
# Swarm benchmark: one seed, HOSTS-1 downloaders started at once in an
# emulated LAN (bench/lab.sh); time until the LAST downloader holds a
# verified copy, against the Kumar & Ross lower bound.
#
#   sudo bench/swarm.sh                      # 8 hosts, 100 Mbit/s, 256 MiB, 3 clients
#   sudo HOSTS=4 SIZE_MIB=16 bench/swarm.sh  # small
#   sudo bench/swarm.sh --ci                 # = CI_SMALL=1: 4 hosts, 16 MiB, p2pfile
#
# Environment:
#   HOSTS=8  RATE_MBIT=100  SIZE_MIB=256  RUNS=1
#   RATES=R1,R2,...    per-host upload Mbit/s, host 1 (the seed) first: one
#                      number for all or HOSTS numbers (default: RATE_MBIT each)
#   LAB_PREFIX=p2pf LAB_NET=10.77.0   the lab's namespace prefix and /24
#                      (bench/lab.sh); two labs need different ones
#   CLIENTS="p2pfile aria2 libtorrent"   downloaders to measure, in this order
#   SWARM_TIMEOUT=S    give up on a run after S s (default 10*T_min + 60)
#   P2PFILE=PATH       use this binary instead of `cargo build --release`
#   BENCH_TMP=DIR      where the data and copies go (default /tmp)
#   BENCH_PORT=42070   TCP+UDP port every host uses
#   SWARM_SAMPLE=1     sample each host's TCP peers once a second (0: off)
#   ARIA2_LOG_LEVEL=notice   aria2c --log-level (info shows DHT and peers)
#   LT_VERBOSE=        non-empty: lt_peer.py logs peer/connect/DHT alerts
#   SWARM_DEBUG=       non-empty: p2pfile processes log at debug level (*.err)
#
# The seed is always `p2pfile serve` on h1 (LAB_NET.1), whatever the
# downloaders are, so every client is measured against the same kind of seed:
#   p2pfile    `p2pfile download MAGNET --seeding --seeding-time 600
#              --seeding-ratio 0`; peers from x.pe (the seed, also its DHT
#              bootstrap), then DHT and PEX
#   aria2      aria2c on the .torrent written by `serve --torrent-out`,
#              --dht-entry-point = the seed's DHT (UDP, same port), PEX on,
#              --seed-time=10 (minutes) --seed-ratio=0.0; completion from
#              --on-bt-download-complete (its stdout is block-buffered)
#   libtorrent bench/lt_peer.py MAGNET (x.pe) with the seed as its only DHT
#              node; TCP only (uTP off); keeps seeding after completion
# Downloaders keep seeding after they finish; all are killed at the end.
# Completion time per host = when its completion signal is seen (p2pfile's
# `completed` JSON event, aria2's hook, lt_peer's done file); every copy is
# then checked with sha256sum against the source.
#
# Lower bound (Kumar & Ross), F = file size, u_s = the seed's upload (first
# entry of RATES), u_i = downloader i's upload, n = HOSTS-1 downloaders,
# d_min = the slowest download capacity:
#   T_min = max(F/u_s, F/d_min, n*F/(u_s + sum u_i))
# Ingress is not shaped, so d_min is taken as unlimited (F/d_min = 0). With
# one rate u for every host this is max(F/u, n*F/(N*u)) = F/u.
# The bound uses the nominal rate; tbf leaves ~95.6 % of it to one TCP flow.
#
# While a run goes, each downloader's established TCP peers are sampled once
# a second (ss, SWARM_SAMPLE=0 turns it off): "seed@" is when the last
# downloader first had a connection with the seed, "mesh@" when the last one
# first had a connection with another downloader (1 s resolution); the
# seed's transmitted bytes go to seed_tx.log at the same times.
# "seed sent" is the block bytes the seed uploaded (its own counter, read
# from its state database after it stopped) divided by F: 1.00 when the seed
# sent every piece exactly once. The JSON line also has "seed_wire", the
# bytes the seed host put on its link until the last completion over F
# (TCP/IP and Ethernet headers included).
#
# Output: a table on stdout; one JSON line per run appended to
# bench/results/swarm.jsonl and one CSV row to bench/results/swarm.csv; the
# logs of each run (stdout/stderr of every process) in
# bench/results/swarm-<stamp>/<client>-run<k>/.
# Exit: 0 every copy verified in every run; 1 otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=lab.sh
source "$HERE/lab.sh"

CI_SMALL=${CI_SMALL:-0}
# SWARM_DEBUG=1: every p2pfile process logs at debug level to its .err file.
DEBUG_ENV=()
[[ -z ${SWARM_DEBUG:-} ]] || DEBUG_ENV=(P2PFILE_DEBUG=1)
for arg in "$@"; do
    case $arg in
    --ci) CI_SMALL=1 ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    *)
        echo "swarm: unknown argument $arg (see --help)" >&2
        exit 2
        ;;
    esac
done
if [[ $CI_SMALL == 1 ]]; then
    HOSTS=4 SIZE_MIB=16 CLIENTS=p2pfile RUNS=1 RATES=
fi
HOSTS=${HOSTS:-8}
RATE_MBIT=${RATE_MBIT:-100}
RATES=${RATES:-$RATE_MBIT}
SIZE_MIB=${SIZE_MIB:-256}
CLIENTS=${CLIENTS:-p2pfile aria2 libtorrent}
RUNS=${RUNS:-1}
PORT=${BENCH_PORT:-42070}
LT_PY=/usr/bin/python3

for v in HOSTS RATE_MBIT SIZE_MIB RUNS PORT; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} == 0)); then
        echo "swarm: $v must be a positive integer" >&2
        exit 2
    fi
done
((HOSTS >= 2)) || {
    echo "swarm: HOSTS must be at least 2" >&2
    exit 2
}
# LAB_RATES[1..HOSTS] from RATES (checks the list's length and values).
lab_parse_rates "$HOSTS" "$RATES" || exit 2
# The rates as written in the results, "100;400;200" (CSV-safe).
RATES_LIST=$(IFS=';'; echo "${LAB_RATES[*]}")
RATES_JSON=$(IFS=','; echo "${LAB_RATES[*]}")

# --- can we build a lab at all? -------------------------------------------
probe_ns=${LAB_PREFIX}-probe$$
if [[ $EUID -ne 0 ]] || ! command -v ip >/dev/null || ! command -v tc >/dev/null ||
    ! ip netns add "$probe_ns" 2>/dev/null; then
    echo "skipped: needs root and ip netns"
    if [[ $CI_SMALL == 1 ]]; then exit 0; fi
    exit 1
fi
ip netns del "$probe_ns"

# --- numbers ----------------------------------------------------------------
F_BYTES=$((SIZE_MIB * 1048576))
N_DL=$((HOSTS - 1))
# Kumar & Ross from the per-host rates (bytes/s = Mbit/s * 1e6 / 8):
# max(F/u_s, n*F/(u_s + sum u_i)); F/d_min = 0 (ingress unshaped).
T_MIN=$(awk -v f="$F_BYTES" -v r="$RATES_JSON" -v n="$N_DL" 'BEGIN {
    k = split(r, u, ","); us = u[1] * 1e6 / 8; tot = 0
    for (i = 1; i <= k; i++) tot += u[i] * 1e6 / 8
    a = f / us; b = n * f / tot; printf "%.2f", (a > b ? a : b) }')
TIMEOUT=${SWARM_TIMEOUT:-$(awk -v t="$T_MIN" 'BEGIN { printf "%d", 10 * t + 60 }')}
NAME="swarm-${SIZE_MIB}MiB.bin"
SEED_IP=$(lab_ip 1)

# --- state and cleanup -------------------------------------------------------
WORK=
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    stop_pids "${PIDS[@]}" || true
    lab_down || true
    cd /
    [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# stop_pids PID...: TERM, wait up to 10 s, then KILL; only our own children.
stop_pids() {
    local p alive t
    (($# > 0)) || return 0
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for ((t = 0; t < 100; t++)); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# --- binaries ----------------------------------------------------------------
if [[ -z ${P2PFILE:-} ]]; then
    echo "swarm: cargo build --release" >&2
    (cd "$ROOT" && cargo build --release --quiet)
    P2PFILE=$ROOT/target/release/p2pfile
fi
[[ -x $P2PFILE ]] || {
    echo "swarm: no p2pfile binary at $P2PFILE" >&2
    exit 1
}
P2PFILE=$(realpath "$P2PFILE")

client_available() {
    case $1 in
    p2pfile) return 0 ;;
    aria2) command -v aria2c >/dev/null ;;
    libtorrent) "$LT_PY" -c 'import libtorrent' 2>/dev/null ;;
    *) return 1 ;;
    esac
}

# --- data ----------------------------------------------------------------------
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/p2pf-swarm.XXXXXX")
chmod 755 "$WORK"
cd "$WORK" # nothing a client writes to its working directory lands in the tree
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$HERE/results
LOGROOT=$RESULTS/swarm-$STAMP
mkdir -p "$RESULTS" "$LOGROOT"
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)

echo "swarm: $HOSTS hosts, upload Mbit/s $RATES_JSON (seed first), $SIZE_MIB MiB, clients: $CLIENTS, runs: $RUNS" >&2
echo "swarm: T_min = $T_MIN s, timeout $TIMEOUT s, work dir $WORK, logs $LOGROOT" >&2
mkdir -p "$WORK/h1"
head -c "$F_BYTES" /dev/urandom >"$WORK/h1/$NAME"
WANT_SHA=$(sha256sum "$WORK/h1/$NAME" | awk '{print $1}')

# --- one run -------------------------------------------------------------------
# Results of the last run_one.
R_SECONDS='' R_VERIFIED=0 R_HOSTTIMES='' R_DOWNLOADED=''
R_SEEDREACH=null R_MESH=null R_MAXPEERS='' R_SEEDSENT=null R_SEEDWIRE=null

# watch_json FIFO OUT DONE: copy FIFO's lines to OUT; on the first line
# that is a `completed` event, write the time to DONE. Builtins only.
watch_json() {
    local fifo=$1 out=$2 donef=$3 line
    while IFS= read -r line; do
        printf '%s\n' "$line" >>"$out"
        if [[ ! -s $donef && $line == *'"event":"completed"'* ]]; then
            printf '%s\n' "$EPOCHREALTIME" >"$donef"
        fi
    done <"$fifo"
}

# sample_conns OUT T0 END_SECONDS: once a second, each host's established
# TCP peers (lab addresses), as "ELAPSED hI ip,ip,..." lines. Bounded by END.
sample_conns() {
    local out=$1 t0=$2 end=$3 i peers
    while ((SECONDS < end)); do
        for ((i = 2; i <= HOSTS; i++)); do
            peers=$(ss -N "$(lab_ns "$i")" -Htn state established 2>/dev/null |
                awk '{ sub(/:[0-9]+$/, "", $4); if (!seen[$4]++) printf "%s%s", (n++ ? "," : ""), $4 }')
            printf '%s h%d %s\n' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')" "$i" "$peers"
        done >>"$out"
        printf '%s %s\n' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')" "$(seed_tx)" >>"${out%/*}/seed_tx.log"
        sleep 1
    done
}

# seed_tx: bytes the seed host has put on its link (Ethernet frames, so
# TCP/IP headers included), from the kernel's counters for eth0 in h1.
seed_tx() {
    ip -n "$(lab_ns 1)" -s -j link show eth0 |
        sed -n 's/.*"tx":{"bytes":\([0-9]*\).*/\1/p'
}

# conn_summary OUT: per host, first time connected to the seed, first time
# connected to another downloader, most peers at once ("null" if never).
conn_summary() {
    awk -v seed="$SEED_IP" -v hosts="$HOSTS" '
        { h = substr($2, 2); n = split($3, p, ",")
          if (n > maxp[h]) maxp[h] = n
          for (k = 1; k <= n; k++) {
              if (p[k] == seed) { if (!(h in sr)) sr[h] = $1 }
              else if (!(h in ms)) ms[h] = $1 } }
        END { for (i = 2; i <= hosts; i++) {
                a = a (i > 2 ? "," : "") ((i in sr) ? sr[i] : "null")
                b = b (i > 2 ? "," : "") ((i in ms) ? ms[i] : "null")
                c = c (i > 2 ? "," : "") (maxp[i] + 0) }
              print a, b, c }' "$1"
}

start_downloader() { # client host_index log_dir magnet torrent
    local client=$1 i=$2 log=$3 magnet=$4 torrent=$5
    local ip dir donef
    ip=$(lab_ip "$i")
    dir=$WORK/h$i
    donef=$WORK/h$i.done
    mkdir -p "$dir"
    case $client in
    p2pfile)
        mkfifo "$WORK/h$i.fifo"
        watch_json "$WORK/h$i.fifo" "$log/h$i.out" "$donef" &
        PIDS+=("$!")
        lab_exec "$i" env P2PFILE_STATE="$WORK/state/h$i.db" "${DEBUG_ENV[@]}" \
            "$P2PFILE" --ip "$ip" --port "$PORT" download "$magnet" \
            --dir "$dir" --json --timeout 60 \
            --seeding --seeding-time 600 --seeding-ratio 0 \
            >"$WORK/h$i.fifo" 2>"$log/h$i.err" &
        ;;
    aria2)
        mkdir -p "$WORK/aria2-h$i"
        printf '#!/bin/sh\ndate +%%s.%%N >"%s"\n' "$donef" >"$WORK/aria2-h$i/hook.sh"
        chmod +x "$WORK/aria2-h$i/hook.sh"
        # Every socket on the lab address; no trackers, LPD, IPv6, RPC or
        # config file; a fresh DHT table whose only entry point is the seed.
        lab_exec "$i" aria2c --no-conf=true --no-netrc=true --enable-rpc=false \
            --dir="$dir" --interface="$ip" --disable-ipv6=true --async-dns=false \
            --listen-port="$PORT" \
            --enable-dht=true --enable-dht6=false \
            --dht-listen-addr="$ip" --dht-listen-port="$PORT" \
            --dht-entry-point="$SEED_IP:$PORT" \
            --dht-file-path="$WORK/aria2-h$i/dht.dat" \
            --dht-file-path6="$WORK/aria2-h$i/dht6.dat" \
            --bt-enable-lpd=false --enable-peer-exchange=true \
            --bt-exclude-tracker='*' \
            --bt-save-metadata=false --bt-detach-seed-only=false \
            --seed-time=10 --seed-ratio=0.0 \
            --file-allocation=none --auto-file-renaming=false --allow-overwrite=true \
            --summary-interval=0 --show-console-readout=false \
            --console-log-level=warn \
            --log="$log/h$i.aria2.log" --log-level="${ARIA2_LOG_LEVEL:-notice}" \
            --on-bt-download-complete="$WORK/aria2-h$i/hook.sh" \
            --stop="$((TIMEOUT + 30))" \
            "$torrent" >"$log/h$i.out" 2>"$log/h$i.err" &
        ;;
    libtorrent)
        lab_exec "$i" "$LT_PY" "$HERE/lt_peer.py" "$magnet" --ip "$ip" --port "$PORT" \
            --dir "$dir" --done-file "$donef" --dht-node "$SEED_IP:$PORT" --lab-net "$LAB_NET.0/24" \
            --timeout "$((TIMEOUT + 30))" ${LT_VERBOSE:+--verbose} >"$log/h$i.out" 2>"$log/h$i.err" &
        ;;
    esac
    DL_PID[i]=$!
    PIDS+=("$!")
}

run_one() { # client run
    local client=$1 run=$2
    local log=$LOGROOT/$client-run$run
    local i t0 line magnet hash torrent seed_pid deadline pending last_report
    local -a done_at
    DL_PID=()
    R_SECONDS='' R_VERIFIED=0 R_HOSTTIMES='' R_DOWNLOADED=''
    mkdir -p "$log"
    for ((i = 2; i <= HOSTS; i++)); do rm -rf "$WORK/h$i" "$WORK/h$i.done" "$WORK/h$i.fifo" "$WORK/aria2-h$i"; done
    # Each host gets its own fresh p2pfile state database (p2pfile keeps
    # served hashes, downloads and DHT nodes in it; the default is
    # ./.p2pfile.db, which every host would otherwise share).
    rm -rf "$WORK/torrent" "$WORK/state"
    mkdir -p "$WORK/state"

    lab_up "$HOSTS" "$RATES_JSON"

    # Seed on h1; wait (bounded) for its magnet.
    lab_exec 1 env P2PFILE_STATE="$WORK/state/h1.db" "${DEBUG_ENV[@]}" \
        "$P2PFILE" --ip "$SEED_IP" --port "$PORT" serve "$WORK/h1/$NAME" \
        --torrent-out "$WORK/torrent" --json >"$log/seed.out" 2>"$log/seed.err" &
    seed_pid=$!
    PIDS+=("$seed_pid")
    line=
    for ((i = 0; i < 600; i++)); do
        line=$(grep -m1 '"event":"serving"' "$log/seed.out" 2>/dev/null || true)
        [[ -z $line ]] || break
        kill -0 "$seed_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $line ]]; then
        echo "swarm: the seed did not start; its stderr:" >&2
        cat "$log/seed.err" >&2
        return 1
    fi
    magnet=$(sed -n 's/.*"magnet":"\([^"]*\)".*/\1/p' <<<"$line")
    hash=$(sed -n 's/.*"info_hash":"\([0-9a-f]*\)".*/\1/p' <<<"$line")
    torrent=$WORK/torrent/$hash.torrent
    [[ -n $magnet && -s $torrent ]] || {
        echo "swarm: no magnet or .torrent from the seed: $line" >&2
        return 1
    }
    echo "swarm: [$client run $run] seed ready: $magnet" >&2

    tx0=$(seed_tx)
    t0=$EPOCHREALTIME
    for ((i = 2; i <= HOSTS; i++)); do
        start_downloader "$client" "$i" "$log" "$magnet" "$torrent"
    done
    if [[ ${SWARM_SAMPLE:-1} == 1 ]]; then
        sample_conns "$log/conns.log" "$t0" "$((SECONDS + TIMEOUT + 5))" &
        PIDS+=("$!")
    fi

    deadline=$((SECONDS + TIMEOUT))
    last_report=$SECONDS
    while :; do
        pending=0
        for ((i = 2; i <= HOSTS; i++)); do
            [[ -z ${done_at[i]:-} ]] || continue
            if [[ -s $WORK/h$i.done ]]; then
                done_at[i]=$(<"$WORK/h$i.done")
            elif ! kill -0 "${DL_PID[i]}" 2>/dev/null; then
                done_at[i]=exited
                echo "swarm: [$client run $run] h$i exited before completing" >&2
            else
                pending=$((pending + 1))
            fi
        done
        ((pending > 0)) || break
        if ((SECONDS >= deadline)); then
            echo "swarm: [$client run $run] timeout after $TIMEOUT s, $pending hosts incomplete" >&2
            break
        fi
        if ((SECONDS - last_report >= 10)); then
            last_report=$SECONDS
            echo "swarm: [$client run $run] $((N_DL - pending))/$N_DL done after $((SECONDS - deadline + TIMEOUT)) s" >&2
        fi
        sleep 0.1
    done

    # The seed's link bytes until the last copy was complete (it sends
    # nothing more once every peer is complete).
    R_SEEDWIRE=$(awk -v a="$tx0" -v b="$(seed_tx)" -v f="$F_BYTES" 'BEGIN { printf "%.3f", (b - a) / f }')
    # Everyone stops: downloaders, then the seed.
    stop_pids "${PIDS[@]}"
    PIDS=()
    lab_down
    # The seed's own count of block bytes it uploaded, saved when it stopped.
    R_SEEDSENT=$(P2PFILE_STATE="$WORK/state/h1.db" "$P2PFILE" status --json 2>/dev/null |
        sed -n 's/.*"event":"served".*"uploaded":\([0-9]*\).*/\1/p' |
        awk -v f="$F_BYTES" '{ printf "%.3f", $1 / f; found = 1 } END { if (!found) printf "null" }')

    # Verify every copy and collect per-host times.
    local times=() dls=() ok=0 sha t last=0
    for ((i = 2; i <= HOSTS; i++)); do
        t=${done_at[i]:-}
        if [[ $t =~ ^[0-9.]+$ ]]; then
            t=$(awk -v a="$t" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
        else
            t=null
        fi
        sha=$(sha256sum "$WORK/h$i/$NAME" 2>/dev/null | awk '{print $1}' || true)
        if [[ $sha == "$WANT_SHA" && $t != null ]]; then
            ok=$((ok + 1))
            last=$(awk -v a="$t" -v b="$last" 'BEGIN { print (a > b ? a : b) }')
        else
            echo "swarm: [$client run $run] h$i has no verified copy (completion: $t, sha256: ${sha:-none})" >&2
        fi
        times+=("$t")
        # Payload bytes the host received (redundant blocks included).
        local d=null
        if [[ -f $log/h$i.out ]]; then
            d=$(grep -m1 '"event":"completed"' "$log/h$i.out" |
                sed -n 's/.*"downloaded":\([0-9]*\).*/\1/p' || true)
            [[ -n $d ]] || d=null
        fi
        dls+=("$d")
    done
    R_VERIFIED=$ok
    R_SEEDREACH=null R_MESH=null R_MAXPEERS=
    if [[ -s $log/conns.log ]]; then
        read -r R_SEEDREACH R_MESH R_MAXPEERS < <(conn_summary "$log/conns.log")
    fi
    R_HOSTTIMES=$(IFS=,; echo "${times[*]}")
    R_DOWNLOADED=$(IFS=,; echo "${dls[*]}")
    if ((ok == N_DL)); then R_SECONDS=$last; else R_SECONDS=null; fi
    return 0
}

# list_max "a,b,...": the largest number, or "never" if any entry is null.
list_max() {
    awk -v l="$1" 'BEGIN { n = split(l, a, ","); m = ""
        for (i = 1; i <= n; i++) { if (a[i] == "null" || a[i] == "") { print "never"; exit } if (m == "" || a[i] + 0 > m) m = a[i] + 0 }
        print (m == "" ? "-" : m) }'
}

# --- all runs ------------------------------------------------------------------
JSONL=$RESULTS/swarm.jsonl
CSV=$RESULTS/swarm.csv
CSV_HEADER="stamp,rev,client,run,hosts,rate_mbit,size_mib,seconds,t_min,ratio,verified,downloaders,copies_moved,rates_mbit"
if [[ -s $CSV && $(head -n1 "$CSV") != "$CSV_HEADER" ]]; then
    # Columns changed: keep the old rows under their own header.
    mv "$CSV" "$CSV.$STAMP.old"
    echo "swarm: $CSV had other columns, moved to $CSV.$STAMP.old" >&2
fi
[[ -s $CSV ]] || echo "$CSV_HEADER" >"$CSV"
ROWS=()
FAILED=0
# Hosts with and without a verified copy, over every client and run.
HOSTS_OK=0
HOSTS_BAD=0
for ((run = 1; run <= RUNS; run++)); do
    for client in $CLIENTS; do
        if ! client_available "$client"; then
            echo "swarm: $client not available, skipped" >&2
            ROWS+=("$client skipped")
            continue
        fi
        # A harness failure (lab, seed) aborts everything through the trap.
        run_one "$client" "$run"
        ratio=null
        [[ $R_SECONDS == null ]] || ratio=$(awk -v a="$R_SECONDS" -v b="$T_MIN" 'BEGIN { printf "%.2f", a / b }')
        # File copies moved = all payload received / F (1.0 per downloader is ideal).
        copies=$(awk -v l="$R_DOWNLOADED" -v f="$F_BYTES" 'BEGIN {
            n = split(l, a, ","); s = 0; for (i = 1; i <= n; i++) { if (a[i] == "null" || a[i] == "") { print "null"; exit } s += a[i] }
            if (n == 0) print "null"; else printf "%.2f", s / f }')
        ((R_VERIFIED == N_DL)) || FAILED=1
        HOSTS_OK=$((HOSTS_OK + R_VERIFIED))
        HOSTS_BAD=$((HOSTS_BAD + N_DL - R_VERIFIED))
        seed_at=$(list_max "$R_SEEDREACH")
        mesh_at=$(list_max "$R_MESH")
        printf '{"stamp":"%s","rev":"%s","client":"%s","run":%d,"hosts":%d,"rate_mbit":%d,"size_mib":%d,"seconds":%s,"t_min":%s,"ratio":%s,"verified":%d,"downloaders":%d,"host_seconds":[%s],"host_downloaded":[%s],"copies_moved":%s,"host_seed_reach_s":[%s],"host_mesh_s":[%s],"host_max_peers":[%s],"seed_sent":%s,"seed_wire":%s,"rates_mbit":[%s]}\n' \
            "$STAMP" "$REV" "$client" "$run" "$HOSTS" "${LAB_RATES[1]}" "$SIZE_MIB" "$R_SECONDS" "$T_MIN" "$ratio" \
            "$R_VERIFIED" "$N_DL" "$R_HOSTTIMES" "$R_DOWNLOADED" "$copies" "$R_SEEDREACH" "$R_MESH" "$R_MAXPEERS" "$R_SEEDSENT" "$R_SEEDWIRE" "$RATES_JSON" >>"$JSONL"
        echo "$STAMP,$REV,$client,$run,$HOSTS,${LAB_RATES[1]},$SIZE_MIB,$R_SECONDS,$T_MIN,$ratio,$R_VERIFIED,$N_DL,$copies,$RATES_LIST" >>"$CSV"
        ROWS+=("$client $run $R_SECONDS $ratio $R_VERIFIED $copies $R_SEEDSENT $seed_at $mesh_at $R_HOSTTIMES")
        echo "swarm: [$client run $run] last verified copy after ${R_SECONDS} s (T_min $T_MIN s, ratio $ratio), $R_VERIFIED/$N_DL verified, per host: $R_HOSTTIMES" >&2
        if [[ $client == p2pfile ]]; then
            # Magnet to first verified piece: p2pfile's `first_piece` event,
            # seconds since each downloader started; the slowest host.
            first=$(cat "$LOGROOT/$client-run$run"/h*.out 2>/dev/null |
                sed -n 's/.*"event":"first_piece".*"seconds":\([0-9.]*\).*/\1/p' | sort -n | tail -1 || true)
            echo "swarm: [$client run $run] first verified piece on every host within ${first:-?} s of its start" >&2
        fi
    done
done

# --- table -------------------------------------------------------------------------
echo
echo "Swarm: $HOSTS hosts ($N_DL downloaders), egress Mbit/s $RATES_JSON (seed first), $SIZE_MIB MiB, seed: p2pfile serve, rev $REV"
echo "T_min = max(F/u_s, n*F/(u_s + sum u_i)) = $T_MIN s (F/d_min = 0: ingress unshaped)"
printf '%-11s %4s %9s %9s %7s %9s %7s %9s %8s %8s  %s\n' client run "time (s)" "T_min (s)" ratio verified copies "seed sent" "seed@ s" "mesh@ s" "per-host completion (s)"
for row in "${ROWS[@]}"; do
    read -r c r s ra v cp ss sa ma ht <<<"$row"
    if [[ $r == skipped ]]; then
        printf '%-11s %s\n' "$c" "skipped (not installed)"
        continue
    fi
    printf '%-11s %4s %9s %9s %7s %9s %7s %9s %8s %8s  %s\n' "$c" "$r" "$s" "$T_MIN" "$ra" "$v/$N_DL" "$cp" "$ss" "$sa" "$ma" "$ht"
done
if ((RUNS > 1)); then
    echo
    printf '%-11s %10s %7s\n' client "median (s)" ratio
    for client in $CLIENTS; do
        printf '%s\n' "${ROWS[@]}" | awk -v c="$client" '$1 == c && $3 != "null" && $2 != "skipped" { print $3 }' |
            sort -g | awk -v c="$client" -v tm="$T_MIN" '{ v[++n] = $1 }
                END { if (n == 0) exit; m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
                      printf "%-11s %10.2f %7.2f\n", c, m, m / tm }'
    done
fi
echo "results: $JSONL, $CSV; logs: $LOGROOT"
# One verified copy per downloader is one check; say so in the plain form
# test runners use, so a CI log ends with what this run checked.
echo "swarm: $HOSTS_OK passed, $HOSTS_BAD failed"
if ((FAILED)); then
    echo "swarm: FAILED: some host lacks a verified copy" >&2
    exit 1
fi
