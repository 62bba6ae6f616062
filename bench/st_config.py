#!/usr/bin/env python3
"""Write and check a Syncthing 1.19 config.xml for bench/sync.sh.

    st_config.py write CONFIG --ip IP --gui-port P --listen-port P --apikey K
                       --folder-id ID --folder-path DIR --watch-delay S
                       --peer DEVID=IP:PORT [--peer ...]
    st_config.py check CONFIG      exit 1 unless every safety option is set

`write` edits the config that `syncthing generate` made, before Syncthing
ever starts with it:

  * listen on tcp://IP:PORT only (no QUIC, no relay listener), GUI/REST on
    IP:GUI_PORT (the lab host's own address) with the given API key;
  * global discovery, local discovery (UDP 21027 broadcast/multicast),
    relays, NAT-PMP/UPnP (and with it STUN), usage reporting, crash
    reporting and automatic upgrades all off; no browser;
  * the peers as devices with explicit tcp:// addresses (no "dynamic");
  * one send-receive folder shared with every peer, file watcher on with
    the given delay, full rescan once an hour.

`check` prints the options that matter for network safety and fails if one
of them is not what sync.sh requires.
"""

import argparse
import copy
import sys
import xml.etree.ElementTree as ET

# option -> required value (text in config.xml)
SAFE = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "urAccepted": "-1",
    "crashReportingEnabled": "false",
    "autoUpgradeIntervalH": "0",
    "startBrowser": "false",
    "announceLANAddresses": "false",
    "stunKeepaliveStartS": "0",
}


def set_opt(opts, name, value):
    el = opts.find(name)
    if el is None:
        el = ET.SubElement(opts, name)
    el.text = value


def write(args):
    tree = ET.parse(args.config)
    root = tree.getroot()
    me = root.find("device")
    if me is None:
        sys.exit("st_config: no own <device> in %s" % args.config)
    my_id = me.get("id")
    me.set("name", args.name or args.ip)

    gui = root.find("gui")
    gui.set("enabled", "true")
    gui.set("tls", "false")
    gui.find("address").text = "%s:%d" % (args.ip, args.gui_port)
    gui.find("apikey").text = args.apikey

    opts = root.find("options")
    # Exactly one listen address: plain TCP on the lab address.
    for el in opts.findall("listenAddress"):
        opts.remove(el)
    for el in opts.findall("globalAnnounceServer"):
        opts.remove(el)
    lst = ET.Element("listenAddress")
    lst.text = "tcp://%s:%d" % (args.ip, args.listen_port)
    opts.insert(0, lst)
    for k, v in SAFE.items():
        set_opt(opts, k, v)
    set_opt(opts, "stunKeepaliveMinS", "0")
    set_opt(opts, "urURL", "")
    set_opt(opts, "releasesURL", "")
    set_opt(opts, "crashReportingURL", "")
    set_opt(opts, "setLowPriority", "false")
    set_opt(opts, "reconnectionIntervalS", "5")

    defaults = root.find("defaults")
    dev_tmpl = defaults.find("device")
    fold_tmpl = defaults.find("folder")

    # Peer devices, inserted after our own <device>.
    peers = []
    for spec in args.peer:
        dev_id, addr = spec.split("=", 1)
        peers.append(dev_id)
        d = copy.deepcopy(dev_tmpl)
        d.set("id", dev_id)
        d.set("name", addr.split(":")[0])
        d.find("address").text = "tcp://" + addr
        root.insert(list(root).index(me) + 1, d)

    # The folder, from the defaults template.
    f = copy.deepcopy(fold_tmpl)
    f.set("id", args.folder_id)
    f.set("label", args.folder_id)
    f.set("path", args.folder_path)
    f.set("type", "sendreceive")
    f.set("rescanIntervalS", "3600")
    f.set("fsWatcherEnabled", "true")
    f.set("fsWatcherDelayS", str(args.watch_delay))
    for d in f.findall("device"):
        f.remove(d)
    for pos, dev_id in enumerate([my_id] + peers):
        d = ET.Element("device", {"id": dev_id, "introducedBy": ""})
        ET.SubElement(d, "encryptionPassword").text = ""
        f.insert(pos, d)
    root.insert(0, f)

    tree.write(args.config)
    return check_file(args.config)


def check_file(path):
    opts = ET.parse(path).getroot().find("options")
    bad = []
    for k, want in SAFE.items():
        el = opts.find(k)
        got = el.text if el is not None else None
        print("%s=%s" % (k, got))
        if got != want:
            bad.append("%s is %r, want %r" % (k, got, want))
    listen = [el.text for el in opts.findall("listenAddress")]
    print("listenAddress=%s" % ",".join(listen))
    if len(listen) != 1 or not (listen[0] or "").startswith("tcp://10.77.0."):
        bad.append("listenAddress %r is not one tcp://10.77.0.x address" % listen)
    gui = ET.parse(path).getroot().find("gui/address").text
    print("gui=%s" % gui)
    if not (gui.startswith("10.77.0.") or gui.startswith("127.0.0.1:")):
        bad.append("GUI address %r is not a lab or loopback address" % gui)
    # Peers only at explicit lab addresses (the own device keeps "dynamic",
    # which is never dialled).
    for d in ET.parse(path).getroot().findall("device")[1:]:
        for a in d.findall("address"):
            print("peer %s=%s" % (d.get("id")[:7], a.text))
            if not (a.text or "").startswith("tcp://10.77.0."):
                bad.append("device %s address %r is not tcp://10.77.0.x" % (d.get("id"), a.text))
    if bad:
        for b in bad:
            print("st_config: UNSAFE: " + b, file=sys.stderr)
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("config")
    w.add_argument("--ip", required=True)
    w.add_argument("--name")
    w.add_argument("--gui-port", type=int, default=8384)
    w.add_argument("--listen-port", type=int, default=22000)
    w.add_argument("--apikey", required=True)
    w.add_argument("--folder-id", required=True)
    w.add_argument("--folder-path", required=True)
    w.add_argument("--watch-delay", type=int, default=1)
    w.add_argument("--peer", action="append", default=[])
    c = sub.add_parser("check")
    c.add_argument("config")
    args = ap.parse_args()
    if args.cmd == "write":
        sys.exit(write(args))
    sys.exit(check_file(args.config))


if __name__ == "__main__":
    main()
