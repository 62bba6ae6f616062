//! `p2pfile serve PATH...`: hash each path (or reuse the hash recorded for
//! unchanged files), seed it, print its magnet; serve until a signal, or
//! until the peers `--exit-after` / `--expect` ask for have completed
//! (exit 3 at `--deadline` if they have not). Reports each peer that
//! completes, and ends a `--json` stream with a `summary`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use p2pfile_engine::metainfo::InfoHash;
use p2pfile_engine::{Event, Source, Stats, Target};
use serde_json::json;
use tokio::sync::watch;

use super::magnet::{self, Prepared};
use super::{Signals, save_dht_nodes, start_session};
use crate::cli::ServeArgs;
use crate::config::{FileValues, Settings, parse_number};
use crate::error::{Code, Failure, from_engine};
use crate::metrics::Metrics;
use crate::output::Output;

/// One served path.
struct Seeded {
    path: String,
    name: String,
    info_hash: InfoHash,
    hashed: bool,
    stats: watch::Receiver<Stats>,
    /// Uploaded by earlier runs.
    uploaded_before: u64,
    /// Stopped serving (a changed file, or an error).
    stopped: bool,
}

impl Seeded {
    /// Bytes uploaded this run.
    fn uploaded(&self) -> u64 {
        self.stats.borrow().uploaded
    }
}

/// A host of `--expect`: an IP, or an IP and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expected {
    ip: IpAddr,
    port: Option<u16>,
}

impl Expected {
    fn matches(&self, peer: SocketAddr) -> bool {
        self.ip == peer.ip() && self.port.is_none_or(|p| p == peer.port())
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}", SocketAddr::new(self.ip, p)),
            None => write!(f, "{}", self.ip),
        }
    }
}

/// When serve stops by itself.
struct StopRules {
    exit_after: Option<usize>,
    expect: Vec<Expected>,
    deadline: Option<Duration>,
}

impl StopRules {
    fn resolve(args: &ServeArgs, file: &FileValues) -> Result<Self, Failure> {
        let exit_after = match file.pick(&args.exit_after, "exit-after") {
            None => None,
            Some(s) => Some(
                Some(parse_number(Some(s.clone()), "--exit-after", 0.0)?)
                    .filter(|n| *n >= 1.0 && n.fract() == 0.0)
                    .ok_or_else(|| {
                        Failure::usage(
                            anyhow!(
                                "{} is not a positive number of peers",
                                s.subject("--exit-after")
                            ),
                            "use a number such as 20",
                        )
                    })? as usize,
            ),
        };
        let expect = match file.pick(&args.expect, "expect-hosts") {
            None => Vec::new(),
            Some(s) => parse_expect(&s, &s.subject("--expect"))?,
        };
        let deadline = match file.pick(&args.deadline, "deadline") {
            None => None,
            Some(s) => {
                let secs = parse_number(Some(s.clone()), "--deadline", 0.0)?;
                if secs <= 0.0 {
                    return Err(Failure::usage(
                        anyhow!(
                            "{} is not a positive number of seconds",
                            s.subject("--deadline")
                        ),
                        "use a number such as 600",
                    ));
                }
                Some(Duration::from_secs_f64(secs))
            }
        };
        if deadline.is_some() && exit_after.is_none() && expect.is_empty() {
            return Err(Failure::usage(
                anyhow!("--deadline needs --exit-after or --expect"),
                "add --exit-after N or --expect HOST,... to say what must happen before the deadline",
            ));
        }
        Ok(Self {
            exit_after,
            expect,
            deadline,
        })
    }
}

