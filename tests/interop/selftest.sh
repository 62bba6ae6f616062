#!/usr/bin/env bash
# Self-test of the interop helpers, without p2pfile: libtorrent against
# libtorrent, and aria2c against a libtorrent seed found through a private
# loopback DHT.  All traffic is on 127.0.0.0/8; when `unshare -n` works the
# whole run is also moved into a fresh network namespace (loopback only).
#
# Usage: tests/interop/selftest.sh        (about 1 minute)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)

if [ -z "${SELFTEST_IN_NETNS:-}" ] && unshare -n true 2>/dev/null; then
    exec env SELFTEST_IN_NETNS=1 unshare -n bash -c 'ip link set lo up 2>/dev/null; exec bash "$0"' "$0"
fi

LT=(/usr/bin/python3 "$HERE/lt_client.py")
A2="$HERE/aria2_download.sh"
CHECK=(python3 "$HERE/torrent_check.py")
T=$(mktemp -d "${TMPDIR:-/tmp}/interop_selftest.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

PASS=0 FAIL=0
ok() { echo "ok: $1"; PASS=$((PASS + 1)); }
bad() { echo "FAIL: $1"; FAIL=$((FAIL + 1)); }

# Test data: nested dirs, an empty file, a multi-piece file, a name that
# needs percent-encoding.
D=$T/src/data
mkdir -p "$D/nested/deeper"
head -c 1000000 /dev/urandom >"$D/big.bin"
head -c 70000 /dev/urandom >"$D/nested/mid.bin"
echo hello >"$D/small.txt"
: >"$D/empty.txt"
: >"$D/nested/deeper/empty2"
printf 'x' >"$D/nested/with space & ü.txt"

# start_seed NAME ARGS... : runs lt_client seed in the background and waits
# for its magnet line in $T/NAME.out
start_seed() {
    local name=$1
    shift
    "${LT[@]}" seed "$@" >"$T/$name.out" 2>"$T/$name.err" &
    PIDS+=($!)
    for _ in $(seq 150); do
        [ -s "$T/$name.out" ] && return 0
        sleep 0.1
    done
    echo "seed $name did not start:" >&2
    cat "$T/$name.err" >&2
    return 1
}
stop_seeds() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    PIDS=()
}

echo "== 1. libtorrent -> libtorrent by magnet (x.pe)"
start_seed s1 --ip 127.0.0.21 --port 41021 --path "$D" --torrent-out "$T/data.torrent" --timeout 60
MAGNET=$(head -n1 "$T/s1.out")
echo "magnet: $MAGNET"
[[ $MAGNET =~ ^magnet:\?xt=urn:btih:[0-9a-f]{40}\&dn=data\&x\.pe=127\.0\.0\.21:41021$ ]] &&
    ok "magnet format" || bad "magnet format"
OUT=$("${LT[@]}" download "$MAGNET" --ip 127.0.0.22 --port 41022 --dir "$T/o1" --timeout 30)
rc=$?
echo "$OUT"
[ $rc -eq 0 ] && [[ $OUT == '{"event":"completed","info_hash":"'*'","name":"data"}' ]] &&
    ok "download by magnet exit 0 + JSON" || bad "download by magnet (rc=$rc)"
diff -r "$D" "$T/o1/data" && ok "diff -r after magnet download" || bad "diff -r after magnet download"

echo "== 2. --torrent-out is v1-only"
META=$("${CHECK[@]}" safe "$T/data.torrent")
echo "$META"
IH=$(grep -oE '[0-9a-f]{40}' <<<"$META")
[[ $META == *'"v1": true, "v2": false'* ]] && [[ $MAGNET == *"btih:$IH&"* ]] &&
    ok "v1-only torrent, info hash matches magnet" || bad "v1-only torrent"

echo "== 3. libtorrent download of the .torrent with --peer"
"${LT[@]}" download "$T/data.torrent" --ip 127.0.0.22 --port 41022 --dir "$T/o2" \
    --peer 127.0.0.21:41021 --timeout 30 >/dev/null && diff -r "$D" "$T/o2/data" &&
    ok ".torrent + --peer" || bad ".torrent + --peer"
stop_seeds

echo "== 4. timeout exit code"
"${LT[@]}" download "$MAGNET" --ip 127.0.0.22 --port 41022 --dir "$T/o3" --timeout 2 2>/dev/null
rc=$?
[ $rc -eq 3 ] && ok "timeout exits 3" || bad "timeout exit code $rc"

if command -v aria2c >/dev/null; then
    echo "== 5. aria2c via loopback DHT: bootstrap node B + passive seed S"
    start_seed b --ip 127.0.0.20 --port 41020 --path "$D/small.txt" --dht-node 127.0.0.21:41021 --timeout 90
    start_seed s2 --ip 127.0.0.21 --port 41021 --path "$D" --dht-node 127.0.0.20:41020 --passive --timeout 90
    if ARIA2_PORT=41023 "$A2" "$T/data.torrent" "$T/a1" 127.0.0.23 127.0.0.20:41020 60 &&
        diff -r "$D" "$T/a1/data"; then
        ok "aria2 via DHT (entry = other node)"
    else
        bad "aria2 via DHT (entry = other node)"
    fi
    stop_seeds

    echo "== 6. aria2c via loopback DHT: the seed is the only DHT node"
    start_seed s3 --ip 127.0.0.21 --port 41021 --path "$D" --dht --passive --timeout 90
    ARIA2_PORT=41024 "$A2" "$T/data.torrent" "$T/a2" 127.0.0.24 127.0.0.21:41021 60 &&
        diff -r "$D" "$T/a2/data" && ok "aria2 via DHT (entry = seed)" || bad "aria2 via DHT (entry = seed)"
    stop_seeds

    echo "== 7. aria2 timeout exit code"
    ARIA2_PORT=41025 "$A2" "$T/data.torrent" "$T/a3" 127.0.0.25 127.0.0.21:41021 3 2>/dev/null
    rc=$?
    [ $rc -eq 3 ] && ok "aria2_download timeout exits 3" || bad "aria2_download timeout exit $rc"
else
    echo "aria2c not installed: aria2 checks skipped"
fi

echo "selftest: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
