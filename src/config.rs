//! Settings: flags and `P2PFILE_*` variables (both through clap), then the
//! YAML config file, then defaults. Every value is checked here, once, so
//! commands only see valid settings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
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
    "zone",
];

const DEFAULT_PORT_RANGE: (u16, u16) = (42070, 42099);

/// The config file's values, as strings to be parsed like flags, and
/// where each setting came from, so an error names the flag, the
/// environment variable or the config file key the user actually wrote.
#[derive(Debug, Default)]
pub struct FileValues {
    values: BTreeMap<String, String>,
    /// The file read, if any.
    path: Option<PathBuf>,
    /// Keys (flag long names) whose flag value came from a `P2PFILE_*`
    /// variable rather than the command line.
    from_env: BTreeSet<String>,
    /// The default config file that exists but could not be read, and why;
    /// logged at debug once logging is set up.
    unread: Option<(PathBuf, String)>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The flag on the command line (or a caller that made the value up).
    Flag,
    /// The `P2PFILE_*` environment variable of the flag.
    Env,
    /// A key of this config file.
    File(PathBuf),
}

/// A setting's text with its origin (from `FileValues::pick`). Reads as a
/// `str`; `subject` names it the way the user wrote it, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    text: String,
    key: String,
    origin: Origin,
}

impl Picked {
    /// A value given on the command line as `--KEY`.
    pub fn flag(key: &str, text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            key: key.to_string(),
            origin: Origin::Flag,
        }
    }

    /// Where the value came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// `--upload-limit "fast"`, `P2PFILE_UPLOAD_LIMIT "fast"` or
    /// `config key upload-limit in FILE: "fast"`: the start of a message.
    /// `flag` is the name used for a command-line value (usually `--KEY`).
    pub fn subject(&self, flag: &str) -> String {
        let text = &self.text;
        match &self.origin {
            Origin::Flag => format!("{flag} {text:?}"),
            Origin::Env => format!("{} {text:?}", env_var(&self.key)),
            Origin::File(path) => {
                format!("config key {} in {}: {text:?}", self.key, path.display())
            }
        }
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

impl std::ops::Deref for Picked {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Picked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<Picked> for String {
    fn from(p: Picked) -> String {
        p.text
    }
}

impl From<Picked> for PathBuf {
    fn from(p: Picked) -> PathBuf {
        PathBuf::from(p.text)
    }
}

/// The environment variable of a flag: `upload-limit` → `P2PFILE_UPLOAD_LIMIT`.
fn env_var(key: &str) -> String {
    format!("P2PFILE_{}", key.to_uppercase().replace('-', "_"))
}

impl FileValues {
    /// Reads `--config`, or `$HOME/.p2pfile.yaml` when it exists. A default
    /// file that exists but cannot be read (another user's HOME, a
    /// directory) counts as absent; an explicit one is an error.
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
            Err(e) if !required => {
                return Ok(Self {
                    unread: Some((path, e.to_string())),
                    ..Self::default()
                });
            }
            Err(e) => {
                return Err(Failure::usage(
                    anyhow!(e).context(format!("cannot read config file {}", path.display())),
                    "pass --config with a readable YAML file, or leave it out",
                ));
            }
        };
        let mut values = Self::parse(&text).map_err(|e| {
            Failure::usage(
                e.context(format!("config file {} is invalid", path.display())),
                "see .p2pfile.yaml.example for the keys and their forms",
            )
        })?;
        values.path = Some(path);
        Ok(values)
    }

    /// Records which flags took their value from a `P2PFILE_*` variable
    /// (clap knows; the parsed structs do not).
    pub fn set_env_sourced(&mut self, keys: impl IntoIterator<Item = String>) {
        self.from_env.extend(keys);
    }

    /// Logs (at debug) a default config file that was skipped; called once
    /// logging is set up, which itself depends on the file.
    pub fn log_skipped(&self) {
        if let Some((path, why)) = &self.unread {
            tracing::debug!(
                "config file {} exists but cannot be read ({why}); going on without it",
                path.display()
            );
        }
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
        Ok(Self {
            values: out,
            ..Self::default()
        })
    }

    /// The flag's value if given (from the command line or its
    /// `P2PFILE_*` variable), else the file's, with where it came from.
    pub fn pick(&self, flag: &Option<String>, key: &str) -> Option<Picked> {
        if let Some(text) = flag {
            let origin = if self.from_env.contains(key) {
                Origin::Env
            } else {
                Origin::Flag
            };
            return Some(Picked {
                text: text.clone(),
                key: key.to_string(),
                origin,
            });
        }
        let text = self.values.get(key)?;
        Some(Picked {
            text: text.clone(),
            key: key.to_string(),
            origin: Origin::File(self.path.clone().unwrap_or_default()),
        })
    }

    /// A boolean flag: set by the flag, or by the file.
    pub fn flag(&self, flag: bool, key: &str) -> Result<bool, Failure> {
        if flag {
            return Ok(true);
        }
        match self.values.get(key).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(Failure::usage(
                anyhow!(
                    "config key {key} in {}: {other:?} is not true or false",
                    self.path.as_deref().unwrap_or(Path::new("")).display()
                ),
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
    /// This host's zone, if any (see `p2pfile_engine::zone`).
    pub zone: Option<String>,
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
            zone: file
                .pick(&args.zone, "zone")
                .map(|z| parse_zone(&z))
                .transpose()?,
            json: file.flag(args.json, "json")?,
        })
    }
}

