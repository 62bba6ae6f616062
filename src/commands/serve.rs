//! `p2pfile serve PATH...`: hash each path (or reuse the hash recorded for
//! unchanged files), seed it, print its magnet; serve until a signal or
//! until `--exit-after N` peers have completed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use p2pfile_engine::builder::{self, BuildError, Scan};
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::metainfo::{Info, InfoHash};
use p2pfile_engine::{Event, PortChoice, Source, Stats, Target};
use serde_json::json;
use tokio::sync::watch;

use super::{Signals, open_state, save_dht_nodes, start_session};
use crate::cli::ServeArgs;
use crate::config::{FileValues, Settings, parse_number};
use crate::error::{Code, Failure, from_engine};
use crate::output::Output;
use crate::state::Served;

/// One served path.
struct Seeded {
    path: String,
    info_hash: InfoHash,
    stats: watch::Receiver<Stats>,
    /// Uploaded by earlier runs.
    uploaded_before: u64,
}

pub async fn run(
    args: ServeArgs,
    file: &FileValues,
    mut settings: Settings,
) -> Result<(), Failure> {
    let mut signals = Signals::install()?;
    let out = Output::new(settings.json);
    let torrent_out: Option<PathBuf> = file
        .pick(
            &args.torrent_out.as_ref().map(|p| p.display().to_string()),
            "torrent-out",
        )
        .map(Into::into);
    let exit_after = match file.pick(&args.exit_after, "exit-after") {
        None => None,
        Some(s) => Some(parse_number(Some(s.clone()), "--exit-after", 0.0)? as usize)
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| {
                Failure::usage(
                    anyhow!(
                        "{} is not a positive number of peers",
                        s.subject("--exit-after")
                    ),
                    "use a number such as 20",
                )
            })?,
    };
    let mut scans = Vec::new();
    for path in &args.paths {
        let p = path.clone();
        let scan = tokio::task::spawn_blocking(move || builder::scan(&p))
            .await
            .expect("scan task panicked")
            .map_err(|e| match e {
                BuildError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    Failure::usage(
                        anyhow!("cannot serve {}: no such file or directory", path.display()),
                        "check the path; serve takes existing files or directories",
                    )
                }
                e => build_failure(e),
            })?;
        scans.push(scan);
    }
    if let Some(dir) = &torrent_out {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::usage(
                anyhow!(e).context(format!(
                    "cannot create --torrent-out directory {}",
                    dir.display()
                )),
                "pass --torrent-out with a directory this user can create or write to",
            )
        })?;
    }
    let state = open_state(&settings)?;
    let mut records = Vec::new();
    for scan in &scans {
        records.push(state.served(&scan.root.display().to_string())?);
    }
    // Same port as last time, when it is free and none was asked for.
    if let PortChoice::Range(range) = &settings.port
        && let Some(port) = records.iter().flatten().map(|r| r.port).next()
    {
        settings.port = PortChoice::Preferred(port, range.clone());
    }
    let mut bootstrap = state
        .dht_nodes()?
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect::<Vec<_>>();
    bootstrap.retain(|a| !settings.peers.contains(a));
    let session = start_session(&settings, &bootstrap).await?;
    let mut events = session.events().expect("a new session's events");
    let mut seeded = Vec::new();
    for (scan, record) in scans.into_iter().zip(records) {
        let signature = file_signature(&scan);
        let (info, hashed) = match record.as_ref().filter(|r| r.files == signature) {
            Some(r) => match Info::from_bytes(&r.info) {
                Ok(info) => (info, false),
                Err(_) => (hash(scan.clone()).await?, true),
            },
            None => (hash(scan.clone()).await?, true),
        };
        for skipped in &scan.skipped {
            tracing::warn!(
                "skipped {} (symlink to a directory, dangling, or not a regular file)",
                skipped.display()
            );
        }
        let info = Arc::new(info);
        let path = scan.root.display().to_string();
        let uploaded_before = record
            .as_ref()
            .filter(|r| r.info_hash == info.info_hash().to_string())
            .map_or(0, |r| r.uploaded);
        state.save_served(&Served {
            path: path.clone(),
            info_hash: info.info_hash().to_string(),
            name: info.name.clone(),
            piece_length: info.piece_length,
            ip: settings.ip.to_string(),
            port: session.local_addr().port(),
            info: info.as_bytes().to_vec(),
            files: signature,
            uploaded: uploaded_before,
        })?;
        if let Some(dir) = &torrent_out {
            let file = dir.join(format!("{}.torrent", info.info_hash()));
            std::fs::write(&file, info.to_torrent_file()).map_err(|e| {
                Failure::new(
                    Code::Runtime,
                    anyhow!(e).context(format!("cannot write {}", file.display())),
                )
                .hint("check that the --torrent-out directory is writable and has free space")
            })?;
        }
        let id = session
            .add(
                Source::Info(info.clone()),
                Target::Seed {
                    root: scan.root.clone(),
                },
                settings.peers.clone(),
            )
            .map_err(from_engine)?;
        let magnet = Magnet {
            info_hash: info.info_hash(),
            name: Some(info.name.clone()),
            peers: vec![session.local_addr()],
        };
        if out.is_json() {
            out.event(
                "serving",
                json!({
                    "magnet": magnet.to_string(),
                    "info_hash": info.info_hash().to_string(),
                    "name": info.name,
                    "path": path,
                    "bytes": info.total_length(),
                    "hashed": hashed,
                }),
            );
        } else {
            out.line(&magnet.to_string());
        }
        seeded.push(Seeded {
            path,
            info_hash: id,
            stats: session.watch_stats(id).expect("just added"),
            uploaded_before,
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            Some(ev) = events.recv() => {
                // A torrent whose files vanished is reported; the others keep serving.
                if let Event::Failed { error } = ev.event
                    && let Some(s) = seeded.iter().find(|s| s.info_hash == ev.info_hash)
                {
                    tracing::error!("{}: {error}", s.path);
                }
            }
            _ = tick.tick() => {
                save_uploads(&state, &seeded);
                if let Some(n) = exit_after {
                    let done = seeded.iter().all(|s| s.stats.borrow().completed_peers >= n);
                    if done {
                        out.event("stopped", json!({"rule": "exit-after", "peers": n}));
                        break;
                    }
                }
            }
        }
    }
    save_dht_nodes(&state, &session).await;
    // Stopping the torrents publishes their final counters; save after it.
    session.shutdown().await;
    save_uploads(&state, &seeded);
    Ok(())
}

