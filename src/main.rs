//! The `p2pfile` binary: parse, configure, run one command, exit with the
//! code from the table in `error`. Everything else lives in `commands/`
//! and the engine crate.

mod cli;
mod commands;
mod config;
mod error;
mod metrics;
mod output;
mod state;
mod sync;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};
use crate::config::{FileValues, Settings};
use crate::error::{Code, Failure};

fn main() -> ExitCode {
    keep_freed_memory();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, cli::env_sourced(&matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if f.code != Code::Interrupted {
                eprintln!("{f}");
            }
            ExitCode::from(f.code as u8)
        }
    }
}

/// Stops glibc's allocator from handing freed memory back to the kernel
/// after every burst. A download's block buffers are allocated by socket
/// readers and freed by disk threads; with the default (dynamic) thresholds
/// glibc trimmed and re-faulted them all the time: 35k-47k page faults for
/// 1 GiB over loopback, against 6k-7k with these settings, and 6-8 % less
/// CPU. Freed memory stays for reuse (up to 64 MiB kept above the top of
/// the heap; peak RSS measured in bench/loopback.sh).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs first thing
    // in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn run(cli: Cli, mut from_env: std::collections::BTreeSet<String>) -> Result<(), Failure> {
    let global = cli.global(&mut from_env)?;
    if let Command::Completion(args) = &cli.command {
        commands::completion::run(args);
        return Ok(());
    }
    if let Command::Man = cli.command {
        return commands::man::run();
    }
    let mut file = FileValues::load(global.config.as_deref())?;
    file.set_env_sourced(from_env);
    init_tracing(file.flag(global.debug, "debug")?);
    file.log_skipped();
    if let Command::Status(_) = cli.command {
        // Needs no address or port: it only reads the database.
        let state = crate::config::state_path(&global, &file);
        return commands::status::run(&state, file.flag(global.json, "json")?);
    }
    if let Command::Sync(args) = &cli.command
        && args.show_keys
    {
        // Needs no address or port either.
        let state = crate::config::state_path(&global, &file);
        return commands::sync::show_keys(args, &file, &state, file.flag(global.json, "json")?);
    }
    let settings = Settings::resolve(&global, &file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Code::Runtime, e))?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve::run(args, &file, settings).await,
            Command::Magnet(args) => commands::magnet::run(args, &file, settings).await,
            Command::Download(args) => commands::download::run(args, &file, settings).await,
            Command::Sync(args) => commands::sync::run(args, &file, settings).await,
            Command::Completion(_) | Command::Man | Command::Status(_) => {
                unreachable!("handled above")
            }
        }
    })
}

/// Logs go to stderr: warnings by default, debug with `--debug`, or what
/// `P2PFILE_LOG` says (an env-filter directive).
fn init_tracing(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("P2PFILE_LOG") {
        Ok(f) => EnvFilter::new(f),
        Err(_) if debug => EnvFilter::new("debug,mainline=info"),
        Err(_) => EnvFilter::new("warn,mainline=off"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output::LogWriter)
        // Colour codes only for a terminal, not for a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