/// `subject` names the value as the user wrote it (flag, variable or
/// config key), for messages.
fn parse_expect(s: &str, subject: &str) -> Result<Vec<Expected>, Failure> {
    let hosts: Vec<Expected> = s
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            if let Ok(a) = h.parse::<SocketAddr>() {
                return Ok(Expected {
                    ip: a.ip(),
                    port: Some(a.port()),
                });
            }
            h.parse::<IpAddr>()
                .map(|ip| Expected { ip, port: None })
                .map_err(|_| {
                    Failure::usage(
                        anyhow!("{subject}: entry {h:?} is not an IP or IP:PORT"),
                        "list the hosts that must complete, like 10.0.0.6,10.0.0.7:42070",
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    if hosts.is_empty() {
        return Err(Failure::usage(
            anyhow!("{subject} names no host"),
            "list the hosts that must complete, like 10.0.0.6,10.0.0.7:42070",
        ));
    }
    Ok(hosts)
}

/// A peer that finished one torrent.
struct Completion {
    peer: SocketAddr,
    info_hash: InfoHash,
    seconds: f64,
}

/// What the run did, for the `summary` event and the closing report.
struct Report {
    start: Instant,
    seeded: Vec<Seeded>,
    completions: Vec<Completion>,
    expect: Vec<Expected>,
    /// `--exit-after` or `--expect` was given: the run ends with a report.
    rules: bool,
}

impl Report {
    /// Peers (by listen address) that completed every served path.
    fn peers_done(&self) -> BTreeSet<SocketAddr> {
        let mut by_peer: BTreeMap<SocketAddr, BTreeSet<InfoHash>> = BTreeMap::new();
        for c in &self.completions {
            by_peer.entry(c.peer).or_default().insert(c.info_hash);
        }
        by_peer
            .into_iter()
            .filter(|(_, done)| !self.seeded.is_empty() && done.len() == self.seeded.len())
            .map(|(peer, _)| peer)
            .collect()
    }

    /// Hosts of `--expect` that have not completed every path.
    fn missing(&self) -> Vec<Expected> {
        let done = self.peers_done();
        self.expect
            .iter()
            .filter(|e| !done.iter().any(|p| e.matches(*p)))
            .copied()
            .collect()
    }

    /// Bytes uploaded this run, over every path.
    fn uploaded(&self) -> u64 {
        self.seeded.iter().map(Seeded::uploaded).sum()
    }

    fn summary(&self, out: &Output, code: u8) {
        let uploaded = self.uploaded();
        let torrents: Vec<_> = self
            .seeded
            .iter()
            .map(|s| {
                json!({"info_hash": s.info_hash.to_string(), "name": s.name, "path": s.path,
                       "hashed": s.hashed, "uploaded": s.uploaded()})
            })
            .collect();
        let completed: Vec<_> = self
            .completions
            .iter()
            .map(|c| {
                json!({"peer": c.peer.to_string(), "info_hash": c.info_hash.to_string(),
                       "seconds": round_ms(c.seconds)})
            })
            .collect();
        let missing: Vec<String> = self.missing().iter().map(ToString::to_string).collect();
        out.event(
            "summary",
            json!({"changed": uploaded > 0, "exit_code": code,
                   "seconds": round_ms(self.start.elapsed().as_secs_f64()), "uploaded": uploaded,
                   "torrents": torrents, "completed_peers": completed, "missing": missing}),
        );
    }

    /// The one line human mode prints on stderr when serve ends well.
    fn line(&self) -> String {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let (paths, peers) = (self.seeded.len(), self.peers_done().len());
        format!(
            "served {paths} path{} for {:.1} s: {peers} peer{} completed every path, {:.1} MiB uploaded",
            plural(paths),
            self.start.elapsed().as_secs_f64(),
            plural(peers),
            self.uploaded() as f64 / 1048576.0
        )
    }
}

fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

pub async fn run(args: ServeArgs, file: &FileValues, settings: Settings) -> Result<(), Failure> {
    let out = Output::new(settings.json);
    let mut report = Report {
        start: Instant::now(),
        seeded: Vec::new(),
        completions: Vec::new(),
        expect: Vec::new(),
        rules: false,
    };
    let result = serve(args, file, settings, &out, &mut report).await;
    let code = match &result {
        Ok(()) => 0,
        Err(f) => f.code as u8,
    };
    report.summary(&out, code);
    // The rollout's result, after the magnets on stdout; a seed stopped by
    // a signal has no rule to report on and ends as quietly as it ran.
    if result.is_ok() && report.rules && !out.is_json() {
        out.line(&report.line());
    }
    result
}

async fn serve(
    args: ServeArgs,
    file: &FileValues,
    mut settings: Settings,
    out: &Output,
    report: &mut Report,
) -> Result<(), Failure> {
    let mut signals = Signals::install()?;
    let rules = StopRules::resolve(&args, file)?;
    report.expect = rules.expect.clone();
    report.rules = rules.exit_after.is_some() || !rules.expect.is_empty();
    let torrent_out: Option<PathBuf> = magnet::torrent_out(&args.torrent_out, file);
    // Bound first, like the session below: a bad or taken address fails
    // before any hashing or writing.
    let metrics = Metrics::start(file.pick(&args.metrics, "metrics")).await?;
    let scanned = magnet::scan_paths(&args.paths, &settings).await?;
    settings.port = magnet::port_choice(&settings, &scanned);
    let mut bootstrap = magnet::remembered_dht_nodes(&settings)?
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect::<Vec<_>>();
    bootstrap.retain(|a| !settings.peers.contains(a));
    // Bind before hashing or writing anything: a taken port fails at once
    // and leaves no state database or --torrent-out directory behind.
    let session = start_session(&settings, &bootstrap).await?;
    let mut events = session.events().expect("a new session's events");
    let prepared = magnet::prepare(scanned).await?;
    let state = magnet::record(&settings, &prepared, session.local_addr().port())?;
    if let Some(dir) = &torrent_out {
        magnet::write_torrents(dir, &prepared)?;
    }
    for p in prepared {
        let id = session
            .add(
                Source::Info(p.info.clone()),
                Target::SeedScanned {
                    files: p.scan.files.clone(),
                    // A reused hash was trusted on sizes and mtimes alone.
                    check_pieces: !p.hashed,
                },
                settings.peers.clone(),
            )
            .map_err(from_engine)?;
        metrics.track(&session, id, &p.info.name);
        let magnet = p.magnet(session.local_addr());
        if out.is_json() {
            out.event("serving", p.event(&magnet));
        } else {
            out.line(&magnet.to_string());
        }
        report.seeded.push(seeded(&p, id, &session));
    }
    let deadline = rules.deadline.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let result = loop {
        tokio::select! {
            _ = signals.recv() => break Ok(()),
            _ = sleep_until(deadline) => break Err(deadline_failure(&rules, report)),
            Some(ev) = events.recv() => {
                on_event(ev, out, report);
                if let Some(done) = stop_rule_met(&rules, report) {
                    out.event("stopped", done);
                    break Ok(());
                }
                if report.seeded.iter().all(|s| s.stopped) {
                    break Err(Failure::new(
                        Code::Runtime,
                        anyhow!("nothing left to serve: every PATH stopped serving"),
                    )
                    .hint("run serve again to rehash changed files"));
                }
            }
            _ = tick.tick() => save_uploads(&state, &report.seeded),
        }
    };
    save_dht_nodes(&state, &session).await;
    // Stopping the torrents publishes their final counters; save after it.
    session.shutdown().await;
    save_uploads(&state, &report.seeded);
    result
}

fn seeded(p: &Prepared, id: InfoHash, session: &p2pfile_engine::Session) -> Seeded {
    Seeded {
        path: p.path(),
        name: p.info.name.clone(),
        info_hash: id,
        hashed: p.hashed,
        stats: session.watch_stats(id).expect("just added"),
        uploaded_before: p.uploaded_before,
        stopped: false,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn on_event(ev: p2pfile_engine::TorrentEvent, out: &Output, report: &mut Report) {
    let Some(s) = report
        .seeded
        .iter_mut()
        .find(|s| s.info_hash == ev.info_hash)
    else {
        return;
    };
    match ev.event {
        Event::PeerCompleted { addr, zone } => {
            let seconds = report.start.elapsed().as_secs_f64();
            tracing::info!("{addr} completed {}", s.path);
            let mut fields = json!({"peer": addr.to_string(), "info_hash": ev.info_hash.to_string(),
                                    "seconds": round_ms(seconds)});
            if let Some(zone) = zone {
                fields["zone"] = json!(zone);
            }
            out.event("peer_completed", fields);
            report.completions.push(Completion {
                peer: addr,
                info_hash: ev.info_hash,
                seconds,
            });
        }
        Event::SourceChanged { path } => {
            s.stopped = true;
            let what = if path.display().to_string() == s.path {
                "it".to_string()
            } else {
                s.path.clone()
            };
            tracing::warn!(
                "{} changed since it was hashed, so {what} is no longer served (info-hash {}); run serve again to rehash",
                path.display(),
                s.info_hash
            );
            out.event(
                "source_changed",
                json!({"path": s.path, "file": path.display().to_string(),
                       "info_hash": s.info_hash.to_string()}),
            );
        }
        Event::PeerBanned { addr, reason } => {
            crate::output::peer_banned(out, &ev.info_hash.to_string(), addr, reason);
        }
        // A torrent whose files vanished is reported; the others keep serving.
        Event::Failed { error } => {
            s.stopped = true;
            tracing::error!("{}: {error}", s.path);
        }
        _ => {}
    }
}

/// The `stopped` event's fields once `--exit-after` and `--expect` (those
/// given) are met; `None` while they are not, or when neither is given.
fn stop_rule_met(rules: &StopRules, report: &Report) -> Option<serde_json::Value> {
    if rules.exit_after.is_none() && rules.expect.is_empty() {
        return None;
    }
    let done = report.peers_done().len();
    if rules.exit_after.is_some_and(|n| done < n) || !report.missing().is_empty() {
        return None;
    }
    Some(match rules.exit_after {
        Some(n) if rules.expect.is_empty() => json!({"rule": "exit-after", "peers": n}),
        _ => {
            let hosts: Vec<String> = rules.expect.iter().map(ToString::to_string).collect();
            json!({"rule": "expect", "hosts": hosts, "peers": done})
        }
    })
}

/// Exit 3 at `--deadline`, naming how many peers completed and which
/// expected hosts did not.
fn deadline_failure(rules: &StopRules, report: &Report) -> Failure {
    let secs = rules.deadline.map_or(0.0, |d| d.as_secs_f64());
    let done = report.peers_done().len();
    let mut parts = Vec::new();
    if let Some(n) = rules.exit_after {
        parts.push(format!("{done} of {n} peers completed every path"));
    }
    let missing = report.missing();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        parts.push(format!(
            "{} of {} expected hosts did not complete every path: {}",
            missing.len(),
            rules.expect.len(),
            names.join(", ")
        ));
    }
    let hint = if missing.is_empty() {
        "check that the hosts ran download with this magnet and can reach this one, or raise --deadline"
    } else {
        "check that the missing hosts ran download with this magnet and can reach this one, or raise --deadline"
    };
    Failure::new(
        Code::Incomplete,
        anyhow!("deadline of {secs} s passed: {}", parts.join("; ")),
    )
    .hint(hint)
}

fn save_uploads(state: &crate::state::State, seeded: &[Seeded]) {
    for s in seeded {
        let total = s.uploaded_before + s.uploaded();
        if let Err(e) = state.set_served_uploaded(&s.path, total) {
            tracing::warn!(
                "cannot record upload totals in {}: {e:#}",
                state.path().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_hosts_match_by_ip_or_by_ip_and_port() {
        let hosts = parse_expect(" 10.0.0.6, 10.0.0.7:42070,", "--expect").unwrap();
        assert_eq!(hosts.len(), 2);
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(hosts[0].matches(peer("10.0.0.6:42099")));
        assert!(!hosts[0].matches(peer("10.0.0.60:42099")));
        assert!(hosts[1].matches(peer("10.0.0.7:42070")));
        assert!(!hosts[1].matches(peer("10.0.0.7:42071")));
        assert_eq!(hosts[1].to_string(), "10.0.0.7:42070");
        assert_eq!(hosts[0].to_string(), "10.0.0.6");
        assert!(parse_expect("host-a", "--expect").is_err());
        assert!(parse_expect(" , ", "--expect").is_err());
    }
}
