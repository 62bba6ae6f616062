#!/usr/bin/env bash
# Emulated LAN for p2pfile benchmarks: N hosts on one switch, each with a
# shaped uplink. Needs root, `ip netns`, veth, bridge and tc tbf.
#
#   bench/lab.sh up N RATES       build the lab (removes an old one first);
#                                 RATES = one Mbit/s figure for every host, or
#                                 N comma-separated ones (host 1 = the seed first)
#   bench/lab.sh down             remove everything the lab created
#   bench/lab.sh status           list the lab's namespaces, addresses, qdiscs
#   bench/lab.sh check            measure h1->h2 TCP goodput for 3 s
#   bench/lab.sh exec I CMD...    run CMD inside host I (LAB_NET.I)
#
# Or source it and call lab_up N RATES / lab_down / lab_exec I CMD / lab_ns I /
# lab_ip I / lab_rate I yourself (swarm.sh does).
#
# Environment (read when the file is run or sourced):
#   LAB_PREFIX=p2pf   every namespace name starts with "$LAB_PREFIX-"; `down`
#                     removes only namespaces with this prefix, so two labs
#                     with different prefixes coexist (lowercase letters and
#                     digits, 2..12 characters)
#   LAB_NET=10.77.0   the hosts' /24 (must be inside 10.0.0.0/8); give a second
#                     lab its own net as well as its own prefix
#
# Layout (every name starts with the prefix, default p2pf-, so nothing else
# collides):
#
#   namespace PREFIX-br   bridge "br0", no address, no uplink: the switch
#   namespace PREFIX-hI   (I = 1..N) lo up, "eth0" = LAB_NET.I/24, no default
#                         route; eth0 is one end of a veth pair whose other end
#                         ("hI") is a port of br0 inside PREFIX-br
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
LAB_BR_NS=${LAB_PREFIX}-br
# Upload rate (Mbit/s) of host I is LAB_RATES[I], set by lab_up.
LAB_RATES=()

lab_ns() { printf '%s-h%d' "$LAB_PREFIX" "$1"; }
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

# lab_up N RATES: RATES is one Mbit/s figure or N comma-separated ones.
lab_up() {
    local n=${1:?lab_up N RATES} rates=${2:?lab_up N RATES} i ns rate burst
    if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 2 || n > 250)); then
        echo "lab: N must be 2..250, got $n" >&2
        return 2
    fi
    lab_parse_rates "$n" "$rates" || return 2
    local latency=${LAB_LATENCY_MS:-20}
    lab_down
    ip netns add "$LAB_BR_NS" || return 1
    ip -n "$LAB_BR_NS" link set lo up
    ip netns exec "$LAB_BR_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$LAB_BR_NS" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip -n "$LAB_BR_NS" link add br0 type bridge
    # No STP, forward at once.
    ip -n "$LAB_BR_NS" link set br0 type bridge stp_state 0 forward_delay 0
    ip -n "$LAB_BR_NS" link set br0 up
    for ((i = 1; i <= n; i++)); do
        ns=$(lab_ns "$i")
        ip netns add "$ns" || return 1
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
        ip -n "$ns" link set lo up
        # Both ends are born inside lab namespaces.
        ip -n "$LAB_BR_NS" link add "h$i" type veth peer name eth0 netns "$ns" || return 1
        ip -n "$LAB_BR_NS" link set "h$i" master br0
        ip -n "$LAB_BR_NS" link set "h$i" up
        ip -n "$ns" addr add "$(lab_ip "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
        # Upload shaping on the host side.
        rate=${LAB_RATES[i]}
        burst=${LAB_BURST:-$((rate * 500 > 32768 ? rate * 500 : 32768))}
        tc -n "$ns" qdisc add dev eth0 root tbf rate "${rate}mbit" \
            burst "$burst" latency "${latency}ms" || return 1
    done
    # Wait (bounded) until the bridge ports forward.
    local tries
    for ((tries = 0; tries < 50; tries++)); do
        if ! ip -n "$LAB_BR_NS" -br link show master br0 | grep -qv ' UP '; then
            break
        fi
        sleep 0.1
    done
}

lab_status() {
    local ns
    for ns in $(lab_namespaces); do
        echo "== $ns"
        ip -n "$ns" -br addr
        ip -n "$ns" route
        tc -n "$ns" qdisc show dev eth0 2>/dev/null || true
    done
}

# lab_check: 3 s of TCP from h1 to h2, bounded (there is no ping here).
lab_check() {
    local n py
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
    print("h1 -> h2 TCP goodput: %.1f Mbit/s (%d bytes in %.2f s)" % (n * 8 / dt / 1e6, n, dt))
else:
    c = socket.create_connection((ip, 5999), timeout=10)
    buf = b"\0" * (1 << 16); end = time.monotonic() + 3
    while time.monotonic() < end: c.sendall(buf)
    c.close()
EOF
    )
    lab_exec 2 timeout 20 python3 -c "$py" recv "$(lab_ip 2)" &
    local rpid=$!
    sleep 0.5
    lab_exec 1 timeout 15 python3 -c "$py" send "$(lab_ip 2)" || true
    wait "$rpid"
}

lab_main() {
    set -euo pipefail
    local cmd=${1:-}
    shift || true
    case $cmd in
    up)
        [[ $# -eq 2 ]] || {
            echo "usage: $0 up N RATES   (RATES: one Mbit/s figure or N comma-separated)" >&2
            exit 2
        }
        lab_up "$1" "$2" || {
            echo "lab: setup failed, removing it" >&2
            lab_down
            exit 1
        }
        echo "lab up ($LAB_PREFIX-*): $1 hosts ($(lab_ip 1)..$(lab_ip "$1")), egress Mbit/s: $(IFS=,; echo "${LAB_RATES[*]}")"
        ;;
    down) lab_down ;;
    status) lab_status ;;
    check) lab_check ;;
    exec)
        [[ $# -ge 2 ]] || {
            echo "usage: $0 exec I CMD..." >&2
            exit 2
        }
        lab_exec "$@"
        ;;
    *)
        sed -n '2,23p' "$0" >&2
        exit 2
        ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    lab_main "$@"
fi
