#!/usr/bin/python3
"""libtorrent (python3-libtorrent 2.0.x) peer for p2pfile interoperability tests.

Run with the Debian interpreter, which is the one that can import libtorrent:

    /usr/bin/python3 tests/interop/lt_client.py seed --ip 127.0.0.21 --port 40021 \
        --path DATA [--torrent-out FILE] [--timeout SECS]
    /usr/bin/python3 tests/interop/lt_client.py download MAGNET_OR_TORRENT \
        --ip 127.0.0.22 --port 40022 --dir OUT [--timeout SECS] [--peer IP:PORT ...]

Both subcommands also accept: --verbose (log every alert to stderr);
--dht (enable libtorrent's DHT with no bootstrap node: others bootstrap from
us) and --dht-node IP:PORT (repeatable: enable DHT and bootstrap only from
these loopback nodes) -- DHT is off otherwise; --passive (never dial peers);
--utp (also use uTP; default is TCP only, like a plain BEP 3 peer).

Network safety (enforced here, not left to the caller): every address given
(--ip, --peer, --dht-node, x.pe peers in a magnet) must be IPv4 loopback
127.0.0.0/8; the session listens only on IP:PORT; DHT (unless --dht or --dht-node),
LSD, UPnP and NAT-PMP are off; dht_bootstrap_nodes is empty; trackers and web
seeds from a magnet or .torrent are dropped (override_trackers /
override_web_seeds); and an IP filter blocks every address outside 127/8
(peers and trackers).

Seed: builds a v1-only torrent of PATH (file or directory), seeds it from
PATH's parent directory, waits until the files are checked and the listen
socket is up, then prints exactly one stdout line
    magnet:?xt=urn:btih:<40 hex>&dn=<percent-encoded name>&x.pe=IP:PORT
and seeds until SIGTERM/SIGINT or --timeout (default 600 s); exits 0.
Exit 1 on error (listen failure, files not complete, ...).

Download: fetches a magnet URI or .torrent file into DIR; exits 0 once every
piece has been downloaded and hash-checked (torrent is seeding), after
printing {"event":"completed","info_hash":...,"name":...} on stdout.
Exit 3 on timeout (default 120 s), exit 1 on errors.
"""

import argparse
import ipaddress
import json
import os
import signal
import sys
import time
import urllib.parse

try:
    import libtorrent as lt
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(
        "lt_client: cannot import libtorrent (%s); run with /usr/bin/python3 "
        "and install python3-libtorrent\n" % exc
    )
    sys.exit(1)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 3

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class Fatal(Exception):
    pass


def log(msg):
    sys.stderr.write("lt_client: %s\n" % msg)
    sys.stderr.flush()


def loopback_ip(text, what):
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise Fatal("%s %r is not an IP address" % (what, text))
    if ip.version != 4 or ip not in LOOPBACK:
        raise Fatal("%s %s is not in 127.0.0.0/8; refusing (loopback only)" % (what, text))
    return str(ip)


def endpoint(text, what):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise Fatal("%s %r is not IP:PORT" % (what, text))
    return loopback_ip(host, what), int(port)


# ---------------------------------------------------------------- session


