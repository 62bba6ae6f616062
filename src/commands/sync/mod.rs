//! `p2pfile sync DIR`: keep a folder in step with its peers, both ways.
//!
//! The pieces meet here: the folder key (`DIR/.p2pfile/key`), the index in
//! the state database, the scan and the plan (`crate::sync`), the engine
//! and the output.
//!
//! - Peers meet in the folder's rendezvous swarm, whose info-hash is derived
//!   from the key, and talk over the `p2pfile_sync` extension: a hello that
//!   proves the key, then their indexes (`crate::sync::protocol`).
//! - Contents move in packs (`crate::sync::pack`), each in a keyed swarm:
//!   every peer that holds a pack seeds it when asked (`want`), every peer
//!   that fetches it serves the pieces it has, and pieces found on this
//!   machine under any name are reused by hash.
//! - Fetched content lands in `DIR/.p2pfile/tmp/` and is renamed into place
//!   only when complete and verified; what it replaces goes to the trash.
//!
//! Files: `mod.rs` the run and its event loop; `options.rs` settings;
//! `keys.rs` the folder key and checks; `peers.rs` the rendezvous swarm and
//! messages; `changes.rs` scans, the plan carried out, records and events;
//! `transfer.rs` packs fetched and seeded.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use p2pfile_engine::metainfo::InfoHash;
use p2pfile_engine::{
    AddTorrent, Event, PieceSource, Session, SessionConfig, Source, Target, TorrentError,
    TorrentOptions,
};
use serde_json::json;
use tokio::sync::mpsc;

use super::{Signals, open_state};

mod changes;
mod keys;
mod options;
mod peers;
mod transfer;

use crate::cli::SyncArgs;
use crate::config::{FileValues, Settings, parse_number};
use crate::error::{Code, Failure, from_engine};
use crate::output::Output;
use crate::state::State;
use crate::sync::apply::{ApplyError, FolderFs, set_mode_and_mtime};
use crate::sync::discovery::{DISCOVERY_PORT, Discovery, DiscoveryConfig};
use crate::sync::folder::{Folder, Mode};
use crate::sync::index::{FileRecord, Index, Kind, RelPath};
use crate::sync::key::FolderKey;
use crate::sync::pack::{self, Pack, hex};
use crate::sync::plan::Action;
use crate::sync::protocol::{self, EXTENSION, Message};
use crate::sync::scan::{self, FileHasher};
use crate::sync::version::{DeviceId, VersionVector};
use changes::*;
pub use keys::show_keys;
use keys::*;
use options::*;
use transfer::*;

