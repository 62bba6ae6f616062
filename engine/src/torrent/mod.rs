//! The coordinator of one torrent: a single task that owns the picker,
//! the choker's inputs, the peer table, the known addresses and the
//! storage, and reacts to messages from peers, connection attempts, disk
//! jobs and timers. Nothing else mutates that state, so there are no locks.
//!
//! - `mod.rs`: the task, its life cycle and the connection table.
//! - `peers.rs`: one peer's state and the wire messages it sends us.
//! - `download.rs`: requests, block assembly, verification, completion.
//! - `metadata.rs`: BEP 9, for magnets.
//! - `zones.rs`: the zone rule's inputs from the peer table (`crate::zone`).

mod download;
mod metadata;
mod peers;
mod zones;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::admission;
use crate::bans::BanReason;
use crate::bitfield::Bitfield;
use crate::builder::ScannedFile;
use crate::choker::FirstUpload;
use crate::error::{Error, TorrentError};
use crate::event::{Event, Phase, Stats, TorrentEvent};
use crate::metainfo::{Info, InfoHash};
use crate::peer::{self, PeerEvent, PeerKey};
use crate::picker::Picker;
use crate::placement::{NotEnoughSpace, Placement};
use crate::rate::RateEstimate;
use crate::shared::Shared;
use crate::storage::{PieceSource, Storage};
use crate::wire::Handshake;
use download::Assembly;

use metadata::MetadataFetch;
use peers::Peer;

/// Most connection attempts in flight per torrent.
const MAX_CONNECTING: usize = 16;
/// Upload slots (see `choker`).
const UNCHOKE_SLOTS: usize = 16;
/// How often the unchoke set is recomputed.
const CHOKE_INTERVAL: Duration = Duration::from_secs(10);
/// Memory for pieces being assembled; bounds the picker's started pieces.
const ASSEMBLY_BUDGET: u64 = 32 << 20;
/// Memory for complete pieces waiting to be hashed and written.
const VERIFY_BUDGET: u64 = 16 << 20;

/// Messages to a torrent's coordinator.
#[derive(Debug)]
pub(crate) enum TorrentCmd {
    /// A peer connected to us and sent this handshake; we still owe ours.
    Incoming(TcpStream, Handshake),
    /// We connected to `addr` and exchanged handshakes.
    Outgoing(SocketAddr, TcpStream, Handshake),
    /// A connection attempt to the address failed.
    ConnectFailed(SocketAddr),
    /// Addresses to try (DHT, caller).
    AddPeers(Vec<SocketAddr>),
    /// A message on a registered extension, to one connected peer.
    SendExtension {
        addr: SocketAddr,
        name: String,
        payload: bytes::Bytes,
    },
    /// Close the connection to this peer (see `Session::close_peer`).
    ClosePeer { addr: SocketAddr, reason: String },
    /// Stop, close every connection, then answer.
    Stop(oneshot::Sender<()>),
}

/// What the torrent serves from or downloads to.
#[derive(Clone, Debug)]
pub enum Target {
    /// Seed content already at `root` (the file, or the top directory),
    /// hashed by [`crate::builder`] in this process.
    Seed {
        /// The content.
        root: PathBuf,
    },
    /// Seed content whose files lie anywhere, not under one root: one path
    /// per file entry of the info that is not a pad file, in info order
    /// (pad entries stay zeros, on no disk). A bundle of existing files
    /// this way needs no copy. Like [`Target::Seed`], the content is taken
    /// as complete and never written.
    SeedFiles {
        /// The files, in the info's order, pad entries left out.
        files: Vec<PathBuf>,
    },
    /// Seed the files of a scan that the torrent's info was hashed from
    /// (one per file entry that is not a pad file, in info order), serving
    /// only what was hashed: a file whose length or modification time is
    /// no longer the scanned one (checked when the torrent starts and after
    /// every read for a peer), or with `check_pieces` a piece that does not
    /// match its hash, stops the torrent with
    /// [`crate::Event::SourceChanged`] before any changed byte is sent.
    SeedScanned {
        /// The files as scanned before hashing.
        files: Vec<ScannedFile>,
        /// Check each piece against its hash the first time a peer asks for
        /// it (see [`Storage::verify_before_serving`]): for an info taken
        /// from an earlier hash because sizes and mtimes matched, which a
        /// replacement keeping both would fool. Content hashed from these
        /// very files needs no such check.
        check_pieces: bool,
    },
    /// Download into `dir`, as `dir/<name>`.
    Download {
        /// The directory.
        dir: PathBuf,
        /// Places on this machine where pieces may already be, found by
        /// hash (another file with the same content, an older version under
        /// another name). Each is checked against the piece hash before it
        /// is used; a wrong or missing one is skipped.
        hints: Vec<PieceSource>,
    },
}

