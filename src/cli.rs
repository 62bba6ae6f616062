//! Command-line types. Doc comments here are the `--help` text; defaults
//! live in `config`, so a flag left out can still come from the
//! environment or the config file.
//!
//! Each subcommand flattens only the flag groups it uses (`CommonArgs`,
//! `StateArgs`, `NetArgs`, `DownloadLimitArgs`), so its `--help` lists
//! what applies. The same groups are also accepted, hidden and without
//! their environment variables, before the subcommand (`p2pfile --ip X
//! serve`); `Cli::global` merges the two and refuses an early flag the
//! subcommand does not use.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, Parser, Subcommand};

use crate::error::Failure;

pub const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    runtime failure (disk full or too little free space, I/O error, torrent failed)
  2    usage or input error (bad flag, config, magnet, .torrent, missing path)
  3    incomplete: a download found no peer or made no progress before --timeout;
       download --check found a source not complete;
       sync --once did not converge before --timeout; serve --deadline passed
       before --exit-after / --expect were met
  4    port unavailable: --port taken, every port of --port-range taken,
       or the --metrics port taken
  130  interrupted (SIGINT/SIGTERM during a download), after a clean shutdown

Flags of a subcommand (see p2pfile SUBCOMMAND --help) may also come before
it: p2pfile --ip 10.0.0.5 serve DIR.";

/// The exit-code rows each subcommand's `--help` shows: the codes it can
/// end with, in its own words. Keep in step with `EXIT_CODES`, the README
/// and `error::Code`.
fn exit_codes(rows: &[(u8, &str)]) -> String {
    let mut text = String::from("Exit codes:");
    for (code, meaning) in rows {
        text.push_str(&format!("\n  {code:<4} {meaning}"));
    }
    text
}

const USAGE_ROW: (u8, &str) = (2, "usage or input error (bad flag, config, path)");
const PORT_ROW: (u8, &str) = (
    4,
    "port unavailable: --port taken, or every port of --port-range taken",
);
const PORT_METRICS_ROW: (u8, &str) = (
    4,
    "port unavailable: --port, every port of --port-range, or the --metrics port taken",
);

fn serve_exit_codes() -> String {
    exit_codes(&[
        (
            0,
            "stopped by SIGINT/SIGTERM, or --exit-after / --expect met",
        ),
        (
            1,
            "runtime failure (I/O error, state database; every PATH changed since hashed)",
        ),
        USAGE_ROW,
        (
            3,
            "--deadline passed before --exit-after / --expect were met",
        ),
        PORT_METRICS_ROW,
    ])
}

fn magnet_exit_codes() -> String {
    exit_codes(&[
        (0, "every magnet printed"),
        (1, "runtime failure (I/O error, state database)"),
        USAGE_ROW,
    ])
}

fn download_exit_codes() -> String {
    exit_codes(&[
        (0, "every source complete and verified"),
        (
            1,
            "runtime failure (disk full or too little free space, I/O error, torrent failed)",
        ),
        (
            2,
            "usage or input error (bad flag, config, magnet, .torrent, --dir)",
        ),
        (
            3,
            "incomplete: no peer found or no progress before --timeout; --check: a source not complete",
        ),
        PORT_METRICS_ROW,
        (130, "interrupted (SIGINT/SIGTERM), after a clean shutdown"),
    ])
}

fn sync_exit_codes() -> String {
    exit_codes(&[
        (
            0,
            "stopped by SIGINT/SIGTERM; with --once: in step with the peers",
        ),
        (1, "runtime failure (I/O error, folder, state database)"),
        (2, "usage or input error (bad flag, config, key, DIR)"),
        (
            3,
            "with --once: not in step with the peers before --timeout",
        ),
        PORT_ROW,
        (
            130,
            "with --once: interrupted before in step, after a clean shutdown",
        ),
    ])
}

fn status_exit_codes() -> String {
    exit_codes(&[
        (0, "success"),
        (1, "the state database cannot be read"),
        (2, "usage error, or no state database at --state"),
    ])
}

