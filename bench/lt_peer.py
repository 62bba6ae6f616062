#!/usr/bin/python3
"""libtorrent downloader for the swarm benchmark (bench/swarm.sh).

    /usr/bin/python3 bench/lt_peer.py MAGNET_OR_TORRENT... --ip 10.77.0.I --port P \
        --dir DIR [--done-file FILE] [--dht-node IP:PORT ...] [--timeout S] \
        [--lab-net 10.77.0.0/24]

Downloads every source into DIR (all at once, in one session), then keeps
seeding (so the swarm keeps trading) until SIGTERM/SIGINT or --timeout. When
every piece of a torrent is downloaded and hash-checked it prints one JSON
line {"event":"completed",...,"downloaded":BYTES} for it on stdout; once every
torrent is, with --done-file, it writes the wall-clock time (time.time()) to
FILE.

tests/interop/lt_client.py only accepts 127.0.0.0/8; this helper accepts the
lab subnet (--lab-net, default 10.77.0.0/24, bench/lab.sh's LAB_NET; it must be
a /24 inside 10.0.0.0/8) and loopback, and nothing else:
every address (--ip, --dht-node, x.pe peers) must be inside them, an IP filter
blocks all other peers, the DHT (on only with --dht-node) bootstraps from the
given nodes alone, and LSD, UPnP, NAT-PMP, trackers and web seeds are off.

--verbose logs peer, connect and DHT alerts and, every 2 s, the number of
connected peers, known peers and connect candidates; with LT_PEER_LOG=1 in the
environment also libtorrent's per-message peer log (PEX, handshakes, ...).

uTP is off, so every transfer is TCP like p2pfile's (and uTP packets are not
sent to p2pfile's UDP port, which is its DHT).
Exit: 0 stopped by signal after completing; 3 timeout; 1 error.
"""

import argparse
import ipaddress
import json
import os
import signal
import sys
import time

import libtorrent as lt

# The lab's /24 (set from --lab-net in main) and loopback.
ALLOWED = [ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("127.0.0.0/8")]


def log(msg):
    sys.stderr.write("lt_peer: %s\n" % msg)
    sys.stderr.flush()


def lab_ip(text, what):
    ip = ipaddress.ip_address(text)
    if ip.version != 4 or not any(ip in n for n in ALLOWED):
        raise SystemExit("lt_peer: %s %s is outside %s and 127/8; refusing" % (what, text, ALLOWED[0]))
    return str(ip)


def endpoint(text, what):
    host, _, port = text.rpartition(":")
    return lab_ip(host, what), int(port)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("source", nargs="+")
    p.add_argument("--ip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--done-file")
    p.add_argument("--dht-node", action="append", default=[])
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--verbose", action="store_true",
                   help="log peer, connect and DHT alerts to stderr")
    p.add_argument("--lab-net", default="10.77.0.0/24",
                   help="the lab's /24 inside 10.0.0.0/8 (bench/lab.sh LAB_NET)")
    a = p.parse_args()

    net = ipaddress.ip_network(a.lab_net)
    if net.version != 4 or net.prefixlen != 24 or not net.subnet_of(ipaddress.ip_network("10.0.0.0/8")):
        raise SystemExit("lt_peer: --lab-net %s is not a /24 inside 10.0.0.0/8; refusing" % a.lab_net)
    ALLOWED[0] = net
    ip = lab_ip(a.ip, "--ip")
    nodes = [endpoint(n, "--dht-node") for n in a.dht_node]
    cat = lt.alert.category_t
    mask = cat.error_notification | cat.status_notification
    if a.verbose:
        mask |= cat.peer_notification | cat.connect_notification | cat.dht_notification
        if os.environ.get("LT_PEER_LOG"):
            mask |= cat.peer_log_notification  # every wire message: large
    settings = {
        "listen_interfaces": "%s:%d" % (ip, a.port),
        "outgoing_interfaces": ip,
        "max_retry_port_bind": 0,
        "enable_dht": bool(nodes),
        "dht_bootstrap_nodes": "",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "out_enc_policy": int(lt.enc_policy.pe_disabled),
        "in_enc_policy": int(lt.enc_policy.pe_disabled),
        "enable_ip_notifier": False,
        "alert_mask": int(mask),
    }
    if nodes:
        # Private addresses in one /24: libtorrent's defaults would ignore them.
        settings.update({
            "dht_ignore_dark_internet": False,
            "dht_restrict_routing_ips": False,
            "dht_restrict_search_ips": False,
            "dht_prefer_verified_node_ids": False,
            "dht_enforce_node_id": False,
            "dht_announce_interval": 5,
        })
    known = lt.default_settings()
    ses = lt.session({k: v for k, v in settings.items() if k in known})
    flt = lt.ip_filter()
    flt.add_rule("0.0.0.0", "255.255.255.255", 1)
    for net in ALLOWED:
        flt.add_rule(str(net[0]), str(net[-1]), 0)
    ses.set_ip_filter(flt)
    for n in nodes:
        ses.add_dht_node(n)

    os.makedirs(a.dir, exist_ok=True)
    handles = []
    for source in a.source:
        if source.startswith("magnet:"):
            atp = lt.parse_magnet_uri(source)
            for peer_ip, _ in atp.peers:
                lab_ip(peer_ip, "x.pe peer")
        else:
            with open(source, "rb") as f:
                atp = lt.add_torrent_params()
                atp.ti = lt.torrent_info(lt.bdecode(f.read()))
        atp.save_path = os.path.abspath(a.dir)
        atp.trackers = []
        atp.url_seeds = []
        atp.flags |= lt.torrent_flags.override_trackers | lt.torrent_flags.override_web_seeds
        atp.flags |= lt.torrent_flags.disable_lsd
        if not nodes:
            atp.flags |= lt.torrent_flags.disable_dht
        # Not auto-managed: every torrent runs at once, none is queued.
        atp.flags &= ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        handles.append(ses.add_torrent(atp))

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deadline = time.monotonic() + a.timeout
    finished = [False] * len(handles)
    done = False
    last_status = 0.0
    while not stop["flag"] and time.monotonic() < deadline:
        if a.verbose and time.monotonic() - last_status >= 2:
            last_status = time.monotonic()
            for h in handles:
                st = h.status()
                log("%.3f status: peers %d (list %d, candidates %d) progress %.1f%%"
                    % (time.time(), st.num_peers, st.list_peers, st.connect_candidates, st.progress * 100))
        ses.wait_for_alert(100)
        for al in ses.pop_alerts():
            if a.verbose or al.category() & lt.alert.category_t.error_notification:
                log("%.3f %s: %s" % (time.time(), al.what(), al.message()))
        if not done:
            for k, h in enumerate(handles):
                if finished[k]:
                    continue
                st = h.status()
                if st.has_metadata and st.is_seeding:
                    finished[k] = True
                    print(json.dumps({"event": "completed", "name": h.torrent_file().name(),
                                      "downloaded": st.total_payload_download}, separators=(",", ":")), flush=True)
            if all(finished):
                done = True
                if a.done_file:
                    with open(a.done_file + ".tmp", "w") as f:
                        f.write("%.6f\n" % time.time())
                    os.replace(a.done_file + ".tmp", a.done_file)
    del handles
    ses.pause()
    del ses
    return 0 if done else 3


if __name__ == "__main__":
    sys.exit(main())
