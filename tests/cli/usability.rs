//! The rough edges a new user hits (issue #9): where a bad value came from,
//! which config file is read, what `--help` lists, how `status` lines up.

use std::fs;
use std::time::Duration;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Runs p2pfile and returns (exit code, stderr).
fn run_err(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut c = env.cmd();
    c.args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = run(c, LIMIT);
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    (out.status.code(), stderr(&out))
}

#[test]
fn a_bad_value_is_named_where_it_was_written() {
    let env = Env::new();
    fs::write(env.path(".p2pfile.yaml"), "upload-limit: fast\n").unwrap();
    let yaml = env.path(".p2pfile.yaml");
    let ip = host();
    let serve = ["--ip", ip.as_str(), "serve", "nothing"];
    let (code, err) = run_err(&env, &serve, &[]);
    assert_eq!(code, Some(2), "{err}");
    let from_file = format!(
        "error: config key upload-limit in {}: \"fast\" is not a number of MiB/s",
        yaml.display()
    );
    assert!(err.starts_with(&from_file), "{err}");
    assert!(!err.contains("--upload-limit"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    let (code, err) = run_err(&env, &serve, &[("P2PFILE_UPLOAD_LIMIT", "quick")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("error: P2PFILE_UPLOAD_LIMIT \"quick\" is not a number of MiB/s"),
        "{err}"
    );
    // A flag before the subcommand beats the variable, and is named as a flag.
    let (code, err) = run_err(
        &env,
        &["--upload-limit", "slow", "--ip", &ip, "serve", "nothing"],
        &[("P2PFILE_UPLOAD_LIMIT", "quick")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("error: --upload-limit \"slow\" is not a number of MiB/s"),
        "{err}"
    );
    fs::write(env.path(".p2pfile.yaml"), "port-range: 5-3\n").unwrap();
    let (code, err) = run_err(&env, &serve, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("FIRST (5) must not exceed LAST (3)"), "{err}");
    assert!(err.contains("config key port-range in"), "{err}");
    assert!(
        err.contains("hint: write the lower port first: 3-5"),
        "{err}"
    );
    let (_, err) = run_err(
        &env,
        &["--port-range", "9-7", "--ip", &ip, "serve", "x"],
        &[],
    );
    assert!(
        err.starts_with("error: --port-range \"9-7\": FIRST (9) must not exceed LAST (7)"),
        "{err}"
    );
}

#[test]
fn an_unreadable_default_config_counts_as_absent_but_an_explicit_one_fails() {
    let env = Env::new();
    // A directory where the file should be: it exists, and reading it fails
    // (for root too, unlike a file without read permission).
    fs::create_dir(env.path(".p2pfile.yaml")).unwrap();
    fs::create_dir(env.path("folder")).unwrap();
    let mut c = env.cmd();
    c.args([
        "sync",
        "folder",
        "--show-keys",
        "--state",
        "s.db",
        "--debug",
    ]);
    let out = run(c, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("rw p2pf-rw-"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("exists but cannot be read")
            && stderr(&out).contains(".p2pfile.yaml"),
        "a debug line says why it was skipped: {}",
        stderr(&out)
    );
    let config = env.path(".p2pfile.yaml").display().to_string();
    let (code, err) = run_err(&env, &["status", "--config", &config], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("error: cannot read config file"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    let (code, err) = run_err(&env, &["status"], &[("P2PFILE_CONFIG", &config)]);
    assert_eq!(code, Some(2), "an explicit variable is explicit too: {err}");
}

#[test]
fn torrent_out_and_state_problems_come_with_a_hint() {
    let env = Env::new();
    fs::write(env.path("file"), b"content").unwrap();
    fs::write(env.path("blocker"), b"a file, not a directory").unwrap();
    let ip = host();
    let (code, err) = run_err(
        &env,
        &["--ip", &ip, "serve", "--torrent-out", "blocker/sub", "file"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot create --torrent-out directory"),
        "{err}"
    );
    assert!(
        err.contains("hint: pass --torrent-out with a directory"),
        "{err}"
    );
    fs::write(env.path("not.db"), vec![b'x'; 4096]).unwrap();
    let (code, err) = run_err(&env, &["status", "--state", "not.db"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot open state database not.db"), "{err}");
    assert!(
        err.contains("hint: not.db is not a p2pfile state database"),
        "{err}"
    );
    fs::create_dir(env.path("statedir")).unwrap();
    let (code, err) = run_err(
        &env,
        &["--ip", &ip, "serve", "--state", "statedir", "file"],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("hint: --state names a directory"), "{err}");
}

#[test]
fn a_flag_before_the_subcommand_must_apply_to_it() {
    let env = Env::new();
    let (code, err) = run_err(&env, &["--peers", "127.0.0.1:1", "status"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("error: --peers does not apply to status"),
        "{err}"
    );
    let (code, err) = run_err(&env, &["status", "--peers", "127.0.0.1:1"], &[]);
    assert_eq!(
        code,
        Some(2),
        "clap refuses it after the subcommand too: {err}"
    );
    // A variable of a flag the subcommand lacks is not an error.
    let (code, err) = run_err(&env, &["status"], &[("P2PFILE_PEERS", "127.0.0.1:1")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no state database"), "{err}");
}

/// Every `--help`, as a person reads it. A change to a flag shows up as a
/// snapshot diff (`cargo insta review`, or `INSTA_UPDATE=always`).
#[test]
fn help_texts() {
    let env = Env::new();
    for sub in [
        "",
        "serve",
        "magnet",
        "download",
        "sync",
        "status",
        "completion",
        "man",
    ] {
        let mut c = env.cmd();
        c.args(sub.split_whitespace()).arg("--help");
        let out = run(c, LIMIT);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        if !sub.is_empty() {
            assert!(text.contains("Exit codes:\n  0    "), "{sub}: {text}");
        }
        let name = if sub.is_empty() { "p2pfile" } else { sub };
        insta::assert_snapshot!(format!("help_{name}"), text);
    }
}

#[test]
fn status_columns_fit_long_names_and_json_numbers_are_short() {
    let env = Env::new();
    let name = "a-release-with-a-rather-long-name-2026-11-27-build-1234.tar.gz";
    fs::write(env.path(name), data(40_000, 5)).unwrap();
    let seed = env.serve(&host(), &["--state", "seed.db"], &[&env.path(name)]);
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "--state",
        "dl.db",
        "download",
        "--dir",
        "a/deeply/nested/download/directory",
    ])
    .arg(seed.magnet());
    let out = run(c, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut c = env.cmd();
    c.args(["--state", "dl.db", "status"]);
    let text = stdout(&run(c, LIMIT));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // Each column starts where its header does.
    for header in ["INFO-HASH", "WHERE"] {
        let at = lines[0].find(header).unwrap();
        assert_eq!(
            &lines[1][at - 2..at],
            "  ",
            "{header} column lines up:\n{text}"
        );
        assert_ne!(
            &lines[1][at..at + 1],
            " ",
            "{header} column lines up:\n{text}"
        );
    }
    assert!(lines[1].starts_with("complete  "), "{text}");
    assert!(lines[1].ends_with(&format!("directory/{name}")), "{text}");
    let mut c = env.cmd();
    c.args(["--state", "dl.db", "--json", "status"]);
    let out = run(c, LIMIT);
    let raw = stdout(&out);
    for ev in events(&out) {
        for (k, v) in ev.as_object().unwrap() {
            if let Some(f) = v.as_f64().filter(|_| v.is_f64()) {
                let digits = v.to_string().split('.').nth(1).map_or(0, str::len);
                assert!(digits <= 3, "{k} = {f} in {raw}");
            }
        }
    }
    drop(seed);
}
