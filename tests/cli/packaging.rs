//! What a package installs beside the binary: the man page (`p2pfile man`),
//! the shell completions, and the systemd unit of examples/systemd with its
//! config file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The subcommands `p2pfile --help` lists (clap's own `help` left out).
fn subcommands(env: &Env) -> Vec<String> {
    let mut c = env.cmd();
    c.arg("--help");
    let out = run(c, LIMIT);
    assert!(out.status.success());
    let names: Vec<String> = stdout(&out)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != "help")
        .collect();
    assert!(names.len() >= 6, "subcommands from --help: {names:?}");
    names
}

/// Whether a tool is installed (probed with `arg`).
fn installed(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `tool args` with `input` on stdin; returns its output.
fn pipe(tool: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(tool)
        .args(args)
        .env("MANWIDTH", "200")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn man_page_has_every_subcommand_and_parses() {
    let env = Env::new();
    let mut c = env.cmd();
    c.arg("man");
    let out = run(c, LIMIT);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let page = stdout(&out);
    assert!(
        page.is_ascii(),
        "the page is ASCII, other characters escaped"
    );
    assert!(page.contains(".TH p2pfile 1"), "no title:\n{page}");
    for section in ["NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "\"EXIT STATUS\""] {
        assert!(page.contains(&format!("\n.SH {section}\n")), "no {section}");
    }
    for name in subcommands(&env) {
        assert!(
            page.contains(&format!(".SS \"p2pfile {name}\"")),
            "no section for {name}:\n{page}"
        );
    }
    assert!(page.contains("130  interrupted"), "no exit codes");

    // groff with every warning on must have nothing to say.
    if installed("groff", "--version") {
        let out = pipe("groff", &["-man", "-Tutf8", "-ww", "-z"], page.as_bytes());
        assert!(out.status.success(), "groff failed");
        assert_eq!(stderr(&out), "", "groff warnings");
    } else {
        eprintln!("groff is not installed: checked the roff headers only");
    }
    // What `man p2pfile` shows, formatted.
    if installed("man", "--version") {
        let out = pipe("man", &["-l", "-"], page.as_bytes());
        assert!(out.status.success(), "man -l - failed: {}", stderr(&out));
        let text = stdout(&out);
        for needle in [
            "p2pfile serve",
            "p2pfile download",
            "--seeding-ratio",
            "EXIT STATUS",
        ] {
            assert!(text.contains(needle), "man shows no {needle}:\n{text}");
        }
    }
}

#[test]
fn completions_name_every_subcommand() {
    let env = Env::new();
    let names = subcommands(&env);
    for shell in ["bash", "zsh", "fish"] {
        let mut c = env.cmd();
        c.args(["completion", shell]);
        let out = run(c, LIMIT);
        assert!(out.status.success());
        let script = stdout(&out);
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell}: no {name}");
        }
        if shell == "bash" {
            let out = pipe("bash", &["-n"], script.as_bytes());
            assert!(out.status.success(), "bash -n: {}", stderr(&out));
        }
    }
}

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd")
}

/// The unit with the test's binary in place of /usr/bin/p2pfile.
fn unit_text() -> String {
    let unit = fs::read_to_string(systemd_dir().join("p2pfile-seed@.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/p2pfile "), "{unit}");
    unit.replace("/usr/bin/p2pfile", env!("CARGO_BIN_EXE_p2pfile"))
}

#[test]
fn systemd_unit_verifies() {
    if !installed("systemd-analyze", "--version") {
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let env = Env::new();
    let served = env.path("srv/releases");
    fs::create_dir_all(&served).unwrap();
    fs::write(env.path("p2pfile-seed@.service"), unit_text()).unwrap();
    let escaped = Command::new("systemd-escape")
        .arg("--path")
        .arg(&served)
        .output()
        .expect("systemd-escape comes with systemd-analyze");
    let instance = format!("p2pfile-seed@{}.service", stdout(&escaped).trim());
    let mut c = Command::new("systemd-analyze");
    c.args(["verify", "--man=no"]).arg(env.path(&instance));
    let out = run(c, LIMIT);
    // Unknown keys and bad values are only warnings: none is allowed.
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "systemd-analyze verify {instance}: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// The unit's ExecStart line, run as systemd would run it for an instance,
/// with the shipped seed.yaml: it parses, reads the config file and
/// serves. The environment moves the state and .torrent files from
/// /var/lib/p2pfile into the sandbox and the address onto loopback
/// (environment wins over the file).
#[test]
fn systemd_exec_start_serves_with_the_shipped_config() {
    let env = Env::new();
    let served = env.path("srv/releases");
    fs::create_dir_all(&served).unwrap();
    fs::write(served.join("app.bin"), data(100_000, 51)).unwrap();
    let config = env.path("etc/p2pfile/seed.yaml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::copy(systemd_dir().join("seed.yaml"), &config).unwrap();

    let unit = unit_text();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let served_text = served.display().to_string();
    let config_text = config.display().to_string();
    let argv: Vec<&str> = exec
        .split_whitespace()
        .map(|w| match w {
            "%f" => served_text.as_str(),
            "/etc/p2pfile/seed.yaml" => config_text.as_str(),
            other => other,
        })
        .collect();
    assert!(
        !argv.iter().any(|w| w.contains('%')),
        "unexpanded: {argv:?}"
    );

    // What StateDirectory= makes before the service starts.
    fs::create_dir_all(env.path("var")).unwrap();
    let mut c = env.cmd();
    c.args(&argv[1..])
        .env("P2PFILE_IP", host())
        .env("P2PFILE_STATE", env.path("var/seed.db"))
        .env("P2PFILE_TORRENT_OUT", env.path("var/torrents"));
    let seed = Server::spawn(c, 1);
    assert!(seed.magnet().starts_with("magnet:?xt=urn:btih:"));
    assert!(seed.magnet().contains("&dn=releases"), "{}", seed.magnet());
    assert!(env.path("var/seed.db").exists(), "state database");
    let torrents = fs::read_dir(env.path("var/torrents")).unwrap().count();
    assert_eq!(torrents, 1, "one .torrent for the served directory");
    // systemctl stop: SIGTERM, a clean exit 0 (no restart).
    assert_eq!(seed.terminate().code(), Some(0));
}
