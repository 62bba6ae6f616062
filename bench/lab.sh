#!/usr/bin/env bash
# Emulated LAN for p2pfile benchmarks: N hosts on one switch, each with a
# shaped uplink. Needs root, `ip netns`, veth, bridge and tc tbf.
#
#   bench/lab.sh up N RATES [ZONES LINK_MBIT]
#                                 build the lab (removes an old one first);
#                                 RATES = one Mbit/s figure for every host, or
#                                 N comma-separated ones (host 1 = the seed first);
#                                 ZONES = zone sizes ("4,4"), LINK_MBIT = the
#                                 inter-zone link, each direction
#   bench/lab.sh down             remove everything the lab created
#   bench/lab.sh status           list the lab's namespaces, addresses, qdiscs
#   bench/lab.sh check [I J]      measure hI->hJ TCP goodput for 3 s (h1->h2)
#   bench/lab.sh exec I CMD...    run CMD inside host I (LAB_NET.I)
#
# Or source it and call lab_up N RATES [ZONES LINK_MBIT] / lab_down /
# lab_exec I CMD / lab_ns I / lab_ip I / lab_rate I / lab_zone I /
# lab_link_counters yourself (swarm.sh does).
#
# Environment (read when the file is run or sourced):
#   LAB_PREFIX=p2pf   every namespace name starts with "$LAB_PREFIX-"; `down`
#                     removes only namespaces with this prefix, so two labs
#                     with different prefixes coexist (lowercase letters and
#                     digits, 2..12 characters)
#   LAB_NET=10.77.0   the hosts' /24 (must be inside 10.0.0.0/8); give a second
#                     lab its own net as well as its own prefix
#   LAB_CC=           TCP congestion control of every lab host (for example
#                     cubic, Debian's default, or bbr); unset, each host keeps
#                     the machine's (a new namespace inherits it). Results
#                     depend on it (bench/README.md, "Congestion control"), so
#                     lab_cc prints the one in use and swarm.sh records it.
#
# Layout (every name starts with the prefix, default p2pf-, so nothing else
# collides):
#
#   namespace PREFIX-br   bridge "br0", no address, no uplink: the switch
#   namespace PREFIX-hI   (I = 1..N) lo up, "eth0" = LAB_NET.I/24, no default
#                         route; eth0 is one end of a veth pair whose other end
#                         ("hI") is a port of br0 inside PREFIX-br
#
# With ZONES (Z >= 2 zones, hosts in order: "4,4" = h1..h4 in zone 1, h5..h8
# in zone 2) the switch namespace holds one bridge "brZ" per zone instead of
# br0, and the zones are joined by veth pairs shaped with tbf at LINK_MBIT on
# both ends (so LINK_MBIT each way): for Z = 2 one pair l1 (on br1) <-> l2
# (on br2); for Z >= 3 a star, a bridge "core" and per zone a pair lZ (on
# brZ) <-> cZ (on core). lZ's rx counters = what came into zone Z over its
# link (lab_link_counters). All hosts stay in one /24.
#
# The veth pairs are created directly inside the lab namespaces, so nothing
# is ever added to the machine's own namespace, and LAB_NET.0/24 exists only
# inside the lab. With no uplink and no default route, no packet can leave.
# IPv6 is disabled in every lab namespace (no link-local chatter).
#
# Shaping: each host's *egress* (upload) is limited on the host side of its
# veth (eth0 inside PREFIX-hI), RATE = that host's entry in RATES:
#
#   tc qdisc add dev eth0 root tbf rate ${RATE}mbit burst B latency L
#
# with B = max(32768, RATE*500) bytes (about 4 ms at RATE) and L = 20 ms
# (LAB_BURST / LAB_LATENCY_MS override). tbf counts whole Ethernet frames, so
# one TCP flow gets ~95.6 % of RATE as goodput. Ingress (download) is NOT
# shaped: a host can receive as fast as the others send to it. The kernel has
# no netem here, so there is no added delay or loss.

LAB_PREFIX=${LAB_PREFIX:-p2pf}
LAB_NET=${LAB_NET:-10.77.0}
if ! [[ $LAB_PREFIX =~ ^[a-z][a-z0-9]{1,11}$ ]]; then
    echo "lab: LAB_PREFIX must be 2..12 lowercase letters and digits, got '$LAB_PREFIX'" >&2
    return 2 2>/dev/null || exit 2
