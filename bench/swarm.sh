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
#   LAB_CC=cubic       TCP congestion control of every host (lab.sh; default:
#                      the machine's). Printed and recorded in the results
#   ZONES=4,4          zone sizes (hosts in order; the seed h1 is in zone 1):
#                      a bridge per zone, joined by shaped links (lab.sh)
#   ZONE_RATE_MBIT=R   host uploads in a zone lab: one figure, or one per
#                      zone (RATES, when set, wins)
#   LINK_MBIT=100      the inter-zone link, each direction
#   P2PFILE_ZONE_FLAG=1  p2pfile processes get --zone zN (the binary must
#                      have the flag: checked in its --help)
#   ARTIFACTS=1        K files of SIZE_MIB each: one serve of all K, one
#                      download of all K per host; done = all K verified
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
# With ARTIFACTS=K: the seed serves K files in one process, p2pfile gets K
# magnets, aria2 K .torrent files (--max-concurrent-downloads=K), lt_peer.py
# K magnets; a host is done when all K torrents are.
# Completion time per host = when its completion signal is seen (p2pfile's
# `completed` JSON event, aria2's hook, lt_peer's done file); every copy is
# then checked with sha256sum against the source.
#
# Lower bound (Kumar & Ross), F = file size, u_s = the seed's upload (first
# entry of RATES), u_i = downloader i's upload, n = HOSTS-1 downloaders,
# d_min = the slowest download capacity:
#   T_min = max(F/u_s, F/d_min, n*F/(u_s + sum u_i))
# Ingress is not shaped, so d_min is taken as unlimited (F/d_min = 0). With
# one rate u for every host this is max(F/u, n*F/(N*u)) = F/u. F is the
# total of all ARTIFACTS. With zones (bench/README.md derives it), also
#   F/L, (n_1 + 1)*F/(U_1 + L), n_z*F/(U_z + L) for every zone z > 1
# (L the link, U_z the uploads of zone z's hosts, n_z its downloaders), and
# "across" = the TCP payload that crossed the link into each zone / F.
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
    HOSTS=4 SIZE_MIB=16 CLIENTS=p2pfile RUNS=1 RATES= ZONES= ARTIFACTS=1
fi
HOSTS=${HOSTS:-8}
RATE_MBIT=${RATE_MBIT:-100}
ZONES=${ZONES:-}
LINK_MBIT=${LINK_MBIT:-100}
SIZE_MIB=${SIZE_MIB:-256}
ARTIFACTS=${ARTIFACTS:-1}
CLIENTS=${CLIENTS:-p2pfile aria2 libtorrent}
RUNS=${RUNS:-1}
PORT=${BENCH_PORT:-42070}
LT_PY=/usr/bin/python3

for v in HOSTS RATE_MBIT SIZE_MIB RUNS PORT ARTIFACTS LINK_MBIT; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} == 0)); then
        echo "swarm: $v must be a positive integer" >&2
        exit 2
    fi
