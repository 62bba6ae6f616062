//! What a package installs beside the binary: the man page (`p2pfile man`)
//! and the shell completions.

use std::io::Write;
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
