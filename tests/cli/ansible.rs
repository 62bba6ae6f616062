//! The Ansible example (examples/ansible) run for real: ansible-core's
//! `ansible-playbook` on an inventory of loopback hosts (`ansible_connection:
//! local`, each with its own 127.N.0.x address, state database and target
//! directory), three runs: the first rolls out to every host, the second
//! finds nothing to do and moves no byte, the third repairs the one host
//! whose copy was deleted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::util::*;

/// One playbook run, at most (the seed's deadline below is 120 s).
const LIMIT: Duration = Duration::from_secs(300);

const TARGETS: usize = 3;

/// Whether `ansible-playbook` is here; `P2PFILE_REQUIRE_ANSIBLE` (set by
/// scripts/test once it has installed ansible-core) makes a missing one a
/// failure.
fn have_ansible() -> bool {
    have_tool(
        "ansible-playbook",
        Command::new("ansible-playbook").arg("--version"),
        "P2PFILE_REQUIRE_ANSIBLE",
        "apt-get install ansible-core",
    )
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ansible")
}

/// The loopback fleet: one seed and the targets, each with a directory.
struct Fleet {
    env: Env,
    src: PathBuf,
    targets: Vec<String>,
    /// Each target's address (its `p2pfile_ip`).
    ips: BTreeMap<String, String>,
}

