//! Requests, block assembly, piece verification and completion.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha1::{Digest, Sha1};

use super::peers::Peer;
use super::{Job, Live, State, Torrent};
use crate::bans::BanReason;
use crate::bitfield::Bitfield;
use crate::error::TorrentError;
use crate::event::Event;
use crate::peer::PeerKey;
use crate::picker::{Arrivals, Received};
use crate::snub::SERVES_NOTHING;
use crate::wire::{BLOCK_SIZE, BlockRequest, Message};

/// How long a peer's refusal of a piece keeps us from asking it again
/// when we have nothing else to ask it for.
const REJECT_MEMORY: Duration = Duration::from_secs(1);
/// Seconds of a peer's sending rate we keep requested, at the least. Many
/// LAN round trips; more only makes each block wait longer in the sender's
/// queue, and the last pieces of a swarm pay that wait at every hop
/// (8-host lab swarm, median of 3: 0.5 s → 24.06 s, 0.25 s → 23.03 s,
/// 0.125 s → 22.87 s).
const QUEUE_SECONDS: f64 = 0.125;
/// Round trips of requests kept in flight on a slow-answering link, so a
/// long round trip does not cap a peer at `depth / rtt`.
const QUEUE_RTTS: f64 = 4.0;
/// Pipeline bounds in blocks. The top is what one peer's rate can need on
/// loopback; the bottom keeps a new or slow peer busy.
const MIN_DEPTH: usize = 16;
const MAX_DEPTH: usize = 512;
/// The bottom for one of several connections to the same host (one per
/// torrent), which share [`MIN_DEPTH`] between them: two blocks keep a
/// connection going while one is on its way.
const MIN_SHARED_DEPTH: usize = 2;
/// What a peer that does not say `reqq` accepts (libtorrent's assumption).
const DEFAULT_REQQ: usize = 250;

/// How many block requests to keep in flight to one peer.
///
/// `rate` is what the peer sends (bytes/s, 0 before the first sample),
/// `rtt` the connection's round trip in seconds (0 when unknown), `received`
/// the blocks it sent so far, `reqq` what it said it accepts, `shared_by`
/// the session's connections to the peer's address (one per torrent; see
/// `crate::hosts`). With a rate: [`QUEUE_SECONDS`] or [`QUEUE_RTTS`] round
/// trips of it, whichever is longer. Before: slow start, the floor plus one
/// per block received, so a fast link fills its pipe within milliseconds
/// while a slow one stays shallow (loopback 1 GiB: 729 → 870 MiB/s against
/// a fixed 16). Always within the floor..=[`MAX_DEPTH`] and never above
/// `reqq` (requests beyond it are dropped or rejected). The floor,
/// [`MIN_DEPTH`], is per host: connections to one address split it (at
/// least [`MIN_SHARED_DEPTH`] each). Each of 20 torrents' connections
/// runs at a twentieth of the host's rate, so the floor sets their depth,
/// and 16 each queued 20 × 16 blocks at every sender: seconds of wait for
/// every block at every hop with 20 artifacts on a 100 Mbit/s lab.
pub(super) fn pipeline_depth(
    rate: f64,
    rtt: f64,
    received: usize,
    reqq: Option<usize>,
    shared_by: usize,
) -> usize {
    let floor = MIN_DEPTH.div_ceil(shared_by.max(1)).max(MIN_SHARED_DEPTH);
    let blocks = if rate > 0.0 {
        (rate * QUEUE_SECONDS.max(QUEUE_RTTS * rtt) / BLOCK_SIZE as f64) as usize
    } else {
        floor + received
    };
    blocks
        .clamp(floor, MAX_DEPTH)
        .min(reqq.unwrap_or(DEFAULT_REQQ).max(1))
}

/// Pieces kept requested, at the least, from a peer that left requests
/// unanswered. Its newest requests may all fall on pieces it skips; then
/// it answers nothing until the next tick lets more out (see
/// `crate::snub::probe_after`), and its rate, and so its pipeline, fall.
/// With one piece in flight (16 blocks, the slow-start floor, is one
/// 256 KiB piece) every skipped piece cost a second: 169 to 607 of 682
/// served pieces in a minute.
const SKIPPER_PIECES: usize = 8;

