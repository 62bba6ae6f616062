//! Bad input: one clear line (plus causes and a hint) on stderr, the
//! documented exit code, no panic, no partial file under a final name.

use std::fs;
use std::io::{Read, Write};
use std::time::Duration;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Runs p2pfile with `args` and checks the exit code and that stderr
/// starts with `error:`, mentions `needle`, gives a hint, and never panics.
pub(crate) fn fails(env: &Env, args: &[&str], code: i32, needle: &str) -> String {
    let mut c = env.cmd();
    c.args(args);
    let out = run(c, LIMIT);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "args {args:?}: stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(
        err.contains(needle),
        "stderr for {args:?} lacks {needle:?}: {err}"
    );
    assert!(stdout(&out).is_empty(), "nothing on stdout for {args:?}");
    err
}

fn usage_error(env: &Env, args: &[&str], needle: &str) {
    let err = fails(env, args, 2, needle);
    assert!(err.starts_with("error:"), "{err}");
    let hinted = ["hint:", "Usage:", "possible values"]
        .iter()
        .any(|h| err.contains(h));
    assert!(hinted, "no hint: {err}");
}

#[test]
fn missing_or_no_path() {
    let env = Env::new();
    usage_error(
        &env,
        &["--ip", "127.0.0.1", "serve", "does/not/exist"],
        "does/not/exist",
    );
    usage_error(&env, &["--ip", "127.0.0.1", "serve"], "PATH");
}

#[test]
fn malformed_magnets_and_torrents() {
    let env = Env::new();
    fn with<'a>(rest: &[&'a str]) -> Vec<&'a str> {
        [&["--ip", "127.0.0.1", "download"], rest].concat()
    }
    usage_error(&env, &with(&["magnet:?xt=urn:btih:abc123"]), "info-hash");
    usage_error(&env, &with(&["magnet:?dn=x"]), "xt=urn:btih");
    usage_error(
        &env,
        &with(&["magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&x.pe=nohost"]),
        "x.pe",
    );
    fs::write(env.path("bad.torrent"), b"this is not bencode").unwrap();
    usage_error(&env, &with(&["bad.torrent"]), "not a valid .torrent");
    fs::write(env.path("notinfo.torrent"), b"d3:fooi1ee").unwrap();
    usage_error(&env, &with(&["notinfo.torrent"]), "not a valid .torrent");
    usage_error(
        &env,
        &with(&["missing.torrent"]),
        "cannot read missing.torrent",
    );
    usage_error(&env, &["download"], "SOURCE");
}

#[test]
fn malformed_flags_and_config() {
    let env = Env::new();
    fs::write(env.path("f"), b"x").unwrap();
    fn serve<'a>(flags: &[&'a str]) -> Vec<&'a str> {
        [&["--ip", "127.0.0.1"], flags, &["serve", "f"]].concat()
    }
    usage_error(&env, &serve(&["--peers", "127.0.0.1"]), "--peers");
    usage_error(&env, &serve(&["--peers", "10.0.0.1:1,bad"]), "\"bad\"");
    usage_error(&env, &serve(&["--upload-limit", "abc"]), "--upload-limit");
    // serve downloads nothing, so the flag is download's (and sync's).
    usage_error(
        &env,
        &[
            "--ip",
            "127.0.0.1",
            "download",
            "--download-limit",
            "-2",
            "f",
        ],
        "--download-limit \"-2\" is not a number",
    );
    usage_error(&env, &serve(&["--upload-limit", "0.001"]), "smallest limit");
    usage_error(&env, &serve(&["--port", "70000"]), "--port");
    usage_error(&env, &serve(&["--port-range", "9-1"]), "--port-range");
    usage_error(&env, &["--ip", "::1", "serve", "f"], "IPv4");
    usage_error(
        &env,
        &["--ip", "nonsense", "serve", "f"],
        "not an IP address",
    );
    // An address this host does not have.
    usage_error(&env, &["--ip", "192.0.2.77", "serve", "f"], "192.0.2.77");
    fs::write(env.path("c.yaml"), "ip: 127.0.0.1\nprot: 5\n").unwrap();
    usage_error(
        &env,
        &["--config", "c.yaml", "serve", "f"],
        "unknown key \"prot\"",
    );
    usage_error(&env, &["--config", "nope.yaml", "serve", "f"], "nope.yaml");
    usage_error(
        &env,
        &[
            "--ip",
            "127.0.0.1",
            "download",
            "--timeout",
            "soon",
            "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567",
        ],
        "--timeout",
    );
}

