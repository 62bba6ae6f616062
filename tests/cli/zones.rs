//! `--zone` (issue #11): checked where it was written, told to peers, and
//! the bytes that came from another zone counted. The rule itself (about
//! one copy crosses per zone) is proven in `engine/tests/zones.rs`.

use std::fs;
use std::time::Duration;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `c`, which must fail with exit 2; returns its stderr.
fn usage_error(c: std::process::Command) -> String {
    let out = run(c, LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn a_bad_zone_is_named_where_it_was_written() {
    let env = Env::new();
    let ip = host();
    let serve = || {
        let mut c = env.cmd();
        c.args(["--ip", &ip, "serve", "nothing"]);
        c
    };
    let mut c = serve();
    c.args(["--zone", "rack 7"]);
    let err = usage_error(c);
    assert!(
        err.starts_with("error: --zone \"rack 7\" is not a zone name"),
        "{err}"
    );
    assert!(err.contains("hint: name the zone like"), "{err}");

    let mut c = serve();
    c.env("P2PFILE_ZONE", "x".repeat(65));
    let err = usage_error(c);
    assert!(err.starts_with("error: P2PFILE_ZONE \"xxx"), "{err}");

    fs::write(env.path(".p2pfile.yaml"), "zone: \"dc/1\"\n").unwrap();
    let mut c = env.cmd();
    c.args(["--ip", &ip, "download", "--dir"])
        .arg(env.path("dl"))
        .arg("magnet:?xt=urn:btih:0000000000000000000000000000000000000000");
    let err = usage_error(c);
    assert!(err.starts_with("error: config key zone in "), "{err}");
    assert!(!env.path("dl").exists(), "nothing done before the check");
}

#[test]
fn peers_learn_each_others_zone_and_bytes_across_are_counted() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    let size = 4 << 20;
    fs::write(env.path("src/f.bin"), data(size, 11)).unwrap();
    let mut c = env.cmd();
    c.args(["--ip", &host(), "serve", "--json", "--zone", "a"])
        .args(["--upload-limit", "4", "--exit-after", "3"])
        .arg(env.path("src/f.bin"));
    let mut seed = JsonProc::spawn(c);
    let serving = seed.wait_for("serving", |e| e["event"] == "serving");
    let magnet = serving["magnet"].as_str().unwrap().to_string();
    let download = |i: usize, zone: Option<&str>| {
        let mut c = env.cmd();
        c.args(["--ip", &host(), "download", "--json", "--dir"])
            .arg(env.path(&format!("dl{i}")))
            .arg(&magnet);
        if let Some(z) = zone {
            c.env("P2PFILE_ZONE", z);
        }
        JsonProc::spawn(c)
    };
    let downloads = [
        download(0, Some("b")),
        download(1, Some("b")),
        download(2, None),
    ];
    let mut completed = Vec::new();
    for d in downloads {
        let (status, evs) = d.finish();
        assert!(status.success(), "a downloader failed: {evs:?}");
        completed.push(JsonProc::find(&evs, "completed").expect("completed event"));
    }
    let mut crossed = 0;
    for done in &completed[..2] {
        let from_other = done["downloaded_other_zone"]
            .as_u64()
            .expect("a host with a zone counts what came from other zones");
        assert!(from_other <= done["downloaded"].as_u64().unwrap(), "{done}");
        crossed += from_other;
    }
    assert!(crossed > 0, "the pieces came from zone a: {completed:?}");
    assert!(
        completed[2].get("downloaded_other_zone").is_none(),
        "no zone, no count: {}",
        completed[2]
    );
    let want = fs::read(env.path("src/f.bin")).unwrap();
    for i in 0..3 {
        assert!(fs::read(env.path(&format!("dl{i}/f.bin"))).unwrap() == want);
    }

    let (status, evs) = seed.finish();
    assert!(status.success(), "serve --exit-after 3: {evs:?}");
    let mut zones: Vec<Option<String>> = evs
        .iter()
        .filter(|e| e["event"] == "peer_completed")
        .map(|e| e.get("zone").map(|z| z.as_str().unwrap().to_string()))
        .collect();
    zones.sort();
    assert_eq!(
        zones,
        vec![None, Some("b".to_string()), Some("b".to_string())],
        "{evs:?}"
    );
}
