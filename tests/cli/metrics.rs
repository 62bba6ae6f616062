//! Issue #9: `--metrics IP:PORT` on `serve` and `download`: Prometheus
//! text on `GET /metrics`, a JSON answer on `GET /health`, and the errors
//! for a bad or taken address. Scraped with a plain HTTP/1.1 request, as a
//! monitoring agent would.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::*;

/// A port for `--metrics`; each test listens on its own 127.N.0.x host.
const PORT: u16 = 9920;

/// `GET path` over a fresh connection: status code and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    request(addr, "GET", path)
}

fn request(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to --metrics {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// The value of the sample `name{labels}` for one torrent, if present.
fn sample(text: &str, name: &str, info_hash: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("info_hash=\"{info_hash}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes until `done` holds for the metrics text (bounded: 30 s).
fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = get(addr, "/metrics");
        assert_eq!(status, 200, "{text}");
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}; last scrape:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn hash_of(magnet: &str) -> String {
    magnet.split("btih:").nth(1).unwrap()[..40].to_string()
}

fn payload(env: &Env, size: usize) -> std::path::PathBuf {
    fs::create_dir_all(env.path("src")).unwrap();
    let p = env.path("src/payload.bin");
    fs::write(&p, data(size, 9)).unwrap();
    p
}

/// A seed's endpoint after one download finished: the uploaded bytes,
/// the completed peer, the labels, every metric family, and `/health`.
#[test]
fn serve_metrics_count_an_upload_and_a_completed_peer() {
    let env = Env::new();
    let size = 1 << 20;
    let ip = host();
    let addr = format!("{ip}:{PORT}");
    let seed = env.serve(&ip, &["--metrics", &addr], &[&payload(&env, size)]);
    let hash = hash_of(seed.magnet());

    let (status, body) = get(&addr, "/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health, serde_json::json!({"status": "ok", "torrents": 1}));

    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--dir", "dl", seed.magnet()]);
    let out = run(c, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));

    let text = scrape_until(&addr, "saw the peer complete", |t| {
        sample(t, "p2pfile_completed_peers_total", &hash) == Some(1.0)
    });
    let uploaded = sample(&text, "p2pfile_uploaded_bytes_total", &hash).unwrap();
    assert!(uploaded >= size as f64, "uploaded {uploaded}:\n{text}");
    assert!(
        text.contains(&format!(
            "p2pfile_size_bytes{{info_hash=\"{hash}\",name=\"payload.bin\"}} {size}\n"
        )),
        "{text}"
    );
    assert_eq!(
        sample(&text, "p2pfile_hash_failures_total", &hash),
        Some(0.0)
    );
    for family in [
        "# TYPE p2pfile_uploaded_bytes_total counter",
        "# TYPE p2pfile_downloaded_bytes_total counter",
        "# TYPE p2pfile_downloaded_other_zone_bytes_total counter",
        "# TYPE p2pfile_discarded_bytes_total counter",
        "# TYPE p2pfile_peers gauge",
        "# TYPE p2pfile_completed_peers_total counter",
        "# TYPE p2pfile_pieces_verified_total counter",
        "# TYPE p2pfile_hash_failures_total counter",
        "# TYPE p2pfile_start_time_seconds gauge",
        "p2pfile_torrents 1",
        "p2pfile_build_info{version=\"",
    ] {
        assert!(text.contains(family), "{family} in:\n{text}");
    }
    assert_eq!(get(&addr, "/nothing").0, 404);
    assert_eq!(request(&addr, "POST", "/metrics").0, 405);
    assert!(seed.terminate().success());
}

/// `download --seeding --metrics`: the downloaded bytes, those from
/// another zone (the seed's), and the pieces it verified, while it seeds.
#[test]
fn download_metrics_count_downloaded_bytes_and_verified_pieces() {
    let env = Env::new();
    let size = 3 << 20;
    let seed = env.serve(&host(), &["--zone", "a"], &[&payload(&env, size)]);
    let hash = hash_of(seed.magnet());
    let ip = host();
    let addr = format!("{ip}:{PORT}");
    let mut c = env.cmd();
    c.args([
        "--ip",
        &ip,
        "download",
        "--json",
        "--dir",
        "dl",
        "--seeding",
        "--zone",
        "b",
    ])
    .args(["--seeding-time", "60", "--seeding-ratio", "0"])
    .args(["--metrics", &addr, seed.magnet()]);
    let mut dl = JsonProc::spawn(c);
    dl.wait_for("seeding", |e| e["event"] == "seeding");
    let text = scrape_until(&addr, "counted the whole download", |t| {
        sample(t, "p2pfile_have_bytes", &hash) == Some(size as f64)
    });
    let downloaded = sample(&text, "p2pfile_downloaded_bytes_total", &hash).unwrap();
    assert!(
        downloaded >= size as f64,
        "downloaded {downloaded}:\n{text}"
    );
    assert_eq!(
        sample(&text, "p2pfile_downloaded_other_zone_bytes_total", &hash),
        Some(downloaded),
        "every byte came from the seed, in zone a:\n{text}"
    );
    // Every byte received is in the file or counted as thrown away.
    let discarded = sample(&text, "p2pfile_discarded_bytes_total", &hash).unwrap();
    assert_eq!(downloaded - discarded, size as f64, "{text}");
    let verified = sample(&text, "p2pfile_pieces_verified_total", &hash).unwrap();
    assert!(verified >= 1.0, "{text}");
    assert_eq!(
        sample(&text, "p2pfile_hash_failures_total", &hash),
        Some(0.0)
    );
    let (status, body) = get(&addr, "/health");
    assert_eq!(
        (status, body.trim()),
        (200, r#"{"status":"ok","torrents":1}"#)
    );
}

/// A value that is not IP:PORT, from the flag, the environment or the
/// config file, and an address this host does not have: exit 2, a hint,
/// and nothing left behind.
#[test]
fn bad_metrics_address_is_a_usage_error() {
    let env = Env::new();
    let src = payload(&env, 1000);
    let ip = host();
    let cases: [(&str, &str); 4] = [
        ("flag", "nonsense"),
        ("flag", "127.0.0.1"),
        ("env", "127.0.0.1:0"),
        ("config", ":9920"),
    ];
    fs::write(env.path("bad.yaml"), "metrics: \":9920\"\n").unwrap();
    for (from, value) in cases {
        let mut c = env.cmd();
        c.args(["--ip", &ip]);
        match from {
            "flag" => {
                c.args(["serve", "--metrics", value]);
            }
            "env" => {
                c.env("P2PFILE_METRICS", value).arg("serve");
            }
            _ => {
                c.args(["--config", "bad.yaml", "serve"]);
            }
        }
        c.arg(&src);
        fails(&env, c, 2, &["is not IP:PORT", "hint: write it like"]);
    }
    let mut c = env.cmd();
    c.args([
        "--ip",
        &ip,
        "download",
        "--dir",
        "dl",
        "--metrics",
        "192.0.2.1:9920",
    ])
    .arg(format!("magnet:?xt=urn:btih:{}", "ab".repeat(20)));
    let hint = "hint: --metrics must name an address of this host";
    fails(&env, c, 2, &[hint]);
    assert!(
        !env.path("dl").exists(),
        "no download directory left behind"
    );
}

/// Another process holds the metrics port: exit 4 with a hint, before any
/// state is written.
#[test]
fn taken_metrics_port_exits_4() {
    let env = Env::new();
    let ip = host();
    let addr = format!("{ip}:{PORT}");
    let _holder = std::net::TcpListener::bind(&addr).unwrap();
    let mut c = env.cmd();
    c.args(["--ip", &ip, "serve", "--metrics", &addr])
        .arg(payload(&env, 1000));
    let error = format!("error: cannot listen for --metrics on {addr}");
    fails(&env, c, 4, &[&error, "hint: choose another --metrics port"]);
}

/// Runs a command that must fail with `code`, name each of `needles` on
/// stderr, and leave no state database behind.
fn fails(env: &Env, c: std::process::Command, code: i32, needles: &[&str]) {
    let out = run(c, Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle} in: {err}");
    }
    assert!(
        !env.path(".p2pfile.db").exists(),
        "no state database left behind"
    );
}

/// Whether Prometheus (`prometheus` and `promtool`, Debian package
/// `prometheus`) is here. Missing, the test is skipped with a message,
/// unless `P2PFILE_REQUIRE_INTEROP` is set (scripts/test sets it once it
/// has installed the tools), where it fails.
fn have_prometheus() -> bool {
    let ok = ["prometheus", "promtool"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        if std::env::var_os("P2PFILE_REQUIRE_INTEROP").is_some() {
            panic!("prometheus is required (P2PFILE_REQUIRE_INTEROP) but missing");
        }
        eprintln!("skipped: prometheus is not installed (apt-get install prometheus)");
    }
    ok
}

/// The real thing: `promtool check metrics` finds nothing wrong with a
/// scrape, and a Prometheus server scraping the seed answers a query for
/// the peer that completed.
#[test]
fn prometheus_scrapes_a_seed() {
    if !have_prometheus() {
        return;
    }
    let env = Env::new();
    let ip = host();
    let addr = format!("{ip}:{PORT}");
    let seed = env.serve(&ip, &["--metrics", &addr], &[&payload(&env, 1 << 20)]);
    let hash = hash_of(seed.magnet());
    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--dir", "dl", seed.magnet()]);
    let out = run(c, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = scrape_until(&addr, "saw the peer complete", |t| {
        sample(t, "p2pfile_completed_peers_total", &hash) == Some(1.0)
    });

    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let config = env.path("prometheus.yml");
    fs::write(
        &config,
        format!(
            "scrape_configs:\n  - job_name: p2pfile\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: [\"{addr}\"]\n"
        ),
    )
    .unwrap();
    let web = format!("{}:9090", host());
    let prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            env.path("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _prometheus = Killed(prometheus);
    let query =
        format!("/api/v1/query?query=p2pfile_completed_peers_total%7Binfo_hash%3D%22{hash}%22%7D");
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let body = TcpStream::connect(&web)
            .ok()
            .map(|_| get(&web, &query))
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).unwrap());
        if let Some(v) = body.filter(|v| !v["data"]["result"][0].is_null()) {
            break v;
        }
        assert!(Instant::now() < deadline, "Prometheus never had the metric");
        std::thread::sleep(Duration::from_millis(300));
    };
    let sample = &answer["data"]["result"][0];
    assert_eq!(sample["metric"]["name"], "payload.bin", "{answer}");
    assert_eq!(sample["metric"]["job"], "p2pfile", "{answer}");
    assert_eq!(sample["value"][1], "1", "{answer}");
}

/// A child process killed when the test ends, also by a failed assertion.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
