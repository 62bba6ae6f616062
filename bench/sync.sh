#!/usr/bin/env bash
# Folder-sync benchmark: p2pfile sync vs. Syncthing, unison and rsync on 3
# hosts of the emulated LAN (bench/lab.sh). A change is made on peer 1; the
# time until the other peers hold it (byte-identical) is measured, with the
# bytes all hosts put on their links.
#
#   sudo bench/sync.sh                       # every scenario and tool, median of 3
#   sudo RUNS=1 bench/sync.sh                # one run each
#   sudo bench/sync.sh --quick               # RUNS=1, scenarios 10m,rename64
#   sudo TOOLS=syncthing SCENARIOS=delta10 bench/sync.sh
#
# Environment:
#   RATE=100        egress of every host, Mbit/s (tc tbf, see lab.sh)
#   LAB_CC=         TCP congestion control of every host (lab.sh; default:
#                   the machine's); printed, and written in the table
#   RUNS=3          runs per scenario and tool; the table shows medians
#   SCENARIOS=10m,256m+50,delta10,5000small,rename64
#   TOOLS=p2pfile,syncthing,unison,rsync
#   P2PFILE=PATH    p2pfile binary [default: target/release/p2pfile]; never
#                   built here; p2pfile is skipped when it does not exist
#   P2PFILE_SYNC_EXTRA="--discovery-port 0"   more flags for `p2pfile sync`
#   SYNC_TIMEOUT=300  give up on one measurement after this many seconds
#   ST_WATCH_DELAY=1  Syncthing fsWatcherDelayS
#   KEEP_LOGS=      non-empty: keep the per-run logs in bench/results/
#   IDLE_WAIT=0     before each measurement wait up to this many seconds for
#                   the machine to be < 15 % busy (shared machines); a run
#                   that starts on a busier machine says so in its notes
#
# Scenarios (peer directories on tmpfs under /dev/shm/p2pf-bench-*):
#   10m        a 10 MiB file appears on peer 1
#   256m+50    a 256 MiB file and 50 files of 1 KiB appear on peer 1
#   delta10    26 MiB (10 %) of a 256 MiB file all peers hold is overwritten
#              on peer 1 (dd conv=notrunc at offset 100 MiB)
#   5000small  a directory of 5,000 files of 1-8 KiB appears on peer 1
#   rename64   a 64 MiB file all peers hold is renamed on peer 1
# A change is prepared completely outside the folder (same tmpfs) and then
# moved in with one `mv` (rename), so every tool sees a complete file at
# once; the clock starts when that mv returns. Files that all peers hold
# before the change are identical copies (cp -p) made before any tool starts.
#
# Tools (3 peers unless said):
#   p2pfile    `p2pfile --ip IP --port 42070 --state S sync DIR --key KEY
#              --peers OTHER:42070,OTHER:42070 --json` on every host (key
#              from `sync DIR --show-keys` on peer 1). ASSUMED CLI, see
#              p2pfile_start. Completion read from the receivers' disks only.
#   syncthing  one instance per host, config written before the first start
#              (bench/st_config.py), explicit tcp:// peers, watcher delay 1 s;
#              done when both receivers' disks match AND peer 1's
#              /rest/db/completion says 100 % / needBytes 0 for both.
#   unison     pairwise, peer 1 <-> peer 2 only (socket server on peer 2);
#              one untimed run on the base state makes the archives, then
#              the time of one `unison -batch` run after the change.
#   rsync      one-way push from peer 1 to rsync daemons on peers 2 and 3 in
#              parallel (`rsync -a --delete`), time until both finish.
# unison and rsync are started by hand right after the change (no detection
# delay); p2pfile and Syncthing must notice the change themselves.
#
# Lower bound (Kumar & Ross) for F new bytes from one source to n=2
# receivers that can relay, every upload u = RATE, download unshaped:
#   T_min = max(F/u, n*F/(3u)) = F/u
# (also F/u for unison's single receiver). F = the new file bytes (10m,
# 256m+50, 5000small) or the overwritten bytes (delta10); no bound for
# rename64 (nothing new has to move).
# "moved MiB" = sum over the 3 hosts of the tx bytes of their eth0 (frames,
# headers included) from the change to completion; for p2pfile and
# Syncthing the notes add "origin N%" (the share peer 1 sent: 100 % = no
# relaying between receivers) and "cpu Ns" (CPU time of every process in
# the 3 namespaces, i.e. the daemons, during the measurement).
#
# Output: table on stdout, also appended to bench/results/sync-<date>.txt.
# Network safety: all traffic inside the lab namespaces (10.77.0.0/24, no
# uplink, no default route); Syncthing with global/local discovery, relays,
# NAT/UPnP/STUN, usage and crash reporting and upgrades off (checked in its
# config.xml before start and over REST after); see bench/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=lab.sh
source "$HERE/lab.sh"

QUICK=0
for arg in "$@"; do
    case $arg in
    --quick) QUICK=1 ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    *)
        echo "sync: unknown argument $arg (see --help)" >&2
        exit 2
        ;;
    esac
done
if ((QUICK)); then
    RUNS=1
    SCENARIOS=${SCENARIOS:-10m,rename64}