/// What an interrupted run left in `DIR/.p2pfile/tmp` goes after this long
/// untouched (Syncthing keeps its temporary files a day too).
const TMP_KEEP: Duration = Duration::from_secs(24 * 3600);
/// A folder that keeps changing is scanned at least this often.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);
/// A changed file is scanned this long after the last event about it, so
/// a save in several writes is one change.
const DEBOUNCE: Duration = Duration::from_millis(200);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What this run did, for the `summary` event.
#[derive(Default)]
struct Summary {
    added: u64,
    changed: u64,
    deleted: u64,
    conflicts: u64,
    failed: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// One running sync.
struct Run {
    folder: Folder,
    fs: FolderFs,
    folder_id: String,
    session: Session,
    state: State,
    out: Output,
    rendezvous: InfoHash,
    /// Rendezvous connections that proved the key: address → device.
    conns: HashMap<SocketAddr, DeviceId>,
    /// Packs being fetched, by pack id.
    fetches: HashMap<[u8; 20], Fetch>,
    /// Packs seeded, by pack id.
    seeds: HashMap<[u8; 20], Seed>,
    /// Pack torrents by torrent id: pack id, and whether it is a seed.
    torrents: HashMap<InfoHash, ([u8; 20], bool)>,
    summary: Summary,
    /// Conflict losers to move aside (path → conflict name) when the
    /// winner arrives.
    conflicts_pending: HashMap<RelPath, RelPath>,
    /// Records applied but not yet in the state database.
    unsaved: Vec<FileRecord>,
    /// Rows of the sync table not yet in the state database.
    status_rows: Vec<StatusRow>,
    /// The plan must be made again (an index arrived, a file changed).
    replan: bool,
    /// The disk must be scanned again (a file changed under a plan).
    rescan: bool,
    started: Instant,
}

pub async fn run(args: SyncArgs, file: &FileValues, settings: Settings) -> Result<(), Failure> {
    let mut signals = Signals::install()?;
    let opts = Options::resolve(&args, file)?;
    let dir = folder_dir(&args.dir)?;
    let fs = FolderFs::new(&dir);
    let state = open_state(&settings)?;
    let key = prepare_folder(&fs, &state, file.pick(&args.key, "key").as_deref())?;
    let folder_id = key.folder_id().to_string();
    let device = DeviceId(state.device_id()?);
    let mut local = Index::new();
    for bytes in state.sync_records(&folder_id)? {
        match FileRecord::decode(&bytes) {
            Ok(r) => {
                local.insert(r);
            }
            Err(e) => tracing::warn!(
                "a stored record of {} is unreadable ({e}); the scan rebuilds it",
                dir.display()
            ),
        }
    }
    let mut folder = Folder::new(key.clone(), device, opts.mode, local, &dir);
    state.save_sync_folder(
        &folder_id,
        &dir.display().to_string(),
        folder.mode().name(key.can_write()),
    )?;
    let out = Output::new(settings.json);

    let session = Session::start(SessionConfig {
        ip: settings.ip,
        port: settings.port.clone(),
        bootstrap: settings.peers.clone(),
        dht: true,
        upload_limit: settings.upload_limit,
        download_limit: settings.download_limit,
        extensions: vec![EXTENSION.to_string()],
        zone: settings.zone.clone(),
    })
    .await
    .map_err(from_engine)?;
    let mut events = session.events().expect("a new session's events");
    let rendezvous = InfoHash(key.swarm_hash([0u8; 20]));
    let mut peers = settings.peers.clone();
    peers.extend(
        state
            .sync_peers(&folder_id)?
            .iter()
            .filter_map(|p| p.parse::<SocketAddr>().ok()),
    );
    peers.retain(|p| *p != session.local_addr());
    session
        .add_torrent(AddTorrent {
            source: Source::Magnet(p2pfile_engine::magnet::Magnet {
                info_hash: rendezvous,
                name: None,
                peers,
            }),
            target: Target::download(fs.tmp_dir()),
            peers: Vec::new(),
            options: TorrentOptions {
                swarm_hash: None,
                metadata: false,
                dht: true,
            },
        })
        .map_err(from_engine)?;

    // The first scan, before anything is announced.
    let changed = scan_folder(&fs, &folder, device).await?;
    // Saved as stored (signed where we sign): read-only keys keep their own
    // view of the disk too.
    let stored = folder.local_changes(changed, &dir);
    save_records(&state, &folder_id, &stored);

    let addr = session.local_addr();
    let name = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let join_key = if key.can_write() {
        key.to_string()
    } else {
        key.read_only().to_string()
    };
    if out.is_json() {
        out.event(
            "folder",
            json!({"folder": folder_id, "name": name, "path": dir.display().to_string(), "device": device.to_string(),
                   "address": addr.to_string(), "mode": folder.mode().name(key.can_write()), "files": folder.local().len()}),
        );
    } else if !opts.once {
        out.line(&format!(
            "folder '{name}' key {join_key}   join with: p2pfile sync DIR --key {join_key} --peers {addr}"
        ));
    }

    let mut discovery = if opts.discovery_port == 0 {
        None
    } else {
        let mut config = DiscoveryConfig::new(key.clone(), device, addr.port());
        config.bind_ip = settings.ip;
        config.port = opts.discovery_port;
        match Discovery::start(config).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!("LAN discovery is off ({e}); peers come from --peers and the DHT");
                None
            }
        }
    };

    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel::<()>();
    let _watcher = if opts.once {
        None
    } else {
        Some(watch(&dir, watch_tx)?)
    };

    let mut run = Run {
        folder,
        fs,
        folder_id,
        session,
        state,
        out,
        rendezvous,
        conns: HashMap::new(),
        fetches: HashMap::new(),
        seeds: HashMap::new(),
        torrents: HashMap::new(),
        summary: Summary::default(),
        conflicts_pending: HashMap::new(),
        unsaved: Vec::new(),
        status_rows: Vec::new(),
        replan: false,
        rescan: false,
        started: Instant::now(),
    };
    let result = run
        .event_loop(
            &opts,
            &mut events,
            &mut watch_rx,
            &mut discovery,
            &mut signals,
        )
        .await;
    if let Some(d) = discovery {
        d.shutdown().await;
    }
    run.finish(&opts, &result).await;
    run.session.shutdown().await;
    result
}

