//! Issue #9: reruns that need no network, `--check`, the `summary` event,
//! `failed` in `status`, the free-space check, and the rough edges of a
//! download that fails.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(120);

/// `download --json` with its own address, into `dir`.
fn download(env: &Env, ip: &str, dir: &str, extra: &[&str], sources: &[&str]) -> Command {
    let mut c = env.cmd();
    c.args(["--ip", ip, "download", "--json", "--dir", dir])
        .args(extra)
        .args(sources);
    c
}

/// The `summary` event, which must be the last line.
fn summary(o: &std::process::Output) -> serde_json::Value {
    let evs = events(o);
    let last = evs.last().cloned().unwrap_or_default();
    assert_eq!(last["event"], "summary", "summary ends the run: {evs:?}");
    assert_eq!(
        evs.iter().filter(|e| e["event"] == "summary").count(),
        1,
        "one summary: {evs:?}"
    );
    let code = o.status.code().expect("exit code");
    assert_eq!(last["exit_code"], code, "{last}");
    last
}

fn status_downloads(env: &Env) -> Vec<serde_json::Value> {
    let mut c = env.cmd();
    c.args(["status", "--json"]);
    let out = run(c, LIMIT);
    assert!(out.status.success(), "status: {}", stderr(&out));
    events(&out)
        .into_iter()
        .filter(|e| e["event"] == "download")
        .collect()
}

/// A tree of a few files over several pieces at `src/tree`, served.
fn serve_tree(env: &Env, extra: &[&str]) -> (std::path::PathBuf, Server) {
    let root = env.path("src/tree");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("a.bin"), data(700_000, 1)).unwrap();
    fs::write(root.join("sub/b.bin"), data(300_000, 2)).unwrap();
    fs::write(root.join("sub/c.txt"), b"hello").unwrap();
    let seed = env.serve(&host(), extra, &[&root]);
    (root, seed)
}