fi
RATE=${RATE:-100}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-10m,256m+50,delta10,5000small,rename64}
TOOLS=${TOOLS:-p2pfile,syncthing,unison,rsync}
SYNC_TIMEOUT=${SYNC_TIMEOUT:-300}
ST_WATCH_DELAY=${ST_WATCH_DELAY:-1}
P2PFILE=${P2PFILE:-$ROOT/target/release/p2pfile}
NHOSTS=3
P2P_PORT=42070
ST_PORT=22000
ST_GUI=8384
UN_PORT=42080
DELTA_OFF_MIB=100
DELTA_MIB=26

for v in RATE RUNS SYNC_TIMEOUT ST_WATCH_DELAY; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} == 0)); then
        echo "sync: $v must be a positive integer" >&2
        exit 2
    fi
done
for s in ${SCENARIOS//,/ }; do
    case $s in 10m | 256m+50 | delta10 | 5000small | rename64) ;; *)
        echo "sync: unknown scenario $s" >&2
        exit 2
        ;;
    esac
done
for t in ${TOOLS//,/ }; do
    case $t in p2pfile | syncthing | unison | rsync) ;; *)
        echo "sync: unknown tool $t" >&2
        exit 2
        ;;
    esac
done

# --- what the tools need: Debian packages, installed when missing ----------------
need=()
for pair in syncthing:syncthing curl:curl jq:jq unison:unison rsync:rsync ip:iproute2 tc:iproute2; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [[ ${#need[@]} -gt 0 && $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

# --- can we build a lab at all? ------------------------------------------------
# st_config.py checks every Syncthing address against 10.77.0.x.
if [[ $LAB_NET != 10.77.0 ]]; then
    echo "sync: runs on the default LAB_NET=10.77.0 only (LAB_PREFIX may differ), got $LAB_NET" >&2
    exit 2
fi
probe_ns=${LAB_PREFIX}-probe$$
if [[ $EUID -ne 0 ]] || ! command -v ip >/dev/null || ! command -v tc >/dev/null ||
    ! ip netns add "$probe_ns" 2>/dev/null; then
    echo "skipped: needs root and ip netns"
    exit 1
fi
ip netns del "$probe_ns"

# --- state and cleanup ---------------------------------------------------------
WORK=
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    stop_pids "${PIDS[@]}" || true
    lab_down || true
    cd /
    if [[ -n $WORK && -d $WORK ]]; then
        # Anything mounted below WORK (nothing is, by default) first.
        awk -v w="$WORK" 'index($2, w "/") == 1 { print $2 }' /proc/mounts |
            sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# stop_pids PID...: TERM, wait up to 10 s, then KILL; only our own children.
# Background tools are started as `ip netns exec NS TOOL ... &`, so the pid
# is the tool itself (ip execs it); lab_down then kills anything left in the
# lab namespaces (e.g. Syncthing's second process).
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

now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

WORK=$(mktemp -d /dev/shm/p2pf-bench-XXXXXX)
chmod 755 "$WORK"
cd "$WORK"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$HERE/results
mkdir -p "$RESULTS"
OUT=$RESULTS/sync-$(date -u +%Y-%m-%d).txt
LOGROOT=$WORK/logs
[[ -z ${KEEP_LOGS:-} ]] || LOGROOT=$RESULTS/sync-$STAMP
mkdir -p "$LOGROOT"
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)

tool_available() { # tool -> 0, or prints why not
    case $1 in
    p2pfile) [[ -x $P2PFILE ]] || {
        echo "no binary at $P2PFILE"
        return 1
    } ;;
    syncthing) command -v syncthing >/dev/null && command -v curl >/dev/null &&
        command -v jq >/dev/null || {
        echo "needs syncthing, curl, jq"
        return 1
    } ;;
    unison) command -v unison >/dev/null || {
        echo "unison not installed"
        return 1
    } ;;
    rsync) command -v rsync >/dev/null || {
        echo "rsync not installed"
        return 1
    } ;;
    esac
}

tool_version() {
    case $1 in
    p2pfile) "$P2PFILE" --version 2>/dev/null | head -1 || echo "p2pfile ?" ;;
    syncthing) syncthing --version 2>/dev/null | awk '{ print $1, $2 }' ;;
    unison) unison -version 2>/dev/null | awk '{ print $1, $3 }' ;;
    rsync) rsync --version 2>/dev/null | awk 'NR == 1 { print $1, $3 }' ;;
    esac
}