/// The pipeline for a peer that skipped requests: `depth`, but at least
/// [`SKIPPER_PIECES`] pieces of `piece_blocks` (within [`MAX_DEPTH`] and
/// `reqq`), so one more skipped piece cannot hold all of it.
pub(super) fn skipper_depth(depth: usize, piece_blocks: usize, reqq: Option<usize>) -> usize {
    depth
        .max((SKIPPER_PIECES * piece_blocks).min(MAX_DEPTH))
        .min(reqq.unwrap_or(DEFAULT_REQQ).max(1))
}

/// Requests to keep in flight to `peer`.
fn depth(l: &Live, peer: &Peer) -> usize {
    let depth = peer.queue_depth();
    if peer.snubbed.count() == 0 {
        return depth;
    }
    let reqq = peer.ext.as_ref().and_then(|e| e.reqq).map(|q| q as usize);
    skipper_depth(
        depth,
        l.info.piece_length.div_ceil(BLOCK_SIZE) as usize,
        reqq,
    )
}

impl Torrent {
    /// Verifies, without requesting anything, the pieces that are padding
    /// only: their bytes are known to be zeros.
    pub(super) fn verify_empty_pieces(&mut self) {
        let State::Live(l) = &mut self.state else {
            return;
        };
        for index in l.picker.take_empty() {
            l.assembly.insert(index, Assembly::new(0));
            verify(l, index, &self.job_tx);
        }
    }

    /// Each peer's download state, once a tick at trace level: what a
    /// slow transfer is waiting on.
    pub(super) fn trace_peers(&self) {
        if !tracing::enabled!(tracing::Level::TRACE) {
            return;
        }
        let State::Live(l) = &self.state else {
            return;
        };
        for p in self.peers.values() {
            tracing::trace!(
                info_hash = %self.info_hash,
                addr = %p.listen.unwrap_or(p.addr),
                rate = p.down_rate.get() as u64,
                depth = depth(l, p),
                owed = p.outstanding.len(),
                rtt_us = p.rtt_us.load(std::sync::atomic::Ordering::Relaxed),
                rejected = p.rejected.count(),
                snubbed = p.snubbed.count(),
                choking = p.peer_choking,
                interested = p.am_interested,
                "peer"
            );
        }
    }

    /// Tops up a peer's pipeline of requests.
    pub(super) fn fill_requests(&mut self, key: PeerKey) {
        // Most top-ups send nothing (refills go a quarter pipeline at a
        // time): only one that will needs the zone rule's offer and the
        // endgame's arrivals.
        let asks = match (&self.state, self.peers.get(&key)) {
            (State::Live(l), Some(peer)) => room_for(l, peer) > 0,
            _ => false,
        };
        let (zone_offer, arrivals) = if asks {
            (self.zone_offer(key), self.endgame_arrivals(key))
        } else {
            (None, Arrivals::default())
        };
        let State::Live(l) = &mut self.state else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if !asks {
            if not_asking(l, peer) {
                peer.outstanding.idle();
            }
            return;
        }
        fill(l, key, peer, zone_offer.as_ref(), &arrivals, &mut self.rng);
    }

    /// In endgame, when the blocks in flight are expected from the peers
    /// other than `key`, and when `key` would send one asked now, each from
    /// its measured rate and queue (see [`Arrivals`]); outside it, nothing
    /// (the picker consults it only in endgame).
    fn endgame_arrivals(&self, key: PeerKey) -> Arrivals {
        let State::Live(l) = &self.state else {
            return Arrivals::default();
        };
        let Some(asked) = self.peers.get(&key) else {
            return Arrivals::default();
        };
        if !l.picker.in_endgame() {
            return Arrivals::default();
        }
        let rate = asked.down_rate.get();
        let mut held: HashMap<BlockRequest, f64> = HashMap::new();
        for (k, p) in &self.peers {
            if *k == key {
                continue;
            }
            for (req, eta) in p.outstanding.arrivals(p.down_rate.get()) {
                held.entry(req)
                    .and_modify(|e| *e = e.min(eta))
                    .or_insert(eta);
            }
        }
        Arrivals {
            ours: asked.outstanding.next_arrival(rate),
            held,
        }
    }

