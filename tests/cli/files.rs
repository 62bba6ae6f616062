//! Issue #11, many files: a tree of hundreds of small files arrives whole,
//! in one piece of work per file system rather than per file, and a
//! download of many files killed half way resumes from its verified pieces.

use std::fs;
use std::path::Path;

use crate::util::*;

/// `count` files of `min..=max` bytes (deterministic sizes and bytes) in
/// directories one to three levels deep, an empty file and an empty
/// directory.
fn tree(root: &Path, count: usize, min: usize, max: usize) -> u64 {
    let mut total = 0;
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("zero"), b"").unwrap();
    for i in 0..count {
        let dir = match i % 4 {
            0 => root.join(format!("d{}", i % 5)),
            1 => root.join(format!("d{}/s{}", i % 5, i % 3)),
            _ => root.join(format!("d{}/s{}/t{}", i % 5, i % 3, i % 2)),
        };
        fs::create_dir_all(&dir).unwrap();
        let len = min + (i * 7919) % (max - min + 1);
        fs::write(dir.join(format!("f{i:04}.dat")), data(len, i as u64 + 1)).unwrap();
        total += len as u64;
    }
    total
}

/// Every `*.p2pfile-part` below `dir`.
fn parts(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().ends_with(".p2pfile-part") {
                found.push(e.path().display().to_string());
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
    found
}

#[test]
fn many_small_files_arrive_whole_and_leave_no_part() {
    let env = Env::new();
    tree(&env.path("src/tree"), 400, 1024, 8192);
    let seed = env.serve(&host(), &[], &[&env.path("src/tree")]);
    let (status, evs) = JsonProc::spawn(download_cmd(&env, "dl", seed.magnet(), &[])).finish();
    assert!(status.success(), "{evs:?}");
    assert!(JsonProc::find(&evs, "completed").is_some(), "{evs:?}");
    assert_same_tree(&env.path("src/tree"), &env.path("dl/tree"));
    assert_eq!(parts(&env.path("dl")), Vec::<String>::new());
}

#[test]
fn many_files_killed_half_way_resume_from_verified_pieces() {
    let env = Env::new();
    let total = tree(&env.path("src/tree"), 600, 1024, 80 << 10);
    let seed = env.serve(&host(), &[], &[&env.path("src/tree")]);
    kill_half_way(&env, "dl", seed.magnet(), total);
    assert!(
        !env.path("dl/tree").exists(),
        "no tree under the final name before every file is complete"
    );
    assert!(env.path("dl/.tree.p2pfile-part").is_dir());

    let (status, evs) = JsonProc::spawn(download_cmd(&env, "dl", seed.magnet(), &[])).finish();
    assert!(status.success(), "{evs:?}");
    let checked = JsonProc::find(&evs, "checked").expect("checked event");
    let valid = checked["valid_bytes"].as_u64().unwrap();
    assert!(valid >= total / 3, "kept verified pieces: {checked}");
    let done = JsonProc::find(&evs, "completed").expect("completed event");
    let refetched = done["downloaded"].as_u64().unwrap();
    assert!(
        refetched <= total - valid + (2 << 20),
        "re-fetched {refetched} of {total}, {valid} were kept"
    );
    assert_same_tree(&env.path("src/tree"), &env.path("dl/tree"));
    assert_eq!(parts(&env.path("dl")), Vec::<String>::new());
}