def make_session(ip, port, dht=False, dht_nodes=(), passive=False, utp=False, verbose=False):
    """A session listening only on ip:port that can reach nothing but loopback."""
    mask = (
        lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.storage_notification
    )
    if verbose:
        mask |= lt.alert.category_t.peer_notification | lt.alert.category_t.connect_notification
        if dht:
            mask |= lt.alert.category_t.dht_notification
    settings = {
        "listen_interfaces": "%s:%d" % (ip, port),
        # Fail instead of silently moving to port+1 when the port is taken.
        "max_retry_port_bind": 0,
        # Outgoing connections from the same address we listen on.
        "outgoing_interfaces": ip,
        "enable_dht": bool(dht),
        "dht_bootstrap_nodes": "",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # Plain BEP 3 handshakes only, so a non-MSE peer can talk to us.
        "out_enc_policy": int(lt.enc_policy.pe_disabled),
        "in_enc_policy": int(lt.enc_policy.pe_disabled),
        "allowed_enc_level": int(lt.enc_level.pe_plaintext),
        # TCP only unless --utp: libtorrent otherwise dials uTP first and
        # falls back to TCP after utp_connect_timeout (3 s), and sends uTP
        # SYNs to the UDP port of a TCP-only peer.
        "enable_outgoing_utp": bool(utp),
        "enable_incoming_utp": bool(utp),
        # Every test peer lives on 127.0.0.x.
        "allow_multiple_connections_per_ip": True,
        # Re-dial a peer that dropped us after 2 s, not 60 s.
        "min_reconnect_time": 2,
        "no_connect_privileged_ports": False,
        "enable_ip_notifier": False,
        "alert_mask": int(mask),
        "alert_queue_size": 10000,
        "user_agent": "lt_client/libtorrent-" + lt.__version__,
    }
    if passive:
        # Accept connections only: forces the other side to dial us.
        settings["enable_outgoing_tcp"] = False
        settings["enable_outgoing_utp"] = False
    if dht:
        # A private loopback DHT: defaults ignore/restrict private and
        # same-/24 node addresses, which is exactly what 127.0.0.x nodes are.
        settings.update(
            {
                "dht_ignore_dark_internet": False,
                "dht_restrict_routing_ips": False,
                "dht_restrict_search_ips": False,
                "dht_prefer_verified_node_ids": False,
                "dht_enforce_node_id": False,
                "dht_announce_interval": 5,
            }
        )
    known = lt.default_settings()
    for key in list(settings):
        if key not in known:
            log("setting %s unknown in libtorrent %s; skipped" % (key, lt.__version__))
            del settings[key]
    ses = lt.session(settings)

    # Defence in depth: peers (and trackers, apply_ip_filter_to_trackers is
    # on by default) outside 127/8 are blocked.
    flt = lt.ip_filter()
    flt.add_rule("0.0.0.0", "255.255.255.255", 1)
    flt.add_rule("127.0.0.0", "127.255.255.255", 0)
    flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
    ses.set_ip_filter(flt)

    for node_ip, node_port in dht_nodes:
        ses.add_dht_node((node_ip, node_port))
    return ses


def wait_listening(ses, want_port, deadline, verbose):
    """Waits for the listen socket; raises Fatal if it could not be opened."""
    while time.monotonic() < deadline:
        ses.wait_for_alert(200)
        for a in ses.pop_alerts():
            if isinstance(a, lt.listen_failed_alert):
                raise Fatal("listen failed: %s" % a.message())
            if isinstance(a, lt.listen_succeeded_alert):
                if verbose:
                    log(a.message())
                if a.socket_type == lt.socket_type_t.tcp:
                    if a.port != want_port:
                        raise Fatal("listening on port %d, not %d" % (a.port, want_port))
                    return
            elif verbose:
                log("alert: %s: %s" % (a.what(), a.message()))
    raise Fatal("timed out waiting for the listen socket")


FATAL_ALERTS = tuple(
    getattr(lt, n)
    for n in ("torrent_error_alert", "file_error_alert")
    if hasattr(lt, n)
)


def drain(ses, verbose, on_alert=None):
    """Pops alerts, logs errors; raises Fatal on torrent/file errors."""
    for a in ses.pop_alerts():
        cat = a.category()
        is_error = bool(cat & lt.alert.category_t.error_notification)
        if is_error or verbose:
            log("%s: %s" % (a.what(), a.message()))
        if isinstance(a, FATAL_ALERTS):
            raise Fatal("%s: %s" % (a.what(), a.message()))
        if isinstance(a, lt.add_torrent_alert) and a.error.value() != 0:
            raise Fatal("add_torrent failed: %s" % a.error.message())
        if on_alert is not None:
            on_alert(a)


def shutdown(holder):
    """Stops the session in holder["ses"] and drops the last reference to it.

    lt.session's destructor blocks until libtorrent has shut down (disk
    threads joined, files closed), so afterwards the data is on disk.
    """
    ses = holder.pop("ses", None)
    if ses is None:
        return
    try:
        ses.pause()
    except Exception:  # best effort
        pass
    del ses


def strip_outside_sources(atp):
    """No trackers and no web seeds, whatever the magnet/.torrent says."""
    atp.trackers = []
    atp.url_seeds = []
    atp.flags |= lt.torrent_flags.override_trackers | lt.torrent_flags.override_web_seeds
    atp.flags |= lt.torrent_flags.disable_lsd
    atp.flags &= ~lt.torrent_flags.auto_managed
    atp.flags &= ~lt.torrent_flags.paused
    if hasattr(atp, "http_seeds"):
        try:
            atp.http_seeds = []
        except Exception:
            pass


# ---------------------------------------------------------------- seed


def v1_hex(ti):
    if hasattr(ti, "info_hashes"):
        return str(ti.info_hashes().v1)
    return str(ti.info_hash())


