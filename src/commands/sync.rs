//! `p2pfile sync DIR`: keep a folder in step with its peers, both ways.
//!
//! The pieces meet here: the folder key (`DIR/.p2pfile/key`), the index in
//! the state database, the scan and the plan (`crate::sync`), the engine
//! and the output.
//!
//! - Peers meet in the folder's rendezvous swarm, whose info-hash is derived
//!   from the key, and talk over the `p2pfile_sync` extension: a hello that
//!   proves the key, then their indexes (`crate::sync::protocol`).
//! - Content moves in one keyed swarm per file content (the file's own v1
//!   pieces, so the same bytes are the same swarm whatever their name):
//!   every peer that holds it seeds it when asked (`want`), every peer that
//!   fetches it serves the pieces it has, and pieces found on this machine
//!   under any name are reused by hash.
//! - Fetched content lands in `DIR/.p2pfile/tmp/` and is renamed into place
//!   only when complete and verified; what it replaces goes to the trash.

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

/// Name of the key file inside `DIR/.p2pfile/`.
const KEY_FILE: &str = "key";
/// A changed file is scanned this long after the last event about it, so
/// a save in several writes is one change.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A seed nobody downloads from for this long is dropped.
const SEED_IDLE: Duration = Duration::from_secs(30);

/// Settings of one sync run, resolved from flags, environment and file.
struct Options {
    once: bool,
    expect: usize,
    timeout: Duration,
    mode: Mode,
    trash_keep: Duration,
    rescan: Duration,
    discovery_port: u16,
}

impl Options {
    fn resolve(args: &SyncArgs, file: &FileValues) -> Result<Options, Failure> {
        let once = file.flag(args.once, "once")?;
        let expect = parse_number(file.pick(&args.expect, "expect"), "--expect", 1.0)?;
        if expect < 1.0 || expect.fract() != 0.0 {
            return Err(Failure::usage(
                anyhow!("--expect {expect} is not a positive whole number of peers"),
                "use a number such as 2",
            ));
        }
        let timeout = parse_number(file.pick(&args.timeout, "timeout"), "--timeout", 60.0)?;
        if timeout <= 0.0 {
            return Err(Failure::usage(
                anyhow!("--timeout {timeout} would give up at once"),
                "use a number of seconds such as 60",
            ));
        }
        let send_only = file.flag(args.send_only, "send-only")?;
        let receive_only = file.flag(args.receive_only, "receive-only")?;
        let mode = match (send_only, receive_only) {
            (true, true) => {
                return Err(Failure::usage(
                    anyhow!("--send-only and --receive-only exclude each other"),
                    "pick one, or neither for two-way sync",
                ));
            }
            (true, false) => Mode::SendOnly,
            (false, true) => Mode::ReceiveOnly,
            (false, false) => Mode::SendReceive,
        };
        let trash_days = parse_number(
            file.pick(&args.trash_days, "trash-days"),
            "--trash-days",
            7.0,
        )?;
        let rescan = parse_number(file.pick(&args.rescan, "rescan"), "--rescan", 60.0)?;
        if rescan <= 0.0 {
            return Err(Failure::usage(
                anyhow!("--rescan {rescan} is not a positive number of seconds"),
                "use a number such as 60",
            ));
        }
        let discovery_port = match file.pick(&args.discovery_port, "discovery-port") {
            None => DISCOVERY_PORT,
            Some(p) if p.trim() == "0" => 0,
            Some(p) => crate::config::parse_port(&p, "--discovery-port")?,
        };
        Ok(Options {
            once,
            expect: expect as usize,
            timeout: Duration::from_secs_f64(timeout),
            mode,
            trash_keep: Duration::from_secs_f64(trash_days.max(0.0) * 86_400.0),
            rescan: Duration::from_secs_f64(rescan),
            discovery_port,
        })
    }
}

/// The folder as given: an existing directory, made absolute.
fn folder_dir(dir: &Path) -> Result<PathBuf, Failure> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())),
        Ok(_) => Err(Failure::usage(
            anyhow!("cannot sync {}: not a directory", dir.display()),
            "sync takes a directory; put the file in one",
        )),
        Err(_) => Err(Failure::usage(
            anyhow!("cannot sync {}: no such directory", dir.display()),
            format!("create it first: mkdir -p {}", dir.display()),
        )),
    }
}