fn completion_exit_codes() -> String {
    exit_codes(&[(0, "success"), (2, "unknown shell")])
}

fn man_exit_codes() -> String {
    exit_codes(&[(0, "success"), (2, "usage error (an unknown flag)")])
}

/// Move files across a private fleet with BitTorrent and a private DHT.
#[derive(Debug, Parser)]
#[command(name = "p2pfile", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Subcommand flags given before the subcommand.
    #[command(flatten)]
    early: EarlyArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Every flag group, accepted before the subcommand. Hidden, and read from
/// the command line only: the environment is read by the subcommand's own
/// copy, so a variable never counts as a flag the subcommand lacks.
#[derive(Debug, Args)]
#[command(mut_args = early_flag)]
struct EarlyArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    addr: AddrArgs,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    limit: DownloadLimitArgs,
}

fn early_flag(a: Arg) -> Arg {
    a.hide(true).env(None::<&str>)
}

/// `--config`, `--json`, `--debug`: every subcommand but `completion`.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Global options")]
pub struct CommonArgs {
    /// YAML config file [default: $HOME/.p2pfile.yaml, if it exists and is readable]
    #[arg(long, env = "P2PFILE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON lines on stdout
    #[arg(long, env = "P2PFILE_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,
    /// Log debug details to stderr
    #[arg(long, env = "P2PFILE_DEBUG", value_parser = BoolishValueParser::new())]
    pub debug: bool,
}

/// `--state`: the subcommands that read or write the state database.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Global options")]
pub struct StateArgs {
    /// SQLite state database (served torrents, downloads, DHT nodes, sync folders) [default: ./.p2pfile.db]
    #[arg(long, env = "P2PFILE_STATE", value_name = "FILE")]
    pub state: Option<String>,
}

/// Where this host listens: the subcommands that join the swarm, and
/// `magnet`, which prints that address in its magnets.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Network options")]
pub struct AddrArgs {
    /// Address to listen on and announce [default: the default route's address]
    #[arg(long, env = "P2PFILE_IP", value_name = "IPV4")]
    pub ip: Option<String>,
    /// Port for the peer wire (TCP) and the DHT (UDP)
    #[arg(long, env = "P2PFILE_PORT", conflicts_with = "port_range")]
    pub port: Option<String>,
    /// Pick a random free port from this range [default: 42070-42099]
    #[arg(long, env = "P2PFILE_PORT_RANGE", value_name = "FIRST-LAST")]
    pub port_range: Option<String>,
}

/// Whom this host asks first and how fast it sends: the subcommands that
/// join the swarm.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Network options")]
pub struct NetArgs {
    /// Other p2pfile hosts, comma-separated: DHT bootstrap nodes, also tried as peers
    #[arg(long, env = "P2PFILE_PEERS", value_name = "IP:PORT,...")]
    pub peers: Option<String>,
    /// Upload limit for the process in MiB/s, decimals allowed; 0 = none
    #[arg(
        long,
        env = "P2PFILE_UPLOAD_LIMIT",
        allow_negative_numbers = true,
        value_name = "MIB/S"
    )]
    pub upload_limit: Option<String>,
    /// This host's zone (rack, room, data centre): pieces cross to another zone about once, then are traded inside [default: none]
    #[arg(long, env = "P2PFILE_ZONE", value_name = "NAME")]
    pub zone: Option<String>,
}

/// `--download-limit`: the subcommands that download.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Network options")]
pub struct DownloadLimitArgs {
    /// Download limit for the process in MiB/s, decimals allowed; 0 = none
    #[arg(
        long,
        env = "P2PFILE_DOWNLOAD_LIMIT",
        allow_negative_numbers = true,
        value_name = "MIB/S"
    )]
    pub download_limit: Option<String>,
}

