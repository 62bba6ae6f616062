//! Issue #9, rough edges 4 and 5: what a download does with what is
//! already at `DIR/<name>` (entries in the way move to
//! `DIR/.p2pfile-replaced/<YYYYMMDD-HHMMSS>/`, files the torrent lacks
//! stay), and the execute bit (BEP 47 `x`) from p2pfile to p2pfile.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(120);

/// `download --json --dir DIR MAGNET` to the end.
fn download(env: &Env, dir: &str, magnet: &str) -> Output {
    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--json", "--dir"])
        .arg(env.path(dir))
        .arg(magnet);
    let out = run(c, LIMIT);
    assert!(out.status.success(), "download failed: {}", stderr(&out));
    out
}

/// The `replaced` events of a run, as (path, moved_to).
fn replaced(out: &Output) -> Vec<(PathBuf, PathBuf)> {
    events(out)
        .iter()
        .filter(|e| e["event"] == "replaced")
        .map(|e| {
            let p = |k: &str| PathBuf::from(e[k].as_str().expect("a path"));
            (p("path"), p("moved_to"))
        })
        .collect()
}

/// Where the README says a replaced entry goes:
/// `DIR/.p2pfile-replaced/<YYYYMMDD-HHMMSS>/<its path below DIR>`.
fn assert_documented_place(dir: &Path, from: &Path, to: &Path) {
    let rel = from.strip_prefix(dir).expect("under DIR");
    let run = to
        .strip_prefix(dir.join(".p2pfile-replaced"))
        .expect("under DIR/.p2pfile-replaced");
    let mut parts = run.components();
    let stamp = parts.next().unwrap().as_os_str().to_str().unwrap();
    assert!(
        stamp.len() == 15 && stamp.as_bytes()[8] == b'-' && stamp.replace('-', "").len() == 14,
        "YYYYMMDD-HHMMSS: {stamp}"
    );
    assert_eq!(parts.as_path(), rel);
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_file_where_the_tree_goes_is_moved_aside() {
    let env = Env::new();
    let src = env.path("src/tree");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.bin"), data(300_000, 1)).unwrap();
    fs::write(src.join("sub/b.txt"), b"bee").unwrap();
    let seed = env.serve(&host(), &[], &[&src]);
    fs::create_dir_all(env.path("dl")).unwrap();
    fs::write(env.path("dl/tree"), b"my notes, not a tree").unwrap();

    let out = download(&env, "dl", seed.magnet());
    let moves = replaced(&out);
    assert_eq!(moves.len(), 1, "{moves:?}");
    let (from, to) = &moves[0];
    assert_eq!(from, &env.path("dl/tree"));
    assert_documented_place(&env.path("dl"), from, to);
    assert_eq!(fs::read(to).unwrap(), b"my notes, not a tree");
    assert_same_tree(&src, &env.path("dl/tree"));
    assert!(
        stderr(&out).contains(&to.display().to_string()),
        "stderr names where it went: {}",
        stderr(&out)
    );
}

#[test]
fn a_tree_where_the_file_goes_is_moved_aside() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    let src = env.path("src/image.bin");
    fs::write(&src, data(500_000, 2)).unwrap();
    let seed = env.serve(&host(), &[], &[&src]);
    let mine = env.path("dl/image.bin");
    fs::create_dir_all(mine.join("drafts")).unwrap();
    fs::write(mine.join("drafts/one.txt"), b"draft").unwrap();

    let out = download(&env, "dl", seed.magnet());
    let moves = replaced(&out);
    assert_eq!(moves.len(), 1, "{moves:?}");
    let (from, to) = &moves[0];
    assert_eq!(from, &mine);
    assert_documented_place(&env.path("dl"), from, to);
    assert_eq!(fs::read(to.join("drafts/one.txt")).unwrap(), b"draft");
    assert_eq!(fs::read(&mine).unwrap(), data(500_000, 2));
}