/// A watcher on the folder that says "something changed" (our own
/// `.p2pfile/` aside).
fn watch(dir: &Path, tx: mpsc::UnboundedSender<()>) -> Result<notify::RecommendedWatcher, Failure> {
    use notify::Watcher;
    let private = dir.join(crate::sync::index::PRIVATE_DIR);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
        let Ok(ev) = res else {
            // An overflowed queue and the like: say "changed", the scan
            // finds out what.
            let _ = tx.send(());
            return;
        };
        // Reading a file is no change (a build reading its sources, a
        // checksum run): without this filter, a reader kept postponing
        // the scan (measured: a file copied in while another process
        // polled the folder waited 5 s instead of 0.4 s).
        // A file closed after being open for writing is a change, though:
        // writes through a memory map are reported by nothing else.
        let read_only = match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
            EventKind::Access(_) => true,
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => true,
            _ => false,
        };
        if !read_only && ev.paths.iter().any(|p| !p.starts_with(&private)) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| {
        Failure::new(
            Code::Runtime,
            anyhow!(e).context("cannot watch the folder for changes"),
        )
        .hint("raise fs.inotify.max_user_instances, or use --once from cron")
    })?;
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .map_err(|e| {
            Failure::new(
                Code::Runtime,
                anyhow!(e).context(format!("cannot watch {}", dir.display())),
            )
            .hint("raise fs.inotify.max_user_watches, or use --once from cron")
        })?;
    Ok(watcher)
}