/// The one file `serve --torrent-out torrents` wrote.
fn only_torrent(env: &Env) -> std::path::PathBuf {
    let mut files: Vec<_> = fs::read_dir(env.path("torrents"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

/// Holds `ip:port` so that any session the command starts would fail with
/// exit 4: a run that succeeds with it taken bound no socket.
fn taken_port(ip: &str) -> (TcpListener, String) {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    (l, port)
}

#[test]
fn rerun_after_success_needs_no_network_and_rechecks_changed_files() {
    let env = Env::new();
    let (src, seed) = serve_tree(&env, &[]);
    let ip = host();
    let magnet = seed.magnet().to_string();
    let out = run(download(&env, &ip, "dl", &[], &[&magnet]), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["changed"], true);
    assert_eq!(s["sources"][0]["result"], "downloaded");
    assert_eq!(s["sources"][0]["changed"], true);
    assert_eq!(s["sources"][0]["downloaded"], 1_000_005);
    assert_eq!(s["sources"][0]["bytes"], 1_000_005);
    assert_eq!(s["sources"][0]["name"], "tree");
    assert_eq!(s["sources"][0]["source"], magnet.as_str());
    assert!(seed.terminate().success());

    // The seed is gone and our port is taken: a session would exit 4
    // (port) or 3 (no seed); an offline rerun exits 0.
    let (_held, port) = taken_port(&ip);
    let rerun = |extra: &[&str]| {
        let mut c = env.cmd();
        c.args(["--ip", &ip, "--port", &port, "download", "--dir", "dl"])
            .args(["--timeout", "2"])
            .args(extra)
            .arg(&magnet);
        run(c, LIMIT)
    };
    let out = rerun(&["--json"]);
    assert!(out.status.success(), "offline rerun: {}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["changed"], false);
    assert_eq!(s["downloaded"], 0);
    assert_eq!(s["sources"][0]["result"], "already-complete");
    assert_eq!(
        s["sources"][0]["path"],
        env.path("dl/tree")
            .canonicalize()
            .unwrap()
            .display()
            .to_string()
    );
    let evs = events(&out);
    assert!(
        !evs.iter().any(|e| e["event"] == "started"),
        "no torrent started"
    );
    let done = JsonProc::find(&evs, "completed").expect("a completed event");
    assert_eq!(
        (done["downloaded"].as_u64(), done["result"].as_str()),
        (Some(0), Some("already-complete"))
    );

    // A newer mtime: pieces are verified on disk, still offline.
    let f = fs::File::options()
        .append(true)
        .open(env.path("dl/tree/a.bin"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let out = rerun(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("tree was already complete (verified ")
            && stderr(&out).contains(" pieces, nothing downloaded)"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).trim().ends_with("dl/tree"), "{}", stdout(&out));
    // The new signature is recorded: the next rerun checks nothing.
    let s = summary(&rerun(&["--json"]));
    assert_eq!(s["sources"][0]["result"], "already-complete");

    // Changed content needs the network, which is gone now: exit 3, and
    // `status` says why instead of a stale `complete`.
    fs::write(env.path("dl/tree/sub/c.txt"), b"HELLO").unwrap();
    let mut c = env.cmd();
    c.args(["--ip", &ip, "download", "--json", "--dir", "dl"])
        .args(["--timeout", "2", &magnet]);
    let out = run(c, LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["sources"][0]["result"], "incomplete");
    assert_eq!(s["changed"], false);
    let rows = status_downloads(&env);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "failed", "{rows:?}");
    let reason = rows[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no progress on tree"), "{reason}");
    let mut c = env.cmd();
    c.arg("status");
    let table = stdout(&run(c, LIMIT));
    assert!(
        table.contains("failed") && table.contains("no progress on tree"),
        "{table}"
    );

    // A seed again (the bare magnet: the recorded info needs no metadata):
    // only the changed piece moves, and the record is `complete` again.
    let seed = env.serve(&host(), &[], &[&src]);
    let bare = format!("{}&x.pe={}", without_peers(&magnet), peer_of(seed.magnet()));
    let out = run(download(&env, &ip, "dl", &[], &[&bare]), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["sources"][0]["result"], "downloaded");
    assert_eq!(s["changed"], true);
    let moved = s["downloaded"].as_u64().unwrap();
    assert!(moved > 0 && moved < 1_000_005 / 2, "moved {moved}");
    assert_same_tree(&src, &env.path("dl/tree"));
    let rows = status_downloads(&env);
    assert_eq!(rows[0]["state"], "complete", "{rows:?}");
    assert!(rows[0]["reason"].is_null(), "{rows:?}");
}

#[test]
fn prefilled_host_fetches_metadata_verifies_and_moves_nothing() {
    let env = Env::new();
    let (src, seed) = serve_tree(&env, &[]);
    // Copied by hand to two hosts; neither has a state database.
    for d in ["h1", "h2"] {
        fs::create_dir_all(env.path(d)).unwrap();
        let ok = Command::new("cp")
            .args(["-a"])
            .arg(&src)
            .arg(env.path(d))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "--state",
        "h1.db",
        "download",
        "--dir",
        "h1",
    ])
    .arg(seed.magnet());
    let out = run(c, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("h1/tree was already complete (verified ")
            && err.contains(" pieces, nothing downloaded)"),
        "{err}"
    );
    assert_eq!(
        stdout(&out).trim(),
        env.path("h1/tree").display().to_string()
    );
    let mut c = download(&env, &host(), "h2", &[], &[seed.magnet()]);
    c.args(["--state", "h2.db"]);
    let out = run(c, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["sources"][0]["result"], "verified");
    assert_eq!(s["sources"][0]["changed"], false);
    assert_eq!(s["sources"][0]["downloaded"], 0);
    let checked = JsonProc::find(&events(&out), "checked").expect("checked");
    assert_eq!(checked["already_complete"], true, "{checked}");
    assert_eq!(s["changed"], false);
    assert_same_tree(&src, &env.path("h2/tree"));
}

#[test]
fn check_needs_no_network_writes_nothing_and_says_0_or_3() {
    let env = Env::new();
    let (src, seed) = serve_tree(&env, &["--torrent-out", "torrents"]);
    let magnet = seed.magnet().to_string();
    assert!(seed.terminate().success());
    let torrent = only_torrent(&env);
    let torrent = torrent.display().to_string();
    let ip = host();
    let (_held, port) = taken_port(&ip);
    let check = |dir: &str, source: &str, state: &str| {
        let mut c = env.cmd();
        c.args(["--ip", &ip, "--port", &port, "--state", state, "download"])
            .args(["--json", "--check", "--dir", dir, source]);
        run(c, LIMIT)
    };
    // A magnet this host never saw, into a directory that does not exist.
    let out = check("nowhere", &magnet, "c.db");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint: run the same download without --check"));
    assert_eq!(summary(&out)["sources"][0]["result"], "incomplete");
    assert!(
        !env.path("nowhere").exists(),
        "--check creates no directory"
    );
    assert!(!env.path("c.db").exists(), "--check creates no database");

    // Content copied by hand, checked against the .torrent.
    fs::create_dir_all(env.path("dl")).unwrap();
    Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(env.path("dl"))
        .status()
        .unwrap();
    let out = check("dl", &torrent, "c.db");
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["sources"][0]["result"], "verified");
    assert_eq!(s["changed"], false);
    assert!(!env.path("c.db").exists());

    // The environment variable turns it on too; one wrong byte → 3.
    let mut bytes = fs::read(env.path("dl/tree/a.bin")).unwrap();
    bytes[1000] ^= 1;
    fs::write(env.path("dl/tree/a.bin"), bytes).unwrap();
    let mut c = env.cmd();
    c.env("P2PFILE_CHECK", "1")
        .args(["--ip", &ip, "--port", &port, "--state", "c2.db", "download"])
        .args(["--json", "--dir", "dl", &torrent]);
    let out = run(c, LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(summary(&out)["sources"][0]["result"], "incomplete");
    assert!(!env.path("c2.db").exists());
    assert!(
        !env.path("dl/.tree.p2pfile-part").exists(),
        "nothing written"
    );
}

#[test]
fn check_uses_the_recorded_signature_after_a_download() {
    let env = Env::new();
    let (_, seed) = serve_tree(&env, &[]);
    let magnet = seed.magnet().to_string();
    let out = run(download(&env, &host(), "dl", &[], &[&magnet]), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(seed.terminate().success());
    let ip = host();
    let (_held, port) = taken_port(&ip);
    let mut c = env.cmd();
    c.args([
        "--ip", &ip, "--port", &port, "download", "--check", "--json",
    ])
    .args(["--dir", "dl", &magnet]);
    let out = run(c, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&out)["sources"][0]["result"], "already-complete");
    fs::remove_file(env.path("dl/tree/sub/b.bin")).unwrap();
    let mut c = env.cmd();
    c.args([
        "--ip", &ip, "--port", &port, "download", "--check", "--json",
    ])
    .args(["--dir", "dl", &magnet]);
    let out = run(c, LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(summary(&out)["sources"][0]["result"], "incomplete");
}

#[test]
fn summary_ends_a_timeout_and_an_interrupt() {
    let env = Env::new();
    let dead = host();
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&dn=thing&x.pe={dead}:9",
        "cd".repeat(20)
    );
    let out = run(
        download(&env, &host(), "dl", &["--timeout", "2"], &[&magnet]),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["changed"], false);
    assert_eq!(s["sources"][0]["result"], "incomplete");
    assert_eq!(s["sources"][0]["info_hash"], "cd".repeat(20));
    // One magnet peer, nobody connected: singular and plural right.
    let err = stderr(&out);
    assert!(err.contains("0 peers connected, 1 address known"), "{err}");
    assert_eq!(status_downloads(&env)[0]["state"], "failed");

    let mut p = JsonProc::spawn(download(&env, &host(), "dl2", &[], &[&magnet]));
    p.wait_for("started", |e| e["event"] == "started");
    signal(&p.child, "INT");
    let (status, evs) = p.finish();
    assert_eq!(status.code(), Some(130));
    let last = evs.last().unwrap();
    assert_eq!(last["event"], "summary", "{evs:?}");
    assert_eq!(last["exit_code"], 130);
    assert_eq!(last["sources"][0]["result"], "interrupted");
}

#[test]
fn a_multi_source_timeout_names_only_its_own_magnet_peers() {
    let env = Env::new();
    let (a, b) = (host(), host());
    let m1 = format!("magnet:?xt=urn:btih:{}&dn=one&x.pe={a}:9", "11".repeat(20));
    let m2 = format!("magnet:?xt=urn:btih:{}&dn=two&x.pe={b}:9", "22".repeat(20));
    let out = run(
        download(&env, &host(), "dl", &["--timeout", "2"], &[&m1, &m2]),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or_default();
    let (own, other) = if first.contains("no progress on one") {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(first.contains(&format!("magnet peers {own}:9")), "{err}");
    assert!(!err.contains(&format!("{other}:9")), "{err}");
    let s = summary(&out);
    assert_eq!(s["sources"].as_array().unwrap().len(), 2);
    for row in status_downloads(&env) {
        assert_eq!(row["state"], "failed", "{row}");
        assert!(!row["reason"].as_str().unwrap_or_default().is_empty());
    }
}

#[test]
fn two_sources_with_one_name_are_refused_before_any_work() {
    let env = Env::new();
    let m1 = format!("magnet:?xt=urn:btih:{}&dn=same", "33".repeat(20));
    let m2 = format!("magnet:?xt=urn:btih:{}&dn=same", "44".repeat(20));
    for sources in [[&m1, &m2], [&m1, &m1]] {
        let mut c = env.cmd();
        c.args(["--ip", &host(), "download", "--dir", "dl/sub"])
            .args(sources);
        let out = run(c, LIMIT);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
        assert!(!env.path("dl").exists());
        assert!(!env.path(".p2pfile.db").exists());
    }
    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--dir", "dl", &m1, &m2]);
    assert!(stderr(&run(c, LIMIT)).contains("two sources are named \"same\""));
}

#[test]
fn a_failed_download_leaves_nothing_behind() {
    let env = Env::new();
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&dn=thing&x.pe={}:9",
        "55".repeat(20),
        host()
    );
    // Timeout: the directory it created goes again (nothing arrived).
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "download",
        "--timeout",
        "1",
        "--dir",
        "new/deeper",
    ])
    .arg(&magnet);
    let out = run(c, LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!env.path("new").exists(), "created directories removed");
    // An address that is not this host's, and a taken port: no database.
    fs::remove_file(env.path(".p2pfile.db")).unwrap();
    let mut c = env.cmd();
    c.args(["--ip", "192.0.2.1", "download", "--dir", "d2", &magnet]);
    let out = run(c, LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let ip = host();
    let (_held, port) = taken_port(&ip);
    let mut c = env.cmd();
    c.args([
        "--ip", &ip, "--port", &port, "download", "--dir", "d3", &magnet,
    ]);
    let out = run(c, LIMIT);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    for left in [".p2pfile.db", ".p2pfile.db-wal", "d2", "d3"] {
        assert!(!env.path(left).exists(), "{left} left behind");
    }
}

#[test]
fn an_unwritable_dir_is_a_usage_error_like_an_uncreatable_one() {
    let env = Env::new();
    let magnet = format!("magnet:?xt=urn:btih:{}&dn=x", "66".repeat(20));
    let ro = env.path("ro");
    fs::create_dir_all(&ro).unwrap();
    // Root writes anywhere it may; /proc refuses new files even to root.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let unwritable = if is_root {
        "/proc".to_string()
    } else {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        ro.display().to_string()
    };
    let uncreatable = env.path("file-not-dir/sub");
    fs::write(env.path("file-not-dir"), b"x").unwrap();
    let mut hints = Vec::new();
    for d in [unwritable.as_str(), &uncreatable.display().to_string()] {
        let mut c = env.cmd();
        c.args(["--ip", &host(), "download", "--dir", d, &magnet]);
        let out = run(c, LIMIT);
        assert_eq!(out.status.code(), Some(2), "{d}: {}", stderr(&out));
        let err = stderr(&out);
        hints.push(err.lines().find(|l| l.contains("hint:")).map(String::from));
    }
    assert!(hints[0].is_some());
    assert_eq!(hints[0], hints[1]);
}

/// Runs `p2pfile ARGS` inside a private mount namespace whose `dir` is a
/// 1 MiB tmpfs, then lists `dir`; `None` when namespaces are not allowed.
fn in_small_fs(env: &Env, dir: &Path, args: &[&str]) -> Option<(std::process::Output, String)> {
    let c = env.cmd();
    let bin = env!("CARGO_BIN_EXE_p2pfile");
    let script = r#"mount -t tmpfs -o size=1m tmpfs "$1" || exit 99; d="$1"; shift; "$@"; rc=$?; echo "--listing--"; ls -A "$d"; exit $rc"#;
    let mut u = Command::new("unshare");
    u.args(["-m", "sh", "-c", script, "sh"])
        .arg(dir)
        .arg(bin)
        .args(args);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => u.env(k, v),
            None => u.env_remove(k),
        };
    }
    u.current_dir(env.dir.path());
    let out = run(u, LIMIT);
    if out.status.code() == Some(99) || stderr(&out).contains("unshare:") {
        return None;
    }
    let text = stdout(&out);
    let listing = text
        .split("--listing--")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((out, listing))
}

#[test]
fn not_enough_space_fails_before_any_network_or_write() {
    let env = Env::new();
    let small = env.path("small");
    fs::create_dir_all(&small).unwrap();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/big.bin"), data(3 << 20, 1)).unwrap();
    let seed = env.serve(
        &host(),
        &["--torrent-out", "torrents"],
        &[&env.path("src/big.bin")],
    );
    let torrent = only_torrent(&env);
    // Info known (.torrent): refused before the session, so a taken port
    // does not matter.
    let ip = host();
    let (_held, port) = taken_port(&ip);
    let small_s = small.display().to_string();
    let torrent_s = torrent.display().to_string();
    let Some((out, listing)) = in_small_fs(
        &env,
        &small,
        &[
            "--ip", &ip, "--port", &port, "download", "--dir", &small_s, &torrent_s,
        ],
    ) else {
        eprintln!("skipped: no mount namespace here");
        return;
    };
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs 3.0 MiB, 1.0 MiB free"), "{err}");
    assert!(err.contains("hint: free disk space"), "{err}");
    assert!(listing.trim().is_empty(), "nothing written: {listing}");
    let rows = status_downloads(&env);
    assert_eq!(rows[0]["state"], "failed", "{rows:?}");
    // A magnet: refused once metadata arrives, before any piece.
    let Some((out, listing)) = in_small_fs(
        &env,
        &small,
        &[
            "--ip",
            &host(),
            "download",
            "--json",
            "--dir",
            &small_s,
            seed.magnet(),
        ],
    ) else {
        return;
    };
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs 3.0 MiB, 1.0 MiB free"), "{err}");
    assert!(listing.trim().is_empty(), "no part written: {listing}");
    let text = stdout(&out);
    let last: serde_json::Value = serde_json::from_str(
        text.split("--listing--")
            .next()
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(last["sources"][0]["result"], "failed");
    assert_eq!(last["exit_code"], 1);
}

/// A peer that claims every piece and answers each request with garbage.
pub(crate) fn corrupt_seed(ip: &str, info_hash: [u8; 20], pieces: usize) -> String {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in l.incoming().take(8) {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let _ = serve_garbage(&mut s, info_hash, pieces);
            });
        }
    });
    addr
}