# --- data (made once, reused by every run) -------------------------------------
DATA=$WORK/data
mkdir -p "$DATA"
make_data() { # scenario
    case $1 in
    10m) [[ -f $DATA/f10m.bin ]] || head -c $((10 << 20)) /dev/urandom >"$DATA/f10m.bin" ;;
    256m+50 | delta10)
        [[ -f $DATA/f256m.bin ]] || head -c $((256 << 20)) /dev/urandom >"$DATA/f256m.bin"
        if [[ $1 == delta10 && ! -f $DATA/patch.bin ]]; then
            head -c $((DELTA_MIB << 20)) /dev/urandom >"$DATA/patch.bin"
        fi
        if [[ $1 == 256m+50 && ! -d $DATA/small50 ]]; then
            mkdir -p "$DATA/small50"
            small_files "$DATA/small50" 50 1024 1024 s
        fi
        ;;
    5000small)
        if [[ ! -d $DATA/small5000 ]]; then
            mkdir -p "$DATA/small5000"
            small_files "$DATA/small5000" 5000 1024 8192 f
        fi
        ;;
    rename64) [[ -f $DATA/f64m.bin ]] || head -c $((64 << 20)) /dev/urandom >"$DATA/f64m.bin" ;;
    esac
}
small_files() { # dir count min max prefix
    python3 - "$@" <<'EOF'
import os, random, sys
d, n, lo, hi, p = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rnd = random.Random(20261127)
for i in range(n):
    with open(os.path.join(d, "%s%05d.dat" % (p, i)), "wb") as f:
        f.write(os.urandom(rnd.randint(lo, hi)))
EOF
}

# F for the bound (bytes), or empty when there is none.
scenario_bytes() {
    case $1 in
    10m) echo $((10 << 20)) ;;
    256m+50) echo $(((256 << 20) + 50 * 1024)) ;;
    delta10) echo $((DELTA_MIB << 20)) ;;
    5000small) du -sb --apparent-size "$DATA/small5000" | awk '{ print $1 - 4096 }' ;;
    rename64) echo "" ;;
    esac
}

# --- trees: what a folder holds (tool metadata, i.e. dot names, left out) ------
tree_sig() { # dir -> "path size" lines
    (cd "$1" && find . -mindepth 1 -name '.*' -prune -o -type f -printf '%P %s\n' 2>/dev/null | LC_ALL=C sort)
}
tree_full() { # dir -> one md5 over every file's path and md5
    (cd "$1" && find . -mindepth 1 -name '.*' -prune -o -type f -print0 2>/dev/null | LC_ALL=C sort -z |
        xargs -0 -r md5sum 2>/dev/null) | md5sum | awk '{ print $1 }'
}
# A tool's temporaries (dot names) can vanish between readdir and stat:
# find's and md5sum's complaints about that are dropped; a vanished file
# only makes this poll fail.
region_md5() { # file -> md5 of the first, middle and last MiB of the delta10 region
    local k
    for k in 0 $((DELTA_MIB / 2)) $((DELTA_MIB - 1)); do
        dd if="$1" bs=1M skip=$((DELTA_OFF_MIB + k)) count=1 status=none 2>/dev/null
    done | md5sum | awk '{ print $1 }'
}

hdir() { echo "$WORK/run/h$1/dir"; }
hstate() { echo "$WORK/run/h$1/state"; }