fi
if ! [[ $LAB_NET =~ ^10\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
    ((BASH_REMATCH[1] > 255 || BASH_REMATCH[2] > 255)); then
    echo "lab: LAB_NET must be a /24 inside 10.0.0.0/8 written as 10.X.Y, got '$LAB_NET'" >&2
    return 2 2>/dev/null || exit 2
fi
if [[ -n ${LAB_CC:-} ]] && ! [[ " $(cat /proc/sys/net/ipv4/tcp_available_congestion_control 2>/dev/null) " == *" $LAB_CC "* ]]; then
    echo "lab: LAB_CC=$LAB_CC is not a congestion control this kernel has (available: $(cat /proc/sys/net/ipv4/tcp_available_congestion_control 2>/dev/null))" >&2
    return 2 2>/dev/null || exit 2
fi
LAB_BR_NS=${LAB_PREFIX}-br
# Upload rate (Mbit/s) of host I is LAB_RATES[I], set by lab_up.
LAB_RATES=()

lab_ns() { printf '%s-h%d' "$LAB_PREFIX" "$1"; }
# lab_cc: the TCP congestion control the lab's hosts use.
lab_cc() { echo "${LAB_CC:-$(cat /proc/sys/net/ipv4/tcp_congestion_control)}"; }
lab_ip() { printf '%s.%d' "$LAB_NET" "$1"; }
# lab_rate I: host I's upload rate in Mbit/s (after lab_up or lab_parse_rates).
lab_rate() { printf '%s' "${LAB_RATES[$1]}"; }

# lab_parse_rates N RATES: fill LAB_RATES[1..N] from one number (every host)
# or N comma-separated numbers (host 1 first). Whole Mbit/s, 1..10000.
lab_parse_rates() {
    local n=$1 spec=$2 i r
    local -a list
    IFS=, read -r -a list <<<"$spec"
    if ((${#list[@]} == 1)); then
        for ((i = 1; i < n; i++)); do list+=("${list[0]}"); done
    fi
    if ((${#list[@]} != n)); then
        echo "lab: RATES must be one number or $n comma-separated numbers (one per host), got '$spec'" >&2
        return 2
    fi
    LAB_RATES=()
    for ((i = 1; i <= n; i++)); do
        r=${list[i - 1]}
        if ! [[ $r =~ ^[0-9]+$ ]] || ((r < 1 || r > 10000)); then
            echo "lab: every rate must be 1..10000 (whole Mbit/s), got '$r' for host $i" >&2
            return 2
        fi
        LAB_RATES[i]=$r
    done
}

# lab_exec I CMD...: run CMD in host I's namespace.
lab_exec() {
    local i=$1
    shift
    ip netns exec "$(lab_ns "$i")" "$@"
}

# The lab's namespaces that exist now (only names this file creates).
lab_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' |
        grep -E "^${LAB_PREFIX}-(br|h[0-9]+)\$" || true
}

# lab_kill_ns NS: TERM, then KILL, every process still inside NS (processes
# there can only have been started by a lab user), bounded to ~3 s.
lab_kill_ns() {
    local ns=$1 pids tries
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [[ -n ${pids// /} ]] || return 0
    # shellcheck disable=SC2086 # pids is a space-separated list of numbers
    kill -TERM $pids 2>/dev/null || true
    for ((tries = 0; tries < 30; tries++)); do
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        [[ -n ${pids// /} ]] || return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
}

lab_down() {
    local ns
    for ns in $(lab_namespaces); do
        lab_kill_ns "$ns"
        # Deleting a namespace also deletes the veth ends inside it.
        ip netns del "$ns" 2>/dev/null || true
    done
}

# lab_parse_zones N ZONES: fill LAB_ZONE_OF[1..N] and LAB_NZONES from
# "4,4" (hosts 1..4 in zone 1, 5..8 in zone 2); the counts must add up to N.
# An empty ZONES is one switch: every host in zone 1, LAB_NZONES=1.
lab_parse_zones() {
    local n=$1 spec=${2:-} i z c k=0
    local -a counts
    LAB_ZONE_OF=()
    LAB_NZONES=1
    if [[ -z $spec ]]; then
        for ((i = 1; i <= n; i++)); do LAB_ZONE_OF[i]=1; done
        return 0
    fi
    IFS=, read -r -a counts <<<"$spec"
    if ((${#counts[@]} < 2 || ${#counts[@]} > 16)); then
        echo "lab: ZONES must list 2..16 zone sizes, got '$spec'" >&2
        return 2
    fi
    for ((z = 1; z <= ${#counts[@]}; z++)); do
        c=${counts[z - 1]}
        if ! [[ $c =~ ^[0-9]+$ ]] || ((c < 1)); then
            echo "lab: every zone needs at least one host, got '$c' in ZONES=$spec" >&2
            return 2
        fi
        for ((i = 0; i < c; i++)); do LAB_ZONE_OF[++k]=$z; done
    done
    if ((k != n)); then
        echo "lab: ZONES=$spec adds up to $k hosts, the lab has $n" >&2
        return 2
    fi
    LAB_NZONES=${#counts[@]}
}

# lab_zone I: host I's zone number (1 without zones).
lab_zone() { printf '%s' "${LAB_ZONE_OF[$1]:-1}"; }

# lab_bridge_of I: the bridge host I's port is on (br0 without zones).
lab_bridge_of() {
    if ((LAB_NZONES > 1)); then printf 'br%d' "${LAB_ZONE_OF[$1]}"; else printf br0; fi
}

# lab_tbf NS DEV RATE: shape DEV's egress in NS to RATE Mbit/s.
lab_tbf() {
    local ns=$1 dev=$2 rate=$3 burst
    burst=${LAB_BURST:-$((rate * 500 > 32768 ? rate * 500 : 32768))}
    tc -n "$ns" qdisc add dev "$dev" root tbf rate "${rate}mbit" \
        burst "$burst" latency "${LAB_LATENCY_MS:-20}ms"
}

# lab_bridge NAME: a bridge in the switch namespace, no STP, forwarding at once.
lab_bridge() {
    ip -n "$LAB_BR_NS" link add "$1" type bridge || return 1
    ip -n "$LAB_BR_NS" link set "$1" type bridge stp_state 0 forward_delay 0
    ip -n "$LAB_BR_NS" link set "$1" up
}

# lab_link A BR_A B BR_B RATE: a veth pair A (port of BR_A) <-> B (port of
# BR_B) inside the switch namespace, each end's egress shaped to RATE, so
# the link carries RATE in each direction. gso_max_segs 1 makes the kernel
# cut GSO packets into wire-sized frames before they reach the link, so its
# byte and packet counters count real frames (lab_link_counters).
lab_link() {
    local a=$1 bra=$2 b=$3 brb=$4 rate=$5 end br
    ip -n "$LAB_BR_NS" link add "$a" gso_max_segs 1 type veth peer name "$b" gso_max_segs 1 || return 1
    for end in "$a:$bra" "$b:$brb"; do
        br=${end#*:}
        end=${end%%:*}
        ip -n "$LAB_BR_NS" link set "$end" master "$br" || return 1
        ip -n "$LAB_BR_NS" link set "$end" up
        lab_tbf "$LAB_BR_NS" "$end" "$rate" || return 1
    done
}

# lab_link_counters: one line per zone, "Z RX_BYTES RX_PACKETS TX_BYTES
# TX_PACKETS" of zone Z's end of its inter-zone link ("lZ" on bridge brZ):
# RX = frames that came INTO zone Z over the link, TX = frames that left it.
# Prints nothing without zones.
lab_link_counters() {
    local z
    ((LAB_NZONES > 1)) || return 0
    for ((z = 1; z <= LAB_NZONES; z++)); do
        printf '%d ' "$z"
        ip -n "$LAB_BR_NS" -s -j link show "l$z" | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]["stats64"]
print(s["rx"]["bytes"], s["rx"]["packets"], s["tx"]["bytes"], s["tx"]["packets"])'
    done
}

# lab_up N RATES [ZONES LINK_MBIT]: RATES is one Mbit/s figure or N
# comma-separated ones. With ZONES ("4,4": sizes of the zones, hosts in
# order) every zone gets its own bridge and the zones are joined by links of
# LINK_MBIT in each direction: two zones by one link, more through a core
# bridge (a star, one link per zone).
lab_up() {
    local n=${1:?lab_up N RATES} rates=${2:?lab_up N RATES} zones=${3:-} link=${4:-} i ns z
    if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 2 || n > 250)); then
        echo "lab: N must be 2..250, got $n" >&2
        return 2
    fi
    lab_parse_rates "$n" "$rates" || return 2
    lab_parse_zones "$n" "$zones" || return 2
    if ((LAB_NZONES > 1)) && { ! [[ $link =~ ^[0-9]+$ ]] || ((link < 1 || link > 10000)); }; then
        echo "lab: zones need LINK_MBIT 1..10000 (whole Mbit/s), got '$link'" >&2
        return 2
    fi
    lab_down
    ip netns add "$LAB_BR_NS" || return 1
    ip -n "$LAB_BR_NS" link set lo up
    ip netns exec "$LAB_BR_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$LAB_BR_NS" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    if ((LAB_NZONES == 1)); then
        lab_bridge br0 || return 1
    else
        for ((z = 1; z <= LAB_NZONES; z++)); do lab_bridge "br$z" || return 1; done
        if ((LAB_NZONES == 2)); then
            lab_link l1 br1 l2 br2 "$link" || return 1
        else
            lab_bridge core || return 1
            for ((z = 1; z <= LAB_NZONES; z++)); do
                lab_link "l$z" "br$z" "c$z" core "$link" || return 1
            done
        fi
    fi
    for ((i = 1; i <= n; i++)); do
        ns=$(lab_ns "$i")
        ip netns add "$ns" || return 1
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
        if [[ -n ${LAB_CC:-} ]] &&
            ! ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$LAB_CC" 2>/dev/null; then
            # A namespace may only pick from the allowed list.
            echo "lab: the kernel refuses LAB_CC=$LAB_CC in a namespace (allowed: $(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control)); allow it with: sysctl -w net.ipv4.tcp_allowed_congestion_control=\"$(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control) $LAB_CC\"" >&2
            return 1
        fi
        ip -n "$ns" link set lo up
        # Both ends are born inside lab namespaces.
        ip -n "$LAB_BR_NS" link add "h$i" type veth peer name eth0 netns "$ns" || return 1
        ip -n "$LAB_BR_NS" link set "h$i" master "$(lab_bridge_of "$i")"
        ip -n "$LAB_BR_NS" link set "h$i" up
        ip -n "$ns" addr add "$(lab_ip "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
        # Upload shaping on the host side.
        lab_tbf "$ns" eth0 "${LAB_RATES[i]}" || return 1
    done
    # Wait (bounded) until every bridge port forwards.
    local tries br down
    for ((tries = 0; tries < 50; tries++)); do
        down=0
        for br in $(ip -n "$LAB_BR_NS" -br link show type bridge | awk '{print $1}'); do
            ip -n "$LAB_BR_NS" -br link show master "$br" | grep -qv ' UP ' && down=1
        done
        ((down)) || break
        sleep 0.1
    done
}

lab_status() {
    local ns
    for ns in $(lab_namespaces); do
        echo "== $ns"
        ip -n "$ns" -br addr
        ip -n "$ns" route
        if [[ $ns == "$LAB_BR_NS" ]]; then
            # Zone links (lZ, cZ) carry a tbf; host ports (hI) have none.
            tc -n "$ns" qdisc show | grep tbf || true
        else
            tc -n "$ns" qdisc show dev eth0 2>/dev/null || true
        fi
    done
}

# lab_check [FROM TO]: 3 s of TCP from host FROM to host TO (default h1 ->
# h2), bounded (there is no ping here).
lab_check() {
    local from=${1:-1} to=${2:-2} n py
    n=$(lab_namespaces | grep -c -- '-h' || true)
    ((n >= 2)) || {
        echo "lab: not up" >&2
        return 1
    }
    py=$(
        cat <<'EOF'
import socket, sys, time
mode, ip = sys.argv[1], sys.argv[2]
if mode == "recv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, 5999)); s.listen(1); s.settimeout(10)
    c, _ = s.accept(); c.settimeout(10)
    n, t0 = 0, None
    while True:
        b = c.recv(1 << 16)
        if not b: break
        if t0 is None: t0 = time.monotonic()
        n += len(b)
    dt = time.monotonic() - t0
    print(sys.argv[3] + " TCP goodput: %.1f Mbit/s (%d bytes in %.2f s)" % (n * 8 / dt / 1e6, n, dt))
else:
    c = socket.create_connection((ip, 5999), timeout=10)
    buf = b"\0" * (1 << 16); end = time.monotonic() + 3
    while time.monotonic() < end: c.sendall(buf)
    c.close()
EOF
    )
    lab_exec "$to" timeout 20 python3 -c "$py" recv "$(lab_ip "$to")" "h$from -> h$to" &
    local rpid=$!
    sleep 0.5
    lab_exec "$from" timeout 15 python3 -c "$py" send "$(lab_ip "$to")" || true
    wait "$rpid"
}

lab_main() {
    set -euo pipefail
    local cmd=${1:-}
    shift || true
    case $cmd in
    up)
        [[ $# -eq 2 || $# -eq 4 ]] || {
            echo "usage: $0 up N RATES [ZONES LINK_MBIT]   (RATES: one Mbit/s figure or N comma-separated; ZONES: zone sizes, e.g. 4,4)" >&2
            exit 2
        }
        lab_up "$@" || {
            echo "lab: setup failed, removing it" >&2
            lab_down
            exit 1
        }
        echo "lab up ($LAB_PREFIX-*): $1 hosts ($(lab_ip 1)..$(lab_ip "$1")), egress Mbit/s: $(IFS=,; echo "${LAB_RATES[*]}"), TCP congestion control $(lab_cc)"
        if ((LAB_NZONES > 1)); then
            echo "zones: $3 (host -> zone: $(IFS=,; echo "${LAB_ZONE_OF[*]}")), links of $4 Mbit/s each way$( ((LAB_NZONES > 2)) && echo ", a star through bridge core")"
        fi
        ;;
    down) lab_down ;;
    status) lab_status ;;
    check) lab_check "$@" ;;
    exec)
        [[ $# -ge 2 ]] || {
            echo "usage: $0 exec I CMD..." >&2
            exit 2
        }
        lab_exec "$@"
        ;;
    *)
        sed -n '2,26p' "$0" >&2
        exit 2
        ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    lab_main "$@"
fi