#[test]
fn taken_port_and_full_range() {
    let env = Env::new();
    fs::write(env.path("f"), b"x").unwrap();
    let ip = host();
    let first = env.serve(&ip, &[], &[&env.path("f")]);
    let port = peer_of(first.magnet())
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let err = fails(
        &env,
        &["--ip", &ip, "--port", &port, "serve", "f"],
        4,
        "taken",
    );
    assert!(err.contains("hint:"), "{err}");
    let range = format!("{port}-{port}");
    let err = fails(
        &env,
        &["--ip", &ip, "--port-range", &range, "serve", "f"],
        4,
        "every port",
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn no_peer_times_out_with_exit_3_and_no_final_file() {
    let env = Env::new();
    let ip = host();
    // Nobody listens on port 9 of this address.
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&dn=thing&x.pe={ip}:9",
        "ab".repeat(20)
    );
    let err = fails(
        &env,
        &[
            "--ip",
            &host(),
            "download",
            "--timeout",
            "2",
            "--dir",
            "dl",
            &magnet,
        ],
        3,
        &format!("{ip}:9"),
    );
    assert!(err.contains("no progress on thing"), "{err}");
    assert!(!env.path("dl/thing").exists());
}

#[test]
fn config_precedence_flag_env_file() {
    let env = Env::new();
    fs::write(env.path("f"), b"x").unwrap();
    let ip = host();
    let (p_file, p_env, p_flag) = ("42201", "42202", "42203");
    fs::write(
        env.path(".p2pfile.yaml"),
        format!("ip: {ip}\nport: {p_file}\n"),
    )
    .unwrap();
    let port_of = |env_port: Option<&str>, flag: Option<&str>| {
        let mut c = env.cmd();
        if let Some(p) = env_port {
            c.env("P2PFILE_PORT", p);
        }
        c.arg("serve").arg("f");
        if let Some(p) = flag {
            c.args(["--port", p]);
        }
        let server = crate::util::Server::spawn(c, 1);
        peer_of(server.magnet())
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        port_of(None, None),
        p_file,
        "file over default ($HOME/.p2pfile.yaml)"
    );
    assert_eq!(port_of(Some(p_env), None), p_env, "env over file");
    assert_eq!(port_of(Some(p_env), Some(p_flag)), p_flag, "flag over env");
}

#[test]
fn help_lists_exit_codes_and_completion_works() {
    let env = Env::new();
    let mut c = env.cmd();
    c.arg("--help");
    let out = run(c, LIMIT);
    assert!(out.status.success());
    assert!(stdout(&out).contains("130  interrupted"));
    for shell in ["bash", "zsh", "fish"] {
        let mut c = env.cmd();
        c.args(["completion", shell]);
        let out = run(c, LIMIT);
        assert!(out.status.success());
        assert!(stdout(&out).contains("p2pfile"));
    }
    usage_error(&env, &["completion", "tcsh"], "tcsh");
}

#[test]
fn debug_flag_turns_logs_up() {
    let env = Env::new();
    fs::write(env.path("f"), b"x").unwrap();
    let magnet = format!("magnet:?xt=urn:btih:{}&x.pe=127.0.0.9:9", "cd".repeat(20));
    let quiet = [
        "--ip",
        "127.0.0.1",
        "download",
        "--timeout",
        "1",
        "--dir",
        "dl",
        &magnet,
    ];
    let mut c = env.cmd();
    c.args(quiet);
    let out = run(c, LIMIT);
    assert!(!stderr(&out).contains("DEBUG"), "{}", stderr(&out));
    let mut c = env.cmd();
    c.arg("--debug").args(quiet);
    let out = run(c, LIMIT);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("DEBUG"),
        "--debug logs: {}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains('\x1b'),
        "no colour codes in a pipe: {:?}",
        stderr(&out)
    );
    // The environment takes the usual spellings of a switch, for --json too.
    for (value, on) in [("1", true), ("on", true), ("0", false), ("no", false)] {
        let mut c = env.cmd();
        c.env("P2PFILE_JSON", value).args(quiet);
        let out = run(c, LIMIT);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let first = stdout(&out).lines().next().unwrap_or("").to_string();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&first).is_ok(),
            on,
            "P2PFILE_JSON={value}: first line {first:?}"
        );
    }
    for (value, on) in [("1", true), ("yes", true), ("0", false), ("false", false)] {
        let mut c = env.cmd();
        c.env("P2PFILE_DEBUG", value).args(quiet);
        let out = run(c, LIMIT);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert_eq!(
            stderr(&out).contains("DEBUG"),
            on,
            "P2PFILE_DEBUG={value}: {}",
            stderr(&out)
        );
    }
}

/// A peer that sends garbage is dropped; the seed keeps serving others.
#[test]
fn hostile_peer_closes_its_connection_not_the_process() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/f.bin"), data(200_000, 4)).unwrap();
    let seed = env.serve(&host(), &[], &[&env.path("src/f.bin")]);
    let addr = peer_of(seed.magnet());
    let hash: Vec<u8> = (0..20)
        .map(|i| u8::from_str_radix(&seed.magnet()[20 + 2 * i..22 + 2 * i], 16).unwrap())
        .collect();
    let hostile: [&[u8]; 5] = [
        &[0xff, 0xff, 0xff, 0xff, 7],                 // 4 GiB message
        &[0, 0, 0, 5, 99, 0, 0, 0, 0],                // unknown message id
        &[0, 0, 0, 3, 4, 0, 0],                       // HAVE of the wrong length
        &[0, 0, 0, 6, 20, 0, b'd', b'1', b':', b'm'], // truncated extension handshake
        b"GET / HTTP/1.1\r\n\r\n",                    // not BitTorrent at all
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        // Each from an address of its own: a second protocol violation
        // from one address bans it, and its next connection is refused.
        let from = format!("127.{}.0.{}", test_net(), 220 + i);
        let mut s = connect_from(&from, &addr);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if i < 4 {
            let mut hs = vec![19];
            hs.extend_from_slice(b"BitTorrent protocol");
            hs.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x04]);
            hs.extend_from_slice(&hash);
            hs.extend_from_slice(b"-XX0000-hostile-peer");
            s.write_all(&hs).unwrap();
        }
        s.write_all(bytes).unwrap();
        // The seed closes the connection: reading ends (EOF or reset).
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let mut c = env.cmd();
    c.args(["--ip", &host(), "download", "--dir", "dl", seed.magnet()]);
    let out = run(c, LIMIT);
    assert!(out.status.success(), "seed still serves: {}", stderr(&out));
    assert_eq!(
        fs::read(env.path("dl/f.bin")).unwrap(),
        fs::read(env.path("src/f.bin")).unwrap()
    );
}
