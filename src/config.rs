//! Settings: flags and `P2PFILE_*` variables (both through clap), then the
//! YAML config file, then defaults. Every value is checked here, once, so
//! commands only see valid settings.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use p2pfile_engine::PortChoice;

use crate::cli::GlobalArgs;
use crate::error::Failure;

/// Keys the config file may hold: every flag's long name.
const KEYS: &[&str] = &[
    "ip",
    "port",
    "port-range",
    "peers",
    "upload-limit",
    "download-limit",
    "json",
    "debug",
    "dir",
    "timeout",
    "seeding",
    "seeding-time",
    "seeding-ratio",
    "torrent-out",
    "state",
    "exit-after",
    "expect-hosts",
    "deadline",
    "seeding-until-idle",
    "key",
    "once",
    "expect",
    "send-only",
    "receive-only",
    "trash-days",
    "rescan",
    "discovery-port",
    "metrics",
    "check",
];

const DEFAULT_PORT_RANGE: (u16, u16) = (42070, 42099);

/// The config file's values, as strings to be parsed like flags.
#[derive(Debug, Default)]
pub struct FileValues(BTreeMap<String, String>);

impl FileValues {
    /// Reads `--config`, or `$HOME/.p2pfile.yaml` when it exists.
    pub fn load(explicit: Option<&Path>) -> Result<Self, Failure> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => match std::env::var_os("HOME") {
                Some(home) => (PathBuf::from(home).join(".p2pfile.yaml"), false),
                None => return Ok(Self::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(e) => {
                return Err(Failure::usage(
                    anyhow!(e).context(format!("cannot read config file {}", path.display())),
                    "pass --config with a readable YAML file, or leave it out",
                ));
            }
        };
        Self::parse(&text).map_err(|e| {
            Failure::usage(
                e.context(format!("config file {} is invalid", path.display())),
                "see .p2pfile.yaml.example for the keys and their forms",
            )
        })
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let map: BTreeMap<String, serde_norway::Value> =
            serde_norway::from_str(text).context("not a YAML mapping of keys to values")?;
        let mut out = BTreeMap::new();
        for (key, value) in map {
            if !KEYS.contains(&key.as_str()) {
                anyhow::bail!("unknown key {key:?}");
            }
            let text = match value {
                serde_norway::Value::String(s) => s,
                serde_norway::Value::Number(n) => n.to_string(),
                serde_norway::Value::Bool(b) => b.to_string(),
                serde_norway::Value::Sequence(items) if key == "peers" => items
                    .into_iter()
                    .map(|v| match v {
                        serde_norway::Value::String(s) => Ok(s),
                        other => Err(anyhow!("peers entry {other:?} is not a string")),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .join(","),
                serde_norway::Value::Null => continue,
                other => anyhow::bail!("key {key:?} has a value of the wrong type: {other:?}"),
            };
            out.insert(key, text);
        }
        Ok(Self(out))
    }

    /// The flag's value if given, else the file's.
    pub fn pick(&self, flag: &Option<String>, key: &str) -> Option<String> {
        flag.clone().or_else(|| self.0.get(key).cloned())
    }

    /// A boolean flag: set by the flag, or by the file.
    pub fn flag(&self, flag: bool, key: &str) -> Result<bool, Failure> {
        if flag {
            return Ok(true);
        }
        match self.0.get(key).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(Failure::usage(
                anyhow!("config key {key:?} is {other:?}, not true or false"),
                "use true or false",
            )),
        }
    }
}

/// Settings every command uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the SQLite state lives.
    pub state: PathBuf,
    pub ip: Ipv4Addr,
    pub port: PortChoice,
    pub peers: Vec<SocketAddr>,
    pub upload_limit: u64,
    pub download_limit: u64,
    pub json: bool,
}

impl Settings {
    pub fn resolve(args: &GlobalArgs, file: &FileValues) -> Result<Self, Failure> {
        let ip = match file.pick(&args.ip, "ip") {
            Some(s) => parse_ip(&s)?,
            None => default_ip()?,
        };
        let port = match (
            file.pick(&args.port, "port"),
            file.pick(&args.port_range, "port-range"),
        ) {
            (Some(p), _) if args.port.is_some() || args.port_range.is_none() => {
                PortChoice::Exact(parse_port(&p, "--port")?)
            }
            (_, Some(r)) => parse_range(&r)?,
            _ => PortChoice::Range(DEFAULT_PORT_RANGE.0..=DEFAULT_PORT_RANGE.1),
        };
        let peers = match file.pick(&args.peers, "peers") {
            Some(s) => parse_peers(&s)?,
            None => Vec::new(),
        };
        Ok(Settings {
            state: state_path(args, file),
            ip,
            port,
            peers,
            upload_limit: parse_limit(
                file.pick(&args.upload_limit, "upload-limit"),
                "--upload-limit",
            )?,
            download_limit: parse_limit(
                file.pick(&args.download_limit, "download-limit"),
                "--download-limit",
            )?,
            json: file.flag(args.json, "json")?,
        })
    }
}

/// The state database: `--state`, the `state` key, or `./.p2pfile.db`.
pub fn state_path(args: &GlobalArgs, file: &FileValues) -> PathBuf {
    PathBuf::from(
        file.pick(&args.state, "state")
            .unwrap_or_else(|| ".p2pfile.db".into()),
    )
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, Failure> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if !ip.is_unspecified() => Ok(ip),
        Ok(_) => Err(Failure::usage(
            anyhow!("--ip {s} is not a usable IPv4 address"),
            "give the IPv4 address other hosts reach this one at (the private DHT is IPv4)",
        )),
        Err(_) => Err(Failure::usage(
            anyhow!("--ip {s:?} is not an IP address"),
            "give an IPv4 address such as 10.0.0.5",
        )),
    }
}