impl Fleet {
    fn new() -> Self {
        let env = Env::new();
        let src = env.path("seed/build/release");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::create_dir_all(src.join("share/doc")).unwrap();
        fs::write(src.join("bin/app"), data(3 << 20, 91)).unwrap();
        fs::write(src.join("share/data.bin"), data(1 << 20, 92)).unwrap();
        fs::write(src.join("share/doc/README"), b"release notes\n").unwrap();
        fs::write(src.join("share/empty"), b"").unwrap();
        let seed_ip = host();
        let seed_port = std::net::TcpListener::bind((seed_ip.as_str(), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let targets: Vec<String> = (1..=TARGETS).map(|i| format!("target{i}")).collect();

        let root = env.dir.path().display().to_string();
        let mut inv = String::from("all:\n  vars:\n");
        for (k, v) in [
            ("ansible_connection", "local".to_string()),
            ("ansible_python_interpreter", "/usr/bin/python3".to_string()),
            ("rollout_deadline", "120".to_string()),
            ("rollout_timeout", "30".to_string()),
            ("rollout_retries", "2".to_string()),
            ("p2pfile_seed_port", seed_port.to_string()),
        ] {
            writeln!(inv, "    {k}: \"{v}\"").unwrap();
        }
        inv.push_str("  children:\n    p2pfile_seed:\n      hosts:\n");
        writeln!(inv, "        seed:\n          p2pfile_ip: \"{seed_ip}\"").unwrap();
        writeln!(
            inv,
            "          p2pfile_state: \"{root}/seed/state/p2pfile.db\""
        )
        .unwrap();
        writeln!(inv, "          rollout_src: \"{}\"", src.display()).unwrap();
        inv.push_str("    p2pfile_targets:\n      hosts:\n");
        let mut ips = BTreeMap::new();
        for t in &targets {
            let ip = host();
            writeln!(inv, "        {t}:\n          p2pfile_ip: \"{ip}\"").unwrap();
            ips.insert(t.clone(), ip);
            writeln!(
                inv,
                "          p2pfile_state: \"{root}/{t}/state/p2pfile.db\""
            )
            .unwrap();
            writeln!(inv, "          rollout_dest: \"{root}/{t}/dest\"").unwrap();
        }
        fs::write(env.path("inventory.yml"), inv).unwrap();
        Self {
            env,
            src,
            targets,
            ips,
        }
    }

    fn copy(&self, target: &str) -> PathBuf {
        self.env.path(&format!("{target}/dest/release"))
    }

    /// Runs the example playbook, which must succeed; returns its output
    /// and the recap by host.
    fn play(&self, which: &str) -> (String, BTreeMap<String, Recap>) {
        let (ok, text, recap) = self.play_with(which, &[]);
        assert!(ok, "{which} run failed:\n{text}");
        for (h, r) in &recap {
            assert_eq!(
                (r.failed, r.unreachable),
                (0, 0),
                "{which} run, {h}:\n{text}"
            );
        }
        (text, recap)
    }

    /// Runs the example playbook with extra `-e` variables; returns
    /// whether it exited 0, its output and the recap by host.
    fn play_with(&self, which: &str, extra: &[&str]) -> (bool, String, BTreeMap<String, Recap>) {
        let dir = example_dir();
        let mut c = Command::new("ansible-playbook");
        c.arg("-i")
            .arg(self.env.path("inventory.yml"))
            .arg("-e")
            .arg(format!("p2pfile_bin={}", env!("CARGO_BIN_EXE_p2pfile")));
        for e in extra {
            c.arg("-e").arg(e);
        }
        c.arg(dir.join("rollout.yml"))
            .current_dir(self.env.dir.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("P2PFILE_") || k.starts_with("ANSIBLE_") {
                c.env_remove(k);
            }
        }
        // The shipped ansible.cfg; ansible's temp files in the sandbox. The
        // async job directory is named: async_status would look for it in
        // the passwd entry's home, not in $HOME.
        c.env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
            .env("HOME", self.env.dir.path())
            .env("ANSIBLE_ASYNC_DIR", self.env.path("ansible-async"))
            .env("ANSIBLE_NOCOLOR", "1");
        let out = run(c, LIMIT);
        let text = stdout(&out);
        let recap = recap(&text);
        println!("--- {which} run: PLAY RECAP");
        for line in text
            .lines()
            .skip_while(|l| !l.starts_with("PLAY RECAP"))
            .skip(1)
        {
            if !line.trim().is_empty() {
                println!("{line}");
            }
        }
        for (h, msg) in messages(&text) {
            if h == "seed" {
                println!("{h}: {msg}");
            }
        }
        assert!(
            !stderr(&out).contains("ERROR!"),
            "{which} run: {}",
            stderr(&out)
        );
        assert_eq!(recap.len(), TARGETS + 1, "{which} run, recap:\n{text}");
        (out.status.success(), text, recap)
    }
}

/// A host's line of PLAY RECAP.
#[derive(Debug)]
struct Recap {
    changed: u32,
    unreachable: u32,
    failed: u32,
}

fn recap(text: &str) -> BTreeMap<String, Recap> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .skip(1)
    {
        let Some((name, counts)) = line.split_once(" : ") else {
            continue;
        };
        let count = |key: &str| -> u32 {
            counts
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in recap line {line:?}"))
        };
        out.insert(
            name.trim().to_string(),
            Recap {
                changed: count("changed"),
                unreachable: count("unreachable"),
                failed: count("failed"),
            },
        );
    }
    out
}

/// Modification times of every file under `root`, to show a run left them.
fn mtimes(root: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path(), meta.modified().unwrap());
            }
        }
    }
    out
}

/// The `msg` of every debug and assert result, with its host: the lines
/// `ok: [HOST] => {` (or `fatal: [HOST]: FAILED! => {`) and
/// `    "msg": "..."` of the default output.
fn messages(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut host = None;
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("ok: [")
            .or_else(|| line.strip_prefix("fatal: ["))
        {
            host = rest.split_once(']').map(|(h, _)| h.to_string());
        } else if !line.starts_with(' ') {
            // The end of a result block (`}`), or a result on one line.
            host = None;
        } else if let (Some(h), Some(msg)) = (&host, line.trim().strip_prefix("\"msg\": ")) {
            out.push((h.clone(), msg.to_string()));
            host = None;
        }
    }
    out
}

