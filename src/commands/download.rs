//! `p2pfile download SOURCE...`: fetch magnets and .torrent files, all at
//! once, then optionally seed until a rule says stop. Progress and
//! cumulative counters go to the state database as it runs, so a killed
//! download resumes and `status` tells where each one is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::metainfo::{Info, InfoHash};
use p2pfile_engine::{Event, Phase, Source, Stats, Target, TorrentError};
use serde_json::json;
use tokio::sync::watch;

use super::{Signals, open_state, save_dht_nodes, start_session};
use crate::cli::DownloadArgs;
use crate::config::{FileValues, Settings, parse_number};
use crate::error::{Code, Failure, from_engine};
use crate::output::{Output, round3, stats_json};
use crate::state::{Download, State};

/// When to stop seeding after completion (0 turns a rule off).
struct SeedingRules {
    enabled: bool,
    time: f64,
    ratio: f64,
    until_idle: f64,
}

/// One source as it goes.
struct Track {
    /// The torrent's id in the session.
    id: InfoHash,
    info_hash: String,
    name: Option<String>,
    stats: watch::Receiver<Stats>,
    started: Instant,
    last_progress: Instant,
    last_have: u64,
    completed_at: Option<Instant>,
    last_upload: Instant,
    last_uploaded: u64,
    stopped: bool,
    failed: bool,
    first_piece: bool,
    last_event: Option<Instant>,
    /// Counters of earlier runs, from the state database.
    before: Download,
}

impl Track {
    fn record(&self, dir: &Path) -> Download {
        let s = self.stats.borrow();
        let seeding = self.completed_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let state = if self.failed {
            "failed"
        } else if self.completed_at.is_some() && !self.stopped {
            "seeding"
        } else if self.completed_at.is_some() {
            "complete"
        } else {
            "downloading"
        };
        Download {
            info_hash: self.info_hash.clone(),
            dir: dir.display().to_string(),
            name: self
                .name
                .clone()
                .unwrap_or_else(|| self.before.name.clone()),
            state: state.into(),
            total: if s.total > 0 {
                s.total
            } else {
                self.before.total
            },
            have: if s.total > 0 {
                s.have
            } else {
                self.before.have
            },
            uploaded: self.before.uploaded + s.uploaded,
            downloaded: self.before.downloaded + s.downloaded,
            seeding_secs: self.before.seeding_secs + seeding,
        }
    }
}