impl Target {
    /// Download into `dir` with no hints.
    pub fn download(dir: impl Into<PathBuf>) -> Self {
        Target::Download {
            dir: dir.into(),
            hints: Vec::new(),
        }
    }

    /// Whether this target can serve the torrent of `info` (`None` for a
    /// magnet): [`Target::SeedFiles`] needs the info, and one path per
    /// file of it.
    pub(crate) fn check(&self, info: Option<&Info>) -> Result<(), Error> {
        let given = match self {
            Target::SeedFiles { files } => files.len(),
            Target::SeedScanned { files, .. } => files.len(),
            Target::Seed { .. } | Target::Download { .. } => return Ok(()),
        };
        let info = info.ok_or(Error::SeedFilesNeedInfo)?;
        let expected = info.files.iter().filter(|f| !f.is_pad()).count();
        if given != expected {
            return Err(Error::SeedFilesCount { expected, given });
        }
        Ok(())
    }
}

/// What a disk job reports back.
enum Job {
    Checked(Result<(Storage, Bitfield, Option<Placement>, bool), TorrentError>),
    Verified {
        index: u32,
        result: Result<bool, TorrentError>,
        /// SHA-1 of each block, when the piece failed or was a suspect's
        /// (see `download::Suspects`): what a smart ban compares.
        digests: Option<Vec<[u8; 20]>>,
    },
    /// Done moving files into place (or failed doing it).
    Finalized {
        /// Entries that were in the way, moved from → to, even on failure.
        replaced: Vec<(PathBuf, PathBuf)>,
        /// The targets kept because they changed.
        result: Result<Vec<PathBuf>, TorrentError>,
    },
    /// A seeded file changed since it was hashed (see [`Target::SeedScanned`]).
    SourceChanged(PathBuf),
}

/// A known address and what we know of it.
#[derive(Debug, Default)]
struct Addr {
    connecting: bool,
    connected: bool,
    last_attempt: Option<Instant>,
    failures: u32,
    /// Held every piece when last seen; not worth redialing once we do too.
    seed: bool,
    /// Our own address (learned from the DHT or PEX): never dialled. Bans
    /// of misbehaving peers live in the session's [`crate::bans::Bans`].
    banned: bool,
}

/// The torrent's state once the info dictionary is known.
struct Live {
    info: Arc<Info>,
    storage: Arc<Storage>,
    picker: Picker,
    /// Pieces being assembled.
    assembly: HashMap<u32, Assembly>,
    /// Blocks of failed pieces that had several senders, by sender: judged
    /// once the piece verifies.
    suspects: download::Suspects,
    /// Complete pieces being hashed and written. While this is at
    /// `max_verifying`, no new blocks are requested: a disk slower than the
    /// network pushes back on the peers instead of filling memory.
    verifying: usize,
    max_verifying: usize,
    placement: Option<Placement>,
    /// Every piece verified and the files at their final path.
    finished: bool,
    /// As a seed: every piece once before any piece twice.
    first_upload: FirstUpload<PeerKey>,
    /// The zone rule's state, when this host has a zone.
    zoning: Option<zones::Zoning>,
}