def cmd_seed(args):
    ip = loopback_ip(args.ip, "--ip")
    dht_nodes = [endpoint(n, "--dht-node") for n in args.dht_node]
    for p in args.peer:
        endpoint(p, "--peer")
    path = os.path.abspath(args.path.rstrip("/") or "/")
    if not os.path.exists(path):
        raise Fatal("no such file or directory: %s" % path)
    parent = os.path.dirname(path)

    fs = lt.file_storage()
    lt.add_files(fs, path)
    if fs.num_files() == 0:
        raise Fatal("nothing to seed in %s" % path)
    flags = lt.create_torrent.v1_only
    ct = lt.create_torrent(fs, args.piece_size, flags)
    ct.set_creator("p2pfile interop lt_client (libtorrent %s)" % lt.__version__)
    lt.set_piece_hashes(ct, parent)
    entry = ct.generate()
    data = lt.bencode(entry)
    info = entry[b"info"] if b"info" in entry else entry["info"]
    if b"meta version" in info or b"file tree" in info:
        raise Fatal("created torrent is not v1-only")
    if args.torrent_out:
        with open(args.torrent_out, "wb") as f:
            f.write(data)
    ti = lt.torrent_info(lt.bdecode(data))

    deadline = time.monotonic() + args.timeout
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    holder = {}
    ses = holder["ses"] = make_session(
        ip, args.port, args.dht or bool(dht_nodes), dht_nodes, args.passive, args.utp, args.verbose
    )
    h = None
    try:
        wait_listening(ses, args.port, min(deadline, time.monotonic() + 30), args.verbose)
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = parent
        strip_outside_sources(atp)
        h = ses.add_torrent(atp)
        # Wait until libtorrent has checked the files; they must be complete.
        checked = {"flag": False}

        def on_alert(a):
            if isinstance(a, lt.torrent_checked_alert):
                checked["flag"] = True

        while True:
            drain(ses, args.verbose, on_alert)
            st = h.status()
            if st.errc.value() != 0:
                raise Fatal("torrent error: %s" % st.errc.message())
            if checked["flag"] or st.is_seeding:
                if not st.is_seeding:
                    raise Fatal(
                        "files under %s do not match after checking (%d/%d pieces)"
                        % (parent, st.num_pieces, ti.num_pieces())
                    )
                break
            if stop["flag"] or time.monotonic() > deadline:
                raise Fatal("stopped before the seed was ready")
            ses.wait_for_alert(100)

        name = ti.name()
        magnet = "magnet:?xt=urn:btih:%s&dn=%s&x.pe=%s:%d" % (
            v1_hex(ti).lower(),
            urllib.parse.quote(name, safe=""),
            ip,
            args.port,
        )
        sys.stdout.write(magnet + "\n")
        sys.stdout.flush()
        log("seeding %s (%s) on %s:%d" % (name, v1_hex(ti), ip, args.port))

        peers = [endpoint(p, "--peer") for p in args.peer]
        last_dial = 0.0
        while not stop["flag"] and time.monotonic() < deadline:
            # Keep dialing --peer targets that are not connected (they may
            # start later, or drop us, e.g. Transmission after a magnet's
            # metadata arrives).
            if peers and time.monotonic() - last_dial > 3:
                connected = {tuple(pi.ip) for pi in h.get_peer_info()}
                for peer in peers:
                    if peer not in connected:
                        h.connect_peer(peer)
                last_dial = time.monotonic()
            ses.wait_for_alert(250)
            drain(ses, args.verbose)
        if args.verbose:
            st = h.status()
            log("seed exiting: uploaded %d bytes, %d peers" % (st.all_time_upload, st.num_peers))
    finally:
        del ses, h
        shutdown(holder)
    return EXIT_OK


# ---------------------------------------------------------------- download


def load_source(source):
    if source.startswith("magnet:"):
        atp = lt.parse_magnet_uri(source)
        for peer_ip, _port in atp.peers:
            loopback_ip(peer_ip, "x.pe peer in magnet")
        return atp
    if not os.path.isfile(source):
        raise Fatal("not a magnet URI nor a file: %s" % source)
    with open(source, "rb") as f:
        data = f.read()
    try:
        ti = lt.torrent_info(lt.bdecode(data))
    except Exception as exc:
        raise Fatal("cannot parse torrent %s: %s" % (source, exc))
    atp = lt.add_torrent_params()
    atp.ti = ti
    return atp