/// The folder's key: the one given (remembered for next time when the
/// folder has none, or has only the read-only one), else the one in
/// `DIR/.p2pfile/key`, else a new read-write key.
fn folder_key(fs: &FolderFs, given: Option<&str>) -> Result<FolderKey, Failure> {
    let path = fs.private_dir().join(KEY_FILE);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<FolderKey>().map_err(|e| {
            Failure::new(
                Code::Runtime,
                anyhow!(e).context(format!("{} is damaged", path.display())),
            )
            .hint("pass the folder's key with --key to replace it")
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Failure::new(
                Code::Runtime,
                anyhow!(e).context(format!("cannot read {}", path.display())),
            ));
        }
    };
    let given = given
        .map(|k| {
            k.trim().parse::<FolderKey>().map_err(|e| {
                Failure::usage(
                    anyhow!(e).context("bad --key"),
                    "copy the whole key that `p2pfile sync DIR --show-keys` prints on a peer",
                )
            })
        })
        .transpose()?;
    let key = match (stored, given) {
        (Some(s), Some(g)) if s.folder_id() != g.folder_id() => {
            return Err(Failure::usage(
                anyhow!(
                    "{} is already synced as folder {} with another key",
                    fs.root().display(),
                    s.folder_id()
                ),
                "pass that folder's key, or sync another directory",
            ));
        }
        (Some(s), Some(g)) => {
            if g.can_write() && !s.can_write() {
                store_key(&path, &g)?;
            }
            g
        }
        (Some(s), None) => s,
        (None, Some(g)) => {
            store_key(&path, &g)?;
            g
        }
        (None, None) => {
            let k = FolderKey::generate()?;
            store_key(&path, &k)?;
            k
        }
    };
    Ok(key)
}

fn store_key(path: &Path, key: &FolderKey) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{key}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write()
        .with_context(|| format!("cannot write the folder key to {}", path.display()))
        .map_err(|e| Failure::new(Code::Runtime, e).hint("check the folder is writable"))
}

/// Prepares `DIR/.p2pfile/`, refusing a folder whose private directory
/// vanished while the state database still knows its files: that is what
/// an unmounted disk looks like, and syncing it would delete everything on
/// every peer.
fn prepare_folder(fs: &FolderFs, state: &State, given: Option<&str>) -> Result<FolderKey, Failure> {
    if !fs.private_dir().is_dir()
        && let Some(k) = given.and_then(|k| k.trim().parse::<FolderKey>().ok())
    {
        let known = state.sync_records(&k.folder_id().to_string())?.len();
        if known > 0 {
            return Err(Failure::new(
                Code::Runtime,
                anyhow!(
                    "{} has no .p2pfile directory, but this state database knows {known} of its files",
                    fs.root().display()
                ),
            )
            .hint("check that the disk is mounted; to start the folder over, use another --state"));
        }
    }
    fs.create_private_dirs()
        .with_context(|| format!("cannot create {}", fs.private_dir().display()))
        .map_err(|e| Failure::new(Code::Runtime, e).hint("check that the folder is writable"))?;
    folder_key(fs, given)
}

