//! `p2pfile magnet PATH...`: the magnets `serve` would print, without
//! serving and without any network; and the preparation both commands
//! share, so they agree on the info-hash, the address and the port:
//! scan each path, reuse the hash recorded for unchanged files (else
//! hash), record it in the state database, write `--torrent-out` files.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use p2pfile_engine::PortChoice;
use p2pfile_engine::builder::{self, BuildError, Scan};
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::metainfo::Info;
use serde_json::json;

use super::{file_signature, open_state};
use crate::cli::MagnetArgs;
use crate::config::{FileValues, Settings};
use crate::error::Failure;
use crate::output::Output;
use crate::state::{Served, State};

/// A path scanned, with what an earlier run recorded for it.
pub struct Scanned {
    pub scan: Scan,
    pub record: Option<Served>,
}

/// A path ready to serve: its info dictionary and where it came from.
pub struct Prepared {
    pub scan: Scan,
    pub info: Arc<Info>,
    /// Hashed in this run (false: the recorded hash of unchanged files).
    pub hashed: bool,
    /// Uploaded by earlier runs of the same content.
    pub uploaded_before: u64,
    signature: String,
}

impl Prepared {
    /// The canonical path, as recorded and reported.
    pub fn path(&self) -> String {
        self.scan.root.display().to_string()
    }

    /// The magnet with this host as its `x.pe` hint.
    pub fn magnet(&self, peer: std::net::SocketAddr) -> Magnet {
        Magnet {
            info_hash: self.info.info_hash(),
            name: Some(self.info.name.clone()),
            peers: vec![peer],
        }
    }

    /// The fields of a `serving` or `magnet` event.
    pub fn event(&self, magnet: &Magnet) -> serde_json::Value {
        json!({
            "magnet": magnet.to_string(),
            "info_hash": self.info.info_hash().to_string(),
            "name": self.info.name,
            "path": self.path(),
            "bytes": self.info.total_length(),
            "hashed": self.hashed,
        })
    }
}

/// `--torrent-out`, from the flag or the config file.
pub fn torrent_out(flag: &Option<PathBuf>, file: &FileValues) -> Option<PathBuf> {
    file.pick(
        &flag.as_ref().map(|p| p.display().to_string()),
        "torrent-out",
    )
    .map(Into::into)
}

/// Scans every path (nothing is read or written but directory entries) and
/// looks up what the state database recorded for each. A database that
/// does not exist yet is not created here: a run that fails before it
/// records anything leaves nothing behind.
pub async fn scan_paths(paths: &[PathBuf], settings: &Settings) -> Result<Vec<Scanned>, Failure> {
    let existing = if settings.state.exists() {
        Some(open_state(settings)?)
    } else {
        None
    };
    let mut out = Vec::new();
    for path in paths {
        let p = path.clone();
        let scan = tokio::task::spawn_blocking(move || builder::scan(&p))
            .await
            .expect("scan task panicked")
            .map_err(|e| match e {
                BuildError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    Failure::usage(
                        anyhow!("cannot serve {}: no such file or directory", path.display()),
                        "check the path; serve and magnet take existing files or directories",
                    )
                }
                e => build_failure(e),
            })?;
        let record = match &existing {
            Some(state) => state.served(&scan.root.display().to_string())?,
            None => None,
        };
        out.push(Scanned { scan, record });
    }
    Ok(out)
}

/// DHT nodes an earlier run remembered, read without creating the database.
pub fn remembered_dht_nodes(settings: &Settings) -> Result<Vec<String>, Failure> {
    if !settings.state.exists() {
        return Ok(Vec::new());
    }
    Ok(open_state(settings)?.dht_nodes()?)
}

/// The port `serve` listens on: `--port` if given; else the port an
/// earlier `serve` or `magnet` recorded for the first PATH that has one,
/// else the first port of the range; each only if free (then a random free
/// one of the range). `magnet` prints the port this prefers, so its magnet
/// is the one `serve` prints when that port is free.
pub fn port_choice(settings: &Settings, scanned: &[Scanned]) -> PortChoice {
    let range: RangeInclusive<u16> = match &settings.port {
        PortChoice::Exact(p) => return PortChoice::Exact(*p),
        PortChoice::Range(r) | PortChoice::Preferred(_, r) => r.clone(),
    };
    let recorded = scanned
        .iter()
        .find_map(|s| s.record.as_ref().map(|r| r.port));
    PortChoice::Preferred(recorded.unwrap_or(*range.start()), range)
}

