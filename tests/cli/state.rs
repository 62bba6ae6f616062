//! Issue #3: state in SQLite, restart, resume after SIGKILL, delta updates,
//! several processes on one database, migration.

use std::fs;
use std::process::Command;

use crate::util::*;

fn status_rows(env: &Env) -> Vec<serde_json::Value> {
    let mut c = env.cmd();
    c.args(["status", "--json"]);
    let out = run(c, std::time::Duration::from_secs(30));
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    events(&out)
}

#[test]
fn restarted_serve_reuses_port_and_magnet_without_rehashing() {
    let env = Env::new();
    fs::create_dir_all(env.path("src/tree")).unwrap();
    fs::write(env.path("src/tree/a.bin"), data(2 << 20, 1)).unwrap();
    let ip = host();
    let serving = |env: &Env| {
        let s = env.serve(&ip, &["--json"], &[&env.path("src/tree")]);
        let ev: serde_json::Value = serde_json::from_str(s.magnet()).unwrap();
        assert!(s.terminate().success());
        ev
    };
    let first = serving(&env);
    assert_eq!(first["hashed"], true);
    let second = serving(&env);
    assert_eq!(
        second["hashed"], false,
        "unchanged files are not hashed again"
    );
    assert_eq!(second["magnet"], first["magnet"], "same port, same magnet");
    // A changed file is hashed again.
    fs::write(env.path("src/tree/a.bin"), data(2 << 20, 2)).unwrap();
    let third = serving(&env);
    assert_eq!(third["hashed"], true);
    assert_ne!(third["info_hash"], first["info_hash"]);
}

#[test]
fn download_killed_half_way_resumes_from_verified_pieces() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    let total = 24u64 << 20;
    fs::write(env.path("src/big.bin"), data(total as usize, 9)).unwrap();
    let seed = env.serve(&host(), &[], &[&env.path("src/big.bin")]);
    kill_half_way(&env, "dl", seed.magnet(), total);
    assert!(
        !env.path("dl/big.bin").exists(),
        "no partial file under the final name"
    );
    assert!(env.path("dl/.big.bin.p2pfile-part").exists());
    let second = JsonProc::spawn(download_cmd(&env, "dl", seed.magnet(), &[]));
    let (status, evs) = second.finish();
    assert!(status.success(), "{evs:?}");
    let checked = JsonProc::find(&evs, "checked").expect("checked event");
    let valid = checked["valid_bytes"].as_u64().unwrap();
    assert!(valid >= total / 3, "kept verified pieces: {checked}");
    let done = JsonProc::find(&evs, "completed").unwrap();
    let refetched = done["downloaded"].as_u64().unwrap();
    // Only what was missing, plus pieces that were in flight at the kill.
    assert!(
        refetched <= total - valid + (2 << 20),
        "re-fetched {refetched} of {total}, {valid} were kept"
    );
    assert_eq!(
        fs::read(env.path("dl/big.bin")).unwrap(),
        fs::read(env.path("src/big.bin")).unwrap()
    );
    let rows = status_rows(&env);
    let row = rows
        .iter()
        .find(|r| r["event"] == "download")
        .expect("download row");
    assert_eq!(row["state"], "complete");
    assert_eq!(row["bytes"].as_u64(), Some(total));
}

#[test]
fn delta_update_moves_about_the_changed_fraction() {
    let env = Env::new();
    let total = 16usize << 20;
    let v1 = data(total, 3);
    let mut v2 = v1.clone();
    // Change 10 % of the file in place.
    let changed = data(total / 10, 4);
    v2[total / 2..total / 2 + changed.len()].copy_from_slice(&changed);
    fs::create_dir_all(env.path("v1")).unwrap();
    fs::create_dir_all(env.path("v2")).unwrap();
    fs::write(env.path("v1/app.bin"), &v1).unwrap();
    fs::write(env.path("v2/app.bin"), &v2).unwrap();
    let seed1 = env.serve(&host(), &[], &[&env.path("v1/app.bin")]);
    let (status1, _) = JsonProc::spawn(download_cmd(&env, "dl", seed1.magnet(), &[])).finish();
    assert!(status1.success());
    drop(seed1);
    let seed2 = env.serve(&host(), &[], &[&env.path("v2/app.bin")]);
    let (status2, evs) = JsonProc::spawn(download_cmd(&env, "dl", seed2.magnet(), &[])).finish();
    assert!(status2.success(), "{evs:?}");
    let moved = JsonProc::find(&evs, "completed").unwrap()["downloaded"]
        .as_u64()
        .unwrap();
    assert!(
        moved <= (total as u64) / 10 + (total as u64) / 20,
        "moved {moved} bytes of {total} for a 10 % change"
    );
    assert!(moved >= (total as u64) / 10, "the changed tenth moved");
    assert_eq!(fs::read(env.path("dl/app.bin")).unwrap(), v2);
}

