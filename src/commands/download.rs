//! `p2pfile download SOURCE...`: fetch magnets and .torrent files, all at
//! once, then optionally seed until a rule says stop. Progress and
//! cumulative counters go to the state database as it runs, so a killed
//! download resumes and `status` tells where each one is.
//!
//! Reruns are offline: a completed download keeps its info dictionary and
//! the signature of its files (`file_signature`) in the state database. A
//! source whose `DIR/<name>` still has that signature is done without a
//! session (no socket, no DHT); one whose files changed is verified
//! against the info dictionary on disk first, and only what is missing
//! goes to the network. `--check` stops after those local steps. Every run
//! ends with one `summary` event (see [`Report`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use p2pfile_engine::builder;
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::metainfo::{Info, InfoHash};
use p2pfile_engine::{BanReason, Event, Phase, Source, Stats, Target, TorrentError};
use serde_json::json;
use tokio::sync::watch;

use super::{Signals, file_signature, open_state, save_dht_nodes, start_session};
use crate::cli::DownloadArgs;
use crate::config::{FileValues, Settings, parse_number};
use crate::error::{Code, Failure, from_engine};
use crate::metrics::Metrics;
use crate::output::{Output, round3, stats_json, with_zone};
use crate::state::{Download, State};

/// When to stop seeding after completion (0 turns a rule off).
struct SeedingRules {
    enabled: bool,
    time: f64,
    ratio: f64,
    until_idle: f64,
}

/// One source's entry in the final `summary` event.
#[derive(Default)]
struct Entry {
    source: String,
    info_hash: Option<String>,
    name: Option<String>,
    path: Option<PathBuf>,
    /// `downloaded`, `already-complete`, `verified`, `failed`,
    /// `incomplete` or `interrupted`; unset until known, then the exit
    /// code decides.
    result: Option<&'static str>,
    bytes: u64,
    downloaded: u64,
    seconds: Option<f64>,
    changed: bool,
}

/// What the run did to each source, for the `summary` event that ends
/// every `--json` run (success, failure, timeout, interrupt), so a play can
/// tell `changed` from the exit code and one line.
struct Report {
    started: Instant,
    entries: Vec<Entry>,
}

impl Report {
    fn new(sources: &[String]) -> Self {
        Self {
            started: Instant::now(),
            entries: sources
                .iter()
                .map(|s| Entry {
                    source: s.clone(),
                    ..Entry::default()
                })
                .collect(),
        }
    }

    fn seconds(&self) -> f64 {
        round_ms(self.started.elapsed().as_secs_f64())
    }

    fn emit(&self, out: &Output, result: &Result<(), Failure>) {
        let code = result.as_ref().err().map_or(0, |f| f.code as i32);
        let fallback = match code {
            0 | 3 => "incomplete",
            130 => "interrupted",
            _ => "failed",
        };
        let seconds = self.seconds();
        let sources: Vec<_> = self
            .entries
            .iter()
            .map(|e| {
                json!({
                    "source": e.source,
                    "info_hash": e.info_hash,
                    "name": e.name,
                    "path": e.path.as_ref().map(|p| p.display().to_string()),
                    "result": e.result.unwrap_or(fallback),
                    "changed": e.changed,
                    "bytes": e.bytes,
                    "downloaded": e.downloaded,
                    "seconds": e.seconds.unwrap_or(seconds),
                })
            })
            .collect();
        out.event(
            "summary",
            json!({
                "changed": self.entries.iter().any(|e| e.changed),
                "exit_code": code,
                "seconds": seconds,
                "downloaded": self.entries.iter().map(|e| e.downloaded).sum::<u64>(),
                "sources": sources,
            }),
        );
    }
}

fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// One source as it goes.
struct Track {
    /// The torrent's id in the session.
    id: InfoHash,
    info_hash: String,
    name: Option<String>,
    /// Its entry in the [`Report`].
    entry: usize,
    /// The info dictionary, once known (kept in the state database).
    info: Option<Arc<Info>>,
    /// The magnet's own peer hints (x.pe), named when it times out.
    hints: Vec<SocketAddr>,
    /// Peers that sent pieces failing their hash check.
    corrupt: BTreeSet<SocketAddr>,
    /// Peers the engine banned, and why (named when it times out).
    banned: BTreeMap<SocketAddr, BanReason>,
    /// `DIR/<name>` already held the content when checked.
    already_complete: bool,
    /// Found complete on disk before the session started (a rerun with
    /// `--seeding`): its `completed` and path were reported then.
    settled: bool,
    valid_pieces: usize,
    stats: watch::Receiver<Stats>,
    started: Instant,
    last_progress: Instant,
    last_have: u64,
    completed_at: Option<Instant>,
    last_upload: Instant,
    last_uploaded: u64,
    stopped: bool,
    failed: bool,
    /// Why it failed or stopped early, for `status`.
    reason: String,
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
        } else if !self.reason.is_empty() {
            "stopped"
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
            reason: if self.completed_at.is_some() {
                String::new()
            } else {
                self.reason.clone()
            },
        }
    }
}

/// A source whose info dictionary is known before any network, and what
/// the disk holds of it.
struct Local {
    info: Arc<Info>,
    /// `Some` when `DIR/<name>` is complete: `already-complete` (recorded
    /// signature matches) or `verified` (pieces checked now).
    complete: Option<&'static str>,
    valid_pieces: usize,
}

pub async fn run(args: DownloadArgs, file: &FileValues, settings: Settings) -> Result<(), Failure> {
    let out = Output::new(settings.json);
    let mut report = Report::new(&args.sources);
    let mut created = None;
    let result = download(args, file, settings, &out, &mut report, &mut created).await;
    if result.is_err()
        && let Some(top) = created
    {
        // A failed run leaves no empty directory of its own behind; one
        // holding a part (verified pieces, for the next run) stays.
        remove_empty_tree(&top);
    }
    report.emit(&out, &result);
    result
}

