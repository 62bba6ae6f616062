#!/usr/bin/env bash
# Download a .torrent with aria2c in a private loopback DHT, bounded in time.
#
# Usage: aria2_download.sh TORRENT DIR BIND_IP DHT_ENTRY TIMEOUT
#   TORRENT    .torrent file (v1 or hybrid) to download
#   DIR        download directory (created if missing); content lands in DIR/<name>
#   BIND_IP    127.0.0.y that aria2 binds its BT listen socket, outgoing
#              connections and DHT UDP socket to
#   DHT_ENTRY  IP:PORT (127.0.0.x) of the only DHT node aria2 bootstraps from;
#              a get_peers for the info hash there (or at nodes it returns)
#              must yield the seed's address
#   TIMEOUT    whole seconds; aria2 is stopped after this
# Environment (optional):
#   ARIA2_PORT     TCP listen port and DHT UDP port on BIND_IP (default 6881)
#   ARIA2_LOG      keep aria2's info-level log at this path
#   ARIA2_KEEP     non-empty: keep the temporary work dir (printed on stderr)
#   PYTHON         interpreter for torrent_check.py (default python3)
#
# Exit: 0 download complete (aria2 exit 0, its on-bt-download-complete hook
#       ran, and torrent_check.py re-verified every piece in DIR);
#       3 timeout; 2 usage/unsafe arguments; 1 any other failure.
# Prints one JSON line on success:
#   {"event":"completed","info_hash":"...","name":"...","seconds":N}
set -u

usage() { sed -n '2,26p' "$0" >&2; exit 2; }
die() { echo "aria2_download: $1" >&2; exit "${2:-1}"; }