/// The state database: `--state`, the `state` key, or `./.p2pfile.db`.
pub fn state_path(args: &GlobalArgs, file: &FileValues) -> PathBuf {
    file.pick(&args.state, "state")
        .map_or_else(|| PathBuf::from(".p2pfile.db"), PathBuf::from)
}

fn parse_ip(s: &Picked) -> Result<Ipv4Addr, Failure> {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if !ip.is_unspecified() => Ok(ip),
        Ok(_) => Err(Failure::usage(
            anyhow!("{} is not a usable IPv4 address", s.subject("--ip")),
            "give the IPv4 address other hosts reach this one at (the private DHT is IPv4)",
        )),
        Err(_) => Err(Failure::usage(
            anyhow!("{} is not an IP address", s.subject("--ip")),
            "give an IPv4 address such as 10.0.0.5",
        )),
    }
}

/// A port number, 1 to 65535.
fn port_number(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// A port; `flag` names a value given on the command line.
pub fn parse_port(s: &Picked, flag: &str) -> Result<u16, Failure> {
    port_number(s).ok_or_else(|| {
        Failure::usage(
            anyhow!("{} is not a port number", s.subject(flag)),
            "use a number from 1 to 65535",
        )
    })
}

fn parse_range(s: &Picked) -> Result<PortChoice, Failure> {
    let subject = s.subject("--port-range");
    let (first, last) = s.split_once('-').ok_or_else(|| {
        Failure::usage(
            anyhow!("{subject} is not FIRST-LAST"),
            "write it like 42070-42099",
        )
    })?;
    let port = |p: &str| {
        port_number(p).ok_or_else(|| {
            Failure::usage(
                anyhow!("{subject}: {:?} is not a port number", p.trim()),
                "use ports from 1 to 65535, like 42070-42099",
            )
        })
    };
    let (a, b) = (port(first)?, port(last)?);
    if a > b {
        return Err(Failure::usage(
            anyhow!("{subject}: FIRST ({a}) must not exceed LAST ({b})"),
            format!("write the lower port first: {b}-{a}"),
        ));
    }
    Ok(PortChoice::Range(a..=b))
}

pub fn parse_peers(s: &Picked) -> Result<Vec<SocketAddr>, Failure> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<SocketAddr>()
                .ok()
                .filter(|a| a.port() != 0)
                .ok_or_else(|| {
                    Failure::usage(
                        anyhow!("{}: entry {p:?} is not ip:port", s.subject("--peers")),
                        "write peers like 10.0.0.5:42070,10.0.0.6:42070",
                    )
                })
        })
        .collect()
}

/// A zone name (see `p2pfile_engine::zone::is_valid`).
fn parse_zone(s: &Picked) -> Result<String, Failure> {
    let name = s.trim();
    if p2pfile_engine::zone::is_valid(name) {
        return Ok(name.to_string());
    }
    Err(Failure::usage(
        anyhow!(
            "{} is not a zone name (1 to {} characters of A-Z, a-z, 0-9, '.', '_' and '-')",
            s.subject("--zone"),
            p2pfile_engine::zone::MAX_LEN
        ),
        "name the zone like dc1, rack-7 or eu-west.a",
    ))
}

