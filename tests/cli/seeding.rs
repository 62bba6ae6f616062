//! Issue #3: when a downloader stops seeding, and `serve --exit-after`.

use std::fs;
use std::process::Command;

use crate::util::*;

pub(crate) fn source(env: &Env, size: usize) -> std::path::PathBuf {
    fs::create_dir_all(env.path("src")).unwrap();
    let p = env.path("src/payload.bin");
    fs::write(&p, data(size, 42)).unwrap();
    p
}

pub(crate) fn download(env: &Env, ip: &str, dir: &str, magnet: &str, extra: &[&str]) -> Command {
    let mut c = env.cmd();
    c.args(["--ip", ip, "download", "--json", "--dir", dir])
        .args(extra)
        .arg(magnet);
    c
}

fn stopped_rule(evs: &[serde_json::Value]) -> serde_json::Value {
    JsonProc::find(evs, "stopped").unwrap_or_else(|| panic!("no stopped event in {evs:?}"))
}

#[test]
fn seeding_time_stops_the_seeding() {
    let env = Env::new();
    let seed = env.serve(&host(), &[], &[&source(&env, 1 << 20)]);
    let args = ["--seeding", "--seeding-time", "2", "--seeding-ratio", "0"];
    let (status, evs) =
        JsonProc::spawn(download(&env, &host(), "dl", seed.magnet(), &args)).finish();
    assert!(status.success(), "{evs:?}");
    assert!(JsonProc::find(&evs, "seeding").is_some());
    let stopped = stopped_rule(&evs);
    assert_eq!(stopped["rule"], "seeding-time");
    assert!(stopped["seconds"].as_f64() >= Some(2.0));
}

/// `P2PFILE_SEEDING` takes the usual spellings of a switch.
#[test]
fn seeding_switch_from_the_environment() {
    let env = Env::new();
    let seed = env.serve(&host(), &[], &[&source(&env, 1 << 20)]);
    let args = ["--seeding-time", "1", "--seeding-ratio", "0"];
    for (value, on) in [("1", true), ("0", false)] {
        let dir = format!("dl-{value}");
        let mut c = download(&env, &host(), &dir, seed.magnet(), &args);
        c.env("P2PFILE_SEEDING", value);
        let (status, evs) = JsonProc::spawn(c).finish();
        assert!(status.success(), "P2PFILE_SEEDING={value}: {evs:?}");
        assert_eq!(
            JsonProc::find(&evs, "seeding").is_some(),
            on,
            "P2PFILE_SEEDING={value}: {evs:?}"
        );
    }
}

#[test]
fn seeding_until_idle_stops_when_nobody_downloads() {
    let env = Env::new();
    let seed = env.serve(&host(), &[], &[&source(&env, 1 << 20)]);
    let args = [
        "--seeding",
        "--seeding-until-idle",
        "1",
        "--seeding-time",
        "0",
        "--seeding-ratio",
        "0",
    ];
    let (status, evs) =
        JsonProc::spawn(download(&env, &host(), "dl", seed.magnet(), &args)).finish();
    assert!(status.success(), "{evs:?}");
    assert_eq!(stopped_rule(&evs)["rule"], "seeding-until-idle");
}

/// A downloads from the seed, the seed leaves, B downloads from A: A stops
/// by ratio once B has taken a full copy.
#[test]
fn seeding_ratio_stops_after_serving_a_copy() {
    let env = Env::new();
    let size = 3u64 << 20;
    let seed = env.serve(&host(), &[], &[&source(&env, size as usize)]);
    let a_ip = host();
    let a_port = "42150";
    let args = [
        "--port",
        a_port,
        "--seeding",
        "--seeding-ratio",
        "1",
        "--seeding-time",
        "0",
    ];
    let mut a = JsonProc::spawn(download(&env, &a_ip, "a", seed.magnet(), &args));
    a.wait_for("completed", |e| e["event"] == "completed");
    drop(seed);
    let via_a = format!("{}&x.pe={a_ip}:{a_port}", without_peers(&env_magnet(&env)));
    let (b_status, b_evs) = JsonProc::spawn(download(&env, &host(), "b", &via_a, &[])).finish();
    assert!(b_status.success(), "{b_evs:?}");
    let (a_status, a_evs) = a.finish();
    assert!(a_status.success(), "{a_evs:?}");
    let stopped = stopped_rule(&a_evs);
    assert_eq!(stopped["rule"], "seeding-ratio");
    assert!(stopped["uploaded"].as_u64() >= Some(size));
    assert_eq!(
        fs::read(env.path("b/payload.bin")).unwrap(),
        fs::read(env.path("src/payload.bin")).unwrap()
    );
}

