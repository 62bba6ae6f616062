//! The private DHT on the paths where its nodes do not answer: success
//! prints nothing on stderr (not even with `P2PFILE_LOG=warn`, which
//! replaces the default filter), and remembered nodes that no longer answer
//! are forgotten.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::util::*;

/// The DHT nodes a state database remembers.
fn remembered(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut q = c.prepare("SELECT addr FROM dht_nodes").unwrap();
    q.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A `serve` with warnings on, its own state database, and `extra` flags.
fn serve(env: &Env, ip: &str, db: &str, extra: &[&str], path: &Path) -> Server {
    let mut c = env.cmd();
    c.env("P2PFILE_LOG", "warn")
        .args(["--ip", ip, "--state"])
        .arg(env.path(db))
        .args(extra)
        .arg("serve")
        .arg(path);
    Server::spawn(c, 1)
}

/// Stops a serve with SIGTERM after `secs` (long enough for the DHT's
/// bootstrap lookup, which repeats every ~2 s, to fail a few times) and
/// returns its stderr.
fn stop_after(mut s: Server, secs: u64) -> String {
    std::thread::sleep(Duration::from_secs(secs));
    signal(&s.child, "TERM");
    let status = wait_timeout(&mut s.child, Duration::from_secs(20)).expect("serve exits");
    assert!(status.success(), "serve exited with {status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut s.child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn a_seed_whose_remembered_dht_nodes_are_gone_is_quiet_and_forgets_them() {
    let env = Env::new();
    fs::write(env.path("a.txt"), b"first").unwrap();
    fs::write(env.path("b.txt"), b"second").unwrap();
    let a = serve(&env, &host(), "a.db", &[], &env.path("a.txt"));
    let a_node = peer_of(a.magnet());
    let b_ip = host();
    let b = serve(
        &env,
        &b_ip,
        "b.db",
        &["--peers", &a_node],
        &env.path("b.txt"),
    );
    assert_eq!(stop_after(b, 3), "");
    assert_eq!(remembered(&env.path("b.db")), vec![a_node.clone()]);
    drop(a);
    // B again, bootstrapping from A alone, which is gone.
    let b = serve(&env, &b_ip, "b.db", &[], &env.path("b.txt"));
    assert_eq!(stop_after(b, 7), "");
    assert!(
        !remembered(&env.path("b.db")).contains(&a_node),
        "a node that did not answer is forgotten"
    );
}

#[test]
fn dht_peers_that_are_down_leave_seed_and_download_quiet() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/f.bin"), data(6 << 20, 5)).unwrap();
    let down = format!("{}:9", host());
    let seed = serve(
        &env,
        &host(),
        "seed.db",
        &["--peers", &down],
        &env.path("src/f.bin"),
    );
    let mut c = env.cmd();
    // The download limit keeps it running through a few failed lookups.
    c.env("P2PFILE_LOG", "warn")
        .args(["--ip", &host(), "--state"])
        .arg(env.path("dl.db"))
        .args([
            "--peers",
            &down,
            "--download-limit",
            "2",
            "download",
            "--dir",
        ])
        .arg(env.path("dl"))
        .arg(seed.magnet());
    let out = run(c, Duration::from_secs(60));
    assert!(out.status.success(), "download failed: {}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert_eq!(
        fs::read(env.path("dl/f.bin")).unwrap(),
        fs::read(env.path("src/f.bin")).unwrap()
    );
    assert_eq!(stop_after(seed, 0), "");
}
