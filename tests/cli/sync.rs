//! `p2pfile sync`: peers as separate processes on their own 127.0.0.x
//! addresses, each with its own folder and state database. Waits are
//! bounded (they guard against hangs); no test asserts a duration.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Env, JsonProc, assert_same_tree_but, data, events, host, run, stderr, stdout};

/// Port every peer listens on (each on its own address).
const PORT: &str = "42070";

/// One peer: an address, a folder and a state database in the sandbox.
struct Peer<'a> {
    env: &'a Env,
    ip: String,
    name: String,
}

impl<'a> Peer<'a> {
    fn new(env: &'a Env, name: &str) -> Self {
        let p = Peer {
            env,
            ip: host(),
            name: name.to_string(),
        };
        fs::create_dir_all(p.dir()).unwrap();
        p
    }

    fn dir(&self) -> PathBuf {
        self.env.path(&self.name)
    }

    fn addr(&self) -> String {
        format!("{}:{PORT}", self.ip)
    }

    /// `p2pfile --ip IP --port PORT --state NAME.db --json sync DIR --discovery-port 0 ARGS`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd();
        c.args(["--ip", &self.ip, "--port", PORT, "--state"])
            .arg(self.env.path(&format!("{}.db", self.name)))
            .args(["--json", "sync"])
            .arg(self.dir())
            .args(["--discovery-port", "0"])
            .args(args);
        c
    }

    /// The folder's read-write key (made on first use).
    fn key(&self) -> String {
        let mut c = self.env.cmd();
        c.args(["--state"])
            .arg(self.env.path(&format!("{}.db", self.name)))
            .arg("sync")
            .arg(self.dir())
            .arg("--show-keys");
        let out = run(c, Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("rw ").map(str::to_string))
            .expect("an rw key")
    }

    fn read_only_key(&self) -> String {
        let mut c = self.env.cmd();
        c.args(["--state"])
            .arg(self.env.path(&format!("{}.db", self.name)))
            .arg("sync")
            .arg(self.dir())
            .arg("--show-keys");
        let out = run(c, Duration::from_secs(20));
        stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("ro ").map(str::to_string))
            .expect("an ro key")
    }

    /// Continuous sync in the background.
    fn start(&self, args: &[&str]) -> JsonProc {
        let mut p = JsonProc::spawn(self.cmd(args));
        p.wait_for("folder", |e| e["event"] == "folder");
        p
    }

    /// `--once` to completion: exit code and events.
    fn once(&self, args: &[&str]) -> (Option<i32>, Vec<serde_json::Value>, String) {
        let mut c = self.cmd(args);
        c.arg("--once");
        let out = run(c, Duration::from_secs(120));
        (out.status.code(), events(&out), stderr(&out))
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        let p = self.dir().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    fn read(&self, rel: &str) -> Option<Vec<u8>> {
        fs::read(self.dir().join(rel)).ok()
    }
}

fn summary(events: &[serde_json::Value]) -> serde_json::Value {
    events
        .iter()
        .rev()
        .find(|e| e["event"] == "summary")
        .cloned()
        .unwrap_or_else(|| panic!("no summary in {events:?}"))
}

/// Both folders hold the same files and bytes (their `.p2pfile/` aside).
fn assert_same_folder(a: &Path, b: &Path) {
    assert_same_tree_but(a, b, &[".p2pfile"]);
}

