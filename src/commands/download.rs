//! `p2pfile download SOURCE...`: fetch magnets and .torrent files, all at
//! once, then optionally seed for a while.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::metainfo::Info;
use p2pfile_engine::{Event, Phase, Source, Stats, Target};
use serde_json::json;
use tokio::sync::watch;

use super::{merge_events, shutdown_signal, start_session};
use crate::cli::DownloadArgs;
use crate::config::{FileValues, Settings, parse_number};
use crate::error::{Code, Failure, from_engine};
use crate::output::{Output, progress_text, stats_json};

/// When to stop seeding after completion (0 turns a rule off).
struct SeedingRules {
    enabled: bool,
    time: f64,
    ratio: f64,
}

/// One source as it goes.
struct Track {
    label: String,
    name: Option<String>,
    stats: watch::Receiver<Stats>,
    started: Instant,
    last_progress: Instant,
    last_have: u64,
    completed_at: Option<Instant>,
    stopped: bool,
    last_event: Option<Instant>,
}

pub async fn run(args: DownloadArgs, file: &FileValues, settings: Settings) -> Result<(), Failure> {
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
    let hints: Vec<SocketAddr> = sources
        .iter()
        .flat_map(|s| match s {
            Source::Magnet(m) => m.peers.clone(),
            Source::Info(_) => Vec::new(),
        })
        .collect();
    let session = start_session(&settings, &hints).await?;
    let mut tracks = Vec::new();
    let mut handles = Vec::new();
    for (source, text) in sources.into_iter().zip(&args.sources) {
        let name = match &source {
            Source::Magnet(m) => m.name.clone(),
            Source::Info(i) => Some(i.name.clone()),
        };
        let h = session
            .add(
                source,
                Target::Download { dir: dir.clone() },
                settings.peers.clone(),
            )
            .map_err(from_engine)?;
        out.event(
            "started",
            json!({"info_hash": h.info_hash().to_string(), "name": name, "source": text, "dir": dir.display().to_string()}),
        );
        tracks.push(Track {
            label: h.info_hash().to_string(),
            name,
            stats: h.watch_stats(),
            started: Instant::now(),
            last_progress: Instant::now(),
            last_have: 0,
            completed_at: None,
            stopped: false,
            last_event: None,
        });
        handles.push(h);
    }
    let (mut events, mut stops) = merge_events(handles);
    let mut stops: Vec<Option<_>> = stops.drain(..).map(Some).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        if tracks.iter().all(|t| t.stopped) {
            break Ok(());
        }
        tokio::select! {
            _ = shutdown_signal() => {
                let all_done = tracks.iter().all(|t| t.completed_at.is_some());
                break if all_done { Ok(()) } else { Err(Failure::interrupted()) };
            }
            Some((i, ev)) = events.recv() => {
                if let Err(f) = on_event(&out, &mut tracks[i], ev, &dir, &rules) {
                    break Err(f);
                }
                if tracks[i].completed_at.is_some() && !rules.enabled && !tracks[i].stopped {
                    tracks[i].stopped = true;
                    stops[i].take().map(|s| s.send(()));
                }
            }
            _ = tick.tick() => {
                let mut lines = Vec::new();
                for (i, t) in tracks.iter_mut().enumerate() {
                    if let Err(f) = on_tick(&out, t, timeout, &rules, &settings, &hints) {
                        return finish(session, &out, Err(f)).await;
                    }
                    if t.stopped {
                        stops[i].take().map(|s| s.send(()));
                    } else {
                        lines.push(progress_text(t.name.as_deref().unwrap_or(&t.label), &t.stats.borrow()));
                    }
                }
                out.progress(&lines);
            }
        }
    };
    finish(session, &out, result).await
}

async fn finish(
    session: p2pfile_engine::Session,
    out: &Output,
    result: Result<(), Failure>,
) -> Result<(), Failure> {
    out.end_progress();
    session.shutdown().await;
    result
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
    let path = Path::new(text);
    let bytes = std::fs::read(path).map_err(|e| {
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
    let hash = t.label.clone();
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
            if !out.is_json() {
                out.line(&path.display().to_string());
            }
            if rules.enabled {
                out.event("seeding", json!({"info_hash": hash, "seeding_time": rules.time, "seeding_ratio": rules.ratio}));
            }
        }
        Event::Failed { message } => {
            out.event("error", json!({"info_hash": hash, "message": message}));
            return Err(Failure::new(Code::Runtime, anyhow!("download of {} failed: {message}", t.name.as_deref().unwrap_or(&hash)))
                .hint("free disk space or fix the directory's permissions, then run the same command again: verified pieces are kept"));
        }
        Event::PieceVerified { .. }
        | Event::HashFailed { .. }
        | Event::PeerConnected { .. }
        | Event::PeerDisconnected { .. } => {}
    }
    Ok(())
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
    if t.last_event
        .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        && s.phase != Phase::Seeding
    {
        t.last_event = Some(Instant::now());
        let mut fields = stats_json(&s);
        fields["name"] = json!(t.name);
        out.event("progress", fields);
    }
    if let Some(done) = t.completed_at {
        let elapsed = done.elapsed().as_secs_f64();
        let ratio = if s.total > 0 {
            s.uploaded as f64 / s.total as f64
        } else {
            f64::INFINITY
        };
        let rule = if rules.time > 0.0 && elapsed >= rules.time {
            Some("seeding-time")
        } else if rules.ratio > 0.0 && ratio >= rules.ratio {
            Some("seeding-ratio")
        } else {
            None
        };
        if let Some(rule) = rule {
            t.stopped = true;
            out.event("stopped", json!({"info_hash": t.label, "rule": rule, "uploaded": s.uploaded, "seconds": elapsed}));
        }
        return Ok(());
    }
    if t.last_progress.elapsed().as_secs_f64() >= timeout {
        let what = t.name.as_deref().unwrap_or(&t.label);
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
        out.event("error", json!({"info_hash": t.label, "message": msg}));
        return Err(Failure::new(Code::Incomplete, anyhow!(msg)).hint(
            "check that a seed is running and reachable (its magnet's x.pe, or --peers for the DHT); verified pieces are kept for the next run",
        ));
    }
    Ok(())
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