#[test]
fn several_processes_share_one_database() {
    let env = Env::new();
    fs::create_dir_all(env.path("a")).unwrap();
    fs::write(env.path("a/one.bin"), data(3 << 20, 5)).unwrap();
    fs::write(env.path("a/two.bin"), data(3 << 20, 6)).unwrap();
    let s1 = env.serve(&host(), &[], &[&env.path("a/one.bin")]);
    let s2 = env.serve(&host(), &[], &[&env.path("a/two.bin")]);
    let children: Vec<_> = [s1.magnet(), s2.magnet()]
        .into_iter()
        .enumerate()
        .map(|(i, m)| JsonProc::spawn(download_cmd(&env, &format!("dl{i}"), m, &[])))
        .collect();
    for child in children {
        let mut child = child;
        let status = wait_timeout(&mut child.child, std::time::Duration::from_secs(120)).unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "{err}");
        assert!(!err.contains("locked"), "{err}");
    }
    for s in [s1, s2] {
        let mut s = s;
        let mut err = String::new();
        assert!(s.child.try_wait().unwrap().is_none(), "serve still runs");
        crate::util::signal(&s.child, "TERM");
        wait_timeout(&mut s.child, std::time::Duration::from_secs(20)).unwrap();
        std::io::Read::read_to_string(s.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(!err.contains("locked"), "{err}");
    }
    let rows = status_rows(&env);
    assert_eq!(rows.iter().filter(|r| r["event"] == "served").count(), 2);
    let downloads: Vec<_> = rows.iter().filter(|r| r["event"] == "download").collect();
    assert_eq!(downloads.len(), 2);
    assert!(downloads.iter().all(|d| d["state"] == "complete"));
    // Both seeds recorded what they uploaded.
    assert!(
        rows.iter()
            .filter(|r| r["event"] == "served")
            .all(|r| r["uploaded"].as_u64() >= Some(3 << 20))
    );
}

#[test]
fn upload_totals_survive_a_restart() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    let size = 2u64 << 20;
    fs::write(env.path("src/f.bin"), data(size as usize, 8)).unwrap();
    let ip = host();
    for round in 1..=2u64 {
        let seed = env.serve(&ip, &[], &[&env.path("src/f.bin")]);
        let (ok, _) = JsonProc::spawn(download_cmd(
            &env,
            &format!("dl{round}"),
            seed.magnet(),
            &[],
        ))
        .finish();
        assert!(ok.success());
        assert!(seed.terminate().success());
        let rows = status_rows(&env);
        let served = rows.iter().find(|r| r["event"] == "served").unwrap();
        assert!(
            served["uploaded"].as_u64() >= Some(round * size),
            "after run {round}: {served}"
        );
    }
}

#[test]
fn a_version_1_database_is_upgraded() {
    let env = Env::new();
    let db = env.path(".p2pfile.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE served (path TEXT PRIMARY KEY, info_hash TEXT NOT NULL, name TEXT NOT NULL,
                piece_length INTEGER NOT NULL, port INTEGER NOT NULL, info BLOB NOT NULL,
                files TEXT NOT NULL, updated_at INTEGER NOT NULL);
             CREATE TABLE downloads (info_hash TEXT NOT NULL, dir TEXT NOT NULL, state TEXT NOT NULL,
                total INTEGER NOT NULL, have INTEGER NOT NULL, uploaded INTEGER NOT NULL,
                downloaded INTEGER NOT NULL, updated_at INTEGER NOT NULL, PRIMARY KEY (info_hash, dir));
             INSERT INTO downloads VALUES ('ab', '/srv', 'complete', 100, 100, 250, 100, 0);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let rows = status_rows(&env);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["state"], "complete");
    assert_eq!(rows[0]["uploaded"], 250);
    assert_eq!(rows[0]["ratio"], 2.5);
    let v: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        v, 4,
        "upgraded to the newest schema (4: a download's info and file signature)"
    );
}