# prepare_run SCENARIO: fresh dirs with the base state on every host, the
# change staged in $WORK/run/stage (same tmpfs, so moving it in is a rename),
# and the expected tree of the receivers in EXP_SIG / EXP_FULL / EXP_REGION.
prepare_run() {
    local s=$1 i stage=$WORK/run/stage
    rm -rf "$WORK/run"
    mkdir -p "$stage"
    for ((i = 1; i <= NHOSTS; i++)); do
        mkdir -p "$(hdir "$i")" "$(hstate "$i")"
        case $s in
        delta10) cp -p "$DATA/f256m.bin" "$(hdir "$i")/big.bin" ;;
        rename64) cp -p "$DATA/f64m.bin" "$(hdir "$i")/r64.bin" ;;
        esac
    done
    case $s in
    10m) cp "$DATA/f10m.bin" "$stage/f10m.bin" ;;
    256m+50)
        cp "$DATA/f256m.bin" "$stage/big256.bin"
        cp "$DATA"/small50/* "$stage/"
        ;;
    delta10)
        cp "$DATA/f256m.bin" "$stage/big.bin"
        dd if="$DATA/patch.bin" of="$stage/big.bin" bs=1M seek="$DELTA_OFF_MIB" conv=notrunc status=none
        touch "$stage/big.bin"
        ;;
    5000small) cp -r "$DATA/small5000" "$stage/small" ;;
    rename64) ln "$DATA/f64m.bin" "$stage/r64-renamed.bin" ;;
    esac
    EXP_SIG=$(tree_sig "$stage")
    EXP_FULL=$(tree_full "$stage")
    EXP_REGION=
    [[ $s != delta10 ]] || EXP_REGION=$(region_md5 "$stage/big.bin")
}

# apply_change SCENARIO: the one rename that makes the change on peer 1.
apply_change() {
    local d1
    d1=$(hdir 1)
    case $1 in
    rename64) mv "$d1/r64.bin" "$d1/r64-renamed.bin" ;;
    *) mv "$WORK/run/stage"/* "$d1/" ;;
    esac
}

# receiver_done I: 0 when host I's folder is the expected tree. Cheap probe
# first (names and sizes, and for delta10 the md5 of 3 MiB of the changed
# region), then every byte.
receiver_done() {
    local d
    d=$(hdir "$1")
    [[ $(tree_sig "$d") == "$EXP_SIG" ]] || return 1
    if [[ -n $EXP_REGION ]]; then
        [[ $(region_md5 "$d/big.bin") == "$EXP_REGION" ]] || return 1
    fi
    [[ $(tree_full "$d") == "$EXP_FULL" ]]
}

host_tx() { # I -> bytes host I sent on eth0
    ip -n "$(lab_ns "$1")" -s -j link show eth0 | sed -n 's/.*"tx":{"bytes":\([0-9]*\).*/\1/p'
}
tx_sum() {
    local i s=0
    for ((i = 1; i <= NHOSTS; i++)); do s=$((s + $(host_tx "$i"))); done
    echo "$s"
}
mib() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1048576 }'; }
# origin_pct TX0 TX1_0 TX TX1: share of the moved bytes that peer 1 sent
# (100 % = the receivers relayed nothing to each other).
origin_pct() { awk -v a="$1" -v a1="$2" -v b="$3" -v b1="$4" 'BEGIN { printf "%d", (b > a) ? 100 * (b1 - a1) / (b - a) + 0.5 : 0 }'; }
# cpu_ticks: user+system clock ticks of every process now in the 3 hosts'
# namespaces (the tool's daemons; Syncthing runs as two processes).
cpu_ticks() {
    local i p s=0 t
    for ((i = 1; i <= NHOSTS; i++)); do
        for p in $(ip netns pids "$(lab_ns "$i")" 2>/dev/null); do
            t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || t=0
            s=$((s + ${t:-0}))
        done
    done
    echo "$s"
}
cpu_secs() { awk -v a="$1" -v b="$2" -v h="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) / h }'; }

# wait_receivers T0 EXTRA HOST...: poll (bounded by SYNC_TIMEOUT) until every
# HOST's folder is the expected tree and, if EXTRA is not "-", the command
# EXTRA succeeds. Sets W_SECONDS (from T0, or "fail"), W_DISK (seconds until
# the disks matched) and W_TX (tx_sum at that moment).
wait_receivers() {
    local t0=$1 extra=$2
    shift 2
    local -A done_at=()
    local h t pending deadline=$((SECONDS + SYNC_TIMEOUT)) disk_t=
    W_SECONDS=fail W_DISK=fail W_TX= W_TX1=
    while ((SECONDS < deadline)); do
        t=$(now)
        pending=0
        for h in "$@"; do
            [[ -z ${done_at[$h]:-} ]] || continue
            if receiver_done "$h"; then done_at[$h]=$t; else pending=$((pending + 1)); fi
        done
        if ((pending == 0)); then
            if [[ -z $disk_t ]]; then
                # the time of the poll in which the last host matched
                disk_t=$(printf '%s\n' "${done_at[@]}" | sort -g | tail -1)
                W_DISK=$(elapsed "$t0" "$disk_t")
            fi
            if [[ $extra == - ]]; then
                W_TX=$(tx_sum) W_TX1=$(host_tx 1)
                W_SECONDS=$W_DISK
                return 0
            fi
            if $extra; then
                W_TX=$(tx_sum) W_TX1=$(host_tx 1)
                W_SECONDS=$(elapsed "$t0" "$t")
                return 0
            fi
        fi
        # Polling costs CPU the tools need (2 cores here): wait 5x what this
        # poll took, at least 0.1 s and at most 1 s (about 30 ms for a
        # 5,000-file tree, so 0.3 s between polls there).
        sleep "$(awk -v a="$t" -v b="$(now)" 'BEGIN { d = 5 * (b - a); printf "%.2f", d < 0.1 ? 0.1 : (d > 1 ? 1 : d) }')"
    done
    W_TX=$(tx_sum)
    return 1
}

# ============================ tools ==============================================
# Each tool_<name> SCENARIO RUNLOG sets R_SEC (seconds | fail | skip),
# R_MOVED (MiB or -), R_NOTE.

# ---- Syncthing -------------------------------------------------------------------
ST_KEY=p2pf-bench-apikey-$$-$RANDOM$RANDOM
declare -A ST_ID=()
st_curl() { # I PATH -> body
    lab_exec "$1" curl -sf --noproxy '*' -m 3 -H "X-API-Key: $ST_KEY" "http://$(lab_ip "$1"):$ST_GUI$2"
}

st_setup() { # log -> 0 when three instances run, safe and connected
    local log=$1 i j peers id
    for ((i = 1; i <= NHOSTS; i++)); do
        mkdir -p "$WORK/run/h$i/home"
        id=$(lab_exec "$i" timeout 60 env STNODEFAULTFOLDER=1 STNOUPGRADE=1 HOME="$WORK/run/h$i/home" \
            syncthing generate --home "$WORK/run/h$i/st" --no-default-folder --skip-port-probing 2>&1 |
            sed -n 's/.*Device ID: *\([A-Z0-9-]*\).*/\1/p' | tail -1)
        [[ -n $id ]] || {
            echo "sync: syncthing generate gave no device ID on h$i" >&2
            return 1
        }
        ST_ID[$i]=$id
    done
    for ((i = 1; i <= NHOSTS; i++)); do
        peers=()
        for ((j = 1; j <= NHOSTS; j++)); do
            ((j == i)) || peers+=(--peer "${ST_ID[$j]}=$(lab_ip "$j"):$ST_PORT")
        done
        mkdir -p "$(hdir "$i")/.stfolder"
        # Writes the config and checks it; any unsafe option aborts the script.
        if ! python3 "$HERE/st_config.py" write "$WORK/run/h$i/st/config.xml" --ip "$(lab_ip "$i")" \
            --name "h$i" --gui-port "$ST_GUI" --listen-port "$ST_PORT" --apikey "$ST_KEY" \
            --folder-id bench --folder-path "$(hdir "$i")" --watch-delay "$ST_WATCH_DELAY" \
            "${peers[@]}" >"$log/st-h$i.config-check" 2>&1; then
            cat "$log/st-h$i.config-check" >&2
            echo "sync: Syncthing config of h$i is not safe; aborting" >&2
            exit 1
        fi
    done
    for ((i = 1; i <= NHOSTS; i++)); do
        ip netns exec "$(lab_ns "$i")" env STNODEFAULTFOLDER=1 STNOUPGRADE=1 STNORESTART=1 HOME="$WORK/run/h$i/home" \
            syncthing serve --home "$WORK/run/h$i/st" --no-browser --no-restart --no-upgrade \
            --skip-port-probing --logflags=3 --logfile=- >"$log/st-h$i.log" 2>&1 &
        PIDS+=("$!")
    done
    # REST up, and the running config still safe (bounded: 60 s).
    local deadline=$((SECONDS + 60)) opts
    for ((i = 1; i <= NHOSTS; i++)); do
        until st_curl "$i" /rest/system/ping >/dev/null 2>&1; do
            ((SECONDS < deadline)) || {
                echo "sync: Syncthing REST on h$i did not answer" >&2
                return 1
            }
            sleep 0.2
        done
        opts=$(st_curl "$i" /rest/config/options)
        if ! jq -e '.globalAnnounceEnabled == false and .localAnnounceEnabled == false and
                .relaysEnabled == false and .natEnabled == false and .urAccepted == -1 and
                .crashReportingEnabled == false and .autoUpgradeIntervalH == 0 and
                (.listenAddresses | length == 1) and (.listenAddresses[0] | startswith("tcp://10.77.0."))' \
            <<<"$opts" >/dev/null; then
            echo "sync: running Syncthing on h$i reports unsafe options: $opts" >&2
            exit 1
        fi
    done
    return 0
}

# st_ready NFILES: all pairs connected, every folder idle, in sync, holding
# NFILES files (bounded by 120 s).
st_ready() {
    local want=$1 i j ok deadline=$((SECONDS + 120)) conns status
    while ((SECONDS < deadline)); do
        ok=1
        for ((i = 1; i <= NHOSTS && ok; i++)); do
            conns=$(st_curl "$i" /rest/system/connections 2>/dev/null) || {
                ok=0
                break
            }
            for ((j = 1; j <= NHOSTS; j++)); do
                ((j == i)) && continue
                jq -e --arg d "${ST_ID[$j]}" '.connections[$d].connected == true' <<<"$conns" >/dev/null || ok=0
            done
            status=$(st_curl "$i" "/rest/db/status?folder=bench" 2>/dev/null) || ok=0
            ((ok)) || break
            jq -e --argjson n "$want" '.state == "idle" and .needFiles == 0 and .globalFiles == $n and .localFiles == $n and .inSyncFiles == $n' \
                <<<"$status" >/dev/null || ok=0
        done
        if ((ok)); then
            for ((j = 2; j <= NHOSTS; j++)); do st_completed "$j" || ok=0; done
            ((ok)) && return 0
        fi
        sleep 0.5
    done
    return 1
}
st_completed() { # J: peer 1 sees device J at 100 % with nothing needed
    st_curl 1 "/rest/db/completion?folder=bench&device=${ST_ID[$1]}" 2>/dev/null |
        jq -e '.completion == 100 and .needBytes == 0' >/dev/null
}
st_all_completed() { st_completed 2 && st_completed 3; }

tool_syncthing() {
    local s=$1 log=$2 base=0 t0 tx0 tx10 c0 conflicts
    [[ $s == delta10 || $s == rename64 ]] && base=1
    st_setup "$log" || {
        R_SEC=fail R_MOVED=- R_NOTE="setup failed"
        return 0
    }
    if ! st_ready "$base"; then
        R_SEC=fail R_MOVED=- R_NOTE="not in sync before the change"
        return 0
    fi
    sleep 1
    tx0=$(tx_sum) tx10=$(host_tx 1)
    c0=$(cpu_ticks)
    apply_change "$s"
    t0=$(now)
    if wait_receivers "$t0" st_all_completed 2 3; then
        R_SEC=$W_SECONDS R_MOVED=$(mib "$tx0" "$W_TX")
        R_NOTE="disk ${W_DISK}s, cpu $(cpu_secs "$c0" "$(cpu_ticks)")s, origin $(origin_pct "$tx0" "$tx10" "$W_TX" "$W_TX1")%"
    else
        R_SEC=fail R_MOVED=$(mib "$tx0" "$W_TX") R_NOTE="timeout (disk $W_DISK)"
    fi
    conflicts=$(find "$WORK/run" -name '*sync-conflict*' 2>/dev/null | wc -l)
    ((conflicts == 0)) || R_NOTE+=" $conflicts conflict copies"
}

# ---- p2pfile ---------------------------------------------------------------------
# ASSUMED CLI, designed before `p2pfile sync` was finished; checked against
# `p2pfile sync --help` of p2pfile 0.1.0 (main 07ad71c, 2026-11-27): every
# flag exists and the three hosts synced. Re-check when the CLI changes:
#   p2pfile --ip IP --port 42070 --state STATE/p2pfile.db sync DIR --show-keys
#       prints "rw p2pf-rw-..." and "ro p2pf-ro-..." lines and exits
#   p2pfile --ip IP --port 42070 --state STATE/p2pfile.db sync DIR --key KEY \
#       --peers IP:42070,IP:42070 --json          continuous, until SIGTERM
# plus P2PFILE_SYNC_EXTRA (default "--discovery-port 0": peers are given,
# LAN discovery off, as for Syncthing; the flag is in src/cli.rs).
# Readiness: every host has TCP connections to both others on port 42070
# (ss), then 2 s; completion only from the receivers' disks.
p2pfile_cmd() { # I ARGS...
    local i=$1
    shift
    lab_exec "$i" "$P2PFILE" --ip "$(lab_ip "$i")" --port "$P2P_PORT" \
        --state "$(hstate "$i")/p2pfile.db" "$@"
}
p2pfile_mesh() { # 0 when every host has established TCP with both others
    local i n
    for ((i = 1; i <= NHOSTS; i++)); do
        n=$(ss -N "$(lab_ns "$i")" -Htn state established 2>/dev/null |
            awk -v p=":$P2P_PORT" '$3 ~ p"$" || $4 ~ p"$" { sub(/:[0-9]+$/, "", $4); print $4 }' |
            sort -u | grep -c '^10\.77\.0\.' || true)
        ((n >= NHOSTS - 1)) || return 1
    done
}
tool_p2pfile() {
    local s=$1 log=$2 key i j peers t0 tx0 tx10 c0 deadline mesh=1
    key=$(p2pfile_cmd 1 sync "$(hdir 1)" --show-keys 2>"$log/p2pfile-keys.err" |
        awk '$1 == "rw" { print $2; exit }') || true
    if [[ $key != p2pf-rw-* ]]; then
        R_SEC=fail R_MOVED=- R_NOTE="no rw key from sync --show-keys"
        return 0
    fi
    for ((i = 1; i <= NHOSTS; i++)); do
        peers=
        for ((j = 1; j <= NHOSTS; j++)); do
            ((j == i)) || peers+=${peers:+,}$(lab_ip "$j"):$P2P_PORT
        done
        # shellcheck disable=SC2086 # P2PFILE_SYNC_EXTRA is a list of flags
        ip netns exec "$(lab_ns "$i")" "$P2PFILE" --ip "$(lab_ip "$i")" --port "$P2P_PORT" \
            --state "$(hstate "$i")/p2pfile.db" sync "$(hdir "$i")" --key "$key" --peers "$peers" --json \
            ${P2PFILE_SYNC_EXTRA---discovery-port 0} \
            >"$log/p2pfile-h$i.jsonl" 2>"$log/p2pfile-h$i.err" &
        PIDS+=("$!")
    done
    deadline=$((SECONDS + 30))
    until p2pfile_mesh; do
        if ((SECONDS >= deadline)); then
            mesh=0
            break
        fi
        sleep 0.2
    done
    sleep 2
    for ((i = 1; i <= NHOSTS; i++)); do
        if ! kill -0 "${PIDS[-NHOSTS + i - 1]}" 2>/dev/null; then
            R_SEC=fail R_MOVED=- R_NOTE="h$i exited: $(tail -c 200 "$log/p2pfile-h$i.err" | tr '\n' ' ')"
            return 0
        fi
    done
    tx0=$(tx_sum) tx10=$(host_tx 1)
    c0=$(cpu_ticks)
    apply_change "$s"
    t0=$(now)
    if wait_receivers "$t0" - 2 3; then
        R_SEC=$W_SECONDS R_MOVED=$(mib "$tx0" "$W_TX")
        R_NOTE="cpu $(cpu_secs "$c0" "$(cpu_ticks)")s, origin $(origin_pct "$tx0" "$tx10" "$W_TX" "$W_TX1")%"
    else
        R_SEC=fail R_MOVED=$(mib "$tx0" "$W_TX") R_NOTE=timeout
    fi
    ((mesh)) || R_NOTE+=" no full mesh before the change"
}

# ---- unison ----------------------------------------------------------------------
unison_client() { # log tag -> exit code of one run h1 <-> h2
    lab_exec 1 timeout "$SYNC_TIMEOUT" env UNISON="$WORK/run/h1/unison" HOME="$WORK/run/h1" \
        unison "$(hdir 1)" "socket://$(lab_ip 2):$UN_PORT/$(hdir 2)" \
        -batch -auto -times -confirmbigdel=false -ui text \
        >"$1/unison-$2.out" 2>&1
}
tool_unison() {
    local s=$1 log=$2 t0 t1 tx0 rc deadline
    mkdir -p "$WORK/run/h1/unison" "$WORK/run/h2/unison"
    ip netns exec "$(lab_ns 2)" env UNISON="$WORK/run/h2/unison" HOME="$WORK/run/h2" \
        unison -socket "$UN_PORT" -listen "$(lab_ip 2)" >"$log/unison-server.out" 2>&1 &
    PIDS+=("$!")
    deadline=$((SECONDS + 20))
    until ss -N "$(lab_ns 2)" -Htln | grep -q ":$UN_PORT "; do
        ((SECONDS < deadline)) || {
            R_SEC=fail R_MOVED=- R_NOTE="server did not listen"
            return 0
        }
        sleep 0.1
    done
    # Untimed: archives of the base state.
    if ! unison_client "$log" base; then
        R_SEC=fail R_MOVED=- R_NOTE="base run failed: $(tail -1 "$log/unison-base.out")"
        return 0
    fi
    tx0=$(tx_sum)
    apply_change "$s"
    t0=$(now)
    rc=0
    unison_client "$log" change || rc=$?
    t1=$(now)
    R_MOVED=$(mib "$tx0" "$(tx_sum)")
    if ((rc != 0)); then
        R_SEC=fail R_NOTE="exit $rc: $(tail -1 "$log/unison-change.out")"
    elif receiver_done 2; then
        R_SEC=$(elapsed "$t0" "$t1") R_NOTE="h1<->h2 only"
    else
        R_SEC=fail R_NOTE="h2 differs after the run"
    fi
}

# ---- rsync -----------------------------------------------------------------------
tool_rsync() {
    local s=$1 log=$2 i t0 t1 tx0 rc=0 deadline
    local -a cl=()
    for i in 2 3; do
        cat >"$WORK/run/h$i/rsyncd.conf" <<EOF
pid file = $WORK/run/h$i/rsyncd.pid
lock file = $WORK/run/h$i/rsyncd.lock
log file = $log/rsyncd-h$i.log
address = $(lab_ip "$i")
port = 873
use chroot = no
[bench]
path = $(hdir "$i")
read only = no
uid = root
gid = root
EOF
        ip netns exec "$(lab_ns "$i")" rsync --daemon --no-detach --config="$WORK/run/h$i/rsyncd.conf" \
            >"$log/rsyncd-h$i.out" 2>&1 &
        PIDS+=("$!")
    done
    deadline=$((SECONDS + 20))
    for i in 2 3; do
        until ss -N "$(lab_ns "$i")" -Htln | grep -q "$(lab_ip "$i"):873 "; do
            ((SECONDS < deadline)) || {
                R_SEC=fail R_MOVED=- R_NOTE="daemon on h$i did not listen"
                return 0
            }
            sleep 0.1
        done
    done
    tx0=$(tx_sum)
    apply_change "$s"
    t0=$(now)
    for i in 2 3; do
        ip netns exec "$(lab_ns 1)" timeout "$SYNC_TIMEOUT" rsync -a --delete "$(hdir 1)/" "rsync://$(lab_ip "$i")/bench/" \
            >"$log/rsync-h$i.out" 2>&1 &
        cl+=("$!")
    done
    for i in "${cl[@]}"; do wait "$i" || rc=$?; done
    t1=$(now)
    R_MOVED=$(mib "$tx0" "$(tx_sum)")
    if ((rc != 0)); then
        R_SEC=fail R_NOTE="exit $rc"
    elif receiver_done 2 && receiver_done 3; then
        R_SEC=$(elapsed "$t0" "$t1") R_NOTE="push, 2 receivers"
    else
        R_SEC=fail R_NOTE="a receiver differs after the run"
    fi
}

# cpu_busy: percent of the machine's CPU busy over the next second (before a
# run, when nothing of ours is running: someone else's load).
cpu_busy() {
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); u = y[1] - x[1]; i = y[2] - x[2]
        printf "%d", (u + i > 0) ? 100 * u / (u + i) : 0 }'
}
# wait_idle: with IDLE_WAIT=S, wait up to S s until the machine is < 15 %
# busy; prints the last busy percentage.
wait_idle() {
    local end=$((SECONDS + ${IDLE_WAIT:-0})) b
    b=$(cpu_busy)
    while ((b >= 15 && SECONDS < end)); do
        sleep 4
        b=$(cpu_busy)
    done
    echo "$b"
}

