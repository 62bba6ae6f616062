//! serve → download between processes.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use p2pfile_engine::metainfo::piece_length_for;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(120);

/// The tree of issue #2: nested directories, 50 files of 1 KiB, an empty
/// file, an empty directory, a file of exactly three pieces, and one of
/// some tens of MiB. Returns the piece length it was built for.
fn make_tree(root: &Path) -> u32 {
    let big = 24 << 20;
    let small_total = 50 * 1024;
    // The piece size depends on the total, which depends on the multiple:
    // the 32 KiB band holds for totals up to 1500 × 32 KiB.
    let piece = piece_length_for(big as u64 + small_total + 3 * 32 * 1024);
    assert_eq!(piece, 32 * 1024);
    fs::create_dir_all(root.join("docs/deep/deeper")).unwrap();
    fs::create_dir_all(root.join("empty/dir")).unwrap();
    for i in 0..50 {
        let sub = if i % 2 == 0 {
            "docs"
        } else {
            "docs/deep/deeper"
        };
        fs::write(root.join(format!("{sub}/small-{i:02}.txt")), data(1024, i)).unwrap();
    }
    fs::write(root.join("docs/deep/empty.txt"), b"").unwrap();
    fs::write(root.join("three-pieces.bin"), data(3 * piece as usize, 99)).unwrap();
    fs::write(root.join("big.bin"), data(big, 7)).unwrap();
    let total: u64 = walk_total(root);
    assert_eq!(
        piece_length_for(total),
        piece,
        "tree total {total} changed the piece size"
    );
    piece
}

fn walk_total(p: &Path) -> u64 {
    if p.is_file() {
        return fs::metadata(p).unwrap().len();
    }
    fs::read_dir(p)
        .unwrap()
        .map(|e| walk_total(&e.unwrap().path()))
        .sum()
}

#[test]
fn tree_from_one_seed_to_one_downloader() {
    let env = Env::new();
    let src = env.path("src/tree");
    make_tree(&src);
    let ip = host();
    let seed = env.serve(&ip, &[], &[&src]);
    assert!(seed.magnet().starts_with("magnet:?xt=urn:btih:"));
    assert!(seed.magnet().contains(&format!("&dn=tree&x.pe={ip}:")));
    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--dir"])
        .arg(env.path("dl"))
        .arg(seed.magnet());
    let out = run(c, LIMIT);
    assert!(out.status.success(), "download failed: {}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        env.path("dl/tree").display().to_string()
    );
    assert_same_tree(&src, &env.path("dl/tree"));
    assert!(env.path("dl/tree/empty/dir").is_dir());
    assert!(!env.path("dl/.tree.p2pfile-part").exists());
    assert!(seed.terminate().success(), "serve exits 0 on SIGTERM");
}

#[test]
fn same_content_same_hash_and_download_survives_a_seed_dying() {
    let env = Env::new();
    for side in ["a", "b"] {
        let d = env.path(&format!("{side}/payload"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("data.bin"), data(32 << 20, 3)).unwrap();
        fs::write(d.join("note.txt"), b"same everywhere").unwrap();
    }
    let seed_a = env.serve(&host(), &[], &[&env.path("a/payload")]);
    let seed_b = env.serve(&host(), &[], &[&env.path("b/payload")]);
    assert_eq!(
        without_peers(seed_a.magnet()),
        without_peers(seed_b.magnet()),
        "same content, same info-hash"
    );
    let both = format!("{}&x.pe={}", seed_a.magnet(), peer_of(seed_b.magnet()));
    // A download limit stretches the transfer so a seed can die half way.
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "--download-limit",
        "8",
        "download",
        "--json",
        "--dir",
    ])
    .arg(env.path("dl"))
    .arg(&both)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let ev: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    // Kill seed A once the downloader is pulling from both seeds and has
    // part of the data, but not all of it.
    let mut from_both = false;
    let deadline = std::time::Instant::now() + LIMIT;
    while std::time::Instant::now() < deadline {
        let ev = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("progress events");
        if ev["event"] == "progress" && ev["peers"] == 2 && ev["bytes"].as_u64() > Some(0) {
            assert!(
                ev["bytes"].as_u64() < ev["total"].as_u64(),
                "killed mid-transfer"
            );
            from_both = true;
            break;
        }
    }
    assert!(from_both, "the downloader connected to both seeds");
    drop(seed_a);
    let status = wait_timeout(&mut child, LIMIT).expect("download finishes");
    let rest: Vec<_> = rx.iter().collect();
    reader.join().unwrap();
    assert!(
        status.success(),
        "download failed after a seed died: {rest:?}"
    );
    assert!(rest.iter().any(|e| e["event"] == "completed"));
    assert_same_tree(&env.path("b/payload"), &env.path("dl/payload"));
    drop(seed_b);
}

#[test]
fn one_seed_five_concurrent_downloaders() {
    let env = Env::new();
    let src = env.path("src/file.bin");
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(&src, data(12 << 20, 5)).unwrap();
    let seed = env.serve(&host(), &[], &[&src]);
    let children: Vec<_> = (0..5)
        .map(|i| {
            let mut c = env.cmd();
            c.args(["--ip", &host(), "download", "--json", "--dir"])
                .arg(env.path(&format!("dl{i}")))
                .arg(seed.magnet());
            JsonProc::spawn(c)
        })
        .collect();
    for child in children {
        let (status, evs) = child.finish();
        assert!(status.success(), "a downloader failed: {evs:?}");
    }
    let want = fs::read(&src).unwrap();
    for i in 0..5 {
        assert!(
            fs::read(env.path(&format!("dl{i}/file.bin"))).unwrap() == want,
            "copy {i} differs"
        );
    }
}