enum State {
    Metadata(MetadataFetch),
    Checking(Arc<Info>),
    Live(Box<Live>),
    Failed,
}

struct Torrent {
    shared: Arc<Shared>,
    /// The info-hash on the wire and the torrent's id in the session.
    info_hash: InfoHash,
    /// The info-hash of the content (equal to `info_hash` unless the
    /// torrent runs in a keyed swarm); metadata from peers must match it.
    content_hash: InfoHash,
    /// Serve and fetch the info dictionary (BEP 9).
    metadata: bool,
    /// Announce and look up on the DHT.
    dht: bool,
    target: Target,
    state: State,
    peers: HashMap<PeerKey, Peer>,
    addrs: HashMap<SocketAddr, Addr>,
    next_key: PeerKey,
    cmd_tx: mpsc::Sender<TorrentCmd>,
    peer_tx: mpsc::Sender<(PeerKey, PeerEvent)>,
    job_tx: mpsc::UnboundedSender<Job>,
    stats: watch::Sender<Stats>,
    rng: StdRng,
    downloaded: u64,
    /// Of `downloaded`, from peers outside our zone (see `zones`).
    downloaded_other_zone: u64,
    /// Of `downloaded`, thrown away (see `Stats::discarded`).
    discarded: u64,
    uploaded: u64,
    down_rate: RateEstimate,
    up_rate: RateEstimate,
    /// Peers seen incomplete and later complete.
    completed_peers: HashSet<[u8; 20]>,
    /// Peers complete when first seen.
    seeds_seen: HashSet<[u8; 20]>,
    failed_connects: u64,
    /// Downloaded pieces that passed, and failed, their hash check.
    pieces_verified: u64,
    hash_failures: u64,
    last_choke: Instant,
}

/// The channels the session keeps for a running torrent.
pub(crate) struct Spawned {
    pub cmd: mpsc::Sender<TorrentCmd>,
    pub stats: watch::Receiver<Stats>,
}

/// What a torrent starts from.
pub(crate) struct Params {
    /// Wire info-hash and session id.
    pub id: InfoHash,
    /// The content's info-hash.
    pub content_hash: InfoHash,
    /// `None` for a magnet.
    pub info: Option<Arc<Info>>,
    pub target: Target,
    pub peers: Vec<SocketAddr>,
    pub metadata: bool,
    pub dht: bool,
}

/// Starts a torrent's coordinator.
pub(crate) fn spawn(shared: Arc<Shared>, p: Params) -> Spawned {
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (peer_tx, peer_rx) = mpsc::channel(1024);
    let (job_tx, job_rx) = mpsc::unbounded_channel();
    let (stats_tx, stats_rx) = watch::channel(Stats::new(p.id, Phase::FetchingMetadata));
    let mut t = Torrent {
        shared,
        info_hash: p.id,
        content_hash: p.content_hash,
        metadata: p.metadata,
        dht: p.dht,
        target: p.target,
        state: State::Metadata(MetadataFetch::default()),
        peers: HashMap::new(),
        addrs: HashMap::new(),
        next_key: 1,
        cmd_tx: cmd_tx.clone(),
        peer_tx,
        job_tx,
        stats: stats_tx,
        rng: StdRng::from_os_rng(),
        downloaded: 0,
        downloaded_other_zone: 0,
        discarded: 0,
        uploaded: 0,
        down_rate: RateEstimate::default(),
        up_rate: RateEstimate::default(),
        completed_peers: HashSet::new(),
        seeds_seen: HashSet::new(),
        failed_connects: 0,
        pieces_verified: 0,
        hash_failures: 0,
        last_choke: Instant::now(),
    };
    let _ = t.add_addrs(p.peers);
    if let Some(info) = p.info {
        t.got_info(info);
    }
    tokio::spawn(t.run(cmd_rx, peer_rx, job_rx));
    Spawned {
        cmd: cmd_tx,
        stats: stats_rx,
    }
}

