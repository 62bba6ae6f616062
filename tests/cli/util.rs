//! Test harness: each test gets a temp dir, its own 127.0.0.x addresses,
//! a clean environment, and processes that are killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Next free loopback host; each test takes its own addresses so tests
/// can run in parallel without port clashes.
static NEXT_HOST: AtomicU16 = AtomicU16::new(0);
/// Host numbers per /24: 127.N.x.10 to 127.N.x.199; .200 and up are the
/// hostile peers' (see `hostile.rs`, `admission.rs`).
const HOSTS_PER_NET: u16 = 190;

/// A fresh 127.N.x.y address, y in 10..200, x counting up from 0 as the
/// suite uses them. N is `P2PFILE_TEST_NET` (default 0), so two checkouts
/// can run their suites at once without sharing addresses.
pub fn host() -> String {
    let i = NEXT_HOST.fetch_add(1, Ordering::SeqCst);
    let (net, n) = (i / HOSTS_PER_NET, 10 + i % HOSTS_PER_NET);
    assert!(net < 200, "out of loopback hosts");
    format!("127.{}.{net}.{n}", test_net())
}

/// The second octet of this run's loopback addresses.
pub fn test_net() -> u8 {
    std::env::var("P2PFILE_TEST_NET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether an outside tool a test needs is here (`probe` exits 0). Missing,
/// it skips the test with a message naming `install`, unless the variable
/// `require` is set (scripts/test sets it once it has installed the tool),
/// where it fails the test.
pub fn have_tool(what: &str, probe: &mut Command, require: &str, install: &str) -> bool {
    let ok = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os(require).is_some() {
            panic!("{what} is required ({require}) but missing");
        }
        eprintln!("skipped: {what} is not installed ({install})");
    }
    ok
}

/// A test's sandbox.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `p2pfile` with `P2PFILE_*`, `HOME` and `XDG_*` cleared (HOME points
    /// into the sandbox so no real config file is read).
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_p2pfile"));
        for (k, _) in std::env::vars() {
            if k.starts_with("P2PFILE_") || k.starts_with("XDG_") {
                c.env_remove(k);
            }
        }
        c.env("HOME", self.dir.path());
        c.current_dir(self.dir.path());
        c
    }

    /// Starts `serve` on `ip` and waits for its magnets.
    pub fn serve(&self, ip: &str, extra: &[&str], paths: &[&Path]) -> Server {
        let mut c = self.cmd();
        c.args(["--ip", ip]).arg("serve").args(extra).args(paths);
        Server::start(c, paths.len())
    }
}

/// A running `serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub magnets: Vec<String>,
}

impl Server {
    /// Starts a prepared `serve` command and waits for `count` lines.
    pub fn spawn(c: Command, count: usize) -> Self {
        Self::start(c, count)
    }