/// The global settings of one run, merged from the flags before and after
/// the subcommand (those after win; a flag's environment variable counts
/// as after). Each also has a config-file key of the same name and a
/// `P2PFILE_<NAME>` environment variable; the flag wins over the
/// environment, which wins over the file.
#[derive(Debug, Default)]
pub struct GlobalArgs {
    pub config: Option<PathBuf>,
    pub ip: Option<String>,
    pub port: Option<String>,
    pub port_range: Option<String>,
    pub peers: Option<String>,
    pub upload_limit: Option<String>,
    pub download_limit: Option<String>,
    pub zone: Option<String>,
    pub state: Option<String>,
    pub json: bool,
    pub debug: bool,
}

/// The flag groups one subcommand takes (None: not this one's).
struct Groups<'a> {
    common: Option<&'a CommonArgs>,
    state: Option<&'a StateArgs>,
    addr: Option<&'a AddrArgs>,
    net: Option<&'a NetArgs>,
    limit: Option<&'a DownloadLimitArgs>,
}

impl Cli {
    /// The global settings, flags before the subcommand merged into its
    /// own. `from_env` holds the keys whose value clap took from the
    /// environment; a key overridden by an early flag is taken out.
    pub fn global(&self, from_env: &mut BTreeSet<String>) -> Result<GlobalArgs, Failure> {
        let g = self.command.groups();
        let name = self.command.name();
        let early = &self.early;
        let mut pick = |early: &Option<String>, here: Option<&Option<String>>, key: &str| {
            let Some(here) = here else {
                return match early {
                    Some(_) => Err(not_for(key, name)),
                    None => Ok(None),
                };
            };
            // A flag on the command line beats the variable clap read.
            if early.is_some() && from_env.remove(key) {
                return Ok(early.clone());
            }
            Ok(here.clone().or_else(|| early.clone()))
        };
        let path_text = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let here_config = g.common.map(|c| path_text(&c.config));
        let config = pick(
            &path_text(&early.common.config),
            here_config.as_ref(),
            "config",
        )?;
        Ok(GlobalArgs {
            config: config.map(PathBuf::from),
            ip: pick(&early.addr.ip, g.addr.map(|a| &a.ip), "ip")?,
            port: pick(&early.addr.port, g.addr.map(|a| &a.port), "port")?,
            port_range: pick(
                &early.addr.port_range,
                g.addr.map(|a| &a.port_range),
                "port-range",
            )?,
            peers: pick(&early.net.peers, g.net.map(|n| &n.peers), "peers")?,
            upload_limit: pick(
                &early.net.upload_limit,
                g.net.map(|n| &n.upload_limit),
                "upload-limit",
            )?,
            download_limit: pick(
                &early.limit.download_limit,
                g.limit.map(|l| &l.download_limit),
                "download-limit",
            )?,
            zone: pick(&early.net.zone, g.net.map(|n| &n.zone), "zone")?,
            state: pick(&early.state.state, g.state.map(|s| &s.state), "state")?,
            json: switch(early.common.json, g.common.map(|c| c.json), "json", name)?,
            debug: switch(early.common.debug, g.common.map(|c| c.debug), "debug", name)?,
        })
    }
}

/// A boolean flag before the subcommand or after it.
fn switch(early: bool, here: Option<bool>, key: &str, name: &str) -> Result<bool, Failure> {
    match here {
        None if early => Err(not_for(key, name)),
        None => Ok(false),
        Some(h) => Ok(h || early),
    }
}

fn not_for(key: &str, name: &str) -> Failure {
    Failure::usage(
        anyhow::anyhow!("--{key} does not apply to {name}"),
        format!("leave it out; p2pfile {name} --help lists the flags {name} takes"),
    )
}