impl Run {
    async fn event_loop(
        &mut self,
        opts: &Options,
        events: &mut mpsc::UnboundedReceiver<p2pfile_engine::TorrentEvent>,
        watch_rx: &mut mpsc::UnboundedReceiver<()>,
        discovery: &mut Option<Discovery>,
        signals: &mut Signals,
    ) -> Result<(), Failure> {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_progress = Instant::now();
        let mut last_rescan = Instant::now();
        let mut last_trash = None::<Instant>;
        let mut changed_at: Option<Instant> = None;
        let mut first_change: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = signals.recv() => {
                    return if opts.once && !self.in_step(opts) { Err(Failure::interrupted()) } else { Ok(()) };
                }
                Some(ev) = events.recv() => self.on_event(ev).await?,
                Some(()) = watch_rx.recv() => {
                    if first_change.is_none() {
                        tracing::debug!("the folder changed");
                        first_change = Some(Instant::now());
                    }
                    changed_at = Some(Instant::now());
                }
                Some(found) = async { match discovery { Some(d) => d.next().await, None => std::future::pending().await } } => {
                    tracing::debug!(device = %found.device, addr = %found.addr, "found on the LAN");
                    let _ = self.session.add_peers(self.rendezvous, vec![found.addr]).await;
                }
                _ = tick.tick() => {
                    // Quiet for DEBOUNCE, or changing for DEBOUNCE_MAX: a file
                    // written for minutes is still announced as it goes.
                    let due = changed_at.is_some_and(|t| t.elapsed() >= DEBOUNCE)
                        || first_change.is_some_and(|t| t.elapsed() >= DEBOUNCE_MAX);
                    if due || self.rescan || (!opts.once && last_rescan.elapsed() >= opts.rescan) {
                        changed_at = None;
                        first_change = None;
                        self.rescan = false;
                        last_rescan = Instant::now();
                        self.scan_and_announce().await?;
                    }
                    if self.replan {
                        self.replan = false;
                        self.carry_out_plan().await?;
                    }
                    self.expire_seeds().await;
                    self.nudge_fetches().await;
                    if last_trash.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                        last_trash = Some(Instant::now());
                        if let Err(e) = self.fs.expire_tmp(TMP_KEEP, SystemTime::now()) {
                            tracing::debug!("tmp: {e}");
                        }
                        if let Err(e) = self.fs.expire_trash(opts.trash_keep, SystemTime::now()) {
                            tracing::debug!("trash: {e}");
                        }
                    }
                    if last_progress.elapsed() >= Duration::from_secs(1) {
                        last_progress = Instant::now();
                        self.progress();
                    }
                    if opts.once {
                        if self.in_step(opts) {
                            return Ok(());
                        }
                        if self.started.elapsed() >= opts.timeout {
                            return Err(self.not_in_step(opts));
                        }
                    }
                }
            }
        }
    }

    /// Whether `--once` is done: enough peers, their whole indexes, nothing
    /// in flight, and every peer in step with us.
    fn in_step(&self, opts: &Options) -> bool {
        let peers = self.folder.peers();
        peers.len() >= opts.expect
            && peers.values().all(|p| p.complete)
            && self.fetches.is_empty()
            && !self.replan
            && !self.rescan
            && self.folder.behind().is_empty()
    }

    fn not_in_step(&self, opts: &Options) -> Failure {
        let secs = opts.timeout.as_secs_f64();
        let peers = self.folder.peers();
        if peers.len() < opts.expect {
            let msg = format!(
                "found {} of {} expected peers of the folder in {secs} s",
                peers.len(),
                opts.expect
            );
            self.out.event("error", json!({"message": msg}));
            return Failure::new(Code::Incomplete, anyhow!(msg))
                .hint("start `p2pfile sync` with the folder key on the peers, and pass --peers IP:PORT where broadcast does not reach");
        }
        let behind = self.folder.behind();
        let mut by_peer: HashMap<DeviceId, Vec<String>> = HashMap::new();
        for (d, p) in &behind {
            by_peer.entry(*d).or_default().push(p.to_string());
            let _ = self.state.set_sync_status(
                &self.folder_id,
                &d.to_string(),
                p.as_str(),
                "behind",
                "",
            );
        }
        let mut parts: Vec<String> = by_peer
            .iter()
            .map(|(d, paths)| {
                let shown: Vec<_> = paths.iter().take(5).cloned().collect();
                let more = paths.len().saturating_sub(5);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!("peer {d}: {}{more}", shown.join(", "))
            })
            .collect();
        for f in self.fetches.values() {
            for r in &f.records {
                parts.push(format!("fetching {}", r.path));
            }
        }
        parts.sort();
        let msg = format!("not in step after {secs} s: {}", parts.join("; "));
        self.out.event(
            "error",
            json!({"message": msg, "behind": behind.iter().map(|(d, p)| json!({"peer": d.to_string(), "path": p.to_string()})).collect::<Vec<_>>()}),
        );
        Failure::new(Code::Incomplete, anyhow!(msg))
            .hint("run it again, or raise --timeout; what arrived is kept")
    }

    /// The `summary` event (`--once`) and a closing line.
    async fn finish(&mut self, opts: &Options, result: &Result<(), Failure>) {
        let seeds: Vec<[u8; 20]> = self.seeds.keys().copied().collect();
        for pack in seeds {
            self.drop_seed(pack).await;
        }
        let ids: Vec<InfoHash> = self.torrents.keys().copied().collect();
        for id in ids {
            self.drop_torrent(id).await;
        }
        self.flush();
        let s = &self.summary;
        let changed = s.added + s.changed + s.deleted + s.conflicts > 0;
        self.out.event(
            "summary",
            json!({
                "in_step": result.is_ok() && (!opts.once || self.in_step(opts)),
                "peers": self.folder.peers().len(),
                "added": s.added, "changed_files": s.changed, "deleted": s.deleted,
                "conflicts": s.conflicts, "failed": s.failed,
                "bytes_in": s.bytes_in, "bytes_out": s.bytes_out,
                "changed": changed,
                "seconds": (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            }),
        );
        if opts.once && result.is_ok() && !self.out.is_json() {
            self.out.line(&format!(
                "in step with {} peer(s): {} added, {} changed, {} deleted, {} conflicts",
                self.folder.peers().len(),
                s.added,
                s.changed,
                s.deleted,
                s.conflicts
            ));
        }
    }

    fn progress(&self) {
        let mut bytes = 0;
        let mut total = 0;
        for f in self.fetches.values() {
            if let Some(s) = self.session.stats(f.torrent) {
                bytes += s.have;
                total += s.total;
            }
        }
        self.out.event(
            "progress",
            json!({"peers": self.folder.peers().len(), "fetching": self.fetches.len(), "seeding": self.seeds.len(),
                   "bytes": bytes, "total": total}),
        );
    }
}