/// An update of a tree that holds a file of the user's and a directory
/// where the new version has a file: the user's file stays where it is,
/// untouched; the directory moves aside; the rest is the new version.
#[test]
fn an_extra_local_file_in_the_tree_is_kept() {
    let env = Env::new();
    for (v, seed) in [("v1", 10u64), ("v2", 20)] {
        let root = env.path(&format!("{v}/tree"));
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("app.bin"), data(400_000, seed)).unwrap();
        fs::write(root.join("conf"), data(1_000, seed + 1)).unwrap();
    }
    let seed1 = env.serve(&host(), &[], &[&env.path("v1/tree")]);
    download(&env, "dl", seed1.magnet());
    drop(seed1);
    let extra = env.path("dl/tree/local.txt");
    fs::write(&extra, b"written by the user").unwrap();
    let before = fs::metadata(&extra).unwrap();
    fs::remove_file(env.path("dl/tree/conf")).unwrap();
    fs::create_dir_all(env.path("dl/tree/conf")).unwrap();
    fs::write(env.path("dl/tree/conf/override"), b"mine").unwrap();

    let seed2 = env.serve(&host(), &[], &[&env.path("v2/tree")]);
    let out = download(&env, "dl", seed2.magnet());
    assert_eq!(fs::read(&extra).unwrap(), b"written by the user");
    let after = fs::metadata(&extra).unwrap();
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&after),
        std::os::unix::fs::MetadataExt::ino(&before)
    );
    let moves = replaced(&out);
    assert_eq!(moves.len(), 1, "only the directory in the way: {moves:?}");
    assert_eq!(moves[0].0, env.path("dl/tree/conf"));
    assert_documented_place(&env.path("dl"), &moves[0].0, &moves[0].1);
    assert_eq!(fs::read(moves[0].1.join("override")).unwrap(), b"mine");
    assert_same_tree_but(&env.path("v2/tree"), &env.path("dl/tree"), &["local.txt"]);
    assert!(!env.path("dl/.tree.p2pfile-part").exists());
}

#[test]
fn the_execute_bit_is_carried() {
    let env = Env::new();
    let src = env.path("src/tools");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    fs::write(src.join("group-only"), b"x for the group").unwrap();
    fs::write(src.join("README"), b"plain").unwrap();
    for (name, m) in [("run.sh", 0o755), ("group-only", 0o650), ("README", 0o644)] {
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(m)).unwrap();
    }
    let seed = env.serve(&host(), &[], &[&src]);
    download(&env, "dl", seed.magnet());
    let dl = env.path("dl/tools");
    assert_same_tree(&src, &dl);
    // The test's umask decides the other bits; execute follows read.
    for name in ["run.sh", "group-only"] {
        let m = mode(&dl.join(name));
        assert_eq!(m & 0o100, 0o100, "{name}: {m:o}");
        assert_eq!((m & 0o444) >> 2, m & 0o111, "{name}: {m:o}");
    }
    assert_eq!(mode(&dl.join("README")) & 0o111, 0, "no x without attr x");
    let ran = std::process::Command::new(dl.join("run.sh"))
        .output()
        .unwrap();
    assert_eq!(stdout(&ran), "ran\n");
}

/// The bit is in the info dictionary: a restarted `serve` sees a `chmod`
/// (which leaves the mtime alone) and hashes again, to another info-hash;
/// back without it, the info-hash is the one it had.
#[test]
fn serve_sees_a_chmod_and_hashes_again() {
    let env = Env::new();
    let src = env.path("src/tools");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("tool"), data(100_000, 3)).unwrap();
    fs::set_permissions(src.join("tool"), fs::Permissions::from_mode(0o644)).unwrap();
    let ip = host();
    let serving = |env: &Env| {
        let s = env.serve(&ip, &["--json"], &[&src]);
        let ev: serde_json::Value = serde_json::from_str(s.magnet()).unwrap();
        assert!(s.terminate().success());
        ev
    };
    let plain = serving(&env);
    assert_eq!(serving(&env)["hashed"], false);
    fs::set_permissions(src.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    let exec = serving(&env);
    assert_eq!(exec["hashed"], true);
    assert_ne!(exec["info_hash"], plain["info_hash"]);
    assert_eq!(serving(&env)["hashed"], false);
    fs::set_permissions(src.join("tool"), fs::Permissions::from_mode(0o644)).unwrap();
    let again = serving(&env);
    assert_eq!(again["hashed"], true);
    assert_eq!(again["info_hash"], plain["info_hash"]);
}