/// The keys (flag long names) whose value clap took from a `P2PFILE_*`
/// variable, in the subcommand's matches.
pub fn env_sourced(matches: &ArgMatches) -> BTreeSet<String> {
    let Some((_, sub)) = matches.subcommand() else {
        return BTreeSet::new();
    };
    sub.ids()
        .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::EnvVariable))
        .map(|id| id.as_str().replace('_', "-"))
        .collect()
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seed files or directories and print one magnet per PATH
    #[command(after_help = serve_exit_codes())]
    Serve(ServeArgs),
    /// Print the magnets serve would print for PATHs, without serving or any network
    #[command(after_help = magnet_exit_codes())]
    Magnet(MagnetArgs),
    /// Download magnets or .torrent files
    #[command(after_help = download_exit_codes())]
    Download(DownloadArgs),
    /// Keep a directory in step with peers, both ways
    #[command(after_help = sync_exit_codes())]
    Sync(SyncArgs),
    /// Show what the state database knows: served torrents and downloads
    #[command(after_help = status_exit_codes())]
    Status(StatusArgs),
    /// Print a shell completion script
    #[command(after_help = completion_exit_codes())]
    Completion(CompletionArgs),
    /// Print the manual page (roff) of every subcommand
    #[command(after_help = man_exit_codes())]
    Man,
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Serve(_) => "serve",
            Command::Magnet(_) => "magnet",
            Command::Download(_) => "download",
            Command::Sync(_) => "sync",
            Command::Status(_) => "status",
            Command::Completion(_) => "completion",
            Command::Man => "man",
        }
    }

    fn groups(&self) -> Groups<'_> {
        let none = Groups {
            common: None,
            state: None,
            addr: None,
            net: None,
            limit: None,
        };
        match self {
            Command::Serve(a) => Groups {
                common: Some(&a.common),
                state: Some(&a.state),
                addr: Some(&a.addr),
                net: Some(&a.net),
                ..none
            },
            Command::Magnet(a) => Groups {
                common: Some(&a.common),
                state: Some(&a.state),
                addr: Some(&a.addr),
                ..none
            },
            Command::Download(a) => Groups {
                common: Some(&a.common),
                state: Some(&a.state),
                addr: Some(&a.addr),
                net: Some(&a.net),
                limit: Some(&a.limit),
            },
            Command::Sync(a) => Groups {
                common: Some(&a.common),
                state: Some(&a.state),
                addr: Some(&a.addr),
                net: Some(&a.net),
                limit: Some(&a.limit),
            },
            Command::Status(a) => Groups {
                common: Some(&a.common),
                state: Some(&a.state),
                ..none
            },
            Command::Completion(_) | Command::Man => none,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Files or directories to seed, one torrent each
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Also write DIR/<info-hash>.torrent for each PATH
    #[arg(long, env = "P2PFILE_TORRENT_OUT", value_name = "DIR")]
    pub torrent_out: Option<PathBuf>,
    /// Exit 0 once N distinct peers have completed every PATH
    #[arg(long, env = "P2PFILE_EXIT_AFTER", value_name = "N")]
    pub exit_after: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) and GET /health on this address
    #[arg(long, env = "P2PFILE_METRICS", value_name = "IP:PORT")]
    pub metrics: Option<String>,
    /// Exit 0 once every listed host has completed every PATH (an IP matches any port) [config key: expect-hosts]
    #[arg(long, env = "P2PFILE_EXPECT_HOSTS", value_name = "IP[:PORT],...")]
    pub expect: Option<String>,
    /// With --exit-after or --expect: exit 3 after SECS if they are not met yet
    #[arg(long, env = "P2PFILE_DEADLINE", value_name = "SECS")]
    pub deadline: Option<String>,
    #[command(flatten)]
    pub addr: AddrArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct MagnetArgs {
    /// Files or directories, one magnet each (hashed, or the recorded hash when unchanged)
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Also write DIR/<info-hash>.torrent for each PATH
    #[arg(long, env = "P2PFILE_TORRENT_OUT", value_name = "DIR")]
    pub torrent_out: Option<PathBuf>,
    #[command(flatten)]
    pub addr: AddrArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Magnet links or .torrent files
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
    /// Directory to download into [default: .]
    #[arg(long, env = "P2PFILE_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Fail when no piece arrives for this many seconds [default: 60]
    #[arg(
        long,
        env = "P2PFILE_TIMEOUT",
        allow_negative_numbers = true,
        value_name = "SECS"
    )]
    pub timeout: Option<String>,
    /// Keep seeding after completion, until --seeding-time, --seeding-ratio or --seeding-until-idle says stop
    #[arg(long, env = "P2PFILE_SEEDING", value_parser = BoolishValueParser::new())]
    pub seeding: bool,
    /// Stop seeding after this many seconds; 0 = no time limit [default: 60]
    #[arg(
        long,
        env = "P2PFILE_SEEDING_TIME",
        allow_negative_numbers = true,
        value_name = "SECS"
    )]
    pub seeding_time: Option<String>,
    /// Stop seeding once uploaded ÷ size reaches this; 0 = no ratio limit [default: 1.0]
    #[arg(
        long,
        env = "P2PFILE_SEEDING_RATIO",
        allow_negative_numbers = true,
        value_name = "RATIO"
    )]
    pub seeding_ratio: Option<String>,
    /// Stop seeding once no peer has downloaded from us for SECS; 0 = off [default: 0]
    #[arg(
        long,
        env = "P2PFILE_SEEDING_UNTIL_IDLE",
        allow_negative_numbers = true,
        value_name = "SECS"
    )]
    pub seeding_until_idle: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) and GET /health on this address, while downloading and seeding
    #[arg(long, env = "P2PFILE_METRICS", value_name = "IP:PORT")]
    pub metrics: Option<String>,
    /// Only check the disk, with no network and writing nothing: exit 0 when every SOURCE is complete in DIR, 3 when not
    #[arg(long, env = "P2PFILE_CHECK", value_parser = BoolishValueParser::new())]
    pub check: bool,
    #[command(flatten)]
    pub addr: AddrArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub limit: DownloadLimitArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The folder to keep in step (an existing directory)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Folder key: p2pf-rw-… (read-write) or p2pf-ro-… (read-only) [default: the folder's own key, made on first use]
    #[arg(long, env = "P2PFILE_KEY", value_name = "KEY")]
    pub key: Option<String>,
    /// Print the folder's read-write and read-only keys, then exit
    #[arg(long)]
    pub show_keys: bool,
    /// Converge with the peers found once, then exit: 0 in step, 3 not in step before --timeout
    #[arg(long, env = "P2PFILE_ONCE", value_parser = BoolishValueParser::new())]
    pub once: bool,
    /// With --once: how many peers must be found before it can be in step [default: 1]
    #[arg(long, env = "P2PFILE_EXPECT", value_name = "N")]
    pub expect: Option<String>,
    /// With --once: give up (exit 3) after this many seconds [default: 60]
    #[arg(
        long,
        env = "P2PFILE_TIMEOUT",
        allow_negative_numbers = true,
        value_name = "SECS"
    )]
    pub timeout: Option<String>,
    /// Announce local changes, never apply a peer's
    #[arg(long, env = "P2PFILE_SEND_ONLY", value_parser = BoolishValueParser::new(), conflicts_with = "receive_only")]
    pub send_only: bool,
    /// Apply peers' changes, never announce local ones
    #[arg(long, env = "P2PFILE_RECEIVE_ONLY", value_parser = BoolishValueParser::new())]
    pub receive_only: bool,
    /// Keep replaced and deleted files in DIR/.p2pfile/trash this many days [default: 7]
    #[arg(long, env = "P2PFILE_TRASH_DAYS", value_name = "DAYS")]
    pub trash_days: Option<String>,
    /// Rescan the whole folder this often as a safety net, in seconds [default: 60]
    #[arg(long, env = "P2PFILE_RESCAN", value_name = "SECS")]
    pub rescan: Option<String>,
    /// Find peers on the LAN by UDP broadcast and multicast on this port; 0 turns it off [default: 42069]
    #[arg(long, env = "P2PFILE_DISCOVERY_PORT", value_name = "PORT")]
    pub discovery_port: Option<String>,
    #[command(flatten)]
    pub addr: AddrArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub limit: DownloadLimitArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// bash, zsh, fish, elvish or powershell
    pub shell: clap_complete::Shell,
}