fn serve_garbage(s: &mut TcpStream, info_hash: [u8; 20], pieces: usize) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut hs = [0u8; 68];
    s.read_exact(&mut hs)?;
    let mut ours = vec![19];
    ours.extend_from_slice(b"BitTorrent protocol");
    ours.extend_from_slice(&[0; 8]);
    ours.extend_from_slice(&info_hash);
    ours.extend_from_slice(b"-XX0000-corrupt-seed");
    s.write_all(&ours)?;
    let mut bits = vec![0u8; pieces.div_ceil(8)];
    for i in 0..pieces {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    let mut msg = ((bits.len() + 1) as u32).to_be_bytes().to_vec();
    msg.push(5);
    msg.extend_from_slice(&bits);
    msg.extend_from_slice(&[0, 0, 0, 1, 1]); // unchoke
    s.write_all(&msg)?;
    // Bounded: at most this many messages per connection.
    for _ in 0..10_000 {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body)?;
        if body.first() == Some(&6) && body.len() == 13 {
            let want = u32::from_be_bytes(body[9..13].try_into().unwrap()) as usize;
            let mut piece = ((9 + want) as u32).to_be_bytes().to_vec();
            piece.push(7);
            piece.extend_from_slice(&body[1..9]);
            piece.extend(std::iter::repeat_n(0xAAu8, want));
            s.write_all(&piece)?;
        }
    }
    Ok(())
}