fn save_uploads(state: &crate::state::State, seeded: &[Seeded]) {
    for s in seeded {
        let total = s.uploaded_before + s.stats.borrow().uploaded;
        if let Err(e) = state.set_served_uploaded(&s.path, total) {
            tracing::warn!(
                "cannot record upload totals in {}: {e:#}",
                state.path().display()
            );
        }
    }
}

async fn hash(scan: Scan) -> Result<Info, Failure> {
    tokio::task::spawn_blocking(move || builder::hash(scan))
        .await
        .expect("hashing task panicked")
        .map(|b| b.info)
        .map_err(build_failure)
}

fn build_failure(e: BuildError) -> Failure {
    match e {
        BuildError::Io { .. } | BuildError::BadName(_) => {
            Failure::usage(e, "check that every file under the path is readable")
        }
        BuildError::Metainfo(_) => Failure::usage(e, "serve needs at least one file"),
    }
}

/// Files, sizes and modification times: when these match the record, the
/// content is taken as unchanged and is not hashed again.
fn file_signature(scan: &Scan) -> String {
    let files: Vec<_> = scan
        .files
        .iter()
        .map(|f| json!([f.path.join("/"), f.length, f.mtime_ns.to_string()]))
        .collect();
    json!({"name": scan.name, "single": scan.single_file, "files": files, "empty_dirs": scan.empty_dirs}).to_string()
}
