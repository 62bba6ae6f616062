//! `p2pfile serve PATH...`: hash each path, seed it, print its magnet.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use p2pfile_engine::builder::{self, BuildError};
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::{Event, Source, Target};
use serde_json::json;

use super::{merge_events, shutdown_signal, start_session};
use crate::cli::ServeArgs;
use crate::config::Settings;
use crate::error::{Failure, from_engine};
use crate::output::Output;

pub async fn run(
    args: ServeArgs,
    torrent_out: Option<std::path::PathBuf>,
    settings: Settings,
) -> Result<(), Failure> {
    let out = Output::new(settings.json);
    for path in &args.paths {
        if std::fs::metadata(path).is_err() {
            return Err(Failure::usage(
                anyhow!("cannot serve {}: no such file or directory", path.display()),
                "check the path; serve takes existing files or directories",
            ));
        }
    }
    if let Some(dir) = &torrent_out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --torrent-out directory {}", dir.display()))?;
    }
    let session = start_session(&settings, &[]).await?;
    let mut handles = Vec::new();
    for path in &args.paths {
        let p = path.clone();
        let built = tokio::task::spawn_blocking(move || builder::build(&p))
            .await
            .expect("hashing task panicked")
            .map_err(|e| match e {
                BuildError::Io { .. } | BuildError::BadName(_) => {
                    Failure::usage(e, "check that every file under the path is readable")
                }
                BuildError::Metainfo(_) => Failure::usage(e, "serve needs at least one file"),
            })?;
        for skipped in &built.skipped {
            tracing::warn!(
                "skipped {} (symlink to a directory, dangling, or not a regular file)",
                skipped.display()
            );
        }
        let info = Arc::new(built.info);
        if let Some(dir) = &torrent_out {
            let file = dir.join(format!("{}.torrent", info.info_hash()));
            std::fs::write(&file, info.to_torrent_file())
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        let handle = session
            .add(
                Source::Info(info.clone()),
                Target::Seed {
                    root: built.root.clone(),
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
                    "path": built.root.display().to_string(),
                    "bytes": info.total_length(),
                }),
            );
        } else {
            out.line(&magnet.to_string());
        }
        handles.push(handle);
    }
    // Serve until told to stop; a torrent that fails (its files vanished)
    // is reported and the others keep serving.
    let watch = async move {
        let (mut events, _stops) = merge_events(handles);
        while let Some((i, ev)) = events.recv().await {
            if let Event::Failed { message } = ev {
                tracing::error!("{}: {message}", args.paths[i].display());
            }
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = watch => {}
    }
    session.shutdown().await;
    Ok(())
}