#[test]
fn the_timeout_names_the_peers_that_sent_corrupt_pieces() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/f.bin"), data(200_000, 9)).unwrap();
    let seed = env.serve(
        &host(),
        &["--torrent-out", "torrents"],
        &[&env.path("src/f.bin")],
    );
    let hex = seed.magnet()[20..60].to_string();
    assert!(seed.terminate().success());
    let hash: [u8; 20] = (0..20)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let torrent = env.path(&format!("torrents/{hex}.torrent"));
    let piece = p2pfile_engine::metainfo::piece_length_for(200_000) as usize;
    let pieces = 200_000usize.div_ceil(piece);
    let bad = corrupt_seed(&host(), hash, pieces);
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "--peers",
        &bad,
        "download",
        "--timeout",
        "3",
    ])
    .args(["--dir", "dl"])
    .arg(&torrent);
    let out = run(c, LIMIT);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "corrupt pieces (failing their hash check) came from {bad}"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "hint: the seed at {bad} serves data that does not match"
        )),
        "{err}"
    );
}

/// A rerun with `--seeding` on content already complete reports it
/// completed once (and prints its path once), then seeds it.
#[test]
fn a_seeding_rerun_of_complete_content_reports_it_once() {
    let env = Env::new();
    let (_root, seed) = serve_tree(&env, &[]);
    let ip = host();
    let first = run(download(&env, &ip, "dl", &[], &[seed.magnet()]), LIMIT);
    assert!(first.status.success(), "{}", stderr(&first));
    let again = run(
        download(
            &env,
            &ip,
            "dl",
            &["--seeding", "--seeding-time", "1"],
            &[seed.magnet()],
        ),
        LIMIT,
    );
    assert!(again.status.success(), "{}", stderr(&again));
    let evs = events(&again);
    let completed = evs.iter().filter(|e| e["event"] == "completed").count();
    assert_eq!(completed, 1, "{evs:?}");
    assert!(evs.iter().any(|e| e["event"] == "seeding"), "{evs:?}");
    assert_eq!(summary(&again)["changed"], false);
}
