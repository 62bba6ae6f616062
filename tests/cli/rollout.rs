//! Issue #9, the seed's side of a rollout: `magnet` before any seed runs,
//! `serve` reporting who completed (`peer_completed`, `--exit-after`,
//! `--expect`, `--deadline`, `summary`), a seed whose file changed under
//! it, and failed runs that leave nothing behind.

use std::fs;
use std::time::Duration;

use crate::errors::fails;
use crate::seeding::{download, source};
use crate::util::*;

/// Downloads `magnet` on each host at once, each into its own directory;
/// every download must succeed.
fn download_on(env: &Env, hosts: &[&str], magnet: &str) {
    let downloads: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| JsonProc::spawn(download(env, h, &format!("d{i}"), magnet, &[])))
        .collect();
    for d in downloads {
        let (status, evs) = d.finish();
        assert!(status.success(), "{evs:?}");
    }
}

fn serve_json(env: &Env, ip: &str, extra: &[&str], path: &std::path::Path) -> (JsonProc, String) {
    let mut c = env.cmd();
    c.args(["--ip", ip, "serve", "--json"])
        .args(extra)
        .arg(path);
    let mut serve = JsonProc::spawn(c);
    let serving = serve.wait_for("serving", |e| e["event"] == "serving");
    let magnet = serving["magnet"].as_str().unwrap().to_string();
    (serve, magnet)
}

fn all(evs: &[serde_json::Value], kind: &str) -> Vec<serde_json::Value> {
    evs.iter().filter(|e| e["event"] == kind).cloned().collect()
}

fn summary(evs: &[serde_json::Value]) -> serde_json::Value {
    let last = evs.last().unwrap_or_else(|| panic!("no events"));
    assert_eq!(
        last["event"], "summary",
        "the last event is the summary: {evs:?}"
    );
    last.clone()
}

fn stderr_of(p: &mut JsonProc) -> String {
    let mut err = String::new();
    if let Some(mut e) = p.child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    err
}