/// Two peers that synced `files` once, A's run stopped: the start of every
/// two-peer scenario. Returns the folder key.
fn synced_pair(a: &Peer, b: &Peer, files: &[(&str, &[u8])]) -> String {
    for (path, bytes) in files {
        a.write(path, bytes);
    }
    let key = a.key();
    let _a_run = a.start(&[]);
    let (code, _, err) = b.once(&["--key", &key, "--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    key
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// Files under a folder with a final name (no `.p2pfile/`).
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".p2pfile") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The plan of the folder-sync project we learn from: A has 10 MiB, B gets
/// it; B adds 64 MiB and 50 small files and A, killed half a second into
/// receiving them, completes after a restart; 10 % of the large file
/// changes on A and about that much moves.
#[test]
fn two_peers_the_reference_plan() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    a.write("ten.bin", &data(10 << 20, 1));
    let key = a.key();
    let a_run = a.start(&[]);
    let (code, evs, err) = b.once(&["--key", &key, "--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(summary(&evs)["added"], 1);
    assert_same_folder(&a.dir(), &b.dir());
    drop(a_run);

    // B adds a large file and 50 small ones, and serves them.
    let big = data(64 << 20, 2);
    b.write("big/large.bin", &big);
    for i in 0..50 {
        b.write(&format!("small/f{i:02}.txt"), &data(1024, 100 + i));
    }
    let _b_run = b.start(&["--peers", &a.addr()]);
    // A starts, and is killed half a second into receiving (held to
    // 16 MiB/s, so half a second is a quarter of the large file).
    let mut first = a.cmd(&["--once", "--peers", &b.addr()]);
    first.args(["--download-limit", "16"]);
    let mut a_first = JsonProc::spawn(first);
    a_first.wait_for("the peer", |e| e["event"] == "peer");
    std::thread::sleep(Duration::from_millis(500));
    let _ = a_first.child.kill();
    let _ = a_first.child.wait();
    // Nothing half-written stands under a final name.
    if let Some(got) = a.read("big/large.bin") {
        assert_eq!(got.len(), big.len(), "a partial file under the final name");
        assert!(got == big, "wrong bytes under the final name");
    }
    let (code, evs, err) = a.once(&["--peers", &b.addr()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(summary(&evs)["changed"], true);
    assert_same_folder(&a.dir(), &b.dir());

    // 10 % of the large file changes on A: about that much moves.
    let mut changed = big.clone();
    let tenth = changed.len() / 10;
    for byte in &mut changed[1 << 20..(1 << 20) + tenth] {
        *byte ^= 0x5a;
    }
    a.write("big/large.bin", &changed);
    let (code, evs, err) = a.once(&["--peers", &b.addr()]);
    assert_eq!(code, Some(0), "{err}");
    let sent = summary(&evs)["bytes_out"].as_u64().unwrap();
    assert!(
        sent >= tenth as u64 / 2 && sent <= tenth as u64 * 2,
        "sent {sent} bytes for a change of {tenth}"
    );
    eventually("B has the new version", || {
        b.read("big/large.bin").as_deref() == Some(&changed[..])
    });
    assert_same_folder(&a.dir(), &b.dir());
    // The old version is in B's trash, not gone.
    let trash = b.dir().join(".p2pfile/trash/big");
    let kept: Vec<_> = fs::read_dir(&trash).unwrap().flatten().collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(fs::read(kept[0].path()).unwrap(), big);
}

/// Three peers in continuous mode change different files at once; each
/// saved change reaches the others.
#[test]
fn three_peers_change_different_files_at_once() {
    let env = Env::new();
    let peers = [
        Peer::new(&env, "a"),
        Peer::new(&env, "b"),
        Peer::new(&env, "c"),
    ];
    let key = peers[0].key();
    let others = |i: usize| {
        peers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| p.addr())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut runs: Vec<JsonProc> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| p.start(&["--key", &key, "--peers", &others(i)]))
        .collect();
    for r in &mut runs {
        r.wait_for("a peer", |e| e["event"] == "peer");
    }
    for (i, p) in peers.iter().enumerate() {
        p.write(&format!("from-{i}.txt"), &data(50_000 + i * 1000, i as u64));
    }
    for p in &peers {
        eventually(&format!("{} has every file", p.name), || {
            files(&p.dir()).len() == 3
        });
    }
    for (i, p) in peers.iter().enumerate() {
        for q in &peers {
            assert_eq!(
                q.read(&format!("from-{i}.txt")).unwrap(),
                data(50_000 + i * 1000, i as u64),
                "{} has {i}'s file",
                q.name
            );
        }
        let _ = p;
    }
    // A change to an existing file, saved later, reaches the others too.
    peers[1].write("from-0.txt", b"edited on b");
    for p in &peers {
        eventually("the edit everywhere", || {
            p.read("from-0.txt").as_deref() == Some(b"edited on b".as_slice())
        });
    }
}

/// Independent edits of one file: both kept, the later edit under the
/// name, the other as a conflict copy, the same on both peers.
#[test]
fn a_conflict_keeps_both_versions() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    synced_pair(&a, &b, &[("notes.txt", b"base")]);
    // Both edit while apart; B's edit is later.
    a.write("notes.txt", b"edit on a");
    std::thread::sleep(Duration::from_millis(1100));
    b.write("notes.txt", b"edit on b, later");
    let _a_run = a.start(&[]);
    let (code, _, err) = b.once(&["--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    eventually("the conflict copy on A", || files(&a.dir()).len() == 2);
    for p in [&a, &b] {
        assert_eq!(p.read("notes.txt").unwrap(), b"edit on b, later");
        let list = files(&p.dir());
        let copy = list
            .iter()
            .find(|f| f.starts_with("notes.sync-conflict-") && f.ends_with(".txt"))
            .unwrap_or_else(|| panic!("no conflict copy on {}: {list:?}", p.name));
        assert_eq!(p.read(copy).unwrap(), b"edit on a");
    }
}

/// A delete that meets a modification loses: the modified file stays.
#[test]
fn a_modification_beats_a_delete() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    synced_pair(&a, &b, &[("keep.txt", b"v1")]);
    fs::remove_file(a.dir().join("keep.txt")).unwrap();
    b.write("keep.txt", b"v2 from b");
    let _a_run = a.start(&[]);
    let (code, _, err) = b.once(&["--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    eventually("the modification back on A", || {
        a.read("keep.txt").as_deref() == Some(b"v2 from b".as_slice())
    });
    assert_eq!(b.read("keep.txt").unwrap(), b"v2 from b");
}

/// Deletes and renames propagate; a rename moves no file data.
#[test]
fn a_rename_moves_no_data_and_a_delete_goes_to_the_trash() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    synced_pair(
        &a,
        &b,
        &[("old-name.bin", &data(8 << 20, 7)), ("doomed.txt", b"bye")],
    );
    fs::rename(a.dir().join("old-name.bin"), a.dir().join("new-name.bin")).unwrap();
    fs::remove_file(a.dir().join("doomed.txt")).unwrap();
    let _a_run = a.start(&[]);
    let (code, evs, err) = b.once(&["--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    let s = summary(&evs);
    assert_eq!(s["bytes_in"], 0, "a rename moves no data: {s}");
    assert_eq!(files(&b.dir()), vec!["new-name.bin".to_string()]);
    assert_eq!(b.read("new-name.bin").unwrap(), data(8 << 20, 7));
    let trash: Vec<_> = fs::read_dir(b.dir().join(".p2pfile/trash"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        trash
            .iter()
            .any(|e| e.file_name().to_string_lossy().starts_with("doomed.txt~")),
        "the deleted file is in the trash"
    );
}

/// A peer with the read-only key receives everything and never sends a
/// change: its edit stays local and is reported as not in step.
#[test]
fn a_read_only_peer_receives_and_never_sends() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let c = Peer::new(&env, "c");
    a.write("doc.txt", b"from the writer");
    let ro = a.read_only_key();
    assert!(ro.starts_with("p2pf-ro-"));
    let mut a_run = a.start(&[]);
    let (code, _, err) = c.once(&["--key", &ro, "--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(c.read("doc.txt").unwrap(), b"from the writer");
    std::thread::sleep(Duration::from_millis(1100));
    c.write("doc.txt", b"edited by the reader");
    c.write("extra.txt", b"new on the reader");
    let (code, _, err) = c.once(&["--peers", &a.addr(), "--timeout", "4"]);
    assert_eq!(
        code,
        Some(3),
        "a local edit on a read-only peer is not in step: {err}"
    );
    assert!(err.contains("not in step"), "{err}");
    assert_eq!(a.read("doc.txt").unwrap(), b"from the writer");
    assert!(a.read("extra.txt").is_none());
    let _ = a_run.child.kill();
    assert!(JsonProc::find(&a_run.seen, "file_changed").is_none());
}

/// A process without the key can neither read nor write the folder: with
/// another key it finds no peer, and a plain download of a file's public
/// info-hash finds nothing.
#[test]
fn without_the_key_nothing_is_read_or_written() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let x = Peer::new(&env, "x");
    a.write("secret.txt", b"for key holders only");
    let _a_run = a.start(&[]);
    x.write("planted.txt", b"from an outsider");
    let other_key = x.key();
    let (code, _, err) = x.once(&["--key", &other_key, "--peers", &a.addr(), "--timeout", "4"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("found 0 of 1 expected peers"), "{err}");
    assert!(x.read("secret.txt").is_none());
    assert!(a.read("planted.txt").is_none());
    // The same bytes served as a plain torrent elsewhere give the public
    // info-hash; the sync peer does not answer it.
    let src = env.path("copy");
    fs::create_dir_all(&src).unwrap();
    let name = "secret.txt";
    fs::write(src.join(name), b"for key holders only").unwrap();
    let mut m = env.cmd();
    m.args(["--ip", &host(), "serve"]).arg(src.join(name));
    let seed = crate::util::Server::spawn(m, 1);
    let hash = seed.magnet().split("btih:").nth(1).unwrap()[..40].to_string();
    drop(seed);
    let magnet = format!("magnet:?xt=urn:btih:{hash}&x.pe={}", a.addr());
    let mut d = env.cmd();
    d.args(["--ip", &host(), "download", "--timeout", "3", "--dir"])
        .arg(env.path("stolen"))
        .arg(&magnet);
    let out = run(d, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!env.path("stolen/secret.txt").exists());
}

/// `--once`: exit codes, and a `summary` that says whether anything changed.
#[test]
fn once_exit_codes_and_summary() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    a.write("f.txt", b"x");
    let key = a.key();
    // No peer at all: 3.
    let (code, evs, err) = b.once(&["--key", &key, "--timeout", "2"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(summary(&evs)["in_step"], false);
    // Bad input: 2.
    let (code, _, err) = b.once(&["--key", "p2pf-rw-nonsense"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad --key"), "{err}");
    let mut c = env.cmd();
    c.args(["sync", "missing-dir", "--once"]);
    let out = run(c, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no such directory"),
        "{}",
        stderr(&out)
    );
    // Converged: 0, changed; again: 0, not changed.
    let _a_run = a.start(&[]);
    let (code, evs, err) = b.once(&["--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    let s = summary(&evs);
    assert_eq!(
        (
            s["changed"].clone(),
            s["added"].clone(),
            s["in_step"].clone()
        ),
        (true.into(), 1.into(), true.into())
    );
    let (code, evs, _) = b.once(&["--peers", &a.addr()]);
    assert_eq!(code, Some(0));
    let s = summary(&evs);
    assert_eq!(
        (s["changed"].clone(), s["bytes_in"].clone()),
        (false.into(), 0.into())
    );
}

/// `.p2pignore`: ignored paths are never announced or touched.
#[test]
fn p2pignore_paths_are_never_announced_or_touched() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    a.write(".p2pignore", b"*.log\nbuild/\n");
    a.write("app.log", b"a's log");
    a.write("build/out.o", b"a's object");
    a.write("src/main.rs", b"fn main() {}");
    b.write(".p2pignore", b"*.log\nbuild/\n");
    b.write("app.log", b"b's own log");
    let key = a.key();
    let _a_run = a.start(&[]);
    let (code, _, err) = b.once(&["--key", &key, "--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(b.read("src/main.rs").unwrap(), b"fn main() {}");
    assert_eq!(b.read("app.log").unwrap(), b"b's own log");
    assert!(b.read("build/out.o").is_none());
    assert_eq!(a.read("app.log").unwrap(), b"a's log");
}

/// A full disk stops sync before it starts pulling, with exit 1 and a
/// clear error, and leaves the folder as it was. Needs root for a tmpfs.
#[test]
fn full_disk_stops_before_pulling() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(b.dir())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(b.dir());
    b.write("mine.txt", b"already here");
    a.write("huge.bin", &data(6 << 20, 3));
    let key = a.key();
    let _a_run = a.start(&[]);
    let (code, evs, err) = b.once(&["--key", &key, "--peers", &a.addr()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not enough space"), "{err}");
    assert!(err.contains("hint: free disk space"), "{err}");
    assert!(
        evs.iter()
            .any(|e| e["event"] == "error" && e["kind"] == "no-space")
    );
    assert_eq!(files(&b.dir()), vec!["mine.txt".to_string()]);
}

/// Peers find each other by LAN broadcast alone, in network namespaces on
/// a bridge this test makes and removes. Needs root and `ip netns`.
#[test]
fn discovery_by_broadcast_alone_in_namespaces() {
    let Some(lab) = Lab::up(2) else {
        return;
    };
    let env = Env::new();
    let a = env.path("a");
    let b = env.path("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("found.txt"), b"over the LAN").unwrap();
    let bin = env!("CARGO_BIN_EXE_p2pfile");
    let sync = |i: usize, dir: &Path, extra: &[&str]| {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &lab.ns(i),
            bin,
            "--ip",
            &lab.ip(i),
            "--port",
            PORT,
            "--state",
        ])
        .arg(env.path(&format!("{i}.db")))
        .args(["--json", "sync"])
        .arg(dir)
        .args(extra)
        .env("HOME", env.path(""));
        c
    };
    let mut show = sync(0, &a, &["--show-keys"]);
    let out = run(
        std::mem::replace(&mut show, Command::new("true")),
        Duration::from_secs(20),
    );
    let keys: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    let key = keys["rw"].as_str().unwrap().to_string();
    let _a_run = JsonProc::spawn(sync(0, &a, &[]));
    let out = run(
        sync(1, &b, &["--key", &key, "--once", "--timeout", "30"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fs::read(b.join("found.txt")).unwrap(), b"over the LAN");
}

/// Network namespaces joined by a bridge (in its own namespace), torn down
/// on drop. Addresses exist only inside them.
struct Lab {
    prefix: String,
    hosts: usize,
}

impl Lab {
    fn up(hosts: usize) -> Option<Lab> {
        let prefix = format!("p2ps{}", std::process::id() % 100_000);
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["netns", "add", &format!("{prefix}-br")]) {
            eprintln!("skipped: network namespaces need root and iproute2");
            return None;
        }
        let lab = Lab { prefix, hosts };
        let br = format!("{}-br", lab.prefix);
        let in_br = |args: &[&str]| {
            let mut all = vec!["netns", "exec", br.as_str(), "ip"];
            all.extend_from_slice(args);
            ok(&all)
        };
        assert!(in_br(&["link", "add", "br0", "type", "bridge"]));
        assert!(in_br(&["link", "set", "br0", "up"]));
        for i in 0..hosts {
            let ns = lab.ns(i);
            assert!(ok(&["netns", "add", &ns]));
            let (h, s) = (format!("h{i}"), format!("s{i}"));
            assert!(in_br(&[
                "link", "add", &s, "type", "veth", "peer", "name", &h, "netns", &ns
            ]));
            assert!(in_br(&["link", "set", &s, "master", "br0", "up"]));
            let in_ns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", ns.as_str(), "ip"];
                all.extend_from_slice(args);
                ok(&all)
            };
            assert!(in_ns(&[
                "addr",
                "add",
                &format!("{}/24", lab.ip(i)),
                "dev",
                &h
            ]));
            assert!(in_ns(&["link", "set", &h, "up"]));
            assert!(in_ns(&["link", "set", "lo", "up"]));
        }
        Some(lab)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    fn ip(&self, i: usize) -> String {
        format!("10.233.0.{}", i + 1)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "pids", &self.ns(i)])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{}-br", self.prefix)])
            .status();
    }
}

/// One-way setups: a receive-only peer takes changes and sends none; a
/// send-only peer sends changes and takes none.
#[test]
fn send_only_and_receive_only() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    let c = Peer::new(&env, "c");
    a.write("from-a.txt", b"a");
    let key = a.key();
    let a_run = a.start(&["--send-only"]);
    let (code, _, err) = b.once(&["--key", &key, "--peers", &a.addr(), "--receive-only"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(b.read("from-a.txt").unwrap(), b"a");
    // B's own file stays on B: receive-only announces nothing.
    b.write("from-b.txt", b"b");
    let (code, _, err) = b.once(&["--peers", &a.addr(), "--receive-only"]);
    assert_eq!(code, Some(0), "{err}");
    // C sends a file to the send-only A, which does not take it.
    c.write("from-c.txt", b"c");
    let (code, _, err) = c.once(&["--key", &key, "--peers", &a.addr(), "--timeout", "3"]);
    assert_eq!(
        code,
        Some(3),
        "A never takes C's file, so C is not in step: {err}"
    );
    assert_eq!(c.read("from-a.txt").unwrap(), b"a");
    drop(a_run);
    assert!(a.read("from-b.txt").is_none());
    assert!(a.read("from-c.txt").is_none());
}

/// Peers that know only a p2pfile DHT node (here a `serve`) find each other
/// through the private DHT: the rendezvous swarm is announced there under
/// its keyed hash.
#[test]
fn peers_find_each_other_through_the_dht() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    fs::write(env.path("other.bin"), b"unrelated").unwrap();
    let dht_node = env.serve(&host(), &[], &[&env.path("other.bin")]);
    let node = crate::util::peer_of(dht_node.magnet());
    a.write("via-dht.txt", b"found through the DHT");
    let key = a.key();
    let _a_run = a.start(&["--peers", &node]);
    let (code, _, err) = b.once(&["--key", &key, "--peers", &node, "--timeout", "30"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(b.read("via-dht.txt").unwrap(), b"found through the DHT");
}

/// A change found by a scan while running is kept signed in the state
/// database: after a restart the folder still announces it, and a new peer
/// gets it.
#[test]
fn a_change_found_while_running_survives_a_restart() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    let c = Peer::new(&env, "c");
    let key = a.key();
    let a_run = a.start(&["--peers", &b.addr()]);
    let b_run = b.start(&["--key", &key, "--peers", &a.addr()]);
    a.write("later.txt", b"written while running");
    eventually("B has the file", || {
        b.read("later.txt").as_deref() == Some(b"written while running".as_slice())
    });
    drop(b_run);
    drop(a_run);
    let _a_again = a.start(&[]);
    let (code, _, err) = c.once(&["--key", &key, "--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(c.read("later.txt").unwrap(), b"written while running");
}

/// Writes `bytes` over the start of `path` through a shared memory map,
/// which the kernel reports to file watchers only when the file is closed;
/// the writer holds the file open for `hold` seconds first.
fn write_through_mmap(path: &Path, bytes: &[u8], hold: f64) -> std::process::Child {
    let script = format!(
        "import mmap, sys, time\n\
         f = open(sys.argv[1], 'r+b')\n\
         m = mmap.mmap(f.fileno(), 0)\n\
         m[0:{n}] = bytes.fromhex(sys.argv[2])\n\
         m.flush()\n\
         time.sleep({hold})\n",
        n = bytes.len()
    );
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .arg(hex)
        .spawn()
        .expect("python3")
}

/// Waits up to `limit` for `cond` (a hang guard, not a speed test).
fn within(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A change the file watcher cannot see (a writer that keeps the file
/// open) is found by the periodic rescan, every `--rescan` seconds.
#[test]
fn rescan_finds_what_the_watcher_cannot_see() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    a.write("mapped.bin", b"0123456789");
    let key = a.key();
    let _a_run = a.start(&["--peers", &b.addr(), "--rescan", "1"]);
    let _b_run = b.start(&["--key", &key, "--peers", &a.addr()]);
    eventually("B has the file", || b.read("mapped.bin").is_some());
    let mut writer = write_through_mmap(&a.dir().join("mapped.bin"), b"ABCD", 30.0);
    let seen = within(Duration::from_secs(20), || {
        b.read("mapped.bin").as_deref() == Some(b"ABCD456789".as_slice())
    });
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(seen, "the rescan of A did not find the change");
}

/// A file written and closed is a change even when no write was reported
/// (a memory-mapped write): the watcher takes the close.
#[test]
fn a_file_closed_after_writing_is_a_change() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    a.write("mapped.bin", b"0123456789");
    let key = a.key();
    let _a_run = a.start(&["--peers", &b.addr()]);
    let _b_run = b.start(&["--key", &key, "--peers", &a.addr()]);
    eventually("B has the file", || b.read("mapped.bin").is_some());
    let mut writer = write_through_mmap(&a.dir().join("mapped.bin"), b"WXYZ", 0.0);
    assert!(writer.wait().unwrap().success());
    let seen = within(Duration::from_secs(20), || {
        b.read("mapped.bin").as_deref() == Some(b"WXYZ456789".as_slice())
    });
    assert!(
        seen,
        "A's watcher missed a write reported only by the close"
    );
}

/// `--expect N`: `--once` waits for N peers and is not in step with fewer.
#[test]
fn once_waits_for_the_expected_number_of_peers() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    a.write("f.txt", b"x");
    let key = a.key();
    let _a_run = a.start(&[]);
    let (code, evs, err) = b.once(&[
        "--key",
        &key,
        "--peers",
        &a.addr(),
        "--expect",
        "2",
        "--timeout",
        "3",
    ]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("found 1 of 2 expected peers"), "{err}");
    assert_eq!(summary(&evs)["in_step"], false);
    let (code, _, err) = b.once(&["--peers", &a.addr(), "--expect", "0"]);
    assert_eq!(code, Some(2), "{err}");
}

/// `--trash-days`: replaced and deleted files stay in the trash that long;
/// `0` empties it.
#[test]
fn trash_days_bounds_the_trash() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    synced_pair(&a, &b, &[("old.txt", b"soon deleted")]);
    fs::remove_file(a.dir().join("old.txt")).unwrap();
    let _a_run = a.start(&[]);
    let (code, _, err) = b.once(&["--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    let trash = b.dir().join(".p2pfile/trash");
    assert_eq!(fs::read_dir(&trash).unwrap().count(), 1, "kept by default");
    let (code, _, err) = b.once(&["--peers", &a.addr(), "--trash-days", "7"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        fs::read_dir(&trash).unwrap().count(),
        1,
        "a day old at most: kept"
    );
    let (code, _, err) = b.once(&["--peers", &a.addr(), "--trash-days", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        fs::read_dir(&trash).unwrap().count(),
        0,
        "--trash-days 0 empties it"
    );
}

/// Issue 10, sync peers: a peer without the folder key, connecting again
/// and again (a `sync` process with another key, and a scripted peer that
/// opens hundreds of connections from one address: handshakes for a hash
/// its wrong key gives, silence, garbage), gets no byte from the folder's
/// peer and changes nothing, and a peer with the key still syncs meanwhile.
#[test]
fn a_peer_without_the_key_gets_nothing_and_an_honest_peer_still_syncs() {
    let env = Env::new();
    let a = Peer::new(&env, "a");
    let b = Peer::new(&env, "b");
    let x = Peer::new(&env, "x");
    a.write("shared.txt", b"for key holders only");
    a.write("dir/more.bin", &data(300_000, 5));
    let key = a.key();
    let _a_run = a.start(&[]);
    let before = files(&a.dir());
    let target: std::net::SocketAddr = a.addr().parse().unwrap();
    let hostile: std::net::IpAddr = format!("127.{}.0.201", crate::util::test_net())
        .parse()
        .unwrap();
    let flood = std::thread::spawn(move || wrong_key_flood(hostile, target, 400));
    x.write("planted.txt", b"from an outsider");
    let other_key = x.key();
    for _ in 0..2 {
        let (code, _, err) = x.once(&["--key", &other_key, "--peers", &a.addr(), "--timeout", "3"]);
        assert_eq!(code, Some(3), "{err}");
    }
    let (code, _, err) = b.once(&["--key", &key, "--peers", &a.addr()]);
    assert_eq!(code, Some(0), "{err}");
    let (connects, answered) = flood.join().unwrap();
    assert!(
        connects >= 100,
        "the scripted peer connected only {connects} times"
    );
    assert_eq!(
        answered, 0,
        "the folder's peer answered a peer without the key"
    );
    assert_same_folder(&a.dir(), &b.dir());
    assert_eq!(
        files(&a.dir()),
        before,
        "a peer without the key changed the folder"
    );
    assert!(x.read("shared.txt").is_none());
}

/// Opens up to `n` connections from `from` to `to` within 10 s, each
/// sending a handshake for a random info-hash (what a wrong folder key
/// computes), nothing, or garbage; returns how many connected and how many
/// got any byte back.
fn wrong_key_flood(from: std::net::IpAddr, to: std::net::SocketAddr, n: usize) -> (usize, usize) {
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    let start = Instant::now();
    let mut open = Vec::new();
    let mut connects = 0;
    for i in 0..n {
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&std::net::SocketAddr::new(from, 0).into()).unwrap();
        if s.connect_timeout(&to.into(), Duration::from_secs(1))
            .is_err()
        {
            continue;
        }
        connects += 1;
        let mut stream: std::net::TcpStream = s.into();
        let mut hs = vec![19u8];
        hs.extend_from_slice(b"BitTorrent protocol");
        hs.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x04]);
        hs.extend((0..20).map(|j| (i * 31 + j * 7) as u8));
        hs.extend_from_slice(b"-XX0000-wrongkey0000");
        let _ = match i % 3 {
            0 => stream.write_all(&hs),
            1 => Ok(()),
            _ => stream.write_all(&[0xEE; 100]),
        };
        stream.set_nonblocking(true).unwrap();
        open.push(stream);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Whatever each connection received by now (a closed one reads 0).
    std::thread::sleep(Duration::from_millis(500));
    let mut answered = 0;
    for mut s in open {
        let mut buf = [0u8; 128];
        if matches!(s.read(&mut buf), Ok(k) if k > 0) {
            answered += 1;
        }
    }
    (connects, answered)
}

/// Issue 10, sync peers: a peer that knows the folder's rendezvous swarm
/// hash (it is announced on the DHT) but not the key, and says hello with a
/// proof that fails, is closed at once and gets no index; the folder is
/// unchanged.
#[test]
fn a_hello_without_proof_of_the_key_is_closed_and_gets_no_index() {
    use p2pfile_engine::wire::{self, ExtHandshake, Handshake, Message};
    use std::io::{Read, Write};
    let env = Env::new();
    let a = Peer::new(&env, "a");
    a.write("shared.txt", b"for key holders only");
    let ro = a.read_only_key();
    let _a_run = a.start(&[]);
    let before = files(&a.dir());
    // The rendezvous hash: 20 bytes of SHA-256(tag || read || 20 zero bytes),
    // the read secret being the first 32 bytes of a read-only key's body.
    let body = ro.strip_prefix("p2pf-ro-").unwrap().to_ascii_uppercase();
    let bytes = data_encoding::BASE32_NOPAD.decode(body.as_bytes()).unwrap();
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"p2pfile swarm v1")
        .chain_update(&bytes[..32])
        .chain_update([0u8; 20])
        .finalize();
    let mut swarm = [0u8; 20];
    swarm.copy_from_slice(&digest[..20]);

    let from: std::net::IpAddr = format!("127.{}.0.202", crate::util::test_net())
        .parse()
        .unwrap();
    let to: std::net::SocketAddr = a.addr().parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::new(from, 0).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let mut stream: std::net::TcpStream = s.into();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&Handshake::new(swarm, *b"-XX0000-nokey0000000").encode());
    Message::Extended {
        id: 0,
        payload: bytes::Bytes::from_static(b"d1:md12:p2pfile_synci3eee"),
    }
    .encode(&mut out);
    stream.write_all(&out).unwrap();

    let mut buf = bytes::BytesMut::new();
    let mut handshaken = false;
    let mut said_hello = false;
    let mut closed = false;
    let mut got_index = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        if !handshaken {
            if buf.len() < 68 {
                continue;
            }
            let _ = buf.split_to(68);
            handshaken = true;
        }
        while let Some(msg) = wire::decode(&mut buf).expect("a valid message") {
            let Message::Extended { id, payload } = msg else {
                continue;
            };
            if id == 0 {
                let theirs = ExtHandshake::decode(&payload).unwrap();
                let sync_id = theirs.ext_id("p2pfile_sync").expect("offers p2pfile_sync");
                // A hello whose proof is zeros: the key is unknown.
                let mut hello = b"d1:d8:\x01\x02\x03\x04\x05\x06\x07\x081:m32:".to_vec();
                hello.extend_from_slice(&[0u8; 32]);
                hello.extend_from_slice(b"1:pi4242e1:t5:hello1:wi1ee");
                let mut out = bytes::BytesMut::new();
                Message::Extended {
                    id: sync_id,
                    payload: bytes::Bytes::from(hello),
                }
                .encode(&mut out);
                stream.write_all(&out).unwrap();
                said_hello = true;
            } else if payload.windows(7).any(|w| w == b"5:index") {
                got_index = true;
            }
        }
    }
    assert!(handshaken, "the rendezvous swarm did not answer its hash");
    assert!(said_hello, "no extension handshake from the folder's peer");
    assert!(!got_index, "a peer without the key got the folder's index");
    assert!(
        closed,
        "a hello without proof of the key kept its connection"
    );
    assert_eq!(files(&a.dir()), before);
}