/// The port a [`port_choice`] tries first.
pub fn first_port(choice: &PortChoice) -> u16 {
    match choice {
        PortChoice::Exact(p) | PortChoice::Preferred(p, _) => *p,
        PortChoice::Range(r) => *r.start(),
    }
}

/// Each path's info dictionary: the recorded one when its files (names,
/// sizes, mtimes) are as recorded, else hashed now.
pub async fn prepare(scanned: Vec<Scanned>) -> Result<Vec<Prepared>, Failure> {
    let mut out = Vec::new();
    for Scanned { scan, record } in scanned {
        let signature = file_signature(&scan);
        let recorded = record
            .as_ref()
            .filter(|r| r.files == signature)
            .and_then(|r| Info::from_bytes(&r.info).ok());
        let (info, hashed) = match recorded {
            Some(info) => (info, false),
            None => (hash(scan.clone()).await?, true),
        };
        for skipped in &scan.skipped {
            tracing::warn!(
                "skipped {} (symlink to a directory, dangling, or not a regular file)",
                skipped.display()
            );
        }
        let uploaded_before = record
            .as_ref()
            .filter(|r| r.info_hash == info.info_hash().to_string())
            .map_or(0, |r| r.uploaded);
        out.push(Prepared {
            scan,
            info: Arc::new(info),
            hashed,
            uploaded_before,
            signature,
        });
    }
    Ok(out)
}

/// Records each path's hash, address and port, so a later `serve` or
/// `magnet` of unchanged files hashes nothing; creates the database if
/// needed.
pub fn record(settings: &Settings, prepared: &[Prepared], port: u16) -> Result<State, Failure> {
    let state = open_state(settings)?;
    for p in prepared {
        state.save_served(&Served {
            path: p.path(),
            info_hash: p.info.info_hash().to_string(),
            name: p.info.name.clone(),
            piece_length: p.info.piece_length,
            ip: settings.ip.to_string(),
            port,
            info: p.info.as_bytes().to_vec(),
            files: p.signature.clone(),
            uploaded: p.uploaded_before,
        })?;
    }
    Ok(state)
}

/// Writes `DIR/<info-hash>.torrent` for each path, creating DIR.
pub fn write_torrents(dir: &Path, prepared: &[Prepared]) -> Result<(), Failure> {
    let hint = "pass --torrent-out with a directory you can write to (it is created if missing)";
    std::fs::create_dir_all(dir).map_err(|e| {
        Failure::usage(
            anyhow!(e).context(format!(
                "cannot create --torrent-out directory {}",
                dir.display()
            )),
            hint,
        )
    })?;
    for p in prepared {
        let file = dir.join(format!("{}.torrent", p.info.info_hash()));
        std::fs::write(&file, p.info.to_torrent_file()).map_err(|e| {
            Failure::usage(
                anyhow!(e).context(format!("cannot write {}", file.display())),
                hint,
            )
        })?;
    }
    Ok(())
}

/// `p2pfile magnet`: prints one magnet per PATH; no network at all.
pub async fn run(args: MagnetArgs, file: &FileValues, settings: Settings) -> Result<(), Failure> {
    let out = Output::new(settings.json);
    let torrent_out = torrent_out(&args.torrent_out, file);
    let scanned = scan_paths(&args.paths, &settings).await?;
    let port = first_port(&port_choice(&settings, &scanned));
    let prepared = prepare(scanned).await?;
    record(&settings, &prepared, port)?;
    if let Some(dir) = &torrent_out {
        write_torrents(dir, &prepared)?;
    }
    let peer = std::net::SocketAddr::new(settings.ip.into(), port);
    for p in &prepared {
        let magnet = p.magnet(peer);
        if out.is_json() {
            out.event("magnet", p.event(&magnet));
        } else {
            out.line(&magnet.to_string());
        }
    }
    Ok(())
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
