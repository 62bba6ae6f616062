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
        "apt-get install python3-libtorrent aria2",
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

#[test]
fn libtorrent_downloads_from_p2pfile_serve() {
    if !have_libtorrent() {
        return;
    }
    let env = Env::new();
    let root = sample(&env);
    let seed = env.serve(&host(), &[], &[&root]);
    let ip = host();
    let mut c = lt_client();
    c.args(["download", seed.magnet(), "--ip", &ip, "--port"])
        .arg(free_port(&ip).to_string())
        .args(["--timeout", "120", "--dir"])
        .arg(env.path("lt"));
    let out = run(c, LIMIT);
    assert!(out.status.success(), "libtorrent failed: {}", stderr(&out));
    // libtorrent creates no empty directories; compare the files.
    assert_same_tree(&root, &env.path("lt/sample"));
}

/// libtorrent builds a torrent of `root` and seeds it; p2pfile downloads
/// it into `dl/` and must succeed.
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
    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--dir"])
        .arg(env.path("dl"))
        .arg(line.trim());
    let out = run(c, LIMIT);
    let _ = seed.kill();
    let _ = seed.wait();
    assert!(out.status.success(), "p2pfile failed: {}", stderr(&out));
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
