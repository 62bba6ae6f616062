//! Command-line types. Doc comments here are the `--help` text; defaults
//! live in `config`, so a flag left out can still come from the
//! environment or the config file.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

pub const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    runtime failure (disk full, I/O error, torrent failed)
  2    usage or input error (bad flag, config, magnet, .torrent, missing path)
  3    incomplete: a download found no peer or made no progress before --timeout;
       sync --once did not converge before --timeout
  4    port unavailable: --port taken, or every port of --port-range taken
  130  interrupted (SIGINT/SIGTERM during a download), after a clean shutdown";

/// Move files across a private fleet with BitTorrent and a private DHT.
#[derive(Debug, Parser)]
#[command(name = "p2pfile", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes. Each also has a config-file key of the
/// same name and a `P2PFILE_<NAME>` environment variable; the flag wins
/// over the environment, which wins over the file.
#[derive(Debug, Args, Default)]
pub struct GlobalArgs {
    /// YAML config file [default: $HOME/.p2pfile.yaml, if it exists]
    #[arg(long, global = true, env = "P2PFILE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on and announce [default: the default route's address]
    #[arg(long, global = true, env = "P2PFILE_IP", value_name = "IPV4")]
    pub ip: Option<String>,
    /// Port for the peer wire (TCP) and the DHT (UDP)
    #[arg(
        long,
        global = true,
        env = "P2PFILE_PORT",
        conflicts_with = "port_range"
    )]
    pub port: Option<String>,
    /// Pick a random free port from this range [default: 42070-42099]
    #[arg(
        long,
        global = true,
        env = "P2PFILE_PORT_RANGE",
        value_name = "FIRST-LAST"
    )]
    pub port_range: Option<String>,
    /// Other p2pfile hosts, comma-separated: DHT bootstrap nodes, also tried as peers
    #[arg(long, global = true, env = "P2PFILE_PEERS", value_name = "IP:PORT,...")]
    pub peers: Option<String>,
    /// Upload limit for the process in MiB/s, decimals allowed; 0 = none
    #[arg(
        long,
        global = true,
        env = "P2PFILE_UPLOAD_LIMIT",
        allow_negative_numbers = true,
        value_name = "MIB/S"
    )]
    pub upload_limit: Option<String>,
    /// Download limit for the process in MiB/s, decimals allowed; 0 = none
    #[arg(
        long,
        global = true,
        env = "P2PFILE_DOWNLOAD_LIMIT",
        allow_negative_numbers = true,
        value_name = "MIB/S"
    )]
    pub download_limit: Option<String>,
    /// SQLite state database (served torrents, downloads, DHT nodes, sync folders) [default: ./.p2pfile.db]
    #[arg(long, global = true, env = "P2PFILE_STATE", value_name = "FILE")]
    pub state: Option<String>,
    /// Print machine-readable JSON lines on stdout
    #[arg(long, global = true, env = "P2PFILE_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,
    /// Log debug details to stderr
    #[arg(long, global = true, env = "P2PFILE_DEBUG", value_parser = BoolishValueParser::new())]
    pub debug: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seed files or directories and print one magnet per PATH
    Serve(ServeArgs),
    /// Download magnets or .torrent files
    Download(DownloadArgs),
    /// Keep a directory in step with peers, both ways
    Sync(SyncArgs),
    /// Show what the state database knows: served torrents and downloads
    Status,
    /// Print a shell completion script
    Completion(CompletionArgs),
    /// Print the manual page (roff) of every subcommand
    Man,
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
    /// Keep seeding after completion, until --seeding-time or --seeding-ratio
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
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// bash, zsh, fish, elvish or powershell
    pub shell: clap_complete::Shell,
}