/// `p2pfile sync DIR --show-keys`: needs no network.
pub fn show_keys(
    args: &SyncArgs,
    file: &FileValues,
    state_path: &Path,
    json: bool,
) -> Result<(), Failure> {
    let dir = folder_dir(&args.dir)?;
    let fs = FolderFs::new(&dir);
    let state = State::open(state_path).map_err(|e| {
        Failure::new(Code::Runtime, e).hint("pass --state with a writable file path")
    })?;
    let key = prepare_folder(&fs, &state, file.pick(&args.key, "key").as_deref())?;
    let out = Output::new(json);
    let rw = key.can_write().then(|| key.to_string());
    let ro = key.read_only().to_string();
    if out.is_json() {
        out.event(
            "keys",
            json!({"folder": key.folder_id().to_string(), "path": dir.display().to_string(), "rw": rw, "ro": ro}),
        );
    } else {
        if let Some(rw) = rw {
            out.line(&format!("rw {rw}"));
        }
        out.line(&format!("ro {ro}"));
    }
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A pack being fetched, and the paths waiting for its contents.
struct Fetch {
    torrent: InfoHash,
    pack: Pack,
    records: Vec<FileRecord>,
}

/// A pack we seed for peers that asked for it.
struct Seed {
    torrent: InfoHash,
    since: Instant,
    last_active: Instant,
}

/// A row of the sync table waiting to be written.
struct StatusRow {
    peer: String,
    path: String,
    state: String,
    detail: String,
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
    let announce = folder.local_changes(changed, &dir);
    save_records(&state, &folder_id, &announce);

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
        if let Ok(ev) = res
            && ev.paths.iter().any(|p| !p.starts_with(&private))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| {
        Failure::new(
            Code::Runtime,
            anyhow!(e).context("cannot watch the folder for changes"),
        )
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

/// Scans the folder off the async workers; returns the changed records.
async fn scan_folder(
    fs: &FolderFs,
    folder: &Folder,
    device: DeviceId,
) -> Result<Vec<FileRecord>, Failure> {
    let root = fs.root().to_path_buf();
    let previous = folder.local().clone();
    let result = tokio::task::spawn_blocking(move || {
        scan::scan(&root, &previous, device, now_secs(), &mut FileHasher)
    })
    .await
    .expect("scan task panicked")
    .map_err(|e| Failure::new(Code::Runtime, e).hint("check that the folder is readable"))?;
    for s in &result.skipped {
        if s.reason.needs_attention() {
            tracing::warn!("not synced: {}: {}", s.path.display(), s.reason);
        } else {
            tracing::debug!("scan skipped {}: {}", s.path.display(), s.reason);
        }
    }
    Ok(result.changed)
}

/// Stores records in the state database in one transaction.
///
/// Unsigned local records (a read-only key's own edits) are stored too:
/// they are our view of the disk, never announced.
fn save_records(state: &State, folder_id: &str, records: &[FileRecord]) {
    let rows: Vec<(String, Vec<u8>)> = records
        .iter()
        .map(|r| (r.path.to_string(), r.encode()))
        .collect();
    if let Err(e) = state.save_sync_records(folder_id, &rows) {
        tracing::warn!(
            "cannot record the folder index in {}: {e:#}",
            state.path().display()
        );
    }
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
        loop {
            tokio::select! {
                _ = signals.recv() => {
                    return if opts.once && !self.in_step(opts) { Err(Failure::interrupted()) } else { Ok(()) };
                }
                Some(ev) = events.recv() => self.on_event(ev).await?,
                Some(()) = watch_rx.recv() => changed_at = Some(Instant::now()),
                Some(found) = async { match discovery { Some(d) => d.next().await, None => std::future::pending().await } } => {
                    tracing::debug!(device = %found.device, addr = %found.addr, "found on the LAN");
                    let _ = self.session.add_peers(self.rendezvous, vec![found.addr]).await;
                }
                _ = tick.tick() => {
                    let due = changed_at.is_some_and(|t| t.elapsed() >= DEBOUNCE);
                    if due || self.rescan || (!opts.once && last_rescan.elapsed() >= opts.rescan) {
                        changed_at = None;
                        self.rescan = false;
                        last_rescan = Instant::now();
                        self.scan_and_announce().await?;
                    }
                    if self.replan {
                        self.replan = false;
                        self.carry_out_plan().await?;
                    }
                    self.expire_seeds().await;
                    if last_trash.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                        last_trash = Some(Instant::now());
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

    async fn on_event(&mut self, ev: p2pfile_engine::TorrentEvent) -> Result<(), Failure> {
        if ev.info_hash == self.rendezvous {
            match ev.event {
                Event::ExtensionsReady { addr, .. } => {
                    let hello = Message::hello(
                        self.folder.key(),
                        self.folder.device(),
                        self.session.local_addr().port(),
                    );
                    self.send(addr, &hello).await;
                }
                Event::ExtensionMessage { addr, payload, .. } => {
                    self.on_message(addr, &payload).await
                }
                Event::PeerDisconnected { addr, .. } => {
                    if let Some(device) = self.conns.remove(&addr) {
                        self.folder.peer_left(device);
                        self.out
                            .event("peer_left", json!({"device": device.to_string()}));
                    }
                }
                _ => {}
            }
            return Ok(());
        }
        let Some(&(pack, seed)) = self.torrents.get(&ev.info_hash) else {
            return Ok(());
        };
        match ev.event {
            Event::Completed if !seed => self.fetched(ev.info_hash, pack).await?,
            Event::Failed { error } => {
                let torrent = ev.info_hash;
                self.drop_torrent(torrent).await;
                self.seeds.remove(&pack);
                if let Some(f) = self.fetches.remove(&pack) {
                    for r in &f.records {
                        self.failed(&r.path, &error.to_string());
                    }
                }
                if matches!(error, TorrentError::NoSpace { .. }) {
                    return Err(Failure::new(Code::Runtime, anyhow!(error).context("sync stopped"))
                        .hint("free disk space, then run it again: verified pieces are kept and nothing was replaced"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn send(&self, addr: SocketAddr, msg: &Message) {
        let _ = self
            .session
            .send_extension(self.rendezvous, addr, EXTENSION, Bytes::from(msg.encode()))
            .await;
    }

    async fn on_message(&mut self, addr: SocketAddr, payload: &[u8]) {
        let msg = match Message::decode(payload) {
            Ok(m) => m,
            Err(e) => return tracing::debug!(%addr, "sync message refused: {e}"),
        };
        match msg {
            Message::Hello {
                device,
                port,
                can_write,
                ..
            } => {
                if !msg.verify_hello(self.folder.key()) || device == self.folder.device() {
                    return tracing::debug!(%addr, "hello without proof of the folder key");
                }
                let listen = SocketAddr::new(addr.ip(), port);
                let fresh = self.conns.insert(addr, device).is_none();
                self.folder.peer_joined(device, listen, can_write);
                let _ = self.state.save_sync_peer(
                    &self.folder_id,
                    &listen.to_string(),
                    &device.to_string(),
                );
                if fresh {
                    self.out.event("peer", json!({"device": device.to_string(), "address": listen.to_string(), "can_write": can_write}));
                }
                for batch in protocol::batches(&self.folder.announced()) {
                    self.send(addr, &batch).await;
                }
            }
            Message::Index { records, complete } => {
                let Some(&device) = self.conns.get(&addr) else {
                    return tracing::debug!(%addr, "index before hello");
                };
                let refused = self.folder.on_remote(device, records, complete);
                if refused > 0 {
                    tracing::debug!(%addr, refused, "records without a valid signature of the folder key");
                }
                self.replan = true;
            }
            Message::Want { packs } => {
                let Some(&device) = self.conns.get(&addr) else {
                    return;
                };
                let Some(listen) = self.folder.peers().get(&device).map(|p| p.addr) else {
                    return;
                };
                for ids in packs {
                    self.seed(&ids, listen).await;
                }
            }
        }
    }

    /// Seeds a pack for a peer that asked, if we hold all of it.
    async fn seed(&mut self, ids: &[[u8; 20]], peer: SocketAddr) {
        let mut contents = Vec::with_capacity(ids.len());
        let mut files = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(r) = self
                .folder
                .local_with_content(id)
                .into_iter()
                .find(|r| self.fs.matches(&r.path, Some(r)))
            else {
                return tracing::debug!(%peer, "asked for a pack we do not hold whole");
            };
            contents.push(r.content.clone());
            files.push(self.fs.path(&r.path));
        }
        let pack = Pack::new(contents);
        if pack.ids() != ids {
            return tracing::debug!(%peer, "asked for a pack that is not in pack order");
        }
        let pack_id = pack.id();
        if let Some(s) = self.seeds.get(&pack_id) {
            let _ = self.session.add_peers(s.torrent, vec![peer]).await;
            return;
        }
        if let Some(f) = self.fetches.get(&pack_id) {
            // Fetching it ourselves: share the pieces we have.
            let _ = self.session.add_peers(f.torrent, vec![peer]).await;
            return;
        }
        let Ok(info) = pack.info() else {
            return;
        };
        let info = Arc::new(info);
        let swarm = InfoHash(self.folder.key().swarm_hash(info.info_hash().0));
        let added = self.session.add_torrent(AddTorrent {
            source: Source::Info(info),
            target: Target::SeedFiles { files },
            peers: vec![peer],
            options: keyed(swarm),
        });
        match added {
            Ok(id) => {
                self.torrents.insert(id, (pack_id, true));
                self.seeds.insert(
                    pack_id,
                    Seed {
                        torrent: id,
                        since: Instant::now(),
                        last_active: Instant::now(),
                    },
                );
            }
            Err(e) => tracing::debug!("cannot seed a pack: {e}"),
        }
    }

    async fn expire_seeds(&mut self) {
        let mut idle = Vec::new();
        for (c, s) in self.seeds.iter_mut() {
            let busy = self
                .session
                .stats(s.torrent)
                .is_some_and(|st| st.leechers > 0 || st.incomplete_peers > 0);
            if busy {
                s.last_active = Instant::now();
            } else if s.since.elapsed() >= SEED_IDLE && s.last_active.elapsed() >= SEED_IDLE {
                idle.push(*c);
            }
        }
        for c in idle {
            if let Some(s) = self.seeds.remove(&c) {
                self.drop_torrent(s.torrent).await;
            }
        }
    }

    /// Removes a content torrent, counting its bytes (read after it
    /// stopped: stopping publishes the final counters).
    async fn drop_torrent(&mut self, id: InfoHash) {
        let stats = self.session.watch_stats(id);
        self.torrents.remove(&id);
        let _ = self.session.remove(id).await;
        if let Some(s) = stats {
            let s = s.borrow();
            self.summary.bytes_in += s.downloaded;
            self.summary.bytes_out += s.uploaded;
        }
    }

    /// Sends changed records to every peer that proved the key.
    async fn announce(&self, records: Vec<FileRecord>) {
        if records.is_empty() {
            return;
        }
        let addrs: Vec<SocketAddr> = self.conns.keys().copied().collect();
        for batch in protocol::batches(&records) {
            for addr in &addrs {
                self.send(*addr, &batch).await;
            }
        }
    }

    async fn scan_and_announce(&mut self) -> Result<(), Failure> {
        let changed = scan_folder(&self.fs, &self.folder, self.folder.device()).await?;
        if changed.is_empty() {
            return Ok(());
        }
        for r in &changed {
            tracing::debug!(path = %r.path, deleted = r.deleted, "local change");
        }
        let announce = self.folder.local_changes(changed.clone(), self.fs.root());
        save_records(&self.state, &self.folder_id, &changed);
        self.announce(announce).await;
        self.replan = true;
        Ok(())
    }

    /// Makes the plan and carries out what can be done now; fetches start
    /// and finish later.
    async fn carry_out_plan(&mut self) -> Result<(), Failure> {
        let plan = self.folder.plan(now_secs());
        tracing::debug!(
            actions = plan.actions.len(),
            skipped = plan.skipped.len(),
            "plan"
        );
        let fetching: HashSet<&RelPath> = self
            .fetches
            .values()
            .flat_map(|f| f.records.iter().map(|r| &r.path))
            .collect();
        let actions: Vec<Action> = plan
            .actions
            .into_iter()
            .filter(|a| match a {
                Action::Fetch(r) => !fetching.contains(&r.path),
                _ => true,
            })
            .collect();
        self.check_space(&actions)?;
        let mut announce = Vec::new();
        let mut to_fetch = Vec::new();
        for action in actions {
            match self.carry_out(action, &mut to_fetch).await {
                Ok(Some(r)) => announce.push(r),
                Ok(None) => {}
                Err(ApplyError::Changed(p)) => {
                    tracing::debug!("{} changed under the plan: scanning again", p.display());
                    self.rescan = true;
                }
                Err(e) => {
                    let msg = format!("{:#}", anyhow!(e));
                    tracing::warn!("{msg}");
                    self.summary.failed += 1;
                    self.out.event("failed", json!({"message": msg}));
                }
            }
        }
        self.start_fetches(to_fetch).await;
        self.flush();
        self.announce(announce).await;
        Ok(())
    }

    /// Refuses to start fetching what does not fit on the disk, so a full
    /// disk stops sync before anything changes.
    fn check_space(&self, actions: &[Action]) -> Result<(), Failure> {
        let mut need: u64 = 0;
        let mut seen = HashSet::new();
        for a in actions {
            if let Action::Fetch(r) = a
                && seen.insert(r.content.id())
            {
                need += r.size();
            }
        }
        if need == 0 {
            return Ok(());
        }
        let free = free_space(&self.fs.tmp_dir()).unwrap_or(u64::MAX);
        if need > free {
            let msg = format!(
                "not enough space in {}: {:.1} MiB to fetch, {:.1} MiB free; nothing was changed",
                self.fs.root().display(),
                need as f64 / 1048576.0,
                free as f64 / 1048576.0
            );
            self.out
                .event("error", json!({"message": msg, "kind": "no-space"}));
            return Err(Failure::new(Code::Runtime, anyhow!(msg))
                .hint("free disk space, then run sync again"));
        }
        Ok(())
    }

    /// Carries out one action; returns the record to announce.
    async fn carry_out(
        &mut self,
        action: Action,
        to_fetch: &mut Vec<FileRecord>,
    ) -> Result<Option<FileRecord>, ApplyError> {
        let now = SystemTime::now();
        let local = |f: &Folder, p: &RelPath| f.local().get(p).filter(|r| !r.deleted).cloned();
        match action {
            Action::ConflictRename { from, to } => {
                let expected = local(&self.folder, &from)
                    .ok_or_else(|| ApplyError::Changed(self.fs.path(&from)))?;
                self.fs.rename(&from, &to, &expected)?;
                self.summary.conflicts += 1;
                self.event_file("conflict", &from, json!({"kept_as": to.to_string()}));
                // Our losing version, under its new name: a new file of ours.
                let mut moved = expected;
                moved.path = to;
                moved.version = VersionVector::new().update(self.folder.device(), now_secs());
                moved.modified_by = self.folder.device();
                moved.signature = None;
                let announce = self
                    .folder
                    .local_changes(vec![moved.clone()], self.fs.root());
                save_records(&self.state, &self.folder_id, &[moved]);
                self.announce(announce).await;
                Ok(None)
            }
            Action::Trash { path, record } => {
                let expected = local(&self.folder, &path);
                self.fs.delete(&path, expected.as_ref(), now)?;
                match record {
                    Some(r) => {
                        self.summary.deleted += 1;
                        self.event_file("file_deleted", &path, json!({}));
                        Ok(self.applied(r))
                    }
                    None => Ok(None),
                }
            }
            Action::Dir(r) => {
                let expected = local(&self.folder, &r.path);
                self.fs.make_dir(&r, expected.as_ref())?;
                Ok(self.applied(r))
            }
            Action::Symlink(r) => {
                let expected = local(&self.folder, &r.path);
                self.fs.make_symlink(&r, expected.as_ref(), now)?;
                self.count_file(&r, expected.is_some());
                Ok(self.applied(r))
            }
            Action::SetAttributes(r) => {
                let expected = local(&self.folder, &r.path);
                let full = self.fs.path(&r.path);
                let same_bytes = expected.as_ref().is_some_and(|e| e.same_content(&r));
                if !same_bytes || !self.fs.matches(&r.path, expected.as_ref()) {
                    return Err(ApplyError::Changed(full));
                }
                set_mode_and_mtime(&full, r.mode, r.mtime)
                    .map_err(|source| ApplyError::Io { path: full, source })?;
                Ok(self.applied(r))
            }
            Action::Move { from, record } => {
                let source = local(&self.folder, &from)
                    .ok_or_else(|| ApplyError::Changed(self.fs.path(&from)))?;
                if !self.fs.matches(&from, Some(&source)) {
                    return Err(ApplyError::Changed(self.fs.path(&from)));
                }
                let expected = local(&self.folder, &record.path);
                self.fs
                    .commit_file(&self.fs.path(&from), &record, expected.as_ref(), now)?;
                self.count_file(&record, expected.is_some());
                Ok(self.applied(record))
            }
            Action::Copy { from, record } => {
                let source = local(&self.folder, &from)
                    .ok_or_else(|| ApplyError::Changed(self.fs.path(&from)))?;
                if !self.fs.matches(&from, Some(&source)) {
                    return Err(ApplyError::Changed(self.fs.path(&from)));
                }
                let tmp = self
                    .fs
                    .copy_to_tmp(&self.fs.path(&from), &hex(&record.content.id()))
                    .map_err(|e| ApplyError::Io {
                        path: self.fs.path(&from),
                        source: e,
                    })?;
                let expected = local(&self.folder, &record.path);
                let res = self.fs.commit_file(&tmp, &record, expected.as_ref(), now);
                if res.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                res?;
                self.count_file(&record, expected.is_some());
                Ok(self.applied(record))
            }
            Action::Fetch(record) => {
                if record.size() == 0 {
                    let tmp = self
                        .fs
                        .tmp_dir()
                        .join(format!("empty-{}", std::process::id()));
                    std::fs::write(&tmp, b"").map_err(|e| ApplyError::Io {
                        path: tmp.clone(),
                        source: e,
                    })?;
                    let expected = local(&self.folder, &record.path);
                    self.fs.commit_file(&tmp, &record, expected.as_ref(), now)?;
                    self.count_file(&record, expected.is_some());
                    return Ok(self.applied(record));
                }
                to_fetch.push(record);
                Ok(None)
            }
            Action::Record(r) => Ok(self.applied(r)),
        }
    }

    /// Stores an applied record (signed as needed) and says what to announce.
    fn applied(&mut self, record: FileRecord) -> Option<FileRecord> {
        let record = self.folder.seal(record);
        self.unsaved.push(record.clone());
        self.status(&record, "done", "");
        self.folder.applied(record, self.fs.root())
    }

    /// Notes a row of the sync table (written with the next flush).
    fn status(&mut self, r: &FileRecord, state: &str, detail: &str) {
        self.status_rows.push(StatusRow {
            peer: r.modified_by.to_string(),
            path: r.path.to_string(),
            state: state.to_string(),
            detail: detail.to_string(),
        });
    }

    /// Writes what changed to the state database in one transaction each
    /// for records and the sync table: thousands of files cost two commits,
    /// not thousands.
    fn flush(&mut self) {
        if !self.unsaved.is_empty() {
            save_records(
                &self.state,
                &self.folder_id,
                &std::mem::take(&mut self.unsaved),
            );
        }
        if !self.status_rows.is_empty() {
            let rows: Vec<_> = std::mem::take(&mut self.status_rows)
                .into_iter()
                .map(|r| (r.peer, r.path, r.state, r.detail))
                .collect();
            if let Err(e) = self.state.set_sync_statuses(&self.folder_id, &rows) {
                tracing::warn!(
                    "cannot record the sync table in {}: {e:#}",
                    self.state.path().display()
                );
            }
        }
    }

    fn count_file(&mut self, r: &FileRecord, existed: bool) {
        let (event, counter) = if existed {
            ("file_changed", &mut self.summary.changed)
        } else {
            ("file_added", &mut self.summary.added)
        };
        *counter += 1;
        self.event_file(
            event,
            &r.path,
            json!({"bytes": r.size(), "from": r.modified_by.to_string()}),
        );
    }

    fn event_file(&self, event: &str, path: &RelPath, mut fields: serde_json::Value) {
        fields["path"] = json!(path.to_string());
        if self.out.is_json() {
            self.out.event(event, fields);
        } else {
            let verb = event.trim_start_matches("file_");
            self.out.line(&format!("{verb} {path}"));
        }
    }

    fn failed(&mut self, path: &RelPath, message: &str) {
        self.summary.failed += 1;
        let _ = self
            .state
            .set_sync_status(&self.folder_id, "", path.as_str(), "failed", message);
        self.flush();
        self.out.event(
            "failed",
            json!({"path": path.to_string(), "message": message}),
        );
        tracing::warn!("cannot sync {path}: {message}");
    }

    /// Starts fetching: records whose content is already on its way wait
    /// for it; the rest are cut into packs, each fetched from the peers
    /// that hold all of it (a pack no single peer holds is split into one
    /// pack per content), and those peers are asked to seed it.
    async fn start_fetches(&mut self, records: Vec<FileRecord>) {
        let mut fresh = Vec::new();
        for r in records {
            let id = r.content.id();
            match self
                .fetches
                .values_mut()
                .find(|f| f.pack.contents().iter().any(|c| c.id() == id))
            {
                Some(f) => f.records.push(r),
                None => fresh.push(r),
            }
        }
        let mut wants: HashMap<SocketAddr, Vec<Vec<[u8; 20]>>> = HashMap::new();
        for pack in pack::group(&fresh) {
            let packs = if self.holders(&pack).is_empty() && pack.contents().len() > 1 {
                pack.contents()
                    .iter()
                    .map(|c| Pack::new([c.clone()]))
                    .collect()
            } else {
                vec![pack]
            };
            for pack in packs {
                let holders = self.holders(&pack);
                let ids = pack.ids();
                let waiting: Vec<FileRecord> = fresh
                    .iter()
                    .filter(|r| ids.contains(&r.content.id()))
                    .cloned()
                    .collect();
                if holders.is_empty() {
                    for r in &waiting {
                        tracing::debug!(path = %r.path, "no connected peer holds it yet");
                    }
                    continue;
                }
                for h in &holders {
                    wants.entry(*h).or_default().push(ids.clone());
                }
                self.start_pack(pack, waiting, holders);
            }
        }
        for (addr, packs) in wants {
            let conn = self
                .conns
                .iter()
                .find(|(_, d)| self.folder.peers().get(d).is_some_and(|p| p.addr == addr))
                .map(|(a, _)| *a);
            if let Some(conn) = conn {
                self.send(conn, &Message::Want { packs }).await;
            }
        }
    }

    /// Peers that hold every content of a pack.
    fn holders(&self, pack: &Pack) -> Vec<SocketAddr> {
        let mut holders: Option<Vec<SocketAddr>> = None;
        for c in pack.contents() {
            let has = self.folder.holders(&c.id());
            holders = Some(match holders {
                None => has,
                Some(h) => h.into_iter().filter(|a| has.contains(a)).collect(),
            });
        }
        holders.unwrap_or_default()
    }

    /// Joins a pack's keyed swarm to fetch it into the tmp dir.
    fn start_pack(&mut self, pack: Pack, records: Vec<FileRecord>, holders: Vec<SocketAddr>) {
        for r in &records {
            self.status(r, "syncing", "");
        }
        let info = match pack.info() {
            Ok(i) => Arc::new(i),
            Err(e) => {
                for r in &records {
                    self.failed(&r.path, &format!("bug: its pack cannot be built: {e}"));
                }
                return;
            }
        };
        let swarm = InfoHash(self.folder.key().swarm_hash(info.info_hash().0));
        let hints = self.hints(&pack);
        tracing::debug!(
            pack = %hex(&pack.id()),
            files = pack.contents().len(),
            hints = hints.len(),
            holders = holders.len(),
            "fetching a pack"
        );
        let added = self.session.add_torrent(AddTorrent {
            source: Source::Info(info),
            target: Target::Download {
                dir: self.fs.tmp_dir(),
                hints,
            },
            peers: holders,
            options: keyed(swarm),
        });
        match added {
            Ok(id) => {
                let pack_id = pack.id();
                self.torrents.insert(id, (pack_id, false));
                self.fetches.insert(
                    pack_id,
                    Fetch {
                        torrent: id,
                        pack,
                        records,
                    },
                );
            }
            Err(e) => {
                for r in &records {
                    self.failed(&r.path, &e.to_string());
                }
            }
        }
    }

    /// Where this machine may already hold pieces of a pack: any local
    /// file with the same piece length and a piece of the same hash (an
    /// older version, a copy, a file it was appended to).
    fn hints(&self, pack: &Pack) -> Vec<PieceSource> {
        let mut wanted: HashMap<[u8; 20], Vec<u32>> = HashMap::new();
        for (c, first) in pack.contents().iter().zip(pack.first_pieces()) {
            for (i, h) in c.pieces.iter().enumerate() {
                wanted.entry(*h).or_default().push(first + i as u32);
            }
        }
        let piece_length = pack.contents().first().map(|c| c.piece_length);
        let mut hints = Vec::new();
        for r in self.folder.local().iter() {
            if r.deleted || r.kind != Kind::File || Some(r.content.piece_length) != piece_length {
                continue;
            }
            for (i, h) in r.content.pieces.iter().enumerate() {
                if let Some(pieces) = wanted.get(h) {
                    for &piece in pieces {
                        hints.push(PieceSource {
                            piece,
                            path: self.fs.path(&r.path),
                            offset: i as u64 * u64::from(r.content.piece_length),
                        });
                    }
                }
            }
        }
        hints
    }

    /// A pack arrived: put each content at every path waiting for it.
    async fn fetched(&mut self, torrent: InfoHash, pack_id: [u8; 20]) -> Result<(), Failure> {
        let Some(fetch) = self.fetches.remove(&pack_id) else {
            return Ok(());
        };
        tracing::debug!(pack = %hex(&pack_id), "pack complete");
        // The engine lets go of the files before they move.
        self.drop_torrent(torrent).await;
        let dir = self.fs.tmp_dir().join(hex(&pack_id));
        let mut announce = Vec::new();
        let mut records = fetch.records;
        records.retain(|r| self.folder.still_wanted(r));
        for content in fetch.pack.contents() {
            let id = content.id();
            let file = dir.join(hex(&id));
            let waiting: Vec<FileRecord> = records
                .iter()
                .filter(|r| r.content.id() == id)
                .cloned()
                .collect();
            let n = waiting.len();
            for (i, record) in waiting.into_iter().enumerate() {
                let source = if i + 1 == n {
                    file.clone()
                } else {
                    match self.fs.copy_to_tmp(&file, &format!("{}-{i}", hex(&id))) {
                        Ok(p) => p,
                        Err(e) => {
                            self.failed(&record.path, &e.to_string());
                            continue;
                        }
                    }
                };
                let expected = self
                    .folder
                    .local()
                    .get(&record.path)
                    .filter(|r| !r.deleted)
                    .cloned();
                match self
                    .fs
                    .commit_file(&source, &record, expected.as_ref(), SystemTime::now())
                {
                    Ok(()) => {
                        self.count_file(&record, expected.is_some());
                        if let Some(r) = self.applied(record) {
                            announce.push(r);
                        }
                    }
                    Err(ApplyError::Changed(p)) => {
                        // Edited meanwhile: scan it and merge again.
                        tracing::debug!("{} changed while its new version arrived", p.display());
                        let _ = std::fs::remove_file(&source);
                        self.rescan = true;
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&source);
                        self.failed(&record.path, &format!("{:#}", anyhow!(e)));
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        self.flush();
        tracing::debug!(pack = %hex(&pack_id), "pack committed");
        self.announce(announce).await;
        self.replan = true;
        Ok(())
    }
}

/// Options of a pack's swarm: keyed, no metadata exchange, no DHT (peers
/// come from the folder's indexes).
fn keyed(swarm: InfoHash) -> TorrentOptions {
    TorrentOptions {
        swarm_hash: Some(swarm),
        metadata: false,
        dht: false,
    }
}

/// Bytes free for an unprivileged writer on the file system of `path`.
fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}