    pub(super) fn on_block(&mut self, key: PeerKey, index: u32, begin: u32, data: Bytes) {
        let req = BlockRequest {
            index,
            begin,
            length: data.len() as u32,
        };
        if self.is_other_zone(&self.peers[&key]) {
            self.downloaded_other_zone += data.len() as u64;
        }
        let State::Live(l) = &mut self.state else {
            return;
        };
        let peer = self.peers.get_mut(&key).expect("present");
        let peer_addr = peer.listen.unwrap_or(peer.addr);
        self.downloaded += data.len() as u64;
        self.down_rate.add(data.len() as u64);
        peer.down_rate.add(data.len() as u64);
        if !peer.outstanding.received(&req, Instant::now()) {
            // Late after a cancel, choke or timeout, or never asked for.
            self.discarded += data.len() as u64;
            return;
        }
        peer.blocks_received += 1;
        // It does serve this piece after all.
        peer.snubbed.clear(index as usize);
        match l.picker.received(&req) {
            // Another peer sent it first, or the piece is done.
            Received::Unwanted => self.discarded += data.len() as u64,
            outcome => {
                let blocks = l.picker.block_count(index);
                let piece = l
                    .assembly
                    .entry(index)
                    .or_insert_with(|| Assembly::new(blocks));
                // `req` was ours, so `begin` is block-aligned and in the piece.
                piece.blocks[(begin / BLOCK_SIZE) as usize] = Some(data);
                piece.senders[(begin / BLOCK_SIZE) as usize] = Some(peer_addr);
                piece.from.insert(key);
                // Endgame: others asked for the same block; call them off.
                for (k, other) in self.peers.iter_mut() {
                    if *k != key && other.outstanding.remove(&req) {
                        other.send(Message::Cancel(req));
                    }
                }
                if outcome == Received::PieceComplete {
                    verify(l, index, &self.job_tx);
                }
            }
        }
        self.fill_requests(key);
    }

    pub(super) fn on_verified(
        &mut self,
        index: u32,
        result: Result<bool, TorrentError>,
        digests: Option<Vec<[u8; 20]>>,
    ) {
        let State::Live(l) = &mut self.state else {
            return;
        };
        l.verifying -= 1;
        let (contributors, senders) = l
            .assembly
            .remove(&index)
            .map(|a| (a.from, a.senders))
            .unwrap_or_default();
        let liars = match (&result, &digests) {
            (Ok(true), Some(good)) => l.suspects.judge(index, good),
            _ => Vec::new(),
        };
        match result {
            Err(error) => return self.fail(error),
            Ok(true) => {
                l.picker.piece_verified(index);
                if let Some(z) = l.zoning.as_mut() {
                    z.we_have(index);
                }
                self.pieces_verified += 1;
                self.emit(Event::PieceVerified { index });
                for p in self.peers.values() {
                    p.send(Message::Have(index));
                }
                let keys: Vec<_> = self.peers.keys().copied().collect();
                for k in &keys {
                    self.update_interest(*k);
                }
                self.ban_liars(&liars);
                self.maybe_finish();
                for k in keys {
                    self.fill_requests(k);
                }
            }
            Ok(false) => {
                l.picker.piece_failed(index);
                self.hash_failures += 1;
                let peers = contributors
                    .iter()
                    .filter_map(|k| self.peers.get(k))
                    .map(|p| p.listen.unwrap_or(p.addr))
                    .collect();
                self.emit(Event::HashFailed { index, peers });
                // One contributor alone: it sent the bad data, ban it at
                // once (as libtorrent does). Several: keep each block's
                // digest and judge them when the piece verifies (smart
                // ban); only when too many pieces wait for that, count
                // strikes instead.
                if contributors.len() == 1 {
                    if let State::Live(l) = &mut self.state {
                        // Its owner failed alone: anyone may retry it now.
                        l.suspects.release_piece(index);
                    }
                    for k in contributors {
                        self.ban_peer(k, BanReason::CorruptPiece, false, "sent corrupt pieces");
                    }
                } else {
                    let owner = contributors
                        .iter()
                        .copied()
                        .find(|k| self.peers.contains_key(k));
                    let kept = match (&mut self.state, &digests) {
                        (State::Live(l), Some(d)) => {
                            let kept = l.suspects.keep(index, &senders, d);
                            if let (true, Some(o)) = (kept, owner) {
                                l.suspects.assign(index, o);
                            }
                            kept
                        }
                        _ => false,
                    };
                    if !kept {
                        for k in contributors {
                            self.ban_peer(k, BanReason::CorruptPiece, true, "sent corrupt pieces");
                        }
                    }
                }
                let keys: Vec<_> = self.peers.keys().copied().collect();
                for k in keys {
                    self.fill_requests(k);
                }
            }
        }
        self.publish_stats();
    }