/// MiB/s with decimals to bytes/s; 0 is no limit.
fn parse_limit(value: Option<Picked>, flag: &str) -> Result<u64, Failure> {
    let Some(s) = value else { return Ok(0) };
    let mib: f64 = s
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            Failure::usage(
                anyhow!("{} is not a number of MiB/s", s.subject(flag)),
                "use a number such as 12.5, or 0 for no limit",
            )
        })?;
    let bytes = (mib * 1024.0 * 1024.0).round() as u64;
    p2pfile_engine::rate::Limit::new(bytes).map_err(|e| {
        Failure::usage(
            anyhow!("{} MiB/s: {e}", s.subject(flag)),
            "use 0.016 MiB/s or more, or 0 for no limit",
        )
    })?;
    Ok(bytes)
}

/// A whole number of seconds (or any non-negative number for `ratio`);
/// `flag` names a value given on the command line.
pub fn parse_number(value: Option<Picked>, flag: &str, default: f64) -> Result<f64, Failure> {
    let Some(s) = value else { return Ok(default) };
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            Failure::usage(
                anyhow!("{} is not a non-negative number", s.subject(flag)),
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
        assert!(FileValues::parse("").unwrap().values.is_empty());
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
        let v = |s: &str| Picked::flag("x", s);
        assert!(parse_peers(&v("127.0.0.1:1, 127.0.0.2:2")).unwrap().len() == 2);
        assert!(parse_peers(&v("127.0.0.1")).is_err());
        assert!(parse_peers(&v("127.0.0.1:0")).is_err());
        assert!(
            matches!(parse_range(&v("10-20")).unwrap(), PortChoice::Range(r) if r == (10..=20))
        );
        assert!(parse_range(&v("x")).is_err());
        assert_eq!(parse_limit(Some(v("1.5")), "--x").unwrap(), 1_572_864);
        assert_eq!(parse_limit(Some(v("0")), "--x").unwrap(), 0);
        assert!(parse_limit(Some(v("abc")), "--x").is_err());
        assert!(parse_limit(Some(v("-1")), "--x").is_err());
        assert!(parse_limit(Some(v("0.001")), "--x").is_err());
        assert_eq!(parse_zone(&v(" dc-1.a_b ")).unwrap(), "dc-1.a_b");
        assert!(parse_zone(&v("")).is_err());
        assert!(parse_zone(&v("a b")).is_err());
        assert!(parse_zone(&v(&"z".repeat(65))).is_err());
        assert!(parse_ip(&v("::1")).is_err());
        assert!(parse_ip(&v("0.0.0.0")).is_err());
        assert_eq!(
            parse_ip(&v("127.0.0.9")).unwrap(),
            Ipv4Addr::new(127, 0, 0, 9)
        );
    }

    #[test]
    fn reversed_port_range_says_which_way_round() {
        let e = parse_range(&Picked::flag("port-range", "5-3")).unwrap_err();
        assert_eq!(
            e.error.to_string(),
            "--port-range \"5-3\": FIRST (5) must not exceed LAST (3)"
        );
        assert_eq!(e.hint.as_deref(), Some("write the lower port first: 3-5"));
    }

    #[test]
    fn errors_name_where_the_value_came_from() {
        let mut f = FileValues::parse("upload-limit: fast\nport: 70000\n").unwrap();
        f.path = Some(PathBuf::from("/home/u/.p2pfile.yaml"));
        let e = Settings::resolve(&GlobalArgs::default(), &f).unwrap_err();
        assert!(
            e.error
                .to_string()
                .starts_with("config key port in /home/u/.p2pfile.yaml: \"70000\""),
            "{}",
            e.error
        );
        let args = GlobalArgs {
            ip: Some("127.0.0.1".into()),
            ..GlobalArgs::default()
        };
        let e = Settings::resolve(&args, &FileValues::parse("upload-limit: fast\n").unwrap())
            .unwrap_err();
        assert!(
            e.error
                .to_string()
                .starts_with("config key upload-limit in "),
            "{}",
            e.error
        );
        let args = GlobalArgs {
            ip: Some("127.0.0.1".into()),
            upload_limit: Some("fast".into()),
            ..GlobalArgs::default()
        };
        let mut f = FileValues::parse("upload-limit: 1\n").unwrap();
        let e = Settings::resolve(&args, &f).unwrap_err();
        assert_eq!(
            e.error.to_string(),
            "--upload-limit \"fast\" is not a number of MiB/s"
        );
        f.set_env_sourced(["upload-limit".to_string()]);
        let e = Settings::resolve(&args, &f).unwrap_err();
        assert_eq!(
            e.error.to_string(),
            "P2PFILE_UPLOAD_LIMIT \"fast\" is not a number of MiB/s"
        );
    }
}
