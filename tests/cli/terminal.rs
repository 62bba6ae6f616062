//! What a person sees in a terminal (the progress bars, checked in a real
//! tmux pane) and what a pipeline sees when its reader goes away.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// A tmux server on a socket of its own (in the test's directory, so
/// nothing is left behind), killed on drop with everything it runs.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// None (and a message saying so) when tmux is not installed.
    fn start(env: &Env, script: &Path) -> Option<Self> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("skipped: tmux is not installed (scripts/test installs it)");
            return None;
        }
        let tmux = Tmux {
            socket: env.path("tmux.sock"),
        };
        let status = tmux
            .cmd()
            .args(["new-session", "-d", "-x", "120", "-y", "30", "sh"])
            .arg(script)
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session failed");
        Some(tmux)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).args(["-f", "/dev/null"]);
        c
    }

    /// The pane's text as a person sees it now, with `history` lines
    /// scrolled off above it.
    fn screen(&self, history: u32) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-S", &format!("-{history}")])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The percentage on a progress bar line (`name [===>  ] 42% ...`).
fn percent(line: &str) -> Option<u32> {
    line.split_whitespace()
        .find_map(|w| w.strip_suffix('%')?.parse().ok())
}

#[test]
fn progress_bar_in_a_terminal_fills_then_leaves_the_path_on_its_own_line() {
    // With --debug, so log lines are drawn while the bar is up: they must
    // go above it, never into it.
    let env = Env::new();
    let src = env.path("release.bin");
    fs::write(&src, data(6 << 20, 3)).unwrap();
    let seed = env.serve(&host(), &[], &[&src]);
    let script = env.path("download.sh");
    fs::write(
        &script,
        format!(
            "cd '{dir}'\nexport HOME='{dir}'\nunset $(env | sed -n 's/^\\(P2PFILE_[A-Z_]*\\)=.*/\\1/p')\n\
             '{bin}' --ip {ip} --state dl.db download --dir out --download-limit 1 --debug '{magnet}'\n\
             echo $? > exit-code\nsleep 300\n",
            dir = env.dir.path().display(),
            bin = env!("CARGO_BIN_EXE_p2pfile"),
            ip = host(),
            magnet = seed.magnet(),
        ),
    )
    .unwrap();
    let Some(tmux) = Tmux::start(&env, &script) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    // Mid-way (past the first few updates, so the rate has samples): one
    // bar with the name, bytes done/total, a rate that is not zero, ETA, peers.
    let mut midway = None;
    while Instant::now() < deadline && !env.path("exit-code").exists() {
        let screen = tmux.screen(0);
        if let Some(line) = screen
            .lines()
            .find(|l| percent(l).is_some_and(|p| (20..95).contains(&p)))
        {
            midway = Some(line.to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = midway.expect("a progress bar between 1 % and 99 % on the screen");
    assert!(line.starts_with("release.bin "), "{line}");
    assert!(line.contains("/6.00 MiB "), "bytes done/total: {line}");
    assert!(line.contains("/s "), "rate: {line}");
    assert!(
        !line.contains(" 0 B/s") && !line.contains(" 0.00 "),
        "rate: {line}"
    );
    assert!(line.contains("ETA "), "{line}");
    assert!(line.contains("1 peer"), "{line}");
    while Instant::now() < deadline && !env.path("exit-code").exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = fs::read_to_string(env.path("exit-code")).expect("the download ended");
    assert_eq!(code.trim(), "0");
    // The end: the path alone on its line, no bar left short of 100 %, and
    // no log line (--debug) written into a bar.
    let screen = tmux.screen(1000);
    assert!(screen.contains("DEBUG"), "--debug logged:\n{screen}");
    assert!(
        screen
            .lines()
            .filter(|l| l.contains("DEBUG"))
            .all(|l| percent(l).is_none() && !l.contains("ETA")),
        "a log line glued to a bar:\n{screen}"
    );
    let path = env
        .dir
        .path()
        .canonicalize()
        .unwrap()
        .join("out/release.bin");
    assert!(
        screen
            .lines()
            .any(|l| l.trim_end() == path.display().to_string()),
        "path on its own line:\n{screen}"
    );
    assert!(
        screen.lines().filter_map(percent).all(|p| p == 100),
        "no unfinished bar left:\n{screen}"
    );
    assert_eq!(fs::read(&src).unwrap(), fs::read(&path).unwrap());
}

#[test]
fn closed_stdout_ends_the_download_normally_with_its_state_saved() {
    let env = Env::new();
    let src = env.path("file.bin");
    fs::write(&src, data(1 << 20, 4)).unwrap();
    let seed = env.serve(&host(), &[], &[&src]);
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "--state",
        "dl.db",
        "download",
        "--dir",
        "out",
    ])
    .arg(seed.magnet())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn download");
    // The reader goes away before the path is printed, as `| head -0` would.
    drop(child.stdout.take());
    let status = wait_timeout(&mut child, Duration::from_secs(90)).expect("download exits");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
    assert_eq!(
        fs::read(&src).unwrap(),
        fs::read(env.path("out/file.bin")).unwrap()
    );
    let mut s = env.cmd();
    s.args(["--state", "dl.db", "--json", "status"]);
    let out = run(s, Duration::from_secs(30));
    let downloads: Vec<_> = events(&out)
        .into_iter()
        .filter(|e| e["event"] == "download")
        .collect();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(downloads[0]["state"], "complete", "{downloads:?}");
    assert_eq!(downloads[0]["bytes"], 1 << 20);
}

#[test]
fn closed_stdout_leaves_serve_serving_until_its_rule_says_stop() {
    let env = Env::new();
    let src = env.path("file.bin");
    fs::write(&src, data(300_000, 6)).unwrap();
    let seed_ip = host();
    let mut c = env.cmd();
    c.args([
        "--ip", &seed_ip, "--port", "42071", "--state", "seed.db", "serve",
    ])
    .args(["--exit-after", "1", "--torrent-out", "torrents"])
    .arg(&src)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut seed = c.spawn().expect("spawn serve");
    // Nobody reads the magnet: the write fails, and serve goes on serving.
    drop(seed.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(60);
    let torrent = loop {
        let found = fs::read_dir(env.path("torrents"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "torrent"));
        if let Some(t) = found {
            break t;
        }
        assert!(Instant::now() < deadline, "serve wrote no .torrent");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The .torrent is written before the magnet is printed; give serve a
    // moment to reach the failed write.
    std::thread::sleep(Duration::from_millis(300));
    let mut c = env.cmd();
    c.args([
        "--ip",
        &host(),
        "--state",
        "dl.db",
        "download",
        "--dir",
        "out",
    ])
    .args(["--peers", &format!("{seed_ip}:42071")])
    .arg(&torrent);
    let out = run(c, Duration::from_secs(90));
    assert!(out.status.success(), "{}", stderr(&out));
    let status = wait_timeout(&mut seed, Duration::from_secs(60)).expect("serve exits");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut seed.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "serve stderr: {err}");
    let mut s = env.cmd();
    s.args(["--state", "seed.db", "--json", "status"]);
    let served: Vec<_> = events(&run(s, Duration::from_secs(30)))
        .into_iter()
        .filter(|e| e["event"] == "served")
        .collect();
    assert_eq!(served.len(), 1, "{served:?}");
    assert!(
        served[0]["uploaded"].as_u64() >= Some(300_000),
        "{served:?}"
    );
}