#[test]
fn downloader_finds_seed_through_dht_alone() {
    let env = Env::new();
    fs::create_dir_all(env.path("node")).unwrap();
    fs::write(env.path("node/unrelated"), b"x").unwrap();
    // A DHT node that does not have the content.
    let node = env.serve(&host(), &[], &[&env.path("node/unrelated")]);
    let node_addr = peer_of(node.magnet());
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/wanted.bin"), data(3 << 20, 11)).unwrap();
    let seed = env.serve(
        &host(),
        &["--peers", &node_addr],
        &[&env.path("src/wanted.bin")],
    );
    let bare = without_peers(seed.magnet());
    assert!(!bare.contains("x.pe"));
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "--state",
        "dl.db",
        "--peers",
        &node_addr,
        "download",
        "--timeout",
        "60",
        "--dir",
    ])
    .arg(env.path("dl"))
    .arg(&bare);
    let out = run(c, LIMIT);
    assert!(out.status.success(), "download failed: {}", stderr(&out));
    assert_eq!(
        fs::read(env.path("dl/wanted.bin")).unwrap(),
        fs::read(env.path("src/wanted.bin")).unwrap()
    );
    // The DHT nodes it met are remembered: with the same state and no
    // --peers at all, the next download finds the seed again.
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "--state",
        "dl.db",
        "download",
        "--timeout",
        "60",
        "--dir",
    ])
    .arg(env.path("dl2"))
    .arg(&bare);
    let out = run(c, LIMIT);
    assert!(out.status.success(), "second download: {}", stderr(&out));
    assert!(env.path("dl2/wanted.bin").exists());
}

#[test]
fn json_events_and_torrent_out() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/f.bin"), data(100_000, 1)).unwrap();
    let seed = env.serve(&host(), &[], &[&env.path("src/f.bin")]);
    let hash = seed.magnet()[20..60].to_string();
    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--json", "--dir"])
        .arg(env.path("dl"))
        .arg(seed.magnet());
    let out = run(c, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let evs = events(&out);
    let kinds: Vec<_> = evs
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("started"));
    assert!(kinds.contains(&"metadata".to_string()));
    let done = evs
        .iter()
        .find(|e| e["event"] == "completed")
        .expect("completed event");
    assert_eq!(done["info_hash"], hash.as_str());
    assert_eq!(done["name"], "f.bin");
    assert_eq!(done["bytes"], 100_000);
    assert!(done["seconds"].as_f64().is_some());

    drop(seed);
}

#[test]
fn torrent_out_and_download_of_a_torrent_file() {
    let env = Env::new();
    fs::create_dir_all(env.path("src/d")).unwrap();
    fs::write(env.path("src/d/f.bin"), data(300_000, 2)).unwrap();
    let ip = host();
    let seed = env.serve(
        &ip,
        &["--json", "--torrent-out", "torrents"],
        &[&env.path("src/d")],
    );
    let serving: serde_json::Value = serde_json::from_str(seed.magnet()).unwrap();
    assert_eq!(serving["event"], "serving");
    assert_eq!(serving["name"], "d");
    let hash = serving["info_hash"].as_str().unwrap();
    let magnet = serving["magnet"].as_str().unwrap();
    let torrent = env.path(&format!("torrents/{hash}.torrent"));
    assert!(
        torrent.is_file(),
        "--torrent-out wrote {}",
        torrent.display()
    );
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "--peers",
        &peer_of(magnet),
        "download",
        "--dir",
    ])
    .arg(env.path("dl"))
    .arg(&torrent);
    let out = run(c, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&env.path("src/d"), &env.path("dl/d"));
}

/// Both limits hold a transfer back. Only a lower bound on the duration is
/// checked (a slow machine cannot make it fail); accuracy is measured by
/// `bench/ratelimit.py`, not asserted here.
#[test]
fn upload_and_download_limits_hold_transfers_back() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    // 3 MiB at 1 MiB/s with a quarter-second burst: at least 2.5 s.
    fs::write(env.path("src/f.bin"), data(3 << 20, 17)).unwrap();
    let limited = env.serve(&host(), &["--upload-limit", "1"], &[&env.path("src/f.bin")]);
    let plain = env.serve(&host(), &[], &[&env.path("src/f.bin")]);
    for (name, magnet, extra) in [
        ("upload", limited.magnet(), vec![]),
        ("download", plain.magnet(), vec!["--download-limit", "1"]),
    ] {
        let mut c = env.cmd();
        c.args(["--ip", &host()])
            .args(&extra)
            .args(["download", "--dir"])
            .arg(env.path(name))
            .arg(magnet);
        let start = std::time::Instant::now();
        let out = run(c, LIMIT);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(2500),
            "--{name}-limit 1 moved 3 MiB in {took:?}"
        );
        assert_eq!(
            fs::read(env.path(&format!("{name}/f.bin"))).unwrap(),
            fs::read(env.path("src/f.bin")).unwrap()
        );
    }
}