# ============================ runs ===============================================
declare -A SKIP_WHY=()
for t in ${TOOLS//,/ }; do
    if why=$(tool_available "$t"); then :; else SKIP_WHY[$t]=$why; fi
done

ROWS=() # "scenario tool run seconds moved note..."
echo "sync: $NHOSTS hosts x $RATE Mbit/s, TCP congestion control $(lab_cc), scenarios $SCENARIOS, tools $TOOLS, runs $RUNS, work $WORK" >&2
for s in ${SCENARIOS//,/ }; do
    make_data "$s"
    for ((run = 1; run <= RUNS; run++)); do
        for t in ${TOOLS//,/ }; do
            if [[ -n ${SKIP_WHY[$t]:-} ]]; then
                ((run > 1)) || ROWS+=("$s $t 0 skip - ${SKIP_WHY[$t]}")
                continue
            fi
            log=$LOGROOT/$s-$t-run$run
            mkdir -p "$log"
            PIDS=()
            busy=$(wait_idle)
            lab_up "$NHOSTS" "$RATE"
            prepare_run "$s"
            R_SEC=fail R_MOVED=- R_NOTE=
            "tool_$t" "$s" "$log"
            stop_pids "${PIDS[@]}"
            PIDS=()
            lab_down
            ((busy < 15)) || R_NOTE+="${R_NOTE:+, }CPU ${busy}% busy before"
            ROWS+=("$s $t $run $R_SEC $R_MOVED $R_NOTE")
            echo "sync: [$s $t run $run] $R_SEC s, moved $R_MOVED MiB ${R_NOTE:+($R_NOTE)}" >&2
        done
    done
done

# ============================ table ==============================================
bound_of() { # scenario -> seconds or -
    local f
    f=$(scenario_bytes "$1")
    [[ -n $f ]] || {
        echo -
        return
    }
    awk -v f="$f" -v r="$RATE" 'BEGIN { printf "%.2f", f * 8 / (r * 1e6) }'
}
median() { sort -g | awk '{ v[++n] = $1 } END { if (n == 0) { print "-"; exit }
    m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2; printf "%.2f", m }'; }
{
    echo
    echo "Folder sync: $NHOSTS hosts x $RATE Mbit/s egress, TCP congestion control $(lab_cc), tmpfs folders, rev $REV, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, runs $RUNS"
    echo "versions: $(for t in ${TOOLS//,/ }; do [[ -n ${SKIP_WHY[$t]:-} ]] || printf '%s; ' "$(tool_version "$t")"; done)"
    printf '%-10s | %-9s | %8s | %7s | %9s | %s\n' scenario tool seconds "÷ bound" "moved MiB" notes
    printf '%s\n' "-----------+-----------+----------+---------+-----------+------"
    for s in ${SCENARIOS//,/ }; do
        b=$(bound_of "$s")
        printf '%-10s | %-9s | %8s | %7s | %9s | %s\n' "$s" bound "$b" - - "F/R, Kumar-Ross, n=2"
        for t in ${TOOLS//,/ }; do
            rows=$(printf '%s\n' "${ROWS[@]}" | awk -v s="$s" -v t="$t" '$1 == s && $2 == t')
            [[ -n $rows ]] || continue
            if awk '{ exit !($4 == "skip") }' <<<"$rows"; then
                printf '%-10s | %-9s | %8s | %7s | %9s | %s\n' "$s" "$t" skip - - "$(cut -d' ' -f6- <<<"$rows" | head -1)"
                continue
            fi
            ok=$(awk '$4 ~ /^[0-9.]+$/' <<<"$rows")
            n_ok=$(grep -c . <<<"$ok" || true)
            n_all=$(grep -c . <<<"$rows")
            sec=$(awk '{ print $4 }' <<<"$ok" | median)
            mov=$(awk '$5 ~ /^[0-9.]+$/ { print $5 }' <<<"$ok" | median)
            ratio=-
            [[ $sec == - || $b == - ]] || ratio=$(awk -v a="$sec" -v b="$b" 'BEGIN { printf "%.2f", a / b }')
            # Distinct notes of the runs, counted; Syncthing's per-run "disk
            # Ns" (disks matched, before REST said 100 %) becomes one median.
            note=$(awk '{ $1 = $2 = $3 = $4 = $5 = ""; sub(/^ +/, ""); gsub(/(disk|cpu) [0-9.]+s,? ?/, ""); gsub(/origin [0-9]+%,? ?/, ""); sub(/,? +$/, ""); if ($0 != "") print }' <<<"$rows" |
                sort | uniq -c | awk -v all="$n_all" '{ c = $1; $1 = ""; sub(/^ /, ""); printf "%s%s", (n++ ? "; " : ""), (c < all ? c "/" all " runs: " : "") $0 }')
            # Per-run "disk Ns" (Syncthing: disks matched, before REST said
            # 100 %) and "cpu Ns" (daemons' CPU time) become medians.
            # and "origin N%" (share of the moved bytes peer 1 sent).
            for k in origin cpu disk; do
                km=$(awk -v k="$k" '$4 ~ /^[0-9.]+$/ { for (i = 6; i <= NF; i++) if ($i == k) { x = $(i + 1); sub(/[s%],?$/, "", x); print x } }' <<<"$rows" | median)
                [[ $k != origin ]] || km=${km%.00}
                [[ $km == - ]] || note="$k ${km}$([[ $k == origin ]] && echo % || echo s)${note:+; $note}"
            done
            [[ $sec != - ]] || sec=fail
            ((n_ok == n_all)) || note="$n_ok/$n_all ok; $note"
            printf '%-10s | %-9s | %8s | %7s | %9s | %s\n' "$s" "$t" "$sec" "$ratio" "$mov" "$note"
        done
    done
    echo "per run: $(printf '%s\n' "${ROWS[@]}" | awk '$4 != "skip" { printf "%s%s/%s/%s=%s", (n++ ? " " : ""), $1, $2, $3, $4 }')"
} | tee -a "$OUT"
echo "results appended to $OUT" >&2