    /// Bans the senders a smart ban found lying, connected or not.
    fn ban_liars(&mut self, liars: &[SocketAddr]) {
        for addr in liars {
            let key = self
                .peers
                .iter()
                .find(|(_, p)| p.listen.unwrap_or(p.addr) == *addr)
                .map(|(k, _)| *k);
            match key {
                Some(k) => {
                    self.ban_peer(k, BanReason::CorruptPiece, false, "sent a corrupt block");
                }
                None => {
                    if self.shared.ban(addr.ip(), BanReason::CorruptPiece) {
                        self.emit(Event::PeerBanned {
                            addr: *addr,
                            reason: BanReason::CorruptPiece,
                        });
                    }
                }
            }
        }
    }

    /// Takes back requests a peer left unanswered (see `crate::snub`), so
    /// others can serve them; closes peers that serve nothing at all.
    pub(super) fn expire_requests(&mut self) {
        let State::Live(l) = &mut self.state else {
            return;
        };
        let now = Instant::now();
        let mut stalled = Vec::new();
        let mut starved = Vec::new();
        for (k, p) in self.peers.iter_mut() {
            if p.outstanding.serves_nothing(now) {
                starved.push(*k);
                continue;
            }
            // Skipped while it answers later requests: snubbed for those
            // pieces, still asked for the others.
            let mut late = p.outstanding.take_overtaken(now);
            // Silent altogether: all of it goes to others this tick.
            let silent = p.outstanding.take_stalled(now, p.down_rate.get());
            if !silent.is_empty() {
                stalled.push(*k);
            }
            late.extend(silent);
            for req in late {
                l.picker.timed_out(&req);
                p.snubbed.set(req.index as usize);
                p.send(Message::Cancel(req));
            }
        }
        for k in starved {
            self.drop_peer(
                k,
                &format!(
                    "sent no block for {} s while owing some",
                    SERVES_NOTHING.as_secs()
                ),
            );
        }
        // Fastest first: the requests taken back go to the peers that
        // send them soonest.
        let mut keys: Vec<(PeerKey, f64)> = self
            .peers
            .iter()
            .filter(|(k, _)| !stalled.contains(k))
            .map(|(k, p)| (*k, p.down_rate.get()))
            .collect();
        keys.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (k, _) in keys {
            self.fill_requests(k);
        }
    }

    /// When every piece is verified: move the files into place.
    pub(super) fn maybe_finish(&mut self) {
        let State::Live(l) = &mut self.state else {
            return;
        };
        if !l.picker.is_complete() || l.finished {
            return;
        }
        let Some(placement) = l.placement.take() else {
            return self.on_finalized(Vec::new(), Ok(Vec::new()));
        };
        let storage = l.storage.clone();
        let jobs = self.job_tx.clone();
        tokio::task::spawn_blocking(move || {
            let job = match placement.finalize(&storage) {
                Ok(done) => Job::Finalized {
                    replaced: done.replaced,
                    result: Ok(done.kept_local),
                },
                Err(e) => Job::Finalized {
                    replaced: e.done.replaced,
                    result: Err(TorrentError::io(
                        "move into place",
                        &placement.target,
                        &e.source,
                    )),
                },
            };
            let _ = jobs.send(job);
        });
    }