pub fn parse_port(s: &str, flag: &str) -> Result<u16, Failure> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            Failure::usage(
                anyhow!("{flag} {s:?} is not a port number"),
                "use a number from 1 to 65535",
            )
        })
}

fn parse_range(s: &str) -> Result<PortChoice, Failure> {
    let bad = || {
        Failure::usage(
            anyhow!("--port-range {s:?} is not FIRST-LAST"),
            "write it like 42070-42099",
        )
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a = parse_port(a, "--port-range")?;
    let b = parse_port(b, "--port-range")?;
    if a > b {
        return Err(bad());
    }
    Ok(PortChoice::Range(a..=b))
}

pub fn parse_peers(s: &str) -> Result<Vec<SocketAddr>, Failure> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<SocketAddr>()
                .ok()
                .filter(|a| a.port() != 0)
                .ok_or_else(|| {
                    Failure::usage(
                        anyhow!("--peers entry {p:?} is not ip:port"),
                        "write peers like 10.0.0.5:42070,10.0.0.6:42070",
                    )
                })
        })
        .collect()
}

/// MiB/s with decimals to bytes/s; 0 is no limit.
fn parse_limit(value: Option<String>, flag: &str) -> Result<u64, Failure> {
    let Some(s) = value else { return Ok(0) };
    let mib: f64 = s
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            Failure::usage(
                anyhow!("{flag} {s:?} is not a number of MiB/s"),
                "use a number such as 12.5, or 0 for no limit",
            )
        })?;
    let bytes = (mib * 1024.0 * 1024.0).round() as u64;
    p2pfile_engine::rate::Limit::new(bytes).map_err(|e| {
        Failure::usage(
            anyhow!("{flag} {s} MiB/s: {e}"),
            "use 0.016 MiB/s or more, or 0 for no limit",
        )
    })?;
    Ok(bytes)
}

/// A whole number of seconds (or any non-negative number for `ratio`).
pub fn parse_number(value: Option<String>, flag: &str, default: f64) -> Result<f64, Failure> {
    let Some(s) = value else { return Ok(default) };
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            Failure::usage(
                anyhow!("{flag} {s:?} is not a non-negative number"),
                "use a number such as 60",
            )
        })
}

/// The address of the interface that carries the default route. Found by
/// "connecting" a UDP socket to the gateway, which sends no packet.
fn default_ip() -> Result<Ipv4Addr, Failure> {
    let none = || {
        Failure::usage(
            anyhow!("this host has no default route, so there is no default address"),
            "pass --ip with the address other hosts reach this one at",
        )
    };
    let table = std::fs::read_to_string("/proc/net/route").map_err(|_| none())?;
    let gateway = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == "00000000")
                .then(|| u32::from_str_radix(f[2], 16).ok())
                .flatten()
        })
        .next()
        .ok_or_else(none)?;
    let gw = Ipv4Addr::from(u32::from_be(gateway));
    let probe = UdpSocket::bind("0.0.0.0:0").map_err(|_| none())?;
    probe.connect((gw, 9)).map_err(|_| none())?;
    match probe.local_addr() {
        Ok(SocketAddr::V4(a)) if !a.ip().is_unspecified() => Ok(*a.ip()),
        _ => Err(none()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_and_types() {
        let f = FileValues::parse(
            "ip: 127.0.0.2\nport: 42071\npeers:\n  - 127.0.0.3:1\n  - 127.0.0.4:2\njson: true\n",
        )
        .unwrap();
        assert_eq!(f.pick(&None, "ip").as_deref(), Some("127.0.0.2"));
        assert_eq!(f.pick(&Some("9".into()), "port").as_deref(), Some("9"));
        assert_eq!(
            f.pick(&None, "peers").as_deref(),
            Some("127.0.0.3:1,127.0.0.4:2")
        );
        assert!(f.flag(false, "json").unwrap());
        let err = FileValues::parse("prot: 1\n").unwrap_err();
        assert!(err.to_string().contains("\"prot\""), "{err}");
        assert!(FileValues::parse("").unwrap().0.is_empty());
        assert!(FileValues::parse("- a\n").is_err());
    }

    #[test]
    fn example_config_is_valid() {
        let f = FileValues::parse(include_str!("../.p2pfile.yaml.example")).unwrap();
        let s = Settings::resolve(&GlobalArgs::default(), &f).unwrap();
        assert_eq!(s.ip, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(s.peers.len(), 2);
        for key in KEYS {
            assert!(
                include_str!("../.p2pfile.yaml.example").contains(&format!("{key}:")),
                "example documents {key}"
            );
        }
    }

    #[test]
    fn values() {
        assert!(parse_peers("127.0.0.1:1, 127.0.0.2:2").unwrap().len() == 2);
        assert!(parse_peers("127.0.0.1").is_err());
        assert!(parse_peers("127.0.0.1:0").is_err());
        assert!(matches!(parse_range("10-20").unwrap(), PortChoice::Range(r) if r == (10..=20)));
        assert!(parse_range("20-10").is_err());
        assert!(parse_range("x").is_err());
        assert_eq!(parse_limit(Some("1.5".into()), "--x").unwrap(), 1_572_864);
        assert_eq!(parse_limit(Some("0".into()), "--x").unwrap(), 0);
        assert!(parse_limit(Some("abc".into()), "--x").is_err());
        assert!(parse_limit(Some("-1".into()), "--x").is_err());
        assert!(parse_limit(Some("0.001".into()), "--x").is_err());
        assert!(parse_ip("::1").is_err());
        assert!(parse_ip("0.0.0.0").is_err());
        assert_eq!(parse_ip("127.0.0.9").unwrap(), Ipv4Addr::new(127, 0, 0, 9));
    }
}