[ $# -eq 5 ] || usage
TORRENT=$1 DIR=$2 BIND_IP=$3 DHT_ENTRY=$4 TIMEOUT=$5
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
PORT=${ARIA2_PORT:-6881}

is_loopback() { [[ $1 =~ ^127\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] &&
    ((BASH_REMATCH[1] < 256 && BASH_REMATCH[2] < 256 && BASH_REMATCH[3] < 256)); }
is_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && (($1 > 0 && $1 < 65536)); }

[ -f "$TORRENT" ] || die "no such torrent file: $TORRENT" 2
is_loopback "$BIND_IP" || die "BIND_IP $BIND_IP is not a numeric 127.0.0.0/8 address" 2
is_loopback "${DHT_ENTRY%:*}" && is_port "${DHT_ENTRY##*:}" ||
    die "DHT_ENTRY $DHT_ENTRY is not 127.x.y.z:PORT" 2
[[ $TIMEOUT =~ ^[0-9]+$ ]] && ((TIMEOUT > 0)) || die "TIMEOUT must be a positive integer" 2
is_port "$PORT" || die "ARIA2_PORT $PORT is not a port" 2
command -v aria2c >/dev/null || die "aria2c not installed"

# Refuse torrents that would make aria2 look up or contact outside hosts
# (DHT `nodes`, web seeds); trackers are excluded below.
META=$("$PY" "$HERE/torrent_check.py" safe "$TORRENT") || die "unsafe or unreadable torrent" 2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/aria2_dl.XXXXXX") || die "mktemp failed"
ARIA2_PID=
cleanup() {
    if [ -n "$ARIA2_PID" ] && kill -0 "$ARIA2_PID" 2>/dev/null; then
        kill -TERM "$ARIA2_PID" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$ARIA2_PID" 2>/dev/null || break; sleep 0.3; done
        kill -KILL "$ARIA2_PID" 2>/dev/null
        wait "$ARIA2_PID" 2>/dev/null
    fi
    if [ -n "${ARIA2_LOG:-}" ] && [ -f "$WORK/aria2.log" ]; then cp "$WORK/aria2.log" "$ARIA2_LOG"; fi
    if [ -n "${ARIA2_KEEP:-}" ]; then echo "aria2_download: work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

mkdir -p "$DIR" || die "cannot create $DIR"
# aria2 runs the hook as HOOK GID NUM_FILES FIRST_FILE_PATH once the
# BitTorrent download is complete (after the last piece's hash matched).
cat >"$WORK/hook.sh" <<EOF
#!/bin/sh
printf '%s\t%s\t%s\n' "\$1" "\$2" "\$3" >>"$WORK/completed"
EOF
chmod +x "$WORK/hook.sh"

START=$(date +%s)
# Safety: every socket is bound to BIND_IP (--interface: BT listen and
# outgoing TCP; --dht-listen-addr, a hidden option in aria2 1.36: DHT/UDP);
# no IPv6, no DHT6, no LPD multicast, no trackers, no saved DHT routing table
# (fresh --dht-file-path), no config file, no RPC, no netrc, no DNS for
# numeric hosts.  --stop bounds aria2 itself, `timeout` bounds the process,
# --stop-with-process ends aria2 if this script dies.
timeout -k 5 $((TIMEOUT + 15)) aria2c \
    --no-conf=true --no-netrc=true --enable-rpc=false \
    --dir="$DIR" \
    --interface="$BIND_IP" --disable-ipv6=true --async-dns=false \
    --listen-port="$PORT" \
    --enable-dht=true --enable-dht6=false \
    --dht-listen-addr="$BIND_IP" --dht-listen-port="$PORT" \
    --dht-entry-point="$DHT_ENTRY" \
    --dht-file-path="$WORK/dht.dat" --dht-file-path6="$WORK/dht6.dat" \
    --bt-enable-lpd=false --enable-peer-exchange=true \
    --bt-exclude-tracker='*' --bt-tracker= \
    --bt-save-metadata=false --bt-detach-seed-only=false \
    --check-integrity=true --bt-hash-check-seed=true \
    --seed-time=0 \
    --file-allocation=none --auto-file-renaming=false --allow-overwrite=false \
    --summary-interval=0 --show-console-readout=false \
    --console-log-level=warn --download-result=full \
    --log="$WORK/aria2.log" --log-level=info \
    --on-bt-download-complete="$WORK/hook.sh" \
    --stop="$TIMEOUT" --stop-with-process=$$ \
    "$TORRENT" >"$WORK/stdout" 2>&1 &
ARIA2_PID=$!
wait "$ARIA2_PID"
RC=$?
ARIA2_PID=
END=$(date +%s)

fail() {
    echo "aria2_download: $1" >&2
    sed 's/^/aria2c: /' "$WORK/stdout" | tail -n 30 >&2
    if [ -f "$WORK/aria2.log" ]; then
        grep -E '\[(ERROR|WARN)\]' "$WORK/aria2.log" | tail -n 15 | sed 's/^/aria2.log: /' >&2
    fi
    exit "$2"
}

if [ ! -s "$WORK/completed" ]; then
    # aria2 exits 7 ("unfinished downloads") when --stop fires, 124 is timeout(1).
    if [ "$RC" -eq 0 ] || [ "$RC" -eq 7 ] || [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ] ||
        [ $((END - START)) -ge "$TIMEOUT" ]; then
        fail "timeout after $((END - START))s (aria2c exit $RC), download not complete" 3
    fi
    fail "aria2c exit $RC, download not complete" 1
fi
[ "$RC" -eq 0 ] || fail "aria2c exit $RC although the completion hook ran" 1
"$PY" "$HERE/torrent_check.py" verify "$TORRENT" "$DIR" ||
    fail "downloaded content does not match the torrent" 1

"$PY" - "$META" "$((END - START))" <<'EOF'
import json, sys
meta = json.loads(sys.argv[1])
print(json.dumps({"event": "completed", "info_hash": meta["info_hash"],
                  "name": meta["name"], "seconds": int(sys.argv[2])},
                 separators=(",", ":")))
EOF
exit 0