impl Torrent {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<TorrentCmd>,
        mut peer_rx: mpsc::Receiver<(PeerKey, PeerEvent)>,
        mut job_rx: mpsc::UnboundedReceiver<Job>,
    ) {
        let dht = self.shared.dht.clone().filter(|_| self.dht);
        let dht_task = dht.map(|dht| {
            let cmd = self.cmd_tx.clone();
            let info_hash = self.info_hash;
            let port = self.shared.listen_port;
            tokio::spawn(async move {
                let (found_tx, mut found_rx) = mpsc::channel(16);
                let forward = async {
                    while let Some(addrs) = found_rx.recv().await {
                        if cmd.send(TorrentCmd::AddPeers(addrs)).await.is_err() {
                            return;
                        }
                    }
                };
                let lookups = async {
                    // Frequent at first so a new downloader finds the swarm
                    // in a second or two, then rare.
                    for round in 0u64.. {
                        dht.announce_and_lookup(info_hash, port, &found_tx).await;
                        let pause = if round < 5 { 1 } else { 30 };
                        tokio::time::sleep(Duration::from_secs(pause)).await;
                    }
                };
                tokio::join!(forward, lookups);
            })
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();
        let mut pex_tick = tokio::time::interval(peers::PEX_FAST);
        pex_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let done = loop {
            tokio::select! {
                Some((key, ev)) = peer_rx.recv() => self.on_peer_event(key, ev),
                Some(job) = job_rx.recv() => self.on_job(job),
                cmd = cmd_rx.recv() => match cmd {
                    Some(TorrentCmd::Stop(done)) => break Some(done),
                    Some(cmd) => self.on_cmd(cmd),
                    None => break None,
                },
                _ = tick.tick() => {
                    let secs = last_tick.elapsed().as_secs_f64();
                    last_tick = Instant::now();
                    self.on_tick(secs);
                }
                _ = pex_tick.tick() => self.send_pex(),
            }
        };
        if let Some(task) = dht_task {
            task.abort();
        }
        let keys: Vec<_> = self.peers.keys().copied().collect();
        for key in keys {
            self.drop_peer(key, "torrent stopped");
        }
        self.publish_stats();
        self.emit(Event::Removed);
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.shared.events.send(TorrentEvent {
            info_hash: self.info_hash,
            event,
        });
    }

    fn on_cmd(&mut self, cmd: TorrentCmd) {
        match cmd {
            TorrentCmd::Incoming(stream, hs) => self.add_connection(None, stream, hs),
            TorrentCmd::Outgoing(addr, stream, hs) => {
                if let Some(a) = self.addrs.get_mut(&addr) {
                    a.connecting = false;
                }
                self.add_connection(Some(addr), stream, hs);
            }
            TorrentCmd::ConnectFailed(addr) => {
                self.failed_connects += 1;
                if let Some(a) = self.addrs.get_mut(&addr) {
                    a.connecting = false;
                    a.failures += 1;
                }
            }
            TorrentCmd::AddPeers(addrs) => self.learn_addrs(addrs),
            TorrentCmd::SendExtension {
                addr,
                name,
                payload,
            } => self.send_extension(addr, &name, payload),
            TorrentCmd::ClosePeer { addr, reason } => {
                let keys: Vec<PeerKey> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.addr == addr)
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    self.drop_peer(key, &reason);
                }
            }
            TorrentCmd::Stop(_) => unreachable!("handled in run"),
        }
    }

    fn is_self(&self, addr: &SocketAddr) -> bool {
        addr.ip() == self.shared.local_ip && addr.port() == self.shared.listen_port
    }

    /// Records addresses; returns whether any was new.
    fn add_addrs(&mut self, addrs: Vec<SocketAddr>) -> bool {
        let before = self.addrs.len();
        for addr in addrs {
            if addr.port() == 0 || self.is_self(&addr) {
                continue;
            }
            self.addrs.entry(addr).or_default();
        }
        self.addrs.len() > before
    }

    /// Records addresses from the DHT or PEX and dials new ones at once,
    /// not at the next tick: a second is long on a LAN.
    fn learn_addrs(&mut self, addrs: Vec<SocketAddr>) {
        if self.add_addrs(addrs) {
            self.connect_more();
        }
    }

    fn finished(&self) -> bool {
        matches!(&self.state, State::Live(l) if l.finished)
    }

    /// Dials known addresses while we have room, backing off on failures.
    fn connect_more(&mut self) {
        let now = Instant::now();
        let finished = self.finished();
        let connecting = self.addrs.values().filter(|a| a.connecting).count();
        // Dial only into free outgoing slots (admission keeps some for
        // incoming peers), counting the dials under way.
        let free = admission::room(&self.standings(), admission::Direction::Outgoing);
        let room = free
            .saturating_sub(connecting)
            .min(MAX_CONNECTING.saturating_sub(connecting));
        let bans = self.shared.bans.lock().expect("bans lock");
        let due: Vec<SocketAddr> = self
            .addrs
            .iter()
            .filter(|(_, a)| !(a.connecting || a.connected || a.banned || (finished && a.seed)))
            .filter(|(addr, _)| !bans.is_banned(addr.ip(), now))
            .filter(|(_, a)| match a.last_attempt {
                None => true,
                Some(at) => {
                    let backoff = Duration::from_secs((1u64 << a.failures.min(6)).min(60));
                    now.duration_since(at) >= backoff
                }
            })
            .map(|(addr, _)| *addr)
            .take(room)
            .collect();
        drop(bans);
        for addr in due {
            let a = self.addrs.get_mut(&addr).expect("listed");
            a.connecting = true;
            a.last_attempt = Some(now);
            let ours = Handshake::new(self.info_hash.0, self.shared.peer_id);
            let local_ip = self.shared.local_ip;
            let cmd = self.cmd_tx.clone();
            let dials = self.shared.dials.clone();
            tokio::spawn(async move {
                // Held until the handshake is in: see `crate::dial`.
                let _slot = dials.acquire(addr.ip()).await;
                let msg = match peer::connect(addr, local_ip, ours).await {
                    Ok((stream, theirs)) => TorrentCmd::Outgoing(addr, stream, theirs),
                    Err(e) => {
                        tracing::debug!(%addr, "connect: {e}");
                        TorrentCmd::ConnectFailed(addr)
                    }
                };
                let _ = cmd.send(msg).await;
            });
        }
    }

    /// Bans the IP of peer `key` for `reason`, at once or, with `strike`,
    /// when this offence makes enough repeats (see
    /// [`crate::bans::Bans::strike`]); reports a new ban. Once the IP is
    /// banned, closes this torrent's connections to it (other torrents of
    /// the session close theirs at their next tick) and returns true.
    pub(super) fn ban_peer(
        &mut self,
        key: PeerKey,
        reason: BanReason,
        strike: bool,
        why: &str,
    ) -> bool {
        let Some(p) = self.peers.get(&key) else {
            return false;
        };
        let addr = p.listen.unwrap_or(p.addr);
        let new = if strike {
            self.shared.strike(addr.ip(), reason)
        } else {
            self.shared.ban(addr.ip(), reason)
        };
        if new {
            tracing::debug!(info_hash = %self.info_hash, %addr, %reason, "banned: {why}");
            self.emit(Event::PeerBanned { addr, reason });
        }
        if !self.shared.is_banned(addr.ip()) {
            return false;
        }
        self.drop_peer(key, why);
        self.drop_banned();
        true
    }

    /// Closes connections to banned addresses (banned here, or by another
    /// torrent of the session).
    fn drop_banned(&mut self) {
        let now = Instant::now();
        let bans = self.shared.bans.lock().expect("bans lock");
        let gone: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| bans.is_banned(p.addr.ip(), now))
            .map(|(k, _)| *k)
            .collect();
        drop(bans);
        for key in gone {
            self.drop_peer(key, "banned");
        }
    }

    fn on_tick(&mut self, secs: f64) {
        self.drop_banned();
        self.down_rate.tick(secs);
        self.up_rate.tick(secs);
        for p in self.peers.values_mut() {
            p.down_rate.tick(secs);
        }
        self.close_silent(Instant::now());
        self.trace_peers();
        self.connect_more();
        self.expire_requests();
        self.request_metadata();
        if self.last_choke.elapsed() >= CHOKE_INTERVAL {
            self.last_choke = Instant::now();
            self.rechoke();
        }
        self.publish_stats();
    }

    fn on_job(&mut self, job: Job) {
        match job {
            Job::Checked(result) => self.on_checked(result),
            Job::Verified {
                index,
                result,
                digests,
            } => self.on_verified(index, result, digests),
            Job::Finalized { replaced, result } => self.on_finalized(replaced, result),
            Job::SourceChanged(path) => self.source_changed(path),
        }
    }

    /// The info dictionary is known: check the disk, then go live.
    fn got_info(&mut self, info: Arc<Info>) {
        self.emit(Event::Metadata {
            name: info.name.clone(),
            total: info.total_length(),
            pieces: info.piece_count(),
            info: info.clone(),
        });
        self.state = State::Checking(info.clone());
        let target = self.target.clone();
        let jobs = self.job_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = match target {
                Target::Seed { root } => {
                    let storage = Storage::new(&info, &root, false);
                    Ok((storage, Bitfield::full(info.piece_count()), None, true))
                }
                Target::SeedFiles { files } => {
                    let storage = Storage::with_paths(&info, &files, false)
                        .expect("bug: path count not checked by Session::add_torrent");
                    Ok((storage, Bitfield::full(info.piece_count()), None, true))
                }
                Target::SeedScanned {
                    files,
                    check_pieces,
                } => {
                    let paths: Vec<PathBuf> = files.iter().map(|f| f.disk_path.clone()).collect();
                    let mtimes: Vec<i128> = files.iter().map(|f| f.mtime_ns).collect();
                    let mut storage = Storage::with_paths(&info, &paths, false)
                        .and_then(|s| s.expect_unchanged(&mtimes))
                        .expect("bug: path count not checked by Session::add_torrent");
                    if check_pieces {
                        storage = storage.verify_before_serving(info.pieces.clone());
                    }
                    if let Some(path) = storage.changed_file() {
                        let _ = jobs.send(Job::SourceChanged(path));
                    }
                    Ok((storage, Bitfield::full(info.piece_count()), None, true))
                }
                Target::Download { dir, hints } => {
                    let placement = Placement::new(&dir, &info);
                    let part = placement.part.clone();
                    placement
                        .prepare(&info, &hints)
                        .map(|p| (p.storage, p.have, Some(placement), p.already_complete))
                        .map_err(|e| {
                            match e.get_ref().and_then(|r| r.downcast_ref::<NotEnoughSpace>()) {
                                Some(s) => TorrentError::NotEnoughSpace {
                                    path: part,
                                    need: s.need,
                                    free: s.free,
                                },
                                None => TorrentError::io("prepare", &dir.join(&info.name), &e),
                            }
                        })
                }
            };
            let _ = jobs.send(Job::Checked(result));
        });
        self.publish_stats();
    }

    fn on_checked(
        &mut self,
        result: Result<(Storage, Bitfield, Option<Placement>, bool), TorrentError>,
    ) {
        let State::Checking(info) = &self.state else {
            return;
        };
        let info = info.clone();
        let (storage, have, placement, complete) = match result {
            Ok(r) => r,
            Err(error) => return self.fail(error),
        };
        let valid = have.count();
        let valid_bytes = have
            .iter_ones()
            .map(|i| info.piece_size(i as u32) as u64)
            .sum();
        let info_piece_len = info.piece_length as u64;
        let piece_count = info.piece_count();
        let max_partial = (ASSEMBLY_BUDGET / info_piece_len).clamp(4, 256) as usize;
        let picker = Picker::new(info.piece_length, info.total_length(), have, max_partial)
            .with_padding(storage.padded_pieces().to_vec());
        self.state = State::Live(Box::new(Live {
            info,
            storage: Arc::new(storage),
            picker,
            assembly: HashMap::new(),
            suspects: download::Suspects::default(),
            verifying: 0,
            max_verifying: (VERIFY_BUDGET / info_piece_len).clamp(2, 16) as usize,
            first_upload: FirstUpload::new(piece_count),
            zoning: self
                .shared
                .zone
                .as_ref()
                .map(|_| zones::Zoning::new(&self.shared.peer_id, piece_count)),
            placement,
            finished: false,
        }));
        if matches!(self.target, Target::Download { .. }) {
            self.emit(Event::Checked {
                valid_pieces: valid,
                valid_bytes,
                already_complete: complete,
            });
        }
        self.verify_empty_pieces();
        self.peers_went_live();
        if complete {
            self.on_finalized(Vec::new(), Ok(Vec::new()));
        } else {
            self.maybe_finish();
        }
        self.publish_stats();
    }

    /// A seeded file changed since it was hashed: stop serving for good
    /// (its pieces may not match their hashes any more), once.
    pub(super) fn source_changed(&mut self, path: PathBuf) {
        if matches!(self.state, State::Failed) {
            return;
        }
        tracing::debug!(info_hash = %self.info_hash, "{} changed since it was hashed", path.display());
        self.stop_for_good("seeded file changed", Event::SourceChanged { path });
    }

    fn fail(&mut self, error: TorrentError) {
        tracing::debug!(info_hash = %self.info_hash, "failed: {error}");
        self.stop_for_good("torrent failed", Event::Failed { error });
    }

    /// Drops every peer, refuses new ones (the `Failed` state) and reports why.
    fn stop_for_good(&mut self, reason: &str, event: Event) {
        self.state = State::Failed;
        let keys: Vec<_> = self.peers.keys().copied().collect();
        for key in keys {
            self.drop_peer(key, reason);
        }
        // Counters first: whoever sees the event sees the `Failed` phase.
        self.publish_stats();
        self.emit(event);
    }

    fn publish_stats(&self) {
        let (phase, total, have) = match &self.state {
            State::Metadata(_) => (Phase::FetchingMetadata, 0, 0),
            State::Checking(info) => (Phase::Checking, info.total_length(), 0),
            State::Live(l) => {
                let have = l
                    .picker
                    .have()
                    .iter_ones()
                    .map(|i| l.info.piece_size(i as u32) as u64)
                    .sum();
                let phase = if l.finished {
                    Phase::Seeding
                } else {
                    Phase::Downloading
                };
                (phase, l.info.total_length(), have)
            }
            State::Failed => (Phase::Failed, 0, 0),
        };
        let seeds = self.peers.values().filter(|p| p.is_seed()).count();
        let leechers = self
            .peers
            .values()
            .filter(|p| p.peer_interested && !p.am_choking)
            .count();
        self.stats.send_replace(Stats {
            info_hash: self.info_hash,
            phase,
            total,
            have,
            downloaded: self.downloaded,
            downloaded_other_zone: self.downloaded_other_zone,
            discarded: self.discarded,
            uploaded: self.uploaded,
            download_rate: self.down_rate.get(),
            upload_rate: self.up_rate.get(),
            peers: self.peers.len(),
            seeds,
            leechers,
            incomplete_peers: self.peers.len() - seeds,
            completed_peers: self.completed_peers.len(),
            seeds_seen: self.seeds_seen.len(),
            known_addrs: self.addrs.len(),
            failed_connects: self.failed_connects,
            pieces_verified: self.pieces_verified,
            hash_failures: self.hash_failures,
        });
    }
}
