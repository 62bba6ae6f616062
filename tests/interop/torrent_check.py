#!/usr/bin/env python3
"""Pure-python .torrent helpers for the interop scripts (no libtorrent needed).

    torrent_check.py safe TORRENT
        exit 0 if the torrent names no outside host: every `nodes` entry and
        every `url-list` / `httpseeds` URL must be a numeric 127.0.0.0/8
        address.  Trackers (`announce`, `announce-list`) are only reported on
        stderr, since the callers strip/exclude them.  Prints the v1 info
        hash and name as JSON on stdout.
    torrent_check.py verify TORRENT DIR
        exit 0 if DIR/<name> holds exactly the torrent's v1 content: every
        piece hash matches and every file has its length (BEP 47 pad files
        are taken as zeros and need not exist).  Exit 1 otherwise.

Works with any python3 (the pyenv one on PATH or /usr/bin/python3).
"""

import hashlib
import ipaddress
import json
import os
import sys
import urllib.parse


def bdecode(data):
    def parse(i):
        c = data[i:i + 1]
        if c == b"i":
            end = data.index(b"e", i)
            return int(data[i + 1:end]), end + 1
        if c == b"l":
            out, i = [], i + 1
            while data[i:i + 1] != b"e":
                v, i = parse(i)
                out.append(v)
            return out, i + 1
        if c == b"d":
            out, i = {}, i + 1
            while data[i:i + 1] != b"e":
                k, i = parse(i)
                v, i = parse(i)
                out[k] = v
            return out, i + 1
        if c.isdigit():
            colon = data.index(b":", i)
            n = int(data[i:colon])
            return data[colon + 1:colon + 1 + n], colon + 1 + n
        raise ValueError("bad bencode at offset %d" % i)

    value, end = parse(0)
    if end != len(data):
        raise ValueError("trailing data after bencoded value")
    return value


def raw_info(data):
    """The exact bytes of the info dictionary (for the info hash)."""
    key = b"4:info"
    start = data.index(key) + len(key)

    def skip(i):
        c = data[i:i + 1]
        if c == b"i":
            return data.index(b"e", i) + 1
        if c in (b"l", b"d"):
            i += 1
            while data[i:i + 1] != b"e":
                i = skip(i)
            return i + 1
        colon = data.index(b":", i)
        return colon + 1 + int(data[i:colon])

    return data[start:skip(start)]


def is_loopback_host(host):
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.version == 4 and ip in ipaddress.ip_network("127.0.0.0/8")


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    meta = bdecode(data)
    if not isinstance(meta, dict) or b"info" not in meta:
        raise ValueError("%s: not a torrent (no info dict)" % path)
    return data, meta


def cmd_safe(path):
    data, meta = load(path)
    bad = []
    for node in meta.get(b"nodes", []) or []:
        host = node[0].decode("utf-8", "replace") if isinstance(node, list) and node else "?"
        if not is_loopback_host(host):
            bad.append("nodes entry %r" % (host,))
    for key in (b"url-list", b"httpseeds"):
        urls = meta.get(key, [])
        if isinstance(urls, bytes):
            urls = [urls]
        for url in urls:
            host = urllib.parse.urlsplit(url.decode("utf-8", "replace")).hostname or ""
            if not is_loopback_host(host):
                bad.append("%s %r" % (key.decode(), url))
    trackers = []
    if b"announce" in meta:
        trackers.append(meta[b"announce"])
    for tier in meta.get(b"announce-list", []) or []:
        trackers.extend(tier)
    if trackers:
        sys.stderr.write("torrent_check: note: torrent lists trackers %r (they must be excluded)\n"
                         % [t.decode("utf-8", "replace") for t in trackers])
    if bad:
        sys.stderr.write("torrent_check: refusing %s: names outside hosts: %s\n" % (path, ", ".join(bad)))
        return 1
    info = meta[b"info"]
    print(json.dumps({
        "info_hash": hashlib.sha1(raw_info(data)).hexdigest(),
        "name": info[b"name"].decode("utf-8", "replace"),
        "v1": b"pieces" in info,
        "v2": b"meta version" in info,
    }))
    return 0


def cmd_verify(path, directory):
    _, meta = load(path)
    info = meta[b"info"]
    if b"pieces" not in info:
        sys.stderr.write("torrent_check: %s has no v1 piece hashes\n" % path)
        return 1
    name = info[b"name"].decode("utf-8")
    plen = info[b"piece length"]
    hashes = info[b"pieces"]
    if b"files" in info:
        files = []
        for f in info[b"files"]:
            parts = [p.decode("utf-8") for p in f[b"path"]]
            pad = b"p" in f.get(b"attr", b"")
            files.append((os.path.join(directory, name, *parts), f[b"length"], pad))
    else:
        files = [(os.path.join(directory, name), info[b"length"], False)]

    errors = []
    piece = hashlib.sha1()
    in_piece = 0
    index = 0

    def feed(chunk):
        nonlocal piece, in_piece, index
        while chunk:
            take = min(len(chunk), plen - in_piece)
            piece.update(chunk[:take])
            in_piece += take
            chunk = chunk[take:]
            if in_piece == plen:
                if piece.digest() != hashes[index * 20:index * 20 + 20]:
                    errors.append("piece %d hash mismatch" % index)
                index += 1
                piece = hashlib.sha1()
                in_piece = 0

    for fpath, length, pad in files:
        if pad:
            feed(bytes(length))
            continue
        try:
            size = os.path.getsize(fpath)
        except OSError:
            errors.append("missing file %s" % fpath)
            feed(bytes(length))
            continue
        if size != length:
            errors.append("%s: size %d, expected %d" % (fpath, size, length))
        with open(fpath, "rb") as f:
            left = length
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    feed(bytes(left))
                    break
                feed(chunk)
                left -= len(chunk)
    if in_piece:
        if piece.digest() != hashes[index * 20:index * 20 + 20]:
            errors.append("piece %d hash mismatch" % index)
        index += 1
    if index * 20 != len(hashes):
        errors.append("torrent has %d pieces, content gives %d" % (len(hashes) // 20, index))
    if errors:
        for e in errors[:20]:
            sys.stderr.write("torrent_check: %s\n" % e)
        return 1
    return 0


def main(argv):
    if len(argv) == 2 and argv[0] == "safe":
        return cmd_safe(argv[1])
    if len(argv) == 3 and argv[0] == "verify":
        return cmd_verify(argv[1], argv[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        sys.stderr.write("torrent_check: error: %s\n" % exc)
        sys.exit(1)