/// A tree where one file in the middle changed, and grew: every later
/// piece shifts in the stream, but pieces are matched through file paths,
/// so only about the changed file moves.
#[test]
fn delta_update_of_a_tree_moves_about_the_changed_file() {
    let env = Env::new();
    let file_size = 2usize << 20;
    for (v, seed) in [("v1", 0u64), ("v2", 0)] {
        let root = env.path(&format!("{v}/tree"));
        fs::create_dir_all(&root).unwrap();
        for i in 0..5u64 {
            fs::write(root.join(format!("f{i}.bin")), data(file_size, seed + i)).unwrap();
        }
    }
    fs::write(env.path("v2/tree/f2.bin"), data(file_size + 5000, 99)).unwrap();
    let seed1 = env.serve(&host(), &[], &[&env.path("v1/tree")]);
    let (ok, _) = JsonProc::spawn(download_cmd(&env, "dl", seed1.magnet(), &[])).finish();
    assert!(ok.success());
    drop(seed1);
    let seed2 = env.serve(&host(), &[], &[&env.path("v2/tree")]);
    let (ok, evs) = JsonProc::spawn(download_cmd(&env, "dl", seed2.magnet(), &[])).finish();
    assert!(ok.success(), "{evs:?}");
    let moved = JsonProc::find(&evs, "completed").unwrap()["downloaded"]
        .as_u64()
        .unwrap();
    let changed = (file_size + 5000) as u64;
    assert!(moved >= changed, "the changed file moved: {moved}");
    assert!(
        moved <= changed + (256 << 10),
        "moved {moved} for one changed file of {changed}"
    );
    assert_same_tree(&env.path("v2/tree"), &env.path("dl/tree"));
}

/// A full disk fails the download with exit 1 and a hint, and leaves no
/// file under the final name. Needs root to mount a small tmpfs.
#[test]
fn full_disk_fails_cleanly() {
    let env = Env::new();
    let small = env.path("small");
    fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.clone());
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/big.bin"), data(6 << 20, 1)).unwrap();
    let seed = env.serve(&host(), &[], &[&env.path("src/big.bin")]);
    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--dir"])
        .arg(&small)
        .arg(seed.magnet());
    let out = run(c, std::time::Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Refused as soon as the metadata arrived, before any piece was written.
    assert!(err.contains("not enough space in"), "{err}");
    assert!(err.contains("needs 6.0 MiB, 2.0 MiB free"), "{err}");
    assert!(err.contains("hint: free disk space"), "{err}");
    assert!(
        !small.join("big.bin").exists(),
        "no partial file under the final name"
    );
}

#[test]
fn state_flag_moves_the_database() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/f.bin"), data(100_000, 3)).unwrap();
    let s = env.serve(
        &host(),
        &["--state", "elsewhere.db"],
        &[&env.path("src/f.bin")],
    );
    assert!(s.terminate().success());
    assert!(env.path("elsewhere.db").exists());
    assert!(
        !env.path(".p2pfile.db").exists(),
        "the default database is not used"
    );
    let mut c = env.cmd();
    c.args(["--state", "elsewhere.db", "status", "--json"]);
    let out = run(c, std::time::Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        events(&out)
            .iter()
            .filter(|r| r["event"] == "served")
            .count(),
        1
    );
    // status without a database says where it looked.
    let mut c = env.cmd();
    c.arg("status");
    let out = run(c, std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no state database at .p2pfile.db"));
}

/// A file of the old version edited while its new version downloads is
/// left as the user made it and reported; the other files are replaced.
#[test]
fn a_local_edit_during_a_delta_download_is_kept() {
    let env = Env::new();
    let file_size = 2usize << 20;
    for (v, seed) in [("v1", 0u64), ("v2", 50)] {
        let root = env.path(&format!("{v}/tree"));
        fs::create_dir_all(&root).unwrap();
        for i in 0..3u64 {
            fs::write(root.join(format!("f{i}.bin")), data(file_size, seed + i)).unwrap();
        }
    }
    let seed1 = env.serve(&host(), &[], &[&env.path("v1/tree")]);
    let (ok, _) = JsonProc::spawn(download_cmd(&env, "dl", seed1.magnet(), &[])).finish();
    assert!(ok.success());
    drop(seed1);
    let seed2 = env.serve(&host(), &[], &[&env.path("v2/tree")]);
    // Held to 1 MiB/s, so the edit lands while the download runs.
    let mut dl = JsonProc::spawn(download_cmd(
        &env,
        "dl",
        seed2.magnet(),
        &["--download-limit", "1"],
    ));
    dl.wait_for("checked", |e| e["event"] == "checked");
    fs::write(env.path("dl/tree/f1.bin"), b"edited by the user").unwrap();
    let (ok, evs) = dl.finish();
    assert!(ok.success(), "{evs:?}");
    let kept = JsonProc::find(&evs, "local_edits_kept").expect("a local_edits_kept event");
    let paths: Vec<String> = kept["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert!(paths[0].ends_with("tree/f1.bin"), "{paths:?}");
    assert_eq!(
        fs::read(env.path("dl/tree/f1.bin")).unwrap(),
        b"edited by the user"
    );
    for i in [0, 2] {
        assert_eq!(
            fs::read(env.path(&format!("dl/tree/f{i}.bin"))).unwrap(),
            data(file_size, 50 + i)
        );
    }
}
