//! Issue #10, bans: hostile peers beside an honest seed, as the user sees
//! them (`peer_banned` events, the exit-3 message). Hostile peers bind
//! 127.<P2PFILE_TEST_NET>.0.200+, clear of `host()`.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::rerun::corrupt_seed;
use crate::util::*;

const LIMIT: Duration = Duration::from_secs(120);

/// A hostile address, 127.<N>.0.<n> with n >= 200.
fn hostile(n: u8) -> String {
    format!("127.{}.0.{n}", test_net())
}

/// The info-hash of a magnet, as bytes and as hex.
fn info_hash(magnet: &str) -> ([u8; 20], String) {
    let hex = magnet[20..60].to_string();
    let bytes: [u8; 20] = (0..20)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    (bytes, hex)
}

/// A peer that sends garbage for every piece, beside an honest seed: it is
/// banned (a `peer_banned` event naming it), the download completes
/// byte-identical, and stderr stays empty.
#[test]
fn a_corrupt_peer_beside_an_honest_seed_is_banned_and_reported() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    let content = data(200_000, 11);
    fs::write(env.path("src/f.bin"), &content).unwrap();
    // A slow seed (~4 s for the file), so the liar's pieces arrive first.
    let slow = ["--upload-limit", "0.05"];
    let seed = env.serve(&host(), &slow, &[&env.path("src/f.bin")]);
    let (hash, hex) = info_hash(seed.magnet());
    let pieces =
        200_000usize.div_ceil(p2pfile_engine::metainfo::piece_length_for(200_000) as usize);
    let bad = corrupt_seed(&hostile(204), hash, pieces);
    let mut c = env.cmd();
    c.args(["--ip", &host(), "--peers", &bad, "download", "--json"])
        .args(["--dir", "dl"])
        .arg(seed.magnet());
    let out = run(c, LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "nothing on stderr for a successful run");
    assert!(fs::read(env.path("dl/f.bin")).unwrap() == content);
    let bans: Vec<_> = events(&out)
        .into_iter()
        .filter(|e| e["event"] == "peer_banned")
        .collect();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["peer"], bad.as_str());
    assert_eq!(bans[0]["reason"], "corrupt-piece");
    assert_eq!(bans[0]["info_hash"], hex.as_str());
}

/// With only a corrupt peer, the exit-3 message names it as banned and
/// why, and the `error` event lists it.
#[test]
fn the_timeout_names_the_banned_peers_and_why() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/f.bin"), data(200_000, 12)).unwrap();
    let seed = env.serve(&host(), &[], &[&env.path("src/f.bin")]);
    let (hash, _) = info_hash(seed.magnet());
    let magnet = without_peers(seed.magnet());
    assert!(seed.terminate().success());
    let pieces =
        200_000usize.div_ceil(p2pfile_engine::metainfo::piece_length_for(200_000) as usize);
    let ip = hostile(205);
    let bad = corrupt_seed(&ip, hash, pieces);
    let mut c = env.cmd();
    c.args(["--ip", &host(), "--peers", &bad, "download", "--json"])
        .args(["--timeout", "3", "--dir", "dl"])
        .arg(&magnet);
    let out = run(c, LIMIT);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("banned: {ip} (corrupt-piece)")),
        "{err}"
    );
    let error = events(&out)
        .into_iter()
        .find(|e| e["event"] == "error")
        .expect("an error event");
    assert_eq!(error["banned_peers"][0]["peer"], bad.as_str(), "{error}");
    assert_eq!(error["banned_peers"][0]["reason"], "corrupt-piece");
    assert_eq!(error["kind"], "timeout", "{error}");
}

/// A peer that asks `serve` for one block a thousand times is sent it at
/// most three times and banned (`peer_banned`, `request-flood`).
#[test]
fn serve_bans_a_request_flood() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/f.bin"), data(200_000, 13)).unwrap();
    let mut c = env.cmd();
    c.args(["--ip", &host(), "serve", "--json"])
        .arg(env.path("src/f.bin"));
    let mut serve = JsonProc::spawn(c);
    let ready = serve.wait_for("magnet", |e| e["magnet"].is_string());
    let magnet = ready["magnet"].as_str().unwrap().to_string();
    let (hash, hex) = info_hash(&magnet);
    let to = peer_of(&magnet);
    let mut s = connect_from(&hostile(206), &to);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hs = vec![19];
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0; 8]);
    hs.extend_from_slice(&hash);
    hs.extend_from_slice(b"-XX0000-flood-flood-");
    hs.extend_from_slice(&[0, 0, 0, 1, 2]); // interested
    s.write_all(&hs).unwrap();
    let mut theirs = [0u8; 68];
    s.read_exact(&mut theirs).unwrap();
    // Until unchoked (bounded: a few messages).
    for _ in 0..20 {
        let body = read_message(&mut s).expect("unchoked before closing");
        if body == [1] {
            break;
        }
    }
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.extend_from_slice(&[0, 0, 0, 13, 6]);
        flood.extend_from_slice(&0u32.to_be_bytes());
        flood.extend_from_slice(&0u32.to_be_bytes());
        flood.extend_from_slice(&16384u32.to_be_bytes());
    }
    let _ = s.write_all(&flood);
    let mut served = 0;
    while let Some(body) = read_message(&mut s) {
        if body.first() == Some(&7) {
            served += 1;
        }
    }
    let ban = serve.wait_for("peer_banned", |e| e["event"] == "peer_banned");
    assert!(served <= 3, "served {served} copies");
    assert_eq!(ban["reason"], "request-flood");
    assert_eq!(ban["info_hash"], hex.as_str());
    assert!(
        ban["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", hostile(206))),
        "{ban}"
    );
}

/// One message body (id and payload; empty for a keep-alive), `None`
/// once the connection closed.
fn read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}