    /// The files are in place; `replaced` lists the entries moved out of
    /// their way, `result` the targets that were kept because they changed
    /// while we downloaded.
    pub(super) fn on_finalized(
        &mut self,
        replaced: Vec<(PathBuf, PathBuf)>,
        result: Result<Vec<PathBuf>, TorrentError>,
    ) {
        // Reported even when finalizing failed later: the user must learn
        // where their entries went.
        for (from, to) in replaced {
            self.emit(Event::Replaced { from, to });
        }
        let kept = match result {
            Ok(kept) => kept,
            Err(error) => return self.fail(error),
        };
        let State::Live(l) = &mut self.state else {
            return;
        };
        if l.finished {
            return;
        }
        l.finished = true;
        if !kept.is_empty() {
            self.emit(Event::LocalEditsKept { paths: kept });
        }
        self.emit(Event::Completed);
        let keys: Vec<_> = self.peers.keys().copied().collect();
        for k in keys {
            if self.peers[&k].is_seed() {
                self.drop_peer(k, "both complete");
            } else {
                self.update_interest(k);
            }
        }
        self.publish_stats();
    }
}

/// We ask `peer` for nothing: it chokes us, has nothing we want, or we
/// are done.
fn not_asking(l: &Live, peer: &Peer) -> bool {
    peer.peer_choking || !peer.am_interested || l.finished
}

/// How many requests a top-up would send `peer` now (0 while we do not
/// ask it, or hash as many pieces as we may at once).
fn room_for(l: &Live, peer: &Peer) -> usize {
    if not_asking(l, peer) || l.verifying >= l.max_verifying {
        return 0;
    }
    peer.outstanding
        .room(depth(l, peer), Instant::now(), peer.down_rate.get())
}

/// Sends requests to a peer with room for them ([`room_for`]).
/// `zone_offer`, when given, is all this peer may be asked for (the zone
/// rule, see `crate::zone`).
fn fill(
    l: &mut Live,
    key: PeerKey,
    peer: &mut Peer,
    zone_offer: Option<&Bitfield>,
    arrivals: &Arrivals,
    rng: &mut impl rand::Rng,
) {
    if peer.rejected.count() > 0 || peer.snubbed.count() > 0 {
        // Ask this peer for what it did not refuse nor leave unanswered.
        // If that gives nothing (the refused pieces may be the started
        // ones, pinning our partial limit), forget refusals older than a
        // second and ask again: the peer that got them may be gone, or
        // never connected to us. The one-second tick retries, so this
        // never spins on the wire.
        let mut has = zone_offer
            .unwrap_or(&peer.has)
            .difference(&peer.rejected)
            .difference(&peer.snubbed);
        l.suspects.withhold(key, &mut has);
        if fill_from(l, peer, &has, arrivals, rng) > 0 {
            return;
        }
        if peer.rejected.count() > 0 {
            if peer.last_reject.elapsed() < REJECT_MEMORY {
                return;
            }
            peer.rejected.clear_all();
        }
    }
    // Pieces it left unanswered: again only those nobody else has (its
    // own announcement is the one count of availability).
    let mut has = zone_offer.unwrap_or(&peer.has).clone();
    l.suspects.withhold(key, &mut has);
    for i in peer.snubbed.iter_ones() {
        if l.picker.availability(i as u32) > 1 {
            has.clear(i);
        }
    }
    fill_from(l, peer, &has, arrivals, rng);
    // Nothing owed and nothing asked: not starving us, just idle.
    peer.outstanding.idle();
}

/// Sends up to a pipeline's worth of requests for pieces in `has`; returns
/// how many.
fn fill_from(
    l: &mut Live,
    peer: &mut Peer,
    has: &Bitfield,
    arrivals: &Arrivals,
    rng: &mut impl rand::Rng,
) -> usize {
    let want = peer
        .outstanding
        .room(depth(l, peer), Instant::now(), peer.down_rate.get());
    let outstanding = &peer.outstanding;
    let picks = l
        .picker
        .pick(has, want, |r| outstanding.contains(r), arrivals, rng);
    let n = picks.len();
    let now = Instant::now();
    for req in picks {
        peer.outstanding.insert(req, now);
        peer.send(Message::Request(req));
    }
    n
}

