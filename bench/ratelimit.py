#!/usr/bin/env python3
"""Rate-limit accuracy: does --download-limit / --upload-limit hold within
±10 % averaged over 10 s, for one torrent and for several in one process?

Runs p2pfile seeds and downloaders on 127.0.0.x, reads the downloader's
--json progress events with their arrival time, and reports the average
rate between the first event after a 2 s warm-up and the first event 10 s
later. Loopback only; every process is killed at the end.

    python3 bench/ratelimit.py [--bin target/release/p2pfile]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MIB = 1024 * 1024


def start_seed(binary, ip, path, extra, workdir):
    p = subprocess.Popen(
        [binary, "--ip", ip, "--state", os.path.join(workdir, f"seed-{ip}.db"), *extra, "serve", path],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    magnet = p.stdout.readline().strip()
    if not magnet.startswith("magnet:"):
        raise SystemExit(f"seed on {ip} printed {magnet!r}")
    return p, magnet


def measure(binary, ip, magnets, extra, workdir, window=10.0, warmup=2.0):
    """Average download rate (bytes/s) of all torrents together over `window`."""
    dl = tempfile.mkdtemp(dir=workdir)
    p = subprocess.Popen(
        [binary, "--ip", ip, "--state", os.path.join(dl, "s.db"), *extra, "download", "--json", "--dir", dl, *magnets],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    start = time.monotonic()
    latest = {}
    first = last = None
    try:
        for line in p.stdout:
            now = time.monotonic() - start
            ev = json.loads(line)
            if ev.get("event") != "progress":
                continue
            latest[ev["info_hash"]] = ev["downloaded"]
            total = sum(latest.values())
            if first is None and now >= warmup and len(latest) == len(magnets):
                first = (now, total)
            elif first is not None and now - first[0] >= window:
                last = (now, total)
                break
            if now > warmup + window + 20:
                break
    finally:
        p.kill()
        p.wait()
    if not (first and last):
        raise SystemExit("not enough progress events (content too small for the window?)")
    return (last[1] - first[1]) / (last[0] - first[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/p2pfile")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="p2pfile-ratelimit-")
    files = []
    for i in range(2):
        path = os.path.join(work, f"payload{i}.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(256 * MIB))
        files.append(path)
    seeds = []
    try:
        s0, m0 = start_seed(binary, "127.0.0.61", files[0], [], work)
        s1, m1 = start_seed(binary, "127.0.0.62", files[1], [], work)
        seeds += [s0, s1]
        cases = [
            ("download-limit, one torrent", 5.0, [m0], ["--download-limit", "5"]),
            ("download-limit, two torrents", 5.0, [m0, m1], ["--download-limit", "5"]),
            ("download-limit, small value", 0.25, [m0], ["--download-limit", "0.25"]),
        ]
        print(f"{'case':34} {'limit MiB/s':>11} {'measured':>9} {'error':>7}")
        rows = []
        for name, limit, magnets, extra in cases:
            rate = measure(binary, "127.0.0.63", magnets, extra, work) / MIB
            rows.append((name, limit, rate))
        # Upload limit: a limited seed, an unlimited downloader.
        s2, m2 = start_seed(binary, "127.0.0.64", files[0], ["--upload-limit", "5"], work)
        seeds.append(s2)
        # Its magnet's x.pe names only the limited seed.
        rate = measure(binary, "127.0.0.65", [m2], [], work) / MIB
        rows.append(("upload-limit, one torrent", 5.0, rate))
        for name, limit, rate in rows:
            print(f"{name:34} {limit:11.2f} {rate:9.2f} {100 * (rate - limit) / limit:+6.1f}%")
    finally:
        for s in seeds:
            s.kill()
            s.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