async fn download(
    args: DownloadArgs,
    file: &FileValues,
    settings: Settings,
    out: &Output,
    report: &mut Report,
    created: &mut Option<PathBuf>,
) -> Result<(), Failure> {
    let mut signals = Signals::install()?;
    let dir = file
        .pick(&args.dir.as_ref().map(|d| d.display().to_string()), "dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let check = file.flag(args.check, "check")?;
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
    // Bound before any directory or database is made, so a bad or taken
    // address leaves nothing behind; --check opens no socket at all.
    let metrics = Metrics::start(file.pick(&args.metrics, "metrics").filter(|_| !check)).await?;
    for (entry, source) in report.entries.iter_mut().zip(&sources) {
        let (hash, name) = source_identity(source);
        entry.info_hash = Some(hash.to_string());
        entry.name = name;
        if let Source::Info(i) = source {
            entry.bytes = i.total_length();
        }
    }
    refuse_clashes(&report.entries, &dir)?;
    let dir = if check {
        std::fs::canonicalize(&dir).unwrap_or(dir)
    } else {
        prepare_dir(&dir, created)?
    };
    for e in &mut report.entries {
        e.path = e.name.as_ref().map(|n| dir.join(n));
    }
    let state_existed = settings.state.exists();
    let state = if check && !state_existed {
        None
    } else {
        Some(open_state(&settings)?)
    };
    let dir_text = dir.display().to_string();

    // Local first: what the disk already holds needs no network.
    let locals = settle_locally(&sources, state.as_ref(), &dir, check, out, report).await?;
    if check {
        let missing: Vec<String> = report
            .entries
            .iter()
            .filter(|e| e.result.is_none())
            .map(|e| e.name.clone().unwrap_or_else(|| e.source.clone()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        return Err(Failure::new(
            Code::Incomplete,
            anyhow!("not complete in {}: {}", dir.display(), missing.join(", ")),
        )
        .hint("run the same download without --check to fetch what is missing"));
    }
    let state = state.expect("opened unless --check");
    let pending: Vec<usize> = (0..sources.len())
        .filter(|&i| rules.enabled || report.entries[i].result.is_none())
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    check_space(&dir, &pending, &locals, out)
        .await
        .inspect_err(|f| {
            for l in pending.iter().filter_map(|&i| locals[i].as_ref()) {
                if l.complete.is_none() {
                    fail_record(&state, &dir_text, l, &f.error.to_string());
                }
            }
        })?;

    let hints: Vec<Vec<SocketAddr>> = sources
        .iter()
        .map(|s| match s {
            Source::Magnet(m) => m.peers.clone(),
            Source::Info(_) => Vec::new(),
        })
        .collect();
    let mut bootstrap: Vec<SocketAddr> = pending.iter().flat_map(|&i| hints[i].clone()).collect();
    bootstrap.extend(
        state
            .dht_nodes()?
            .iter()
            .filter_map(|n| n.parse::<SocketAddr>().ok()),
    );
    let session = match start_session(&settings, &bootstrap).await {
        Ok(s) => s,
        Err(f) => {
            if !state_existed {
                // Nothing ran: leave no database behind for a bad --ip or a
                // taken --port.
                let path = state.path().to_path_buf();
                drop(state);
                remove_database(&path);
            }
            return Err(f);
        }
    };
    let mut events = session.events().expect("a new session's events");
    let mut tracks = Vec::new();
    let mut sources: Vec<Option<Source>> = sources.into_iter().map(Some).collect();
    for i in pending {
        let mut source = sources[i].take().expect("each source once");
        let mut peers = settings.peers.clone();
        if let (Source::Magnet(m), Some(local)) = (&source, &locals[i]) {
            // The recorded info dictionary: no metadata to wait for.
            peers.extend(&m.peers);
            source = Source::Info(local.info.clone());
        }
        let text = &report.entries[i].source;
        let name = report.entries[i].name.clone();
        let id = session
            .add(source, Target::download(dir.clone()), peers)
            .map_err(from_engine)?;
        metrics.track(&session, id, name.as_deref().unwrap_or_default());
        let info_hash = id.to_string();
        let before = state.download(&info_hash, &dir_text)?.unwrap_or_else(|| {
            Download::new(
                &info_hash,
                &dir_text,
                name.as_deref().unwrap_or_default(),
                "downloading",
            )
        });
        out.event(
            "started",
            json!({"info_hash": info_hash, "name": name, "source": text, "dir": dir_text}),
        );
        tracks.push(Track {
            id,
            info_hash,
            name,
            entry: i,
            info: locals[i].as_ref().map(|l| l.info.clone()),
            hints: hints[i].clone(),
            corrupt: BTreeSet::new(),
            banned: BTreeMap::new(),
            already_complete: false,
            settled: report.entries[i].result.is_some(),
            valid_pieces: 0,
            stats: session.watch_stats(id).expect("just added"),
            started: Instant::now(),
            last_progress: Instant::now(),
            last_have: 0,
            completed_at: None,
            last_upload: Instant::now(),
            last_uploaded: 0,
            stopped: false,
            failed: false,
            reason: String::new(),
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
                let outcome = on_event(out, t, ev.event, &dir, &rules, settings.zone.as_deref());
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
                    if let Err(f) = on_tick(out, t, timeout, &rules, &settings) {
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
    settle_tracks(&mut tracks, result.as_ref().err(), &state, &dir, report);
    result
}

/// Records how each networked source ended, in the state database (never
/// a stale `downloading`) and in the report.
fn settle_tracks(
    tracks: &mut [Track],
    failure: Option<&Failure>,
    state: &State,
    dir: &Path,
    report: &mut Report,
) {
    let dir_text = dir.display().to_string();
    for t in tracks {
        if t.completed_at.is_none()
            && let Some(f) = failure
        {
            // Never a stale `downloading`: say why this run left it.
            if f.code == Code::Interrupted {
                t.reason = "interrupted".into();
            } else {
                t.failed = true;
                if t.reason.is_empty() {
                    t.reason = format!("stopped because another source failed: {}", f.error);
                }
            }
        }
        save(state, t, dir);
        let s = t.stats.borrow().clone();
        let started = report.started;
        let e = &mut report.entries[t.entry];
        e.seconds = t
            .completed_at
            .map(|c| round_ms(c.duration_since(started).as_secs_f64()));
        e.name = t.name.clone().or(e.name.take());
        e.path = e.name.as_ref().map(|n| dir.join(n));
        e.bytes = if s.total > 0 { s.total } else { e.bytes };
        e.downloaded = s.downloaded;
        if t.completed_at.is_some() {
            e.changed = s.downloaded > 0 || !t.already_complete;
            if e.result.is_none() || e.changed {
                e.result = Some(if e.changed { "downloaded" } else { "verified" });
            }
            if let Some(info) = &t.info
                && let Err(e) = record_complete(state, &dir_text, info)
            {
                tracing::warn!("cannot record {} as complete: {e:#}", info.name);
            }
        } else if s.downloaded > 0 {
            // Pieces went into the part even though the run failed.
            e.changed = true;
        }
    }
}

/// Settles every source whose info dictionary is known here (a .torrent,
/// or a magnet the state database recorded) from the disk alone: complete
/// ones get their result and are recorded (unless `check`); the rest, and
/// magnets never seen, are left for the network.
async fn settle_locally(
    sources: &[Source],
    state: Option<&State>,
    dir: &Path,
    check: bool,
    out: &Output,
    report: &mut Report,
) -> Result<Vec<Option<Local>>, Failure> {
    let dir_text = dir.display().to_string();
    let mut locals: Vec<Option<Local>> = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let (hash, _) = source_identity(source);
        let info = match source {
            Source::Info(info) => Some(info.clone()),
            Source::Magnet(_) => state
                .map(|s| s.known_info(&hash.to_string()))
                .transpose()?
                .flatten()
                .and_then(|raw| Info::from_bytes(&raw).ok())
                .filter(|info| info.info_hash() == hash)
                .map(Arc::new),
        };
        let Some(info) = info else {
            locals.push(None);
            continue;
        };
        let local = inspect(state, dir, info.clone()).await?;
        let seconds = report.seconds();
        let e = &mut report.entries[i];
        e.name = Some(info.name.clone());
        e.path = Some(dir.join(&info.name));
        e.bytes = info.total_length();
        if let Some(result) = local.complete {
            e.result = Some(result);
            e.seconds = Some(seconds);
            let path = dir.join(&info.name);
            if result == "verified" {
                out.note(&format!(
                    "{} was already complete (verified {} pieces, nothing downloaded)",
                    path.display(),
                    local.valid_pieces
                ));
            }
            if let (Some(state), false) = (state, check) {
                record_complete(state, &dir_text, &info)?;
                // As a download that finished: scripts waiting for
                // `completed` work the same on a rerun.
                out.event(
                    "completed",
                    json!({
                        "info_hash": info.info_hash().to_string(),
                        "name": info.name,
                        "path": path.display().to_string(),
                        "bytes": info.total_length(),
                        "downloaded": 0,
                        "seconds": seconds,
                        "result": result,
                    }),
                );
            }
            if !out.is_json() {
                out.line(&path.display().to_string());
            }
        }
        locals.push(Some(local));
    }
    Ok(locals)
}

/// The info-hash and the name (when known) a source will download.
fn source_identity(source: &Source) -> (InfoHash, Option<String>) {
    match source {
        Source::Magnet(m) => (m.info_hash, m.name.clone()),
        Source::Info(i) => (i.info_hash(), Some(i.name.clone())),
    }
}

/// Two sources that would share `DIR/<name>` (or are the same torrent)
/// would write one part file: refuse before any work.
fn refuse_clashes(entries: &[Entry], dir: &Path) -> Result<(), Failure> {
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for e in entries {
        if let Some(h) = &e.info_hash
            && !hashes.insert(h.clone())
        {
            return Err(Failure::usage(
                anyhow!("{} is given twice (info-hash {h})", e.source),
                "give each source once",
            ));
        }
        if let Some(n) = &e.name
            && !names.insert(n.clone())
        {
            return Err(Failure::usage(
                anyhow!(
                    "two sources are named {n:?}: both would be written to {}",
                    dir.join(n).display()
                ),
                "download them in two runs with different --dir",
            ));
        }
    }
    Ok(())
}

/// Creates `dir` (remembering the topmost directory this run created, to
/// remove it again if the run fails) and checks that files can be made
/// in it; returns its canonical path.
fn prepare_dir(dir: &Path, created: &mut Option<PathBuf>) -> Result<PathBuf, Failure> {
    let unusable = |e: std::io::Error, what: &str| {
        Failure::usage(
            anyhow!(e).context(format!(
                "cannot {what} download directory {}",
                dir.display()
            )),
            "pass --dir with a writable directory",
        )
    };
    *created = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .last()
        .map(Path::to_path_buf);
    std::fs::create_dir_all(dir).map_err(|e| unusable(e, "create"))?;
    let probe = dir.join(format!(".p2pfile-probe-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| unusable(e, "write in"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

/// Removes `top` when no file lies below it (directories only).
fn remove_empty_tree(top: &Path) {
    fn has_files(p: &Path) -> bool {
        match std::fs::read_dir(p) {
            Ok(entries) => entries
                .flatten()
                .any(|e| !e.file_type().is_ok_and(|t| t.is_dir()) || has_files(&e.path())),
            Err(_) => true,
        }
    }
    if !has_files(top) {
        let _ = std::fs::remove_dir_all(top);
    }
}

/// Removes a state database this run created, with its WAL files.
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// What the disk holds of a source whose info is known: the recorded
/// signature when it still matches, else the pieces checked now.
async fn inspect(state: Option<&State>, dir: &Path, info: Arc<Info>) -> Result<Local, Failure> {
    let hash = info.info_hash().to_string();
    let dir_text = dir.display().to_string();
    let recorded = match state {
        Some(s) => s
            .download(&hash, &dir_text)?
            .filter(|d| d.state == "complete" || d.state == "seeding")
            .map(|_| s.download_files(&hash, &dir_text))
            .transpose()?
            .filter(|f| !f.is_empty()),
        None => None,
    };
    let target = dir.join(&info.name);
    let (dir, check_info) = (dir.to_path_buf(), info.clone());
    let check = tokio::task::spawn_blocking(move || {
        let signature = builder::scan(&target).ok().map(|s| file_signature(&s));
        if recorded.is_some() && recorded == signature {
            return None;
        }
        Some(p2pfile_engine::verify_target(&dir, &check_info))
    })
    .await
    .expect("check task panicked");
    Ok(match check {
        None => Local {
            complete: Some("already-complete"),
            valid_pieces: info.piece_count(),
            info,
        },
        Some(c) => Local {
            complete: c.complete.then_some("verified"),
            valid_pieces: c.valid_pieces,
            info,
        },
    })
}

/// Records a download as complete, with its info dictionary and the
/// signature of its files now, so the next run needs no network.
fn record_complete(state: &State, dir: &str, info: &Info) -> Result<(), Failure> {
    let hash = info.info_hash().to_string();
    let mut d = state
        .download(&hash, dir)?
        .unwrap_or_else(|| Download::new(&hash, dir, &info.name, "complete"));
    if d.state != "seeding" {
        d.state = "complete".into();
    }
    d.name = info.name.clone();
    d.total = info.total_length();
    d.have = d.total;
    d.reason.clear();
    state.save_download(&d)?;
    let target = Path::new(dir).join(&info.name);
    let signature = builder::scan(&target)
        .map(|s| file_signature(&s))
        .unwrap_or_default();
    state.set_download_content(&hash, dir, info.as_bytes(), &signature)?;
    Ok(())
}

/// Records a source that failed before it reached the network.
fn fail_record(state: &State, dir: &str, local: &Local, reason: &str) {
    let hash = local.info.info_hash().to_string();
    let mut d = state
        .download(&hash, dir)
        .ok()
        .flatten()
        .unwrap_or_else(|| Download {
            total: local.info.total_length(),
            ..Download::new(&hash, dir, &local.info.name, "")
        });
    d.state = "failed".into();
    d.reason = reason.into();
    if let Err(e) = state.save_download(&d) {
        tracing::warn!("cannot record {} as failed: {e:#}", d.name);
    }
}

/// Refuses to pull what cannot fit in `dir`'s file system, before any
/// network or disk work, for the sources whose info is known (a magnet's
/// is checked by the engine as soon as its metadata arrives). The sum of
/// the sizes is enough when it fits; otherwise the parts of earlier runs
/// are counted too.
async fn check_space(
    dir: &Path,
    pending: &[usize],
    locals: &[Option<Local>],
    out: &Output,
) -> Result<(), Failure> {
    let infos: Vec<Arc<Info>> = pending
        .iter()
        .filter_map(|&i| locals[i].as_ref())
        .filter(|l| l.complete.is_none())
        .map(|l| l.info.clone())
        .collect();
    let Some(free) = p2pfile_engine::storage::free_space(dir) else {
        return Ok(());
    };
    if infos.iter().map(|i| i.total_length()).sum::<u64>() <= free {
        return Ok(());
    }
    let d = dir.to_path_buf();
    let need: u64 = tokio::task::spawn_blocking(move || {
        infos
            .iter()
            .map(|i| p2pfile_engine::bytes_to_write(&d, i))
            .sum()
    })
    .await
    .expect("space task panicked");
    if need <= free {
        return Ok(());
    }
    Err(no_space(out, None, dir, need, free))
}

/// The failure (and `error` event) for a download that does not fit.
fn no_space(out: &Output, info_hash: Option<&str>, dir: &Path, need: u64, free: u64) -> Failure {
    let msg = format!(
        "not enough space in {}: needs {}, {} free",
        dir.display(),
        human_bytes(need),
        human_bytes(free)
    );
    out.event(
        "error",
        json!({"info_hash": info_hash, "message": msg, "kind": "no-space", "need": need, "free": free}),
    );
    Failure::new(Code::Runtime, anyhow!(msg)).hint(
        "free disk space or pass --dir on a larger file system, then run the same command again",
    )
}

/// `12.3 MiB`, for messages.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
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
    zone: Option<&str>,
) -> Result<(), Failure> {
    let hash = t.info_hash.clone();
    match ev {
        Event::Metadata {
            name,
            total,
            pieces,
            info,
        } => {
            t.info = Some(info);
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
            already_complete,
        } => {
            t.already_complete = already_complete;
            t.valid_pieces = valid_pieces;
            out.event("checked", json!({"info_hash": hash, "valid_pieces": valid_pieces, "valid_bytes": valid_bytes, "already_complete": already_complete}));
        }
        Event::Completed => {
            let s = t.stats.borrow().clone();
            t.completed_at = Some(Instant::now());
            t.last_upload = Instant::now();
            let name = t.name.clone().unwrap_or_default();
            let path = dir.join(&name);
            out.progress_done(&hash);
            // Found complete before seeding it: reported once already.
            if !t.settled {
                let fields = json!({
                    "info_hash": hash,
                    "name": name,
                    "path": path.display().to_string(),
                    "bytes": s.total,
                    "downloaded": s.downloaded,
                    "seconds": (t.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                });
                out.event("completed", with_zone(fields, zone, &s));
                if t.already_complete && s.downloaded == 0 {
                    out.note(&format!(
                        "{} was already complete (verified {} pieces, nothing downloaded)",
                        path.display(),
                        t.valid_pieces
                    ));
                }
                if !out.is_json() {
                    out.line(&path.display().to_string());
                }
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
            t.reason = error.to_string();
            if let TorrentError::NotEnoughSpace { need, free, .. } = error {
                let f = no_space(out, Some(&hash), dir, need, free);
                t.reason = f.error.to_string();
                return Err(f);
            }
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
                TorrentError::NotEnoughSpace { .. } => unreachable!("returned above"),
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
        Event::Replaced { from, to } => {
            tracing::warn!(
                "{} was in the way of the download, so it was moved to {}",
                from.display(),
                to.display()
            );
            out.event(
                "replaced",
                json!({"info_hash": hash, "path": from.display().to_string(),
                       "moved_to": to.display().to_string()}),
            );
        }
        Event::HashFailed { peers, .. } => t.corrupt.extend(peers),
        Event::PeerBanned { addr, reason } => {
            t.banned.insert(addr, reason);
            crate::output::peer_banned(out, &hash, addr, reason);
        }
        Event::PeerConnected { .. }
        | Event::PeerDisconnected { .. }
        | Event::ExtensionsReady { .. }
        | Event::ExtensionMessage { .. }
        | Event::PeerCompleted { .. }
        | Event::SourceChanged { .. }
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
        let mut fields = with_zone(stats_json(&s), settings.zone.as_deref(), &s);
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
        if !t.hints.is_empty() {
            tried.push(format!("magnet peers {}", join(&t.hints)));
        }
        if !settings.peers.is_empty() {
            tried.push(format!("DHT via {}", join(&settings.peers)));
        }
        if tried.is_empty() {
            tried.push("no magnet peers and no --peers".into());
        }
        let mut msg = format!(
            "no progress on {what} for {timeout} s ({}; {}, {}, {})",
            tried.join(", "),
            count(s.peers, "peer connected", "peers connected"),
            count(s.known_addrs, "address known", "addresses known"),
            count(
                s.failed_connects as usize,
                "connection attempt failed",
                "connection attempts failed"
            ),
        );
        let corrupt: Vec<SocketAddr> = t.corrupt.iter().copied().collect();
        let hint = if corrupt.is_empty() {
            "check that a seed is running and reachable (its magnet's x.pe, or --peers for the DHT); verified pieces are kept for the next run".to_string()
        } else {
            msg.push_str(&format!(
                "; corrupt pieces (failing their hash check) came from {}",
                join(&corrupt)
            ));
            format!(
                "the seed at {} serves data that does not match the torrent (its files probably changed after it hashed them): restart serve there or use another seed; verified pieces are kept for the next run",
                join(&corrupt)
            )
        };
        if !t.banned.is_empty() {
            msg.push_str(&format!("; banned: {}", banned_text(&t.banned)));
        }
        t.reason = msg.clone();
        let banned: Vec<_> = t
            .banned
            .iter()
            .map(|(a, r)| json!({"peer": a.to_string(), "reason": r.as_str()}))
            .collect();
        out.event(
            "error",
            json!({"info_hash": t.info_hash, "message": msg, "kind": "timeout", "corrupt_peers": corrupt.iter().map(|a| a.to_string()).collect::<Vec<_>>(), "banned_peers": banned}),
        );
        return Err(Failure::new(Code::Incomplete, anyhow!(msg)).hint(hint));
    }
    Ok(())
}

/// The `kind` field of an `error` event: `no-space`, `io` or `bad-metadata`.
fn error_kind(e: &TorrentError) -> &'static str {
    match e {
        TorrentError::NoSpace { .. } => "no-space",
        TorrentError::Io { .. } => "io",
        TorrentError::BadMetadata(_) => "bad-metadata",
        TorrentError::NotEnoughSpace { .. } => "no-space",
    }
}

/// `127.0.0.5 (corrupt-piece), 127.0.0.9 (request-flood)`: one entry per
/// IP (a ban covers every port of it), the first reason seen.
fn banned_text(banned: &BTreeMap<SocketAddr, BanReason>) -> String {
    let mut by_ip: BTreeMap<std::net::IpAddr, BanReason> = BTreeMap::new();
    for (addr, reason) in banned {
        by_ip.entry(addr.ip()).or_insert(*reason);
    }
    by_ip
        .iter()
        .map(|(ip, r)| format!("{ip} ({r})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1 peer connected`, `2 peers connected`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