def cmd_download(args):
    ip = loopback_ip(args.ip, "--ip")
    peers = [endpoint(p, "--peer") for p in args.peer]
    dht_nodes = [endpoint(n, "--dht-node") for n in args.dht_node]
    atp = load_source(args.source)
    os.makedirs(args.dir, exist_ok=True)
    atp.save_path = os.path.abspath(args.dir)
    strip_outside_sources(atp)
    if not (args.dht or dht_nodes):
        atp.flags |= lt.torrent_flags.disable_dht

    deadline = time.monotonic() + args.timeout
    holder = {}
    ses = holder["ses"] = make_session(
        ip, args.port, args.dht or bool(dht_nodes), dht_nodes, args.passive, args.utp, args.verbose
    )
    h = None
    try:
        try:
            wait_listening(ses, args.port, min(deadline, time.monotonic() + 30), args.verbose)
        except Fatal as exc:
            if time.monotonic() >= deadline:
                log("timeout: %s" % exc)
                return EXIT_TIMEOUT
            raise
        h = ses.add_torrent(atp)
        for peer in peers:
            h.connect_peer(peer)
        last_connect = time.monotonic()
        while True:
            drain(ses, args.verbose)
            st = h.status()
            if st.errc.value() != 0:
                raise Fatal("torrent error: %s" % st.errc.message())
            # libtorrent can report "seeding" a moment before num_pieces
            # counts the last pieces written; done means both agree.
            if (
                st.has_metadata
                and st.is_seeding
                and st.state == lt.torrent_status.seeding
                and st.num_pieces == h.torrent_file().num_pieces()
            ):
                break
            now = time.monotonic()
            if now >= deadline:
                log(
                    "timeout after %gs: state=%s progress=%.1f%% peers=%d metadata=%s"
                    % (args.timeout, st.state, st.progress * 100, st.num_peers, st.has_metadata)
                )
                return EXIT_TIMEOUT
            # Re-dial explicit peers now and then (e.g. seed came up late).
            if peers and st.num_peers == 0 and now - last_connect > 2:
                for peer in peers:
                    h.connect_peer(peer)
                last_connect = now
            ses.wait_for_alert(250)
        ti = h.torrent_file()
        result = {
            "event": "completed",
            "info_hash": v1_hex(ti).lower(),
            "name": ti.name(),
        }
        if hasattr(ti, "info_hashes") and ti.info_hashes().has_v2():
            result["info_hash_v2"] = str(ti.info_hashes().v2)
    finally:
        del ses, h
        shutdown(holder)
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return EXIT_OK


# ---------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, default_timeout):
        sp.add_argument("--ip", required=True, help="127.0.0.x address to listen on")
        sp.add_argument("--port", required=True, type=int, help="TCP/uTP listen port")
        sp.add_argument("--timeout", type=float, default=default_timeout)
        sp.add_argument("--peer", action="append", default=[], metavar="IP:PORT",
                        help="loopback peer to connect to (repeatable)")
        sp.add_argument("--dht-node", action="append", default=[], metavar="IP:PORT",
                        help="enable DHT with this loopback node as bootstrap (repeatable)")
        sp.add_argument("--dht", action="store_true",
                        help="enable DHT with no bootstrap node (others bootstrap from us)")
        sp.add_argument("--utp", action="store_true",
                        help="also use uTP (default: TCP only, like a plain BEP 3 peer)")
        sp.add_argument("--passive", action="store_true",
                        help="make no outgoing peer connections (peers must dial us)")
        sp.add_argument("--verbose", "-v", action="store_true", help="log all alerts to stderr")

    s = sub.add_parser("seed", help="create a v1 torrent of PATH and seed it")
    common(s, 600)
    s.add_argument("--path", required=True)
    s.add_argument("--torrent-out")
    s.add_argument("--piece-size", type=int, default=0, help="bytes; 0 = libtorrent default")

    d = sub.add_parser("download", help="download a magnet URI or .torrent file")
    common(d, 120)
    d.add_argument("source", metavar="MAGNET_OR_TORRENT")
    d.add_argument("--dir", required=True)

    args = p.parse_args(argv)
    try:
        if args.cmd == "seed":
            return cmd_seed(args)
        return cmd_download(args)
    except Fatal as exc:
        log("error: %s" % exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_ERROR
    except Exception as exc:  # libtorrent raises RuntimeError etc.
        log("error: %s: %s" % (type(exc).__name__, exc))
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