/// A piece being assembled: its blocks as they arrived (slices of the
/// connection's read buffer, never copied), and who sent them.
pub(super) struct Assembly {
    blocks: Vec<Option<Bytes>>,
    from: HashSet<PeerKey>,
    /// Who sent each block, by address (a peer may be gone by the time
    /// the piece is judged).
    senders: Vec<Option<SocketAddr>>,
}

impl Assembly {
    fn new(blocks: usize) -> Self {
        Self {
            blocks: vec![None; blocks],
            from: HashSet::new(),
            senders: vec![None; blocks],
        }
    }
}

/// Most failed pieces whose blocks are kept for a smart ban; beyond it a
/// failed piece with several senders is simply fetched again.
const MAX_SUSPECT_PIECES: usize = 256;

/// Most failures' worth of blocks kept for one suspect piece.
const MAX_SUSPECT_FAILURES: usize = 4;

/// Smart ban (as libtorrent does): when a piece with several senders fails
/// its hash, nobody can be blamed yet, and counting strikes against every
/// sender got an honest seed banned beside a liar that shared its pieces
/// (seen in `engine/tests/hostile.rs` when the liar was slowed to one block
/// a millisecond). So each block's digest is kept with its sender; once
/// the piece verifies, a sender whose block differs from the good one lied
/// and is banned, and nobody else is touched. About 64 bytes a block kept
/// (index, address, digest), at most 4 failures of 256 pieces.
///
/// A retried suspect piece goes to one of its senders alone (its owner),
/// so the retry either verifies (and judges) or fails with one sender (who
/// is banned at once): a liar that kept adding a block to every retry
/// could otherwise keep the piece failing for good.
#[derive(Default)]
pub(super) struct Suspects {
    pieces: HashMap<u32, Vec<(usize, SocketAddr, [u8; 20])>>,
    owners: HashMap<u32, (PeerKey, Instant)>,
}

/// How long a retried suspect piece waits for its owner alone: an owner
/// that does not serve it (choked, snubbed) holds it back no longer.
const OWNER_FOR: Duration = Duration::from_secs(10);

impl Suspects {
    /// Keeps the blocks of a failed piece; false when full.
    fn keep(&mut self, index: u32, senders: &[Option<SocketAddr>], digests: &[[u8; 20]]) -> bool {
        if !self.pieces.contains_key(&index) && self.pieces.len() >= MAX_SUSPECT_PIECES {
            return false;
        }
        let entry = self.pieces.entry(index).or_default();
        for (block, (sender, digest)) in senders.iter().zip(digests).enumerate() {
            // A piece failing again and again adds only what is new (a
            // liar's same bad block is kept once), and at most
            // MAX_SUSPECT_FAILURES failures' worth of blocks.
            if let Some(addr) = sender
                && entry.len() < senders.len() * MAX_SUSPECT_FAILURES
                && !entry.contains(&(block, *addr, *digest))
            {
                entry.push((block, *addr, *digest));
            }
        }
        true
    }

    fn is_suspect(&self, index: u32) -> bool {
        self.pieces.contains_key(&index)
    }

    /// Gives the retry of a suspect piece to `owner` alone.
    fn assign(&mut self, index: u32, owner: PeerKey) {
        self.owners.insert(index, (owner, Instant::now()));
    }

    /// Pieces only their owner may fetch: cleared from what `key` is asked.
    fn withhold(&self, key: PeerKey, has: &mut Bitfield) {
        for (&index, &(owner, since)) in &self.owners {
            if owner != key && since.elapsed() < OWNER_FOR {
                has.clear(index as usize);
            }
        }
    }

    /// Frees the pieces of a peer that is gone or banned, and of a piece
    /// that no longer needs one owner.
    pub(super) fn release(&mut self, key: PeerKey) {
        self.owners.retain(|_, (o, _)| *o != key);
    }

    fn release_piece(&mut self, index: u32) {
        self.owners.remove(&index);
    }