pub async fn run(args: DownloadArgs, file: &FileValues, settings: Settings) -> Result<(), Failure> {
    let mut signals = Signals::install()?;
    let out = Output::new(settings.json);
    let dir = file
        .pick(&args.dir.as_ref().map(|d| d.display().to_string()), "dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let timeout = parse_number(file.pick(&args.timeout, "timeout"), "--timeout", 60.0)?;
    if timeout == 0.0 {
        return Err(Failure::usage(
            anyhow!("--timeout 0 would fail at once"),
            "use a number of seconds such as 60",
        ));
    }
    let rules = SeedingRules {
        enabled: file.flag(args.seeding, "seeding")?,
        time: parse_number(
            file.pick(&args.seeding_time, "seeding-time"),
            "--seeding-time",
            60.0,
        )?,
        ratio: parse_number(
            file.pick(&args.seeding_ratio, "seeding-ratio"),
            "--seeding-ratio",
            1.0,
        )?,
        until_idle: parse_number(
            file.pick(&args.seeding_until_idle, "seeding-until-idle"),
            "--seeding-until-idle",
            0.0,
        )?,
    };
    let sources = args
        .sources
        .iter()
        .map(|s| parse_source(s))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::usage(
            anyhow!(e).context(format!(
                "cannot create download directory {}",
                dir.display()
            )),
            "pass --dir with a writable directory",
        )
    })?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let state = open_state(&settings)?;
    let hints: Vec<SocketAddr> = sources
        .iter()
        .flat_map(|s| match s {
            Source::Magnet(m) => m.peers.clone(),
            Source::Info(_) => Vec::new(),
        })
        .collect();
    let mut bootstrap = hints.clone();
    bootstrap.extend(
        state
            .dht_nodes()?
            .iter()
            .filter_map(|n| n.parse::<SocketAddr>().ok()),
    );
    let session = start_session(&settings, &bootstrap).await?;
    let mut events = session.events().expect("a new session's events");
    let mut tracks = Vec::new();
    for (source, text) in sources.into_iter().zip(&args.sources) {
        let name = match &source {
            Source::Magnet(m) => m.name.clone(),
            Source::Info(i) => Some(i.name.clone()),
        };
        let id = session
            .add(
                source,
                Target::download(dir.clone()),
                settings.peers.clone(),
            )
            .map_err(from_engine)?;
        let info_hash = id.to_string();
        let before = state
            .download(&info_hash, &dir.display().to_string())?
            .unwrap_or(Download {
                info_hash: info_hash.clone(),
                dir: dir.display().to_string(),
                name: name.clone().unwrap_or_default(),
                state: "downloading".into(),
                total: 0,
                have: 0,
                uploaded: 0,
                downloaded: 0,
                seeding_secs: 0.0,
            });
        out.event("started", json!({"info_hash": info_hash, "name": name, "source": text, "dir": dir.display().to_string()}));
        tracks.push(Track {
            id,
            info_hash,
            name,
            stats: session.watch_stats(id).expect("just added"),
            started: Instant::now(),
            last_progress: Instant::now(),
            last_have: 0,
            completed_at: None,
            last_upload: Instant::now(),
            last_uploaded: 0,
            stopped: false,
            failed: false,
            first_piece: false,
            last_event: None,
            before,
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_save = Instant::now();
    let result = loop {
        if tracks.iter().all(|t| t.stopped) {
            break Ok(());
        }
        tokio::select! {
            _ = signals.recv() => {
                let all_done = tracks.iter().all(|t| t.completed_at.is_some());
                break if all_done { Ok(()) } else { Err(Failure::interrupted()) };
            }
            Some(ev) = events.recv() => {
                let Some(t) = tracks.iter_mut().find(|t| t.id == ev.info_hash) else {
                    continue;
                };
                let outcome = on_event(&out, t, ev.event, &dir, &rules);
                if t.completed_at.is_some() && !rules.enabled && !t.stopped {
                    t.stopped = true;
                    let _ = session.remove(t.id).await;
                }
                if outcome.is_err() || t.completed_at.is_some() {
                    save(&state, t, &dir);
                }
                if let Err(f) = outcome {
                    break Err(f);
                }
            }
            _ = tick.tick() => {
                let mut failure = None;
                for t in tracks.iter_mut() {
                    if let Err(f) = on_tick(&out, t, timeout, &rules, &settings, &hints) {
                        failure = Some(f);
                        break;
                    }
                    if t.stopped {
                        if session.remove(t.id).await.is_ok() {
                            save(&state, t, &dir);
                        }
                    } else if t.completed_at.is_none() {
                        out.progress(&t.info_hash, t.name.as_deref().unwrap_or(&t.info_hash), &t.stats.borrow());
                    }
                }
                if last_save.elapsed() >= Duration::from_secs(2) {
                    last_save = Instant::now();
                    tracks.iter().filter(|t| !t.stopped).for_each(|t| save(&state, t, &dir));
                }
                if let Some(f) = failure {
                    break Err(f);
                }
            }
        }
    };
    out.end_progress();
    save_dht_nodes(&state, &session).await;
    // Stopping the torrents publishes their final counters; save after it.
    session.shutdown().await;
    for t in &tracks {
        save(&state, t, &dir);
    }
    result
}

fn save(state: &State, t: &Track, dir: &Path) {
    if let Err(e) = state.save_download(&t.record(dir)) {
        tracing::warn!(
            "cannot record progress in {}: {e:#}",
            state.path().display()
        );
    }
}

fn parse_source(text: &str) -> Result<Source, Failure> {
    if text.starts_with("magnet:") {
        let m: Magnet = text.parse().map_err(|e| {
            Failure::usage(
                anyhow::Error::new(e).context(format!("bad magnet {text:?}")),
                "copy the whole magnet printed by `p2pfile serve`, in quotes",
            )
        })?;
        return Ok(Source::Magnet(m));
    }
    let bytes = std::fs::read(Path::new(text)).map_err(|e| {
        Failure::usage(
            anyhow!(e).context(format!("cannot read {text}")),
            "a SOURCE is a magnet (magnet:?xt=urn:btih:...) or the path of a .torrent file",
        )
    })?;
    let info = Info::from_torrent_file(&bytes).map_err(|e| {
        Failure::usage(
            anyhow!(e).context(format!("{text} is not a valid .torrent file")),
            "pass a .torrent written by a BitTorrent client, or a magnet",
        )
    })?;
    Ok(Source::Info(Arc::new(info)))
}

fn on_event(
    out: &Output,
    t: &mut Track,
    ev: Event,
    dir: &Path,
    rules: &SeedingRules,
) -> Result<(), Failure> {
    let hash = t.info_hash.clone();
    match ev {
        Event::Metadata {
            name,
            total,
            pieces,
        } => {
            t.last_progress = Instant::now();
            out.event(
                "metadata",
                json!({"info_hash": hash, "name": name, "bytes": total, "pieces": pieces}),
            );
            t.name = Some(name);
        }
        Event::Checked {
            valid_pieces,
            valid_bytes,
        } => {
            out.event("checked", json!({"info_hash": hash, "valid_pieces": valid_pieces, "valid_bytes": valid_bytes}));
        }
        Event::Completed => {
            let s = t.stats.borrow().clone();
            t.completed_at = Some(Instant::now());
            t.last_upload = Instant::now();
            let name = t.name.clone().unwrap_or_default();
            let path = dir.join(&name);
            out.event(
                "completed",
                json!({
                    "info_hash": hash,
                    "name": name,
                    "path": path.display().to_string(),
                    "bytes": s.total,
                    "downloaded": s.downloaded,
                    "seconds": (t.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                }),
            );
            out.progress_done(&hash);
            if !out.is_json() {
                out.line(&path.display().to_string());
            }
            if rules.enabled {
                out.event(
                    "seeding",
                    json!({"info_hash": hash, "seeding_time": rules.time, "seeding_ratio": rules.ratio, "seeding_until_idle": rules.until_idle}),
                );
            }
        }
        Event::Failed { error } => {
            t.failed = true;
            out.event(
                "error",
                json!({"info_hash": hash, "message": error.to_string(), "kind": error_kind(&error)}),
            );
            let hint = match error {
                TorrentError::NoSpace { .. } => {
                    "free disk space, then run the same command again: verified pieces are kept"
                }
                TorrentError::Io { .. } => {
                    "fix the directory's permissions, then run the same command again: verified pieces are kept"
                }
                TorrentError::BadMetadata(_) => {
                    "a peer sent a torrent this version cannot use; check the magnet's source"
                }
            };
            return Err(Failure::new(
                Code::Runtime,
                anyhow::Error::new(error).context(format!(
                    "download of {} failed",
                    t.name.as_deref().unwrap_or(&hash)
                )),
            )
            .hint(hint));
        }
        Event::PieceVerified { index } => {
            if !t.first_piece {
                t.first_piece = true;
                let seconds = (t.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
                out.event(
                    "first_piece",
                    json!({"info_hash": hash, "index": index, "seconds": seconds}),
                );
            }
        }
        Event::LocalEditsKept { paths } => {
            let part = dir.join(format!(
                ".{}.p2pfile-part",
                t.name.as_deref().unwrap_or(&hash)
            ));
            for p in &paths {
                tracing::warn!(
                    "{} changed while downloading, so it was kept; the downloaded version is in {}",
                    p.display(),
                    part.display()
                );
            }
            let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            out.event(
                "local_edits_kept",
                json!({"info_hash": hash, "paths": paths, "part": part.display().to_string()}),
            );
        }
        Event::HashFailed { .. }
        | Event::PeerConnected { .. }
        | Event::PeerDisconnected { .. }
        | Event::ExtensionsReady { .. }
        | Event::ExtensionMessage { .. }
        | Event::Removed => {}
    }
    Ok(())
}

/// Which seeding rule, if any, says stop now.
///
/// The time limit always applies. The ratio and idle rules wait while we
/// may be the only complete copy that connected incomplete peers can see:
/// some connected peer still lacks pieces and no other complete copy (a
/// seed, or a peer that finished) has been seen in this run.
fn stop_rule(t: &Track, s: &Stats, rules: &SeedingRules) -> Option<&'static str> {
    let done = t.completed_at?;
    let seeding = t.before.seeding_secs + done.elapsed().as_secs_f64();
    if rules.time > 0.0 && seeding >= rules.time {
        return Some("seeding-time");
    }
    let sole_copy = s.incomplete_peers > 0 && s.seeds_seen == 0 && s.completed_peers == 0;
    if sole_copy {
        return None;
    }
    let uploaded = t.before.uploaded + s.uploaded;
    if rules.ratio > 0.0 && s.total > 0 && uploaded as f64 / s.total as f64 >= rules.ratio {
        return Some("seeding-ratio");
    }
    if rules.until_idle > 0.0 && t.last_upload.elapsed().as_secs_f64() >= rules.until_idle {
        return Some("seeding-until-idle");
    }
    None
}

fn on_tick(
    out: &Output,
    t: &mut Track,
    timeout: f64,
    rules: &SeedingRules,
    settings: &Settings,
    hints: &[SocketAddr],
) -> Result<(), Failure> {
    if t.stopped {
        return Ok(());
    }
    let s = t.stats.borrow().clone();
    if s.have > t.last_have {
        t.last_have = s.have;
        t.last_progress = Instant::now();
    }
    if s.uploaded > t.last_uploaded {
        t.last_uploaded = s.uploaded;
        t.last_upload = Instant::now();
    }
    if t.last_event
        .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        && s.phase != Phase::Seeding
    {
        t.last_event = Some(Instant::now());
        let mut fields = stats_json(&s);
        fields["name"] = json!(t.name);
        out.event("progress", fields);
    }
    if t.completed_at.is_some() {
        if let Some(rule) = stop_rule(t, &s, rules) {
            t.stopped = true;
            out.event(
                "stopped",
                json!({
                    "info_hash": t.info_hash,
                    "rule": rule,
                    "uploaded": t.before.uploaded + s.uploaded,
                    "seconds": t.completed_at.map(|c| round3(c.elapsed().as_secs_f64())),
                }),
            );
        }
        return Ok(());
    }
    if t.last_progress.elapsed().as_secs_f64() >= timeout {
        let what = t.name.as_deref().unwrap_or(&t.info_hash);
        let mut tried = Vec::new();
        if !hints.is_empty() {
            tried.push(format!("magnet peers {}", join(hints)));
        }
        if !settings.peers.is_empty() {
            tried.push(format!("DHT via {}", join(&settings.peers)));
        }
        if tried.is_empty() {
            tried.push("no magnet peers and no --peers".into());
        }
        let msg = format!(
            "no progress on {what} for {timeout} s ({}; {} peers connected, {} addresses known, {} connection attempts failed)",
            tried.join(", "),
            s.peers,
            s.known_addrs,
            s.failed_connects
        );
        out.event("error", json!({"info_hash": t.info_hash, "message": msg}));
        return Err(Failure::new(Code::Incomplete, anyhow!(msg)).hint(
            "check that a seed is running and reachable (its magnet's x.pe, or --peers for the DHT); verified pieces are kept for the next run",
        ));
    }
    Ok(())
}

/// The `kind` field of an `error` event: `no-space`, `io` or `bad-metadata`.
fn error_kind(e: &TorrentError) -> &'static str {
    match e {
        TorrentError::NoSpace { .. } => "no-space",
        TorrentError::Io { .. } => "io",
        TorrentError::BadMetadata(_) => "bad-metadata",
    }
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