/// The magnet of the payload without any peer (the info-hash is all we need).
fn env_magnet(env: &Env) -> String {
    let mut c = env.cmd();
    c.args(["status", "--json"]);
    let out = run(c, std::time::Duration::from_secs(30));
    let rows = events(&out);
    let served = rows
        .iter()
        .find(|r| r["event"] == "served")
        .expect("served row");
    format!(
        "magnet:?xt=urn:btih:{}&dn=payload.bin",
        served["info_hash"].as_str().unwrap()
    )
}

/// A holds the only complete copy (it had the file already) and a low
/// ratio target; it must not leave while B, connected and incomplete, still
/// needs pieces only A has.
#[test]
fn the_only_complete_copy_keeps_seeding_until_peers_finish() {
    let env = Env::new();
    let size = 4u64 << 20;
    let src = source(&env, size as usize);
    // A already holds the content and has only the .torrent: it completes
    // from disk without ever seeing another copy.
    let s = env.serve(&host(), &["--torrent-out", "torrents"], &[&src]);
    let hash = s.magnet()[20..60].to_string();
    let magnet = without_peers(s.magnet());
    drop(s);
    fs::create_dir_all(env.path("a")).unwrap();
    fs::copy(&src, env.path("a/payload.bin")).unwrap();
    let a_ip = host();
    let args = [
        "--port",
        "42151",
        "--seeding",
        "--seeding-ratio",
        "0.1",
        "--seeding-time",
        "0",
    ];
    let mut c = env.cmd();
    c.args(["--ip", &a_ip, "download", "--json", "--dir", "a"])
        .args(args)
        .arg(env.path(&format!("torrents/{hash}.torrent")));
    let mut a = JsonProc::spawn(c);
    a.wait_for("completed from disk", |e| e["event"] == "completed");
    // B pulls slowly from A alone: 4 MiB at 1 MiB/s.
    let via_a = format!("{magnet}&x.pe={a_ip}:42151");
    let b = JsonProc::spawn(download(
        &env,
        &host(),
        "b",
        &via_a,
        &["--download-limit", "1"],
    ));
    let (b_status, b_evs) = b.finish();
    assert!(b_status.success(), "{b_evs:?}");
    let (a_status, a_evs) = a.finish();
    assert!(a_status.success(), "{a_evs:?}");
    let stopped = stopped_rule(&a_evs);
    assert_eq!(stopped["rule"], "seeding-ratio");
    assert!(
        stopped["uploaded"].as_u64() >= Some(size),
        "A stayed until B had everything: {stopped}"
    );
}

#[test]
fn serve_exit_after_n_completed_peers() {
    let env = Env::new();
    let src = source(&env, 2 << 20);
    let ip = host();
    let mut c = env.cmd();
    c.args(["--ip", &ip, "serve", "--json", "--exit-after", "2"])
        .arg(&src);
    let mut serve = JsonProc::spawn(c);
    let serving = serve.wait_for("serving", |e| e["event"] == "serving");
    let magnet = serving["magnet"].as_str().unwrap().to_string();
    let downloads: Vec<_> = (0..2)
        .map(|i| JsonProc::spawn(download(&env, &host(), &format!("d{i}"), &magnet, &[])))
        .collect();
    for d in downloads {
        let (status, evs) = d.finish();
        assert!(status.success(), "{evs:?}");
    }
    let (status, evs) = serve.finish();
    assert!(status.success(), "serve exits 0 by itself: {evs:?}");
    let stopped = stopped_rule(&evs);
    assert_eq!(stopped["rule"], "exit-after");
    let mut c = env.cmd();
    c.args(["--ip", &ip, "serve", "--exit-after", "none"])
        .arg(&src);
    let out = run(c, std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
}