    /// The senders of blocks that differ from the verified piece's.
    fn judge(&mut self, index: u32, good: &[[u8; 20]]) -> Vec<SocketAddr> {
        self.owners.remove(&index);
        let mut liars: Vec<SocketAddr> = self
            .pieces
            .remove(&index)
            .unwrap_or_default()
            .into_iter()
            .filter(|(block, _, digest)| good.get(*block).is_some_and(|g| g != digest))
            .map(|(_, addr, _)| addr)
            .collect();
        liars.sort();
        liars.dedup();
        liars
    }
}

/// Zeros standing in for a piece's trailing padding, which is never
/// requested (the piece hash covers it: BEP 47).
static ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];

/// Hashes an assembled piece off the async workers and writes it if good.
/// The blocks go to the hash and to one vectored write as they came off
/// the socket: no piece-sized copy (loopback 1 GiB: that copy was ~5 % of
/// the downloader's CPU). Padding at the piece's end, not downloaded, is
/// hashed as zeros; the write drops it.
fn verify(l: &mut Live, index: u32, jobs: &tokio::sync::mpsc::UnboundedSender<Job>) {
    let Some(piece) = l.assembly.get_mut(&index) else {
        return;
    };
    // The picker reports a piece complete only when every block arrived.
    let mut blocks: Vec<Bytes> = piece.blocks.iter_mut().flat_map(Option::take).collect();
    let downloaded = blocks.len();
    // Per-block digests cost a second hash pass: only for a piece that
    // failed before with several senders (its good blocks judge them).
    // A piece from one sender alone needs none: that sender is banned.
    let suspect = l.suspects.is_suspect(index) || piece.from.len() > 1;
    let data: usize = blocks.iter().map(Bytes::len).sum();
    let mut pad = l.info.piece_size(index) as usize - data;
    while pad > 0 {
        let n = pad.min(ZEROS.len());
        blocks.push(Bytes::from_static(&ZEROS[..n]));
        pad -= n;
    }
    l.verifying += 1;
    let expected = l.info.pieces[index as usize];
    let storage = Arc::clone(&l.storage);
    let path = match &l.placement {
        Some(p) => p.part.clone(),
        None => std::path::PathBuf::from(&l.info.name),
    };
    let jobs = jobs.clone();
    tokio::task::spawn_blocking(move || {
        let mut hash = Sha1::new();
        for b in &blocks {
            hash.update(b);
        }
        let ok = hash.finalize().as_slice() == expected;
        let digests = (!ok || suspect).then(|| {
            blocks[..downloaded]
                .iter()
                .map(|b| Sha1::digest(b).into())
                .collect()
        });
        let result = if ok {
            storage
                .write_blocks_at(storage.piece_offset(index), &blocks)
                .map(|()| true)
                .map_err(|e| TorrentError::io("write", &path, &e))
        } else {
            Ok(false)
        };
        let _ = jobs.send(Job::Verified {
            index,
            result,
            digests,
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_smart_ban_names_only_the_senders_of_blocks_that_differ() {
        let honest: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let liar: SocketAddr = "127.0.0.3:1".parse().unwrap();
        let good = [[1u8; 20], [2; 20], [3; 20]];
        let mut s = Suspects::default();
        // Failed once: block 1 from the liar is bad; failed again: block 2.
        assert!(s.keep(
            7,
            &[Some(honest), Some(liar), Some(honest)],
            &[good[0], [9; 20], good[2]]
        ));
        assert!(s.keep(
            7,
            &[Some(honest), Some(honest), Some(liar)],
            &[good[0], good[1], [8; 20]]
        ));
        assert!(s.is_suspect(7));
        assert_eq!(s.judge(7, &good), vec![liar]);
        assert!(!s.is_suspect(7), "judged once");
        // A sender whose blocks all match is never named.
        assert!(s.keep(8, &[Some(honest), Some(liar)], &[good[0], good[1]]));
        assert_eq!(s.judge(8, &good), Vec::<SocketAddr>::new());
    }

    #[test]
    fn a_piece_failing_again_keeps_only_new_blocks_and_a_bounded_number() {
        let a: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:1".parse().unwrap();
        let mut s = Suspects::default();
        for _ in 0..10 {
            s.keep(1, &[Some(a), Some(b)], &[[1; 20], [2; 20]]);
        }
        assert_eq!(s.pieces[&1].len(), 2, "the same blocks again add nothing");
        for i in 0..100u8 {
            s.keep(1, &[Some(a), Some(b)], &[[i; 20], [i.wrapping_add(1); 20]]);
        }
        assert_eq!(s.pieces[&1].len(), 2 * MAX_SUSPECT_FAILURES);
    }

    #[test]
    fn suspects_are_bounded() {
        let a: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let mut s = Suspects::default();
        for i in 0..MAX_SUSPECT_PIECES as u32 {
            assert!(s.keep(i, &[Some(a)], &[[0; 20]]));
        }
        assert!(!s.keep(u32::MAX, &[Some(a)], &[[0; 20]]), "full");
        assert!(
            s.keep(0, &[Some(a)], &[[1; 20]]),
            "a kept piece may fail again"
        );
    }

    const MIB: f64 = 1024.0 * 1024.0;

    #[test]
    fn slow_start_grows_with_blocks_received() {
        assert_eq!(pipeline_depth(0.0, 0.0, 0, None, 1), 16);
        assert_eq!(pipeline_depth(0.0, 0.0, 100, None, 1), 116);
        assert_eq!(pipeline_depth(0.0, 0.0, 10_000, Some(2000), 1), 512);
    }

    #[test]
    fn lan_keeps_an_eighth_of_a_second() {
        // 8 MiB/s for 0.125 s = 1 MiB = 64 blocks; a 1 ms round trip
        // does not change it.
        assert_eq!(pipeline_depth(8.0 * MIB, 0.001, 999, None, 1), 64);
        assert_eq!(pipeline_depth(8.0 * MIB, 0.0, 999, None, 1), 64);
    }

    #[test]
    fn long_round_trip_keeps_four_of_them() {
        // 8 MiB/s with 100 ms: 0.4 s of it, 205 blocks.
        assert_eq!(pipeline_depth(8.0 * MIB, 0.1, 999, None, 1), 204);
    }

    #[test]
    fn connections_to_one_host_share_the_floor() {
        // 20 torrents' connections to one host: two blocks each, not 16.
        assert_eq!(pipeline_depth(1.0, 0.0, 0, None, 20), MIN_SHARED_DEPTH);
        assert_eq!(pipeline_depth(0.0, 0.0, 0, None, 20), MIN_SHARED_DEPTH);
        assert_eq!(pipeline_depth(0.0, 0.0, 10, None, 20), 12);
        assert_eq!(pipeline_depth(1.0, 0.0, 0, None, 4), 4);
        assert_eq!(pipeline_depth(0.0, 0.0, 0, None, 0), 16, "as one");
        // A fast connection keeps its rate's worth whatever it shares.
        assert_eq!(pipeline_depth(8.0 * MIB, 0.0, 999, None, 20), 64);
    }

    #[test]
    fn a_skipping_peer_keeps_eight_pieces_requested() {
        assert_eq!(skipper_depth(16, 16, None), 128);
        assert_eq!(skipper_depth(300, 16, Some(500)), 300, "never less");
        assert_eq!(skipper_depth(16, 256, None), DEFAULT_REQQ);
        assert_eq!(skipper_depth(16, 256, Some(5000)), MAX_DEPTH);
        assert_eq!(skipper_depth(16, 16, Some(20)), 20, "within reqq");
    }

    #[test]
    fn bounded_by_limits_and_reqq() {
        assert_eq!(pipeline_depth(1.0, 0.0, 0, None, 1), 16);
        assert_eq!(pipeline_depth(1000.0 * MIB, 0.0, 0, Some(5000), 1), 512);
        assert_eq!(pipeline_depth(1000.0 * MIB, 0.0, 0, None, 1), 250);
        assert_eq!(pipeline_depth(1000.0 * MIB, 0.0, 0, Some(0), 1), 1);
        assert_eq!(pipeline_depth(0.0, 0.0, 0, Some(8), 1), 8);
    }
}