done
((HOSTS >= 2)) || {
    echo "swarm: HOSTS must be at least 2" >&2
    exit 2
}
((ARTIFACTS <= 100)) || {
    echo "swarm: ARTIFACTS must be 1..100" >&2
    exit 2
}
# LAB_ZONE_OF[1..HOSTS] and LAB_NZONES from ZONES (empty: one switch).
lab_parse_zones "$HOSTS" "$ZONES" || exit 2
# Default rates: ZONE_RATE_MBIT (one figure, or one per zone) in a zone
# lab, RATE_MBIT otherwise; RATES, when given, sets every host itself.
if [[ -z ${RATES:-} ]]; then
    if [[ -n $ZONES && -n ${ZONE_RATE_MBIT:-} ]]; then
        IFS=, read -r -a zr <<<"$ZONE_RATE_MBIT"
        if ((${#zr[@]} != 1 && ${#zr[@]} != LAB_NZONES)); then
            echo "swarm: ZONE_RATE_MBIT must be one number or $LAB_NZONES (one per zone), got '$ZONE_RATE_MBIT'" >&2
            exit 2
        fi
        RATES=
        for ((i = 1; i <= HOSTS; i++)); do
            z=${LAB_ZONE_OF[i]}
            ((${#zr[@]} == 1)) && z=1
            RATES+=${RATES:+,}${zr[z - 1]}
        done
    else
        RATES=$RATE_MBIT
    fi
fi
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
# F = everything each downloader must get: ARTIFACTS files of SIZE_MIB.
F_ONE=$((SIZE_MIB * 1048576))
F_BYTES=$((ARTIFACTS * F_ONE))
N_DL=$((HOSTS - 1))
ZONE_OF_JSON=$(IFS=','; echo "${LAB_ZONE_OF[*]}")
# Lower bound (bytes/s = Mbit/s * 1e6 / 8); prints "T_MIN TERM", TERM the
# term that binds. Kumar & Ross: max(F/u_s, n*F/(u_s + sum u_i)), F/d_min =
# 0 (ingress unshaped). With zones (seed in zone 1, link L each way, U_z the
# uploads of zone z, n_z its downloaders) also F/L (every bit crosses into
# each other zone at least once), n_z*F/(U_z + L) for z > 1 (what zone z
# receives comes from its own uploads or over its link) and
# (n_1 + 1)*F/(U_1 + L) for zone 1 (its uploads feed its own downloaders,
# less what comes back over the link, plus at least one copy out).
read -r T_MIN T_TERM < <(awk -v f="$F_BYTES" -v r="$RATES_JSON" -v zo="$ZONE_OF_JSON" \
    -v nz="$LAB_NZONES" -v l="$LINK_MBIT" 'BEGIN {
    k = split(r, u, ","); split(zo, z, ","); us = u[1] * 1e6 / 8; tot = 0
    for (i = 1; i <= k; i++) { tot += u[i] * 1e6 / 8; zu[z[i]] += u[i] * 1e6 / 8; zn[z[i]] += (i > 1) }
    best = f / us; term = "F/u_s"
    t = (k - 1) * f / tot; if (t > best) { best = t; term = "n*F/(u_s+sum u_i)" }
    if (nz > 1) {
        L = l * 1e6 / 8
        t = f / L; if (t > best) { best = t; term = "F/L" }
        for (j = 1; j <= nz; j++) {
            t = (zn[j] + (j == 1)) * f / (zu[j] + L)
            if (t > best) { best = t; term = (j == 1 ? "(n_1+1)*F/(U_1+L)" : "n_" j "*F/(U_" j "+L)") }
        }
    }
    printf "%.2f %s\n", best, term }')
TIMEOUT=${SWARM_TIMEOUT:-$(awk -v t="$T_MIN" 'BEGIN { printf "%d", 10 * t + 60 }')}
# The files: one (the classic benchmark) or ARTIFACTS of them.
NAMES=()
if ((ARTIFACTS == 1)); then
    NAMES=("swarm-${SIZE_MIB}MiB.bin")
else
    for ((a = 1; a <= ARTIFACTS; a++)); do NAMES+=("$(printf 'artifact-%02d-%dMiB.bin' "$a" "$SIZE_MIB")"); done
fi
SEED_IP=$(lab_ip 1)

# --- p2pfile --zone ------------------------------------------------------------
# P2PFILE_ZONE_FLAG=1 in a zone lab: every p2pfile process gets --zone zN
# (N = its host's zone). Checked against the binary's help further down.
ZONE_FLAG=0
if [[ -n $ZONES && ${P2PFILE_ZONE_FLAG:-0} == 1 ]]; then ZONE_FLAG=1; fi
# zone_args I: the arguments that put host I's p2pfile in its zone (none
# without ZONE_FLAG).
zone_args() {
    ((ZONE_FLAG)) || return 0
    printf '%s\n' --zone "z${LAB_ZONE_OF[$1]}"
}

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
if ((ZONE_FLAG)); then
    if ! "$P2PFILE" download --help 2>/dev/null | grep -q -- '--zone' ||
        ! "$P2PFILE" serve --help 2>/dev/null | grep -q -- '--zone'; then
        echo "swarm: P2PFILE_ZONE_FLAG=1 but $P2PFILE has no --zone (not in its download/serve --help): this binary predates the flag; unset P2PFILE_ZONE_FLAG to run it without zones" >&2
        exit 2
    fi
    echo "swarm: p2pfile processes run with --zone zN (their host's zone)" >&2
elif [[ -n $ZONES ]]; then
    if "$P2PFILE" download --help 2>/dev/null | grep -q -- '--zone'; then
        echo "swarm: zone lab, p2pfile runs WITHOUT --zone (set P2PFILE_ZONE_FLAG=1 to pass it)" >&2
    else
        echo "swarm: zone lab, p2pfile runs WITHOUT --zone: this binary has no --zone flag" >&2
    fi
fi

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

CC=$(lab_cc)
echo "swarm: $HOSTS hosts, upload Mbit/s $RATES_JSON (seed first), $ARTIFACTS x $SIZE_MIB MiB, TCP congestion control $CC, clients: $CLIENTS, runs: $RUNS" >&2
if [[ -n $ZONES ]]; then
    echo "swarm: zones $ZONES (host -> zone $ZONE_OF_JSON), inter-zone link $LINK_MBIT Mbit/s each way$( ((LAB_NZONES > 2)) && echo ' (a star through a core bridge: one such link per zone)')" >&2
fi
echo "swarm: T_min = $T_MIN s ($T_TERM), timeout $TIMEOUT s, work dir $WORK, logs $LOGROOT" >&2
mkdir -p "$WORK/h1"
WANT_SHA=()
for name in "${NAMES[@]}"; do
    head -c "$F_ONE" /dev/urandom >"$WORK/h1/$name"
    WANT_SHA+=("$(sha256sum "$WORK/h1/$name" | awk '{print $1}')")
done

# --- one run -------------------------------------------------------------------
# Results of the last run_one.
R_SECONDS='' R_VERIFIED=0 R_HOSTTIMES='' R_DOWNLOADED=''
R_SEEDREACH=null R_MESH=null R_MAXPEERS='' R_SEEDSENT=null R_SEEDWIRE=null
R_LINK_IN='' R_LINK_IN_WIRE=''

# watch_json FIFO OUT DONE: copy FIFO's lines to OUT; once ARTIFACTS lines
# have been `completed` events (one per torrent), write the time to DONE.
# Builtins only.
watch_json() {
    local fifo=$1 out=$2 donef=$3 line n=0
    while IFS= read -r line; do
        printf '%s\n' "$line" >>"$out"
        if [[ $line == *'"event":"completed"'* ]]; then
            n=$((n + 1))
            if ((n == ARTIFACTS)); then printf '%s\n' "$EPOCHREALTIME" >"$donef"; fi
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

start_downloader() { # client host_index log_dir (MAGNETS and TORRENTS: every artifact)
    local client=$1 i=$2 log=$3
    local ip dir donef
    local -a zargs
    mapfile -t zargs < <(zone_args "$i")
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
            "$P2PFILE" --ip "$ip" --port "$PORT" download "${MAGNETS[@]}" \
            --dir "$dir" --json --timeout 60 "${zargs[@]}" \
            --seeding --seeding-time 600 --seeding-ratio 0 \
            >"$WORK/h$i.fifo" 2>"$log/h$i.err" &
        ;;
    aria2)
        mkdir -p "$WORK/aria2-h$i"
        # One call per finished torrent (maybe at once): done after the last.
        printf '#!/bin/sh\ndate +%%s.%%N >>"%s.parts"\nif [ "$(wc -l <"%s.parts")" -ge %d ]; then tail -n1 "%s.parts" >"%s.tmp.$$" && mv "%s.tmp.$$" "%s"; fi\n' \
            "$donef" "$donef" "$ARTIFACTS" "$donef" "$donef" "$donef" "$donef" >"$WORK/aria2-h$i/hook.sh"
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
            --seed-time=10 --seed-ratio=0.0 --max-concurrent-downloads="$ARTIFACTS" \
            --file-allocation=none --auto-file-renaming=false --allow-overwrite=true \
            --summary-interval=0 --show-console-readout=false \
            --console-log-level=warn \
            --log="$log/h$i.aria2.log" --log-level="${ARIA2_LOG_LEVEL:-notice}" \
            --on-bt-download-complete="$WORK/aria2-h$i/hook.sh" \
            --stop="$((TIMEOUT + 30))" \
            "${TORRENTS[@]}" >"$log/h$i.out" 2>"$log/h$i.err" &
        ;;
    libtorrent)
        lab_exec "$i" "$LT_PY" "$HERE/lt_peer.py" "${MAGNETS[@]}" --ip "$ip" --port "$PORT" \
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
    local i t0 line hash seed_pid deadline pending last_report link0
    local -a done_at lines
    DL_PID=()
    MAGNETS=() TORRENTS=()
    R_SECONDS='' R_VERIFIED=0 R_HOSTTIMES='' R_DOWNLOADED='' R_LINK_IN='' R_LINK_IN_WIRE=''
    mkdir -p "$log"
    for ((i = 2; i <= HOSTS; i++)); do rm -rf "$WORK/h$i" "$WORK/h$i.done" "$WORK/h$i.done.parts" "$WORK/h$i.fifo" "$WORK/aria2-h$i"; done
    # Each host gets its own fresh p2pfile state database (p2pfile keeps
    # served hashes, downloads and DHT nodes in it; the default is
    # ./.p2pfile.db, which every host would otherwise share).
    rm -rf "$WORK/torrent" "$WORK/state"
    mkdir -p "$WORK/state"

    lab_up "$HOSTS" "$RATES_JSON" "$ZONES" "$LINK_MBIT"

    # Seed on h1 (one serve for every artifact); wait (bounded) for a
    # `serving` event per artifact.
    local -a seed_zargs files=()
    mapfile -t seed_zargs < <(zone_args 1)
    for name in "${NAMES[@]}"; do files+=("$WORK/h1/$name"); done
    lab_exec 1 env P2PFILE_STATE="$WORK/state/h1.db" "${DEBUG_ENV[@]}" \
        "$P2PFILE" --ip "$SEED_IP" --port "$PORT" serve "${files[@]}" \
        --torrent-out "$WORK/torrent" --json "${seed_zargs[@]}" >"$log/seed.out" 2>"$log/seed.err" &
    seed_pid=$!
    PIDS+=("$seed_pid")
    lines=()
    for ((i = 0; i < 600 + 20 * ARTIFACTS; i++)); do
        mapfile -t lines < <(grep '"event":"serving"' "$log/seed.out" 2>/dev/null || true)
        ((${#lines[@]} < ARTIFACTS)) || break
        kill -0 "$seed_pid" 2>/dev/null || break
        sleep 0.1
    done
    if ((${#lines[@]} < ARTIFACTS)); then
        echo "swarm: the seed did not start (${#lines[@]}/$ARTIFACTS serving events); its stderr:" >&2
        cat "$log/seed.err" >&2
        return 1
    fi
    for line in "${lines[@]}"; do
        MAGNETS+=("$(sed -n 's/.*"magnet":"\([^"]*\)".*/\1/p' <<<"$line")")
        hash=$(sed -n 's/.*"info_hash":"\([0-9a-f]*\)".*/\1/p' <<<"$line")
        TORRENTS+=("$WORK/torrent/$hash.torrent")
        [[ -n ${MAGNETS[-1]} && -s ${TORRENTS[-1]} ]] || {
            echo "swarm: no magnet or .torrent from the seed: $line" >&2
            return 1
        }
    done
    echo "swarm: [$client run $run] seed ready: ${MAGNETS[0]}$( ((ARTIFACTS > 1)) && echo " and $((ARTIFACTS - 1)) more")" >&2

    tx0=$(seed_tx)
    link0=$(lab_link_counters)
    t0=$EPOCHREALTIME
    for ((i = 2; i <= HOSTS; i++)); do
        start_downloader "$client" "$i" "$log"
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
    # What crossed the inter-zone link(s) until then, per zone, into it:
    # wire = frame bytes / F; payload = (frame bytes - 66 per frame) / F,
    # 66 = Ethernet 14 + IPv4 20 + TCP with timestamps 32 (the link cuts
    # GSO packets into wire frames, so every frame counts once; a bare ACK
    # counts 0, a UDP DHT packet a little under its size).
    if ((LAB_NZONES > 1)); then
        read -r R_LINK_IN R_LINK_IN_WIRE < <(
            { echo "$link0"; echo END; lab_link_counters; } | awk -v f="$F_BYTES" '
                $1 == "END" { after = 1; next }
                !after { b[$1] = $2; p[$1] = $3; next }
                { db = $2 - b[$1]; dp = $3 - p[$1]
                  pay = pay (pay == "" ? "" : ",") sprintf("%.3f", (db - 66 * dp) / f)
                  wire = wire (wire == "" ? "" : ",") sprintf("%.3f", db / f) }
                END { print pay, wire }')
        printf '%s\n%s\n' "$link0" "$(lab_link_counters)" >"$log/link_counters.txt"
    fi
    # Everyone stops: downloaders, then the seed.
    stop_pids "${PIDS[@]}"
    PIDS=()
    lab_down
    # The seed's own count of block bytes it uploaded, saved when it stopped.
    R_SEEDSENT=$(P2PFILE_STATE="$WORK/state/h1.db" "$P2PFILE" status --json 2>/dev/null |
        sed -n 's/.*"event":"served".*"uploaded":\([0-9]*\).*/\1/p' |
        awk -v f="$F_BYTES" '{ s += $1; found = 1 } END { if (found) printf "%.3f", s / f; else printf "null" }')

    # Verify every copy and collect per-host times.
    local times=() dls=() ok=0 sha t last=0
    for ((i = 2; i <= HOSTS; i++)); do
        t=${done_at[i]:-}
        if [[ $t =~ ^[0-9.]+$ ]]; then
            t=$(awk -v a="$t" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
        else
            t=null
        fi
        # Every artifact on this host must match its source.
        local a bad=''
        for ((a = 0; a < ARTIFACTS; a++)); do
            sha=$(sha256sum "$WORK/h$i/${NAMES[a]}" 2>/dev/null | awk '{print $1}' || true)
            [[ $sha == "${WANT_SHA[a]}" ]] || bad+=" ${NAMES[a]}:${sha:-none}"
        done
        if [[ -z $bad && $t != null ]]; then
            ok=$((ok + 1))
            last=$(awk -v a="$t" -v b="$last" 'BEGIN { print (a > b ? a : b) }')
        else
            echo "swarm: [$client run $run] h$i has no verified copy (completion: $t, sha256 of the failing files:${bad:- none})" >&2
        fi
        times+=("$t")
        # Payload bytes the host received (redundant blocks included), over
        # all its `completed` events (one per torrent).
        local d=null
        if [[ -f $log/h$i.out ]]; then
            d=$(grep '"event":"completed"' "$log/h$i.out" |
                sed -n 's/.*"downloaded":\([0-9]*\).*/\1/p' |
                awk -v k="$ARTIFACTS" '{ s += $1; n++ } END { if (n == k) print s }' || true)
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
CSV_HEADER="stamp,rev,client,run,hosts,rate_mbit,size_mib,seconds,t_min,ratio,verified,downloaders,copies_moved,rates_mbit,artifacts,zones,link_mbit,link_in_copies,zone_flag,cc"
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
        printf '{"stamp":"%s","rev":"%s","client":"%s","run":%d,"hosts":%d,"rate_mbit":%d,"size_mib":%d,"seconds":%s,"t_min":%s,"ratio":%s,"verified":%d,"downloaders":%d,"host_seconds":[%s],"host_downloaded":[%s],"copies_moved":%s,"host_seed_reach_s":[%s],"host_mesh_s":[%s],"host_max_peers":[%s],"seed_sent":%s,"seed_wire":%s,"rates_mbit":[%s],"t_min_term":"%s","artifacts":%d,"bytes_per_host":%d,"zones":[%s],"host_zone":[%s],"link_mbit":%s,"link_in_copies":[%s],"link_in_wire_copies":[%s],"zone_flag":%s,"cc":"%s"}\n' \
            "$STAMP" "$REV" "$client" "$run" "$HOSTS" "${LAB_RATES[1]}" "$SIZE_MIB" "$R_SECONDS" "$T_MIN" "$ratio" \
            "$R_VERIFIED" "$N_DL" "$R_HOSTTIMES" "$R_DOWNLOADED" "$copies" "$R_SEEDREACH" "$R_MESH" "$R_MAXPEERS" "$R_SEEDSENT" "$R_SEEDWIRE" "$RATES_JSON" \
            "$T_TERM" "$ARTIFACTS" "$F_BYTES" "$ZONES" "$ZONE_OF_JSON" "$( [[ -n $ZONES ]] && echo "$LINK_MBIT" || echo null)" \
            "$R_LINK_IN" "$R_LINK_IN_WIRE" "$( ((ZONE_FLAG)) && echo true || echo false)" "$CC" >>"$JSONL"
        echo "$STAMP,$REV,$client,$run,$HOSTS,${LAB_RATES[1]},$SIZE_MIB,$R_SECONDS,$T_MIN,$ratio,$R_VERIFIED,$N_DL,$copies,$RATES_LIST,$ARTIFACTS,${ZONES//,/;},$( [[ -n $ZONES ]] && echo "$LINK_MBIT"),${R_LINK_IN//,/;},$ZONE_FLAG,$CC" >>"$CSV"
        ROWS+=("$client $run $R_SECONDS $ratio $R_VERIFIED $copies $R_SEEDSENT $seed_at $mesh_at ${R_LINK_IN:--} $R_HOSTTIMES")
        echo "swarm: [$client run $run] last verified copy after ${R_SECONDS} s (T_min $T_MIN s, ratio $ratio), $R_VERIFIED/$N_DL verified, per host: $R_HOSTTIMES" >&2
        [[ -z $ZONES ]] || echo "swarm: [$client run $run] copies across the link(s) into each zone (z1,z2,...): payload $R_LINK_IN, wire $R_LINK_IN_WIRE" >&2
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
echo "Swarm: $HOSTS hosts ($N_DL downloaders), egress Mbit/s $RATES_JSON (seed first), $ARTIFACTS x $SIZE_MIB MiB, seed: p2pfile serve, rev $REV"
if [[ -n $ZONES ]]; then
    echo "Zones $ZONES (seed in zone 1), inter-zone link $LINK_MBIT Mbit/s each way; p2pfile $( ((ZONE_FLAG)) && echo "with" || echo "WITHOUT") --zone"
    echo "T_min = max(F/u_s, n*F/(u_s + sum u_i), F/L, (n_1+1)*F/(U_1+L), n_z*F/(U_z+L)) = $T_MIN s, set by $T_TERM (F/d_min = 0: ingress unshaped)"
    echo "across = copies of F that crossed the link into zone 1,2,... (TCP payload: frame bytes - 66 per frame)"
else
    echo "T_min = max(F/u_s, n*F/(u_s + sum u_i)) = $T_MIN s, set by $T_TERM (F/d_min = 0: ingress unshaped)"
fi
printf '%-11s %4s %9s %9s %7s %9s %7s %9s %8s %8s %11s  %s\n' client run "time (s)" "T_min (s)" ratio verified copies "seed sent" "seed@ s" "mesh@ s" across "per-host completion (s)"
for row in "${ROWS[@]}"; do
    read -r c r s ra v cp ss sa ma li ht <<<"$row"
    if [[ $r == skipped ]]; then
        printf '%-11s %s\n' "$c" "skipped (not installed)"
        continue
    fi
    printf '%-11s %4s %9s %9s %7s %9s %7s %9s %8s %8s %11s  %s\n' "$c" "$r" "$s" "$T_MIN" "$ra" "$v/$N_DL" "$cp" "$ss" "$sa" "$ma" "$li" "$ht"
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
