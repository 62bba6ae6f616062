//! Interoperability with BitTorrent clients we did not write: libtorrent
//! (python3-libtorrent) both ways, and aria2 finding a p2pfile seed through
//! p2pfile's DHT. Helpers live in tests/interop/ (see its README); every
//! client is bound to 127.0.0.x and has public DHT, LSD, UPnP and trackers
//! off.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(150);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Whether a client is here. Missing clients skip the test with a message,
/// unless `P2PFILE_REQUIRE_INTEROP` is set (scripts/test sets it once it
/// has installed them), where they fail it.
fn have(what: &str, probe: &mut Command) -> bool {
    have_tool(
        what,
        probe,
        "P2PFILE_REQUIRE_INTEROP",
        "apt-get install python3-libtorrent aria2 transmission-cli",
    )
}

fn have_libtorrent() -> bool {
    have(
        "python3-libtorrent",
        Command::new("/usr/bin/python3").args(["-c", "import libtorrent"]),
    )
}

fn lt_client() -> Command {
    let mut c = Command::new("/usr/bin/python3");
    c.arg(interop_dir().join("lt_client.py"));
    c
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sample(env: &Env) -> PathBuf {
    let root = env.path("src/sample");
    fs::create_dir_all(root.join("nested/deeper")).unwrap();
    fs::write(root.join("big.bin"), data(5 << 20, 21)).unwrap();
    fs::write(root.join("nested/a.txt"), b"alpha").unwrap();
    fs::write(root.join("nested/deeper/b.bin"), data(70_000, 22)).unwrap();
    fs::write(root.join("nested/empty"), b"").unwrap();
    root
}

/// Serves the sample and has libtorrent download it, given the arguments
/// `how` makes of the seed's magnet; checks the files.
fn libtorrent_downloads_the_sample(how: impl Fn(&str) -> Vec<String>) {
    if !have_libtorrent() {
        return;
    }
    let env = Env::new();
    let root = sample(&env);
    let seed = env.serve(&host(), &[], &[&root]);
    let ip = host();
    let mut c = lt_client();
    c.arg("download")
        .args(how(seed.magnet()))
        .args(["--ip", &ip, "--port"])
        .arg(free_port(&ip).to_string())
        .args(["--timeout", "120", "--dir"])
        .arg(env.path("lt"));
    let out = run(c, LIMIT);
    assert!(out.status.success(), "libtorrent failed: {}", stderr(&out));
    // libtorrent creates no empty directories; compare the files.
    assert_same_tree(&root, &env.path("lt/sample"));
}

#[test]
fn libtorrent_downloads_from_p2pfile_serve() {
    libtorrent_downloads_the_sample(|magnet| vec![magnet.to_string()]);
}

/// libtorrent's own DHT, bootstrapped from nothing but the seed's address
/// (no `x.pe` hint, no tracker, `dht_bootstrap_nodes` empty, bound to
/// 127.N.0.x), finds the seed and downloads from it. libtorrent sends
/// 2-byte KRPC transaction ids, which mainline 8.0.1 as published dropped
/// (vendor/README.md).
#[test]
fn libtorrent_finds_a_p2pfile_seed_through_its_dht() {
    libtorrent_downloads_the_sample(|magnet| {
        vec![without_peers(magnet), "--dht-node".into(), peer_of(magnet)]
    });
}

/// libtorrent builds a torrent of `root` and seeds it; p2pfile downloads
/// it into `dl/` and must succeed, with nothing on stderr.
fn download_from_a_libtorrent_seed(env: &Env, root: &Path) {
    let ip = host();
    let mut seed = lt_client()
        .args(["seed", "--ip", &ip, "--port"])
        .arg(free_port(&ip).to_string())
        .arg("--path")
        .arg(root)
        .args(["--timeout", "150"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(seed.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("magnet:?"),
        "libtorrent seed printed {line:?}"
    );
    // The seed has no DHT, so p2pfile's lookups through its address fail
    // every ~2 s; the download limit keeps the run going through a few,
    // and they print nothing, not even with warnings on.
    let mut c = env.cmd();
    c.env("P2PFILE_LOG", "warn")
        .args([
            "--ip",
            &host(),
            "--download-limit",
            "2",
            "download",
            "--dir",
        ])
        .arg(env.path("dl"))
        .arg(line.trim());
    let out = run(c, LIMIT);
    let _ = seed.kill();
    let _ = seed.wait();
    assert!(out.status.success(), "p2pfile failed: {}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn p2pfile_downloads_from_a_libtorrent_seed() {
    if !have_libtorrent() {
        return;
    }
    let env = Env::new();
    let root = sample(&env);
    download_from_a_libtorrent_seed(&env, &root);
    assert_same_tree(&root, &env.path("dl/sample"));
}

/// libtorrent's `create_torrent` marks a file with an execute bit `attr`
/// `x` (BEP 47); p2pfile downloads it executable, the other file not.
#[test]
fn an_executable_from_a_libtorrent_seed_arrives_executable() {
    use std::os::unix::fs::PermissionsExt;
    if !have_libtorrent() {
        return;
    }
    let env = Env::new();
    let root = env.path("src/tools");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("build.sh"), b"#!/bin/sh\necho built\n").unwrap();
    fs::write(root.join("notes.txt"), data(40_000, 23)).unwrap();
    for (name, m) in [("build.sh", 0o755), ("notes.txt", 0o644)] {
        fs::set_permissions(root.join(name), fs::Permissions::from_mode(m)).unwrap();
    }
    download_from_a_libtorrent_seed(&env, &root);
    assert_same_tree(&root, &env.path("dl/tools"));
    let mode = |n: &str| {
        fs::metadata(env.path("dl/tools").join(n))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode("build.sh") & 0o100, 0o100, "{:o}", mode("build.sh"));
    assert_eq!(mode("notes.txt") & 0o111, 0, "{:o}", mode("notes.txt"));
}

#[test]
fn aria2_finds_a_p2pfile_seed_through_its_dht() {
    if !have("aria2", Command::new("aria2c").arg("--version")) {
        return;
    }
    let env = Env::new();
    let root = sample(&env);
    let seed = env.serve(&host(), &["--json", "--torrent-out", "torrents"], &[&root]);
    let serving: serde_json::Value = serde_json::from_str(seed.magnet()).unwrap();
    let torrent = env.path(&format!(
        "torrents/{}.torrent",
        serving["info_hash"].as_str().unwrap()
    ));
    let entry = peer_of(serving["magnet"].as_str().unwrap());
    let ip = host();
    let mut c = Command::new("bash");
    c.arg(interop_dir().join("aria2_download.sh"))
        .arg(&torrent)
        .arg(env.path("aria2"))
        .arg(&ip)
        .arg(&entry)
        .arg("100")
        .env("ARIA2_PORT", free_port(&ip).to_string());
    let out = run(c, LIMIT);
    assert!(
        out.status.success(),
        "aria2 failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_same_tree(&root, &env.path("aria2/sample"));
}

/// transmission-cli 3.00, whose only DHT bootstrap node (`dht.bootstrap`)
/// is the seed, finds it through the DHT and downloads from it.
///
/// Transmission's DHT cannot run on loopback (it drops 127.0.0.0/8 as
/// martian) and does not look anything up until its table holds at least 4
/// nodes that answered and 9 in all (`tr-dht.c`); before that it falls back
/// to `dht.transmissionbt.com`. So everything runs in a network namespace
/// of its own (only `lo`, carrying 10.234.0.x: no route out, no DNS), with
/// eight more p2pfile hosts in the DHT, as a fleet has.
#[test]
fn transmission_finds_a_p2pfile_seed_through_its_dht() {
    if !have(
        "transmission-cli",
        Command::new("transmission-cli").arg("--version"),
    ) {
        return;
    }
    const HELPERS: usize = 8;
    let ip = |i: usize| format!("10.234.0.{}", i + 1);
    let addrs: Vec<String> = (0..HELPERS + 2).map(ip).collect();
    let Some(ns) = Netns::new("tr", &addrs.iter().map(String::as_str).collect::<Vec<_>>()) else {
        return;
    };
    let env = Env::new();
    let root = sample(&env);
    let port = "41000";
    let p2pfile = |host: usize, args: &[&str], path: &Path| {
        let mut c = env.cmd();
        c.args(["--ip", &ip(host), "--port", port, "--state"])
            .arg(env.path(&format!("{host}.db")))
            .args(args)
            .arg(path);
        Server::spawn(ns.wrap(&c), 1)
    };
    let seed = p2pfile(0, &["serve", "--json", "--torrent-out", "torrents"], &root);
    let serving: serde_json::Value = serde_json::from_str(seed.magnet()).unwrap();
    let entry = format!("{}:{port}", ip(0));
    let _helpers: Vec<Server> = (2..HELPERS + 2)
        .map(|h| {
            let file = env.path(&format!("helper{h}.txt"));
            fs::write(&file, format!("helper {h}")).unwrap();
            p2pfile(h, &["--peers", &entry, "serve"], &file)
        })
        .collect();

    // Transmission's own settings: bound to its address, no port mapping,
    // LPD, uTP, RPC or blocklist updates; stop (and exit) once complete.
    let cfg = env.path("transmission");
    fs::create_dir_all(&cfg).unwrap();
    let settings = serde_json::json!({
        "bind-address-ipv4": ip(1), "bind-address-ipv6": "::1",
        "peer-port": 41001, "peer-port-random-on-start": false,
        "port-forwarding-enabled": false, "lpd-enabled": false, "utp-enabled": false,
        "rpc-enabled": false, "blocklist-enabled": false, "encryption": 0,
        "dht-enabled": true, "pex-enabled": true,
        "ratio-limit-enabled": true, "ratio-limit": 0, "message-level": 3,
    });
    fs::write(cfg.join("settings.json"), settings.to_string()).unwrap();
    fs::write(cfg.join("dht.bootstrap"), format!("{} {port}\n", ip(0))).unwrap();
    let torrent = env.path(&format!(
        "torrents/{}.torrent",
        serving["info_hash"].as_str().unwrap()
    ));
    let mut c = Command::new("timeout");
    c.args(["-k", "5", "120", "transmission-cli", "-M", "-g"])
        .arg(&cfg)
        .arg("-w")
        .arg(env.path("tr"))
        .arg(&torrent)
        .env("HOME", env.path(""));
    let out = run(ns.wrap(&c), LIMIT);
    let log = stderr(&out);
    assert!(
        out.status.success(),
        "transmission failed ({:?}): {log}",
        out.status
    );
    assert!(
        log.contains("peers from DHT"),
        "transmission found no peer through the DHT: {log}"
    );
    // Transmission 3.00 creates no zero-length files.
    assert_same_tree_but(&root, &env.path("tr/sample"), &["empty"]);
}