    fn start(mut c: Command, count: usize) -> Self {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut magnets = Vec::new();
        while magnets.len() < count {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => magnets.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("serve printed no magnet; stderr: {err}");
                }
            }
        }
        Server { child, magnets }
    }

    pub fn magnet(&self) -> &str {
        &self.magnets[0]
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        wait_timeout(&mut self.child, Duration::from_secs(20)).expect("serve exits after SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs a command to the end, killing it after `limit`.
pub fn run(mut c: Command, limit: Duration) -> Output {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(id.to_string())
                .status();
            panic!("command did not finish within {limit:?}");
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// JSON lines of a `--json` run.
pub fn events(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts two trees hold the same files, bytes and empty directories.
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_same_tree_but(a, b, &[]);
}

/// As [`assert_same_tree`], leaving out entries with these names.
pub fn assert_same_tree_but(a: &Path, b: &Path, excluded: &[&str]) {
    let out = Command::new("diff")
        .arg("-r")
        .args(excluded.iter().flat_map(|x| ["-x", x]))
        .arg(a)
        .arg(b)
        .output()
        .expect("diff");
    assert!(
        out.status.success(),
        "{} and {} differ:\n{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The magnet with its `x.pe` hints removed.
pub fn without_peers(magnet: &str) -> String {
    magnet
        .split('&')
        .filter(|p| !p.starts_with("x.pe="))
        .collect::<Vec<_>>()
        .join("&")
}

/// The `x.pe` address of a magnet.
pub fn peer_of(magnet: &str) -> String {
    magnet
        .split('&')
        .find_map(|p| p.strip_prefix("x.pe="))
        .expect("magnet has x.pe")
        .to_string()
}

/// `p2pfile --ip HOST download --json --dir DIR EXTRA... MAGNET`.
pub fn download_cmd(env: &Env, dir: &str, magnet: &str, extra: &[&str]) -> Command {
    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--json", "--dir", dir])
        .args(extra)
        .arg(magnet);
    c
}

/// Starts a download into `dir` at 6 MiB/s and SIGKILLs it once it has
/// `total / 2` bytes verified, leaving its part behind.
pub fn kill_half_way(env: &Env, dir: &str, magnet: &str, total: u64) {
    let limited = ["--download-limit", "6"];
    let mut first = JsonProc::spawn(download_cmd(env, dir, magnet, &limited));
    first.wait_for("half-way progress", |e| {
        e["event"] == "progress" && e["bytes"].as_u64() >= Some(total / 2)
    });
    first.child.kill().unwrap(); // SIGKILL
    let _ = first.child.wait();
}

/// A running p2pfile with `--json`, its events read as they come.
pub struct JsonProc {
    pub child: Child,
    events: mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl JsonProc {
    pub fn spawn(mut c: Command) -> Self {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for the first event matching `pred` (events before it are kept in `seen`).
    pub fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match self.events.recv_timeout(Duration::from_millis(200)) {
                Ok(ev) => {
                    self.seen.push(ev.clone());
                    if pred(&ev) {
                        return ev;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut err = String::new();
        let _ = self.child.kill();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!("no {what} event; saw {:?}; stderr: {err}", self.seen);
    }

    /// Waits for exit; returns the status and every event.
    pub fn finish(mut self) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
        let status =
            wait_timeout(&mut self.child, Duration::from_secs(120)).expect("process exits");
        self.seen.extend(self.events.iter());
        (status, std::mem::take(&mut self.seen))
    }

    /// The first event of a kind among those seen so far.
    pub fn find(events: &[serde_json::Value], kind: &str) -> Option<serde_json::Value> {
        events.iter().find(|e| e["event"] == kind).cloned()
    }
}

impl Drop for JsonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace of its own, removed (with every process still in
/// it) on drop. Its only interface is `lo`, which also carries the
/// addresses given: nothing inside can reach the host's network or the
/// internet, and nothing outside can reach in.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `p2pt<pid>-<tag>` with `lo` up and `addrs` on it. None
    /// (with a message) where namespaces are not available (not root).
    pub fn new(tag: &str, addrs: &[&str]) -> Option<Netns> {
        let name = format!("p2pt{}-{tag}", std::process::id() % 100_000);
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["netns", "add", &name]) {
            eprintln!("skipped: network namespaces need root and iproute2");
            return None;
        }
        let ns = Netns { name };
        assert!(ok(&["-n", &ns.name, "link", "set", "lo", "up"]));
        for a in addrs {
            assert!(ok(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "lo"
            ]));
        }
        Some(ns)
    }

    /// The same command (program, arguments, environment, directory), run
    /// inside the namespace.
    pub fn wrap(&self, c: &Command) -> Command {
        let mut w = Command::new("ip");
        w.args(["netns", "exec", &self.name])
            .arg(c.get_program())
            .args(c.get_args());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        if let Some(d) = c.get_current_dir() {
            w.current_dir(d);
        }
        w
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A TCP connection to `to` from the address `from` (any port): a peer on
/// a host of its own, as a ban by address needs.
pub fn connect_from(from: &str, to: &str) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let from: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    let to: std::net::SocketAddr = to.parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&from.into()).unwrap();
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    socket.into()
}