#[test]
fn magnet_prints_what_serve_prints_and_serve_does_not_hash_again() {
    let env = Env::new();
    let src = source(&env, 3 << 20);
    let ip = host();
    let mut c = env.cmd();
    c.args(["--ip", &ip, "magnet", "--json", "--torrent-out", "t"])
        .arg(&src);
    let out = run(c, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = events(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let m = &evs[0];
    assert_eq!(m["event"], "magnet");
    assert_eq!(m["hashed"], true);
    assert_eq!(m["bytes"], 3 << 20);
    assert_eq!(m["name"], "payload.bin");
    let magnet = m["magnet"].as_str().unwrap().to_string();
    assert_eq!(
        peer_of(&magnet),
        format!("{ip}:42070"),
        "first port of the range"
    );
    let hash = m["info_hash"].as_str().unwrap();
    assert!(env.path(&format!("t/{hash}.torrent")).is_file());

    // Again, human form: the recorded hash, the same magnet.
    let mut c = env.cmd();
    c.args(["--ip", &ip, "magnet"]).arg(&src);
    let out = run(c, Duration::from_secs(60));
    assert_eq!(stdout(&out).trim(), magnet);

    let (serve, served) = serve_json(&env, &ip, &[], &src);
    assert_eq!(served, magnet, "serve prints the magnet computed before");
    assert_eq!(serve.seen[0]["hashed"], false, "serve reused the hash");
    drop(serve);

    // A port serve recorded is the one magnet prints without --port; a
    // path never recorded gets the first port of the range.
    let mut c = env.cmd();
    c.args(["--ip", &ip, "--port", "42123", "serve"]).arg(&src);
    let serve = Server::spawn(c, 1);
    assert_eq!(peer_of(serve.magnet()), format!("{ip}:42123"));
    assert!(serve.terminate().success());
    let mut c = env.cmd();
    c.args(["--ip", &ip, "magnet"]).arg(&src);
    let out = run(c, Duration::from_secs(60));
    assert_eq!(peer_of(stdout(&out).trim()), format!("{ip}:42123"));
    let other = env.path("src/other.bin");
    fs::write(&other, b"other").unwrap();
    let mut c = env.cmd();
    c.args(["--ip", &ip, "--port-range", "43010-43020", "magnet"])
        .arg(&other);
    let out = run(c, Duration::from_secs(60));
    assert_eq!(peer_of(stdout(&out).trim()), format!("{ip}:43010"));
}

#[test]
fn serve_reports_each_completed_peer_once_and_sums_up() {
    let env = Env::new();
    let src = source(&env, 2 << 20);
    let (serve, magnet) = serve_json(&env, &host(), &["--exit-after", "2"], &src);
    let ips = [host(), host()];
    download_on(&env, &[&ips[0], &ips[1]], &magnet);
    let (status, evs) = serve.finish();
    assert!(status.success(), "{evs:?}");
    let hash = evs[0]["info_hash"].clone();
    let done = all(&evs, "peer_completed");
    assert_eq!(done.len(), 2, "once per peer: {evs:?}");
    let mut peers: Vec<String> = done
        .iter()
        .map(|e| {
            assert_eq!(e["info_hash"], hash);
            assert!(e["seconds"].as_f64().unwrap() > 0.0);
            let peer = e["peer"].as_str().unwrap();
            let (ip, port) = peer.rsplit_once(':').unwrap();
            assert!(port.parse::<u16>().unwrap() >= 42070, "listen port: {peer}");
            ip.to_string()
        })
        .collect();
    peers.sort();
    let mut want = ips.to_vec();
    want.sort();
    assert_eq!(peers, want);
    let s = summary(&evs);
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["changed"], true);
    assert!(s["uploaded"].as_u64().unwrap() >= 2 << 20, "{s}");
    assert!(s["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(s["missing"], serde_json::json!([]));
    assert_eq!(s["completed_peers"].as_array().unwrap().len(), 2);
    let t = &s["torrents"][0];
    assert_eq!(t["info_hash"], hash);
    assert_eq!(t["name"], "payload.bin");
    assert_eq!(t["hashed"], true);
    assert_eq!(t["uploaded"], s["uploaded"]);
    assert!(t["path"].as_str().unwrap().ends_with("src/payload.bin"));
}

#[test]
fn exit_after_with_a_deadline_exits_3_naming_the_count() {
    let env = Env::new();
    let src = source(&env, 1 << 20);
    let (mut serve, magnet) = serve_json(
        &env,
        &host(),
        &["--exit-after", "2", "--deadline", "8"],
        &src,
    );
    let out = run(
        download(&env, &host(), "d", &magnet, &[]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status = wait_timeout(&mut serve.child, Duration::from_secs(60)).expect("exits");
    let err = stderr_of(&mut serve);
    let (_, evs) = serve.finish();
    assert_eq!(status.code(), Some(3), "{evs:?} {err}");
    assert!(err.contains("1 of 2 peers completed"), "{err}");
    let s = summary(&evs);
    assert_eq!(s["exit_code"], 3);
    assert_eq!(s["completed_peers"].as_array().unwrap().len(), 1);
    // Human mode: the same count in the error.
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "serve",
        "--exit-after",
        "1",
        "--deadline",
        "1",
    ])
    .arg(&src);
    let out = run(c, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("error: deadline of 1 s passed: 0 of 1 peers completed"));
    // A deadline with nothing to wait for is a usage error.
    let args = ["--ip", &host(), "serve", "--deadline", "5", path(&src)];
    let err = fails(&env, &args, 2, "--deadline needs --exit-after or --expect");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn expect_exits_0_when_every_host_completed_and_3_naming_the_missing() {
    let env = Env::new();
    let src = source(&env, 1 << 20);
    let (a, b, absent) = (host(), host(), host());
    let ip = host();
    let list = format!("{a},{b}");
    let (serve, magnet) = serve_json(&env, &ip, &["--expect", &list, "--deadline", "60"], &src);
    download_on(&env, &[&a, &b], &magnet);
    let (status, evs) = serve.finish();
    assert!(status.success(), "{evs:?}");
    let stopped = JsonProc::find(&evs, "stopped").expect("stopped");
    assert_eq!(stopped["rule"], "expect");
    assert_eq!(summary(&evs)["missing"], serde_json::json!([]));

    // The same play with a host that never comes.
    let list = format!("{a},{absent}");
    let (mut serve, magnet) = serve_json(&env, &ip, &["--expect", &list, "--deadline", "8"], &src);
    let out = run(
        download(&env, &a, "again", &magnet, &[]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status = wait_timeout(&mut serve.child, Duration::from_secs(60)).expect("exits");
    let err = stderr_of(&mut serve);
    let (_, evs) = serve.finish();
    assert_eq!(status.code(), Some(3), "{evs:?}");
    assert!(
        err.contains(&format!("did not complete every path: {absent}")),
        "{err}"
    );
    assert!(
        !err.contains(&format!("{a},")) && !err.contains(&format!(": {a}")),
        "{err}"
    );
    let s = summary(&evs);
    assert_eq!(s["missing"], serde_json::json!([absent]));
    assert_eq!(s["exit_code"], 3);

    let args = ["--ip", &ip, "serve", "--expect", "host-a", path(&src)];
    fails(&env, &args, 2, "not an IP or IP:PORT");
}

#[test]
fn a_file_changed_under_a_running_seed_is_reported_and_not_served() {
    let env = Env::new();
    let src = source(&env, 2 << 20);
    let (mut serve, magnet) = serve_json(&env, &host(), &[], &src);
    // Rewritten in place, same size, new bytes, a later mtime.
    fs::write(&src, data(2 << 20, 10)).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let mut d = JsonProc::spawn(download(&env, &host(), "d", &magnet, &["--timeout", "5"]));
    let changed = serve.wait_for("source_changed", |e| e["event"] == "source_changed");
    assert_eq!(changed["info_hash"], serve.seen[0]["info_hash"]);
    assert!(changed["path"].as_str().unwrap().ends_with("payload.bin"));
    let status = wait_timeout(&mut serve.child, Duration::from_secs(30)).expect("serve exits");
    assert_eq!(status.code(), Some(1), "nothing left to serve");
    let err = stderr_of(&mut serve);
    assert!(err.contains("run serve again to rehash"), "{err}");
    assert!(
        err.contains("payload.bin changed since it was hashed"),
        "{err}"
    );
    let (_, evs) = serve.finish();
    assert_eq!(summary(&evs)["exit_code"], 1);

    let status = wait_timeout(&mut d.child, Duration::from_secs(60)).expect("download exits");
    let (_, devs) = d.finish();
    assert_eq!(status.code(), Some(3), "{devs:?}");
    assert!(JsonProc::find(&devs, "first_piece").is_none(), "{devs:?}");
    for p in all(&devs, "progress") {
        assert_eq!(
            p["downloaded"], 0,
            "no byte of the changed file arrived: {p}"
        );
    }

    // Served again, it is hashed anew and serves the new content.
    let (serve, magnet2) = serve_json(&env, &host(), &[], &src);
    assert_eq!(serve.seen[0]["hashed"], true);
    assert_ne!(without_peers(&magnet2), without_peers(&magnet));
    let out = run(
        download(&env, &host(), "d2", &magnet2, &[]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read(env.path("d2/payload.bin")).unwrap(),
        fs::read(&src).unwrap()
    );
}

#[test]
fn failed_serve_and_magnet_leave_nothing_behind() {
    let env = Env::new();
    let src = source(&env, 1 << 10);
    // 192.0.2.1 (TEST-NET-1) is no address of this host: binding fails.
    let args = [
        "--ip",
        "192.0.2.1",
        "serve",
        "--torrent-out",
        "t",
        path(&src),
    ];
    fails(&env, &args, 2, "cannot listen on 192.0.2.1");
    assert!(!env.path(".p2pfile.db").exists(), "no state database");
    assert!(!env.path("t").exists(), "no --torrent-out directory");
    // A missing path: nothing either, for both commands.
    for cmd in ["serve", "magnet"] {
        fails(&env, &["--ip", &host(), cmd, "missing"], 2, "no such file");
        assert!(!env.path(".p2pfile.db").exists());
    }
    // --state and --torrent-out problems come with a hint.
    fs::write(env.path("file"), b"x").unwrap();
    let args = ["--ip", &host(), "--state", "file/db", "magnet", path(&src)];
    fails(&env, &args, 1, "hint: pass --state");
    let args = [
        "--ip",
        &host(),
        "magnet",
        "--torrent-out",
        "file/t",
        path(&src),
    ];
    fails(&env, &args, 2, "hint: pass --torrent-out");
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

#[test]
fn a_file_replaced_keeping_size_and_mtime_between_runs_is_caught_by_its_hash() {
    let env = Env::new();
    let src = source(&env, 1 << 20);
    let ip = host();
    let mut c = env.cmd();
    c.args(["--ip", &ip, "magnet"]).arg(&src);
    assert!(run(c, Duration::from_secs(60)).status.success());
    // What `cp -p` of other bytes leaves: a new file, same length, same
    // modification time; the recorded hash is reused on those alone.
    let mtime = fs::metadata(&src).unwrap().modified().unwrap();
    let tmp = env.path("src/.payload.tmp");
    fs::write(&tmp, data(1 << 20, 11)).unwrap();
    fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::rename(&tmp, &src).unwrap();
    let (mut serve, magnet) = serve_json(&env, &ip, &[], &src);
    assert_eq!(serve.seen[0]["hashed"], false);
    let mut d = JsonProc::spawn(download(&env, &host(), "d", &magnet, &["--timeout", "5"]));
    serve.wait_for("source_changed", |e| e["event"] == "source_changed");
    let status = wait_timeout(&mut d.child, Duration::from_secs(60)).expect("download exits");
    let (_, devs) = d.finish();
    assert_eq!(status.code(), Some(3), "{devs:?}");
    assert!(JsonProc::find(&devs, "first_piece").is_none(), "{devs:?}");
}

/// Without `--json`, a seed that `--exit-after` ended says so on stdout
/// after its magnet, and stderr stays empty: success prints no log line.
#[test]
fn exit_after_without_json_reports_on_stdout_and_nothing_on_stderr() {
    use std::io::{BufRead, BufReader, Read};
    let env = Env::new();
    let src = source(&env, 1 << 20);
    let mut c = env.cmd();
    c.args(["--ip", &host(), "serve", "--exit-after", "1"])
        .arg(&src)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut serve = c.spawn().unwrap();
    let mut stdout = BufReader::new(serve.stdout.take().unwrap());
    let mut magnet = String::new();
    stdout.read_line(&mut magnet).unwrap();
    assert!(magnet.starts_with("magnet:?"), "{magnet:?}");
    let out = run(
        download(&env, &host(), "d", magnet.trim(), &[]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status = wait_timeout(&mut serve, Duration::from_secs(60)).expect("serve exits");
    assert!(status.success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    serve
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        rest.starts_with("served 1 path for ") && rest.contains(": 1 peer completed every path, "),
        "{rest:?}"
    );
    assert_eq!(err, "");
}

/// The stop rules come from the environment and the config file too, and
/// a bad value is named where it was written.
#[test]
fn stop_rules_from_the_environment_and_the_config_file() {
    let env = Env::new();
    let src = source(&env, 1 << 20);
    let ip = host();
    let mut c = env.cmd();
    c.env("P2PFILE_EXIT_AFTER", "0")
        .args(["--ip", &ip, "serve"])
        .arg(&src);
    let out = run(c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("P2PFILE_EXIT_AFTER \"0\" is not a positive number"),
        "{}",
        stderr(&out)
    );
    fs::write(env.path("c.yaml"), "expect-hosts: host-a\n").unwrap();
    let mut c = env.cmd();
    c.args(["--ip", &ip, "--config", "c.yaml", "serve"])
        .arg(&src);
    let out = run(c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("config key expect-hosts in"),
        "{}",
        stderr(&out)
    );
    // A good value from the environment works: the seed stops once the
    // one expected host completed.
    let a = host();
    let mut c = env.cmd();
    c.env("P2PFILE_EXPECT_HOSTS", &a)
        .env("P2PFILE_DEADLINE", "60")
        .args(["--ip", &ip, "serve", "--json"])
        .arg(&src);
    let mut serve = JsonProc::spawn(c);
    let serving = serve.wait_for("serving", |e| e["event"] == "serving");
    let magnet = serving["magnet"].as_str().unwrap().to_string();
    download_on(&env, &[&a], &magnet);
    let (status, evs) = serve.finish();
    assert!(status.success(), "{evs:?}");
    assert_eq!(
        JsonProc::find(&evs, "stopped").expect("stopped")["rule"],
        "expect"
    );
}