#[test]
fn ansible_playbook_passes_syntax_check() {
    if !have_ansible() {
        return;
    }
    let env = Env::new();
    let mut c = Command::new("ansible-playbook");
    c.arg("--syntax-check")
        .arg(example_dir().join("rollout.yml"))
        .env("ANSIBLE_CONFIG", example_dir().join("ansible.cfg"))
        .env("HOME", env.dir.path())
        .current_dir(example_dir());
    let out = run(c, LIMIT);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn ansible_rollout_is_idempotent_and_reports() {
    if !have_ansible() {
        return;
    }
    let fleet = Fleet::new();

    // First run: every target downloads, the seed reports them all.
    let (text, first) = fleet.play("first");
    for t in &fleet.targets {
        assert!(first[t].changed >= 1, "first run: {t} not changed:\n{text}");
        assert_same_tree(&fleet.src, &fleet.copy(t));
    }
    assert!(
        text.contains("release completed on"),
        "no rollout report:\n{text}"
    );
    assert!(first["seed"].changed >= 1, "the seed uploaded:\n{text}");

    // Second run: nothing to do; no seed, no download, no file touched.
    let before: Vec<_> = fleet
        .targets
        .iter()
        .map(|t| mtimes(&fleet.copy(t)))
        .collect();
    let (text, second) = fleet.play("second");
    for (h, r) in &second {
        assert_eq!(r.changed, 0, "second run: {h} changed:\n{text}");
    }
    assert!(
        text.contains("no seed was started, no byte moved"),
        "second run started a seed:\n{text}"
    );
    let said = messages(&text);
    for t in &fleet.targets {
        assert!(
            said.iter().any(|(h, m)| h == t
                && m.contains("nothing to do")
                && m.contains("; 0 bytes downloaded")),
            "second run: no '0 bytes downloaded' from {t}:\n{text}"
        );
    }
    let after: Vec<_> = fleet
        .targets
        .iter()
        .map(|t| mtimes(&fleet.copy(t)))
        .collect();
    assert_eq!(before, after, "second run touched files");

    // Third run: one host lost its copy; only it downloads, and the seed
    // expects only it.
    let lost = &fleet.targets[1];
    fs::remove_dir_all(fleet.copy(lost)).unwrap();
    let (text, third) = fleet.play("third");
    for t in &fleet.targets {
        let expected = u32::from(t == lost);
        assert_eq!(third[t].changed, expected, "third run, {t}:\n{text}");
        assert_same_tree(&fleet.src, &fleet.copy(t));
    }

    // Fourth run: one host's download fails with a usage error (exit 2, a
    // --timeout it rejects), tried once and not again; the seed gives up
    // at its deadline and its report names that host as missing.
    let broken = &fleet.targets[2];
    fs::remove_dir_all(fleet.copy(broken)).unwrap();
    let bad_timeout =
        format!("rollout_timeout={{{{ 'soon' if inventory_hostname == '{broken}' else 30 }}}}");
    let (ok, text, fourth) = fleet.play_with("fourth", &[&bad_timeout, "rollout_deadline=10"]);
    assert!(!ok, "fourth run succeeded:\n{text}");
    for t in &fleet.targets {
        let failed = u32::from(t == broken);
        assert_eq!(fourth[t].failed, failed, "fourth run, {t}:\n{text}");
        assert_eq!(fourth[t].changed, 0, "fourth run, {t}:\n{text}");
    }
    assert_eq!(fourth["seed"].failed, 1, "the report fails:\n{text}");
    assert!(
        !text.contains(&format!("RETRYING: [{broken}]")),
        "exit 2 was retried:\n{text}"
    );
    let report = messages(&text)
        .into_iter()
        .find(|(h, m)| h == "seed" && m.contains("the seed exited"))
        .unwrap_or_else(|| panic!("no failed report:\n{text}"))
        .1;
    assert!(
        report.contains(&format!("missing: {}", fleet.ips[broken])),
        "report: {report}"
    );
}
