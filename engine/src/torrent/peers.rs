//! The peer table: one entry per connection, and what each wire message
//! does to it.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::download::pipeline_depth;
use super::metadata::{self, Fetched};
use super::{State, Torrent, UNCHOKE_SLOTS};
use crate::admission::{self, Admit, Direction, Standing};
use crate::bans::BanReason;
use crate::bitfield::Bitfield;
use crate::choker::{self, Candidate};
use crate::error::TorrentError;
use crate::event::Event;
use crate::hosts::HostConn;
use crate::metainfo::Info;
use crate::peer::{self, PeerCmd, PeerEvent, PeerKey};
use crate::rate::RateEstimate;
use crate::snub::Requests;
use crate::wire::{BlockRequest, ExtHandshake, Handshake, Message, MetadataMsg, PexMsg};

/// Our extension ids (BEP 10): what peers must use when sending to us.
pub(super) const UT_METADATA: u8 = 1;
pub(super) const UT_PEX: u8 = 2;
/// PEX to p2pfile peers goes out this often when there is news, so
/// downloaders that all start from one magnet learn of each other within a
/// fraction of a second instead of each pulling its first copy of every
/// piece from the seed alone (8 hosts at 1 Gbit/s, 256 MiB: with 2 s the
/// downloaders met each other after ~2.2 s of a ~4.7 s run).
pub(super) const PEX_FAST: Duration = Duration::from_millis(250);
/// Other clients: libtorrent disconnects a peer that sends more than six
/// PEX messages in a minute, so at most four.
const PEX_SLOW: Duration = Duration::from_secs(15);
/// Largest block we serve; clients ask 16 KiB, some allow up to 128 KiB.
const MAX_SERVED_BLOCK: u32 = 128 * 1024;
/// Times one connection is served the same block; later requests for it
/// are refused. A downloader asks a block again only after a choke, a
/// reject or a request timeout dropped it: once or twice in a run. A peer
/// asking for one block over and over makes us read and send the same
/// bytes for nothing: before this limit, 1,000 requests for one block were
/// served 576 to 832 times in 5 s (the rest fell off the upload queue);
/// now 3 (engine/tests/hostile.rs). Requests we refuse for reasons of our
/// own (choked, a piece we lack, a seed's first-upload rule) do not count:
/// honest clients ask again after every such reject, aria2 and libtorrent
/// many times over while a seed holds a piece back for its owner.
const MAX_REQUESTS_PER_BLOCK: u8 = 3;
/// Requests for one block that make a flood and ban the peer
/// ([`BanReason::RequestFlood`]): the served ones and the repeats after
/// [`MAX_REQUESTS_PER_BLOCK`], well past what any honest re-request
/// reaches, soon enough that a flood costs a few messages.
const FLOOD_REQUESTS: u8 = 16;
/// Distinct blocks remembered per connection for the two limits above.
/// Beyond it the memory is cleared: a downloader asking for many distinct
/// blocks is downloading, and this bounds the table to ~100 KiB a peer.
const REQUEST_MEMORY: usize = 4096;
/// One connection as the coordinator sees it.
pub(super) struct Peer {
    pub addr: SocketAddr,
    /// Where the peer accepts connections (dialed address, or the port
    /// from its extension handshake).
    pub listen: Option<SocketAddr>,
    pub peer_id: [u8; 20],
    pub tx: mpsc::UnboundedSender<PeerCmd>,
    pub fast: bool,
    pub ext: Option<ExtHandshake>,
    /// Pieces the peer has; empty until the info dictionary is known.
    pub has: Bitfield,
    /// What the peer announced before we knew the piece count.
    pub early_bitfield: Option<Bytes>,
    pub early_all: bool,
    pub early_haves: Vec<u32>,
    pub am_choking: bool,
    pub am_interested: bool,
    pub peer_choking: bool,
    pub peer_interested: bool,
    /// Requests we sent and have not seen answered, with their timers.
    pub outstanding: Requests,
    pub down_rate: RateEstimate,
    /// The kernel's smoothed round-trip time of the connection in µs, kept
    /// up to date by its reader task; 0 until known.
    pub rtt_us: Arc<AtomicU32>,
    /// Blocks received from this peer (drives slow start).
    pub blocks_received: usize,
    pub uploaded: u64,
    /// The peer has announced what it has (bitfield, HAVE-ALL/NONE or a HAVE).
    pub announced: bool,
    /// It lacked pieces when it first announced.
    pub seen_incomplete: bool,
    /// Pieces this peer rejected our requests for (a seed sending each
    /// piece once); we ask others for them, or it again when nobody else can.
    pub rejected: Bitfield,
    /// When the peer last refused a request.
    pub last_reject: Instant,
    /// Pieces this peer left a request for unanswered (snubbed us for);
    /// asked of others, and of it again only when nobody else has them.
    /// Forgotten when it sends a block of the piece.
    pub snubbed: Bitfield,
    pub pex_sent: HashSet<SocketAddrV4>,
    pub last_pex: Option<Instant>,
    /// Who opened the connection (each side has its own slot budget).
    pub direction: Direction,
    /// When the connection was admitted.
    pub since: Instant,
    /// It has sent something beyond keep-alives and the extension
    /// handshake; a peer silent past `admission::SILENT_GRACE` is closed.
    pub spoken: bool,
    /// The last interest, request, block or extension message from it.
    pub last_useful: Option<Instant>,
    /// How often we queued each block for the peer, and then how often it
    /// asked again past [`MAX_REQUESTS_PER_BLOCK`], up to
    /// [`REQUEST_MEMORY`] blocks.
    pub requested: HashMap<BlockRequest, u8>,
    /// This connection among the session's to the same address.
    pub host: HostConn,
}

impl Peer {
    pub(super) fn send(&self, msg: Message) {
        let _ = self.tx.send(PeerCmd::Send(msg));
    }

    pub(super) fn is_seed(&self) -> bool {
        !self.has.is_empty() && self.has.is_full()
    }

    fn ext_id(&self, name: &str) -> Option<u8> {
        self.ext.as_ref().and_then(|e| e.ext_id(name))
    }

    fn is_p2pfile(&self) -> bool {
        self.ext
            .as_ref()
            .and_then(|e| e.client.as_deref())
            .is_some_and(|c| c.starts_with("p2pfile"))
    }

    /// Requests to keep in flight; see [`pipeline_depth`].
    pub(super) fn queue_depth(&self) -> usize {
        let reqq = self.ext.as_ref().and_then(|e| e.reqq).map(|q| q as usize);
        let rtt = self.rtt_us.load(Ordering::Relaxed) as f64 / 1e6;
        pipeline_depth(
            self.down_rate.get(),
            rtt,
            self.blocks_received,
            reqq,
            self.host.shared_by(),
        )
    }
}

impl Torrent {
    fn info(&self) -> Option<&Arc<Info>> {
        match &self.state {
            State::Live(l) => Some(&l.info),
            State::Checking(info) => Some(info),
            _ => None,
        }
    }

    /// Registers a handshaken connection and starts its tasks.
    pub(super) fn add_connection(
        &mut self,
        dialed: Option<SocketAddr>,
        stream: TcpStream,
        hs: Handshake,
    ) {
        let Ok(addr) = stream.peer_addr() else {
            return;
        };
        if self.shared.is_banned(addr.ip()) {
            // Banned while its connection or handshake was under way.
            return tracing::debug!(%addr, "refused: banned");
        }
        let ours = self.shared.peer_id;
        if hs.peer_id == ours || matches!(self.state, super::State::Failed) {
            if let Some(d) = dialed.and_then(|d| self.addrs.get_mut(&d)) {
                // Our own address, learned from the DHT: never dial it again.
                d.banned = hs.peer_id == ours;
            }
            return;
        }
        if let Some((&old, _)) = self.peers.iter().find(|(_, p)| p.peer_id == hs.peer_id) {
            // Both sides dialed at once: keep the connection opened by the
            // lower peer id, a choice both ends make alike.
            let new_by_lower = dialed.is_some() == (ours < hs.peer_id);
            if !new_by_lower {
                return;
            }
            self.drop_peer(old, "duplicate connection");
        }
        let direction = match dialed {
            Some(_) => Direction::Outgoing,
            None => Direction::Incoming,
        };
        let now = Instant::now();
        match admission::admit(&self.standings(), addr.ip(), direction, now) {
            Admit::Accept => {}
            Admit::Displace(old) => self.drop_peer(old, "displaced by a new peer"),
            Admit::Refuse(why) => {
                tracing::debug!(%addr, "connection refused: {why}");
                if let Some(a) = dialed.and_then(|d| self.addrs.get_mut(&d)) {
                    // Dial it again later, not at the next tick.
                    a.failures += 1;
                }
                return;
            }
        }
        let key = self.next_key;
        self.next_key += 1;
        let fast = hs.supports_fast();
        let greeting = dialed
            .is_none()
            .then(|| Handshake::new(self.info_hash.0, ours));
        let (tx, rtt_us) = peer::spawn(
            key,
            stream,
            greeting,
            fast,
            self.peer_tx.clone(),
            self.shared.upload.clone(),
            self.shared.download.clone(),
        );
        let mut peer = Peer {
            addr,
            listen: dialed,
            peer_id: hs.peer_id,
            tx,
            fast,
            ext: None,
            has: Bitfield::new(0),
            early_bitfield: None,
            early_all: false,
            early_haves: Vec::new(),
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            outstanding: Requests::new(),
            down_rate: RateEstimate::default(),
            rtt_us,
            blocks_received: 0,
            uploaded: 0,
            announced: false,
            seen_incomplete: false,
            rejected: Bitfield::new(0),
            last_reject: Instant::now(),
            snubbed: Bitfield::new(0),
            pex_sent: HashSet::new(),
            last_pex: None,
            direction,
            host: self.shared.hosts.register(addr.ip()),
            since: now,
            spoken: false,
            last_useful: None,
            requested: HashMap::new(),
        };
        if hs.supports_extensions() {
            let ext = ExtHandshake {
                m: self.our_extensions(),
                metadata_size: self
                    .info()
                    .filter(|_| self.metadata)
                    .map(|i| i.as_bytes().len() as u32),
                listen_port: Some(self.shared.listen_port),
                client: Some(concat!("p2pfile/", env!("CARGO_PKG_VERSION")).to_string()),
                reqq: Some(peer::MAX_QUEUED_UPLOADS as u32),
                upload_only: false,
                zone: self.shared.zone.clone(),
            };
            peer.send(Message::Extended {
                id: 0,
                payload: ext.encode().into(),
            });
        }
        match &self.state {
            State::Live(l) => {
                let have = l.picker.have();
                peer.has = Bitfield::new(have.len());
                peer.rejected = Bitfield::new(have.len());
                peer.snubbed = Bitfield::new(have.len());
                if fast && have.is_full() {
                    peer.send(Message::HaveAll);
                } else if fast && have.count() == 0 {
                    peer.send(Message::HaveNone);
                } else if have.count() > 0 {
                    peer.send(Message::Bitfield(Bytes::copy_from_slice(have.as_bytes())));
                }
            }
            _ if fast => peer.send(Message::HaveNone),
            _ => {}
        }
        if let Some(d) = dialed {
            self.addrs.entry(d).or_default().connected = true;
        }
        self.peers.insert(key, peer);
        self.emit(Event::PeerConnected { addr });
    }

    pub(super) fn drop_peer(&mut self, key: PeerKey, reason: &str) {
        self.zone_news(key, None);
        let Some(peer) = self.peers.remove(&key) else {
            return;
        };
        tracing::debug!(
            addr = %peer.addr,
            uploaded = peer.uploaded,
            blocks_received = peer.blocks_received,
            "peer gone: {reason}"
        );
        if let Some(a) = peer.listen.and_then(|l| self.addrs.get_mut(&l)) {
            a.connected = false;
            a.seed = peer.is_seed();
        }
        match &mut self.state {
            State::Live(l) => {
                l.picker.remove_peer(&peer.has);
                l.suspects.release(key);
                for req in peer.outstanding.iter() {
                    l.picker.cancelled(req);
                }
            }
            State::Metadata(fetch) => fetch.peer_gone(key),
            _ => {}
        }
        self.emit(Event::PeerDisconnected {
            addr: peer.addr,
            reason: reason.to_string(),
        });
        // Dropping `peer.tx` ends the writer, which closes the socket.
    }

    pub(super) fn on_peer_event(&mut self, key: PeerKey, ev: PeerEvent) {
        match ev {
            PeerEvent::Closed(reason) => self.drop_peer(key, &reason),
            PeerEvent::Violation(why) => self.violation(key, &why),
            PeerEvent::SourceChanged(path) => self.source_changed(path),
            PeerEvent::Uploaded(n) => {
                self.uploaded += n;
                self.up_rate.add(n);
                if let Some(p) = self.peers.get_mut(&key) {
                    p.uploaded += n;
                }
            }
            PeerEvent::Message(msg) => {
                if self.peers.contains_key(&key)
                    && let Err(why) = self.on_message(key, msg)
                {
                    self.violation(key, &why);
                }
            }
        }
    }

    /// The peer broke the protocol: close it, and ban its address the
    /// second time (see [`BanReason::strikes`]), so a broken client is
    /// not redialled every second.
    fn violation(&mut self, key: PeerKey, why: &str) {
        if !self.ban_peer(key, BanReason::ProtocolViolation, true, why) {
            self.drop_peer(key, why);
        }
    }

    /// Handles one message; an `Err` closes the connection (malformed or
    /// hostile input never takes the process down).
    fn on_message(&mut self, key: PeerKey, msg: Message) -> Result<(), String> {
        self.note_activity(key, &msg);
        match msg {
            Message::KeepAlive
            | Message::Port(_)
            | Message::SuggestPiece(_)
            | Message::AllowedFast(_) => {}
            Message::Choke => {
                let peer = self.peers.get_mut(&key).expect("present");
                peer.peer_choking = true;
                if peer.fast {
                    // BEP 6: with the fast extension a choke no longer
                    // cancels our requests; the peer rejects each it will
                    // not serve, and may still serve the others. Peers
                    // choke one that said it is not interested, then
                    // unchoke it when it is again: our requests sent in
                    // between were dropped here, asked of others, and
                    // their blocks, still sent, thrown away as late (7-10 %
                    // of every byte received in the 20-artifact lab).
                    // One that neither serves nor rejects them stalls
                    // (`crate::snub`).
                    return Ok(());
                }
                let lost = peer.outstanding.drain();
                if let State::Live(l) = &mut self.state {
                    for req in &lost {
                        l.picker.cancelled(req);
                    }
                }
            }
            Message::Unchoke => {
                self.peers.get_mut(&key).expect("present").peer_choking = false;
                self.fill_requests(key);
            }
            Message::Interested => {
                let unchoked = self.peers.values().filter(|p| !p.am_choking).count();
                let peer = self.peers.get_mut(&key).expect("present");
                peer.peer_interested = true;
                if peer.am_choking && unchoked < UNCHOKE_SLOTS {
                    peer.am_choking = false;
                    peer.send(Message::Unchoke);
                }
            }
            Message::NotInterested => {
                let peer = self.peers.get_mut(&key).expect("present");
                peer.peer_interested = false;
                if !peer.am_choking {
                    peer.am_choking = true;
                    peer.send(Message::Choke);
                }
            }
            Message::Have(index) => self.on_have(key, Some(index))?,
            Message::HaveAll => self.on_have(key, None)?,
            Message::Bitfield(bytes) => self.on_bitfield(key, Some(bytes))?,
            Message::HaveNone => self.on_bitfield(key, None)?,
            Message::Request(req) => self.on_request(key, req),
            Message::Cancel(req) => {
                let _ = self.peers[&key].tx.send(PeerCmd::CancelUpload(req));
            }
            Message::RejectRequest(req) => {
                let peer = self.peers.get_mut(&key).expect("present");
                peer.rejected.set(req.index as usize);
                peer.last_reject = Instant::now();
                if peer.outstanding.remove(&req)
                    && let State::Live(l) = &mut self.state
                {
                    l.picker.cancelled(&req);
                }
                self.fill_requests(key);
            }
            Message::Piece { index, begin, data } => self.on_block(key, index, begin, data),
            Message::Extended { id, payload } => self.on_extended(key, id, payload)?,
        }
        Ok(())
    }

    /// Records what a message says about the peer's use (see `admission`).
    fn note_activity(&mut self, key: PeerKey, msg: &Message) {
        let peer = self.peers.get_mut(&key).expect("present");
        match msg {
            Message::KeepAlive | Message::Port(_) | Message::Extended { id: 0, .. } => {}
            Message::Interested
            | Message::Request(_)
            | Message::Piece { .. }
            | Message::Extended { .. } => {
                peer.spoken = true;
                peer.last_useful = Some(Instant::now());
            }
            _ => peer.spoken = true,
        }
    }

    /// The connected peers as admission sees them: a peer is useful while
    /// it has pieces we want, wants ours and waits for an upload slot, has
    /// our requests outstanding, or offers the metadata we are fetching.
    pub(super) fn standings(&self) -> Vec<Standing<PeerKey>> {
        let fetching = matches!(self.state, State::Metadata(_));
        self.peers
            .iter()
            .map(|(k, p)| Standing {
                key: *k,
                ip: p.addr.ip(),
                direction: p.direction,
                since: p.since,
                useful: p.am_interested
                    || (p.peer_interested && p.am_choking)
                    || !p.outstanding.is_empty()
                    || (fetching && p.ext.as_ref().is_some_and(|e| e.metadata_size.is_some())),
                last_useful: p.last_useful,
            })
            .collect()
    }

    /// Closes peers that said nothing within `admission::SILENT_GRACE`.
    pub(super) fn close_silent(&mut self, now: Instant) {
        let silent: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| admission::silent_too_long(p.since, p.spoken, now))
            .map(|(k, _)| *k)
            .collect();
        for key in silent {
            self.drop_peer(key, "said nothing after its handshake");
        }
    }

    /// `Have(i)`, or `HaveAll` when `index` is `None`.
    fn on_have(&mut self, key: PeerKey, index: Option<u32>) -> Result<(), String> {
        let peer = self.peers.get_mut(&key).expect("present");
        let State::Live(l) = &mut self.state else {
            match index {
                Some(i) => peer.early_haves.push(i),
                None => peer.early_all = true,
            }
            return Ok(());
        };
        match index {
            Some(i) => {
                if i as usize >= l.picker.have().len() {
                    return Err(format!("have for piece {i} out of range"));
                }
                if peer.has.set(i as usize) {
                    l.picker.add_availability(i);
                }
            }
            None => {
                l.picker.remove_peer(&peer.has);
                peer.has = Bitfield::full(l.picker.have().len());
                l.picker.add_peer(&peer.has);
            }
        }
        self.zone_news(key, index);
        self.after_has_changed(key);
        Ok(())
    }

    /// `Bitfield`, or `HaveNone` when `bytes` is `None`.
    fn on_bitfield(&mut self, key: PeerKey, bytes: Option<Bytes>) -> Result<(), String> {
        let peer = self.peers.get_mut(&key).expect("present");
        let State::Live(l) = &mut self.state else {
            peer.early_bitfield = bytes;
            peer.early_all = false;
            return Ok(());
        };
        let n = l.picker.have().len();
        let has = match bytes {
            Some(b) => Bitfield::from_bytes(&b, n).ok_or("malformed bitfield")?,
            None => Bitfield::new(n),
        };
        l.picker.remove_peer(&peer.has);
        peer.has = has;
        l.picker.add_peer(&peer.has);
        self.zone_news(key, None);
        self.after_has_changed(key);
        Ok(())
    }

    /// The info dictionary became known and storage is ready: apply what
    /// peers announced early, and tell them what we have.
    pub(super) fn peers_went_live(&mut self) {
        let keys: Vec<_> = self.peers.keys().copied().collect();
        for key in keys {
            let State::Live(l) = &mut self.state else {
                return;
            };
            let n = l.picker.have().len();
            let peer = self.peers.get_mut(&key).expect("present");
            let mut has = if peer.early_all {
                Bitfield::full(n)
            } else {
                match peer.early_bitfield.take() {
                    Some(b) => match Bitfield::from_bytes(&b, n) {
                        Some(has) => has,
                        None => {
                            self.drop_peer(key, "malformed bitfield");
                            continue;
                        }
                    },
                    None => Bitfield::new(n),
                }
            };
            for i in peer.early_haves.drain(..) {
                has.set(i as usize);
            }
            peer.has = has;
            peer.rejected = Bitfield::new(n);
            peer.snubbed = Bitfield::new(n);
            l.picker.add_peer(&peer.has);
            for i in l.picker.have().iter_ones() {
                peer.send(Message::Have(i as u32));
            }
            self.zone_news(key, None);
            self.after_has_changed(key);
        }
    }

    /// After a peer's pieces changed: note completion, update interest,
    /// request, and drop pointless seed-to-seed connections.
    fn after_has_changed(&mut self, key: PeerKey) {
        let finished = self.finished();
        let peer = self.peers.get_mut(&key).expect("present");
        if !peer.announced {
            peer.announced = true;
            peer.seen_incomplete = !peer.is_seed();
        }
        if peer.is_seed() {
            if peer.seen_incomplete {
                if self.completed_peers.insert(peer.peer_id) {
                    let addr = peer.listen.unwrap_or(peer.addr);
                    let zone = peer.zone().map(str::to_string);
                    self.emit(Event::PeerCompleted { addr, zone });
                }
            } else {
                self.seeds_seen.insert(peer.peer_id);
            }
            if finished {
                self.drop_peer(key, "both complete");
                return;
            }
        }
        self.update_interest(key);
        self.fill_requests(key);
    }

    pub(super) fn update_interest(&mut self, key: PeerKey) {
        let State::Live(l) = &self.state else {
            return;
        };
        let peer = self.peers.get_mut(&key).expect("present");
        let want = !l.finished && l.picker.wants_any(&peer.has);
        if want != peer.am_interested {
            peer.am_interested = want;
            peer.send(if want {
                Message::Interested
            } else {
                Message::NotInterested
            });
        }
    }

    fn on_request(&mut self, key: PeerKey, req: BlockRequest) {
        let peer = self.peers.get_mut(&key).expect("present");
        let served = peer.requested.get(&req).copied().unwrap_or(0);
        if served >= MAX_REQUESTS_PER_BLOCK {
            // Served that often already: this is a repeat, not a retry.
            let asked = served.saturating_add(1);
            peer.requested.insert(req, asked);
            if asked >= FLOOD_REQUESTS {
                let why = format!("asked for one block {asked} times");
                if !self.ban_peer(key, BanReason::RequestFlood, false, &why) {
                    self.drop_peer(key, &why);
                }
            } else if peer.fast {
                peer.send(Message::RejectRequest(req));
            }
            return;
        }
        let peers = &self.peers;
        let peer = &peers[&key];
        let State::Live(l) = &mut self.state else {
            if peer.fast {
                peer.send(Message::RejectRequest(req));
            }
            return;
        };
        let valid = !peer.am_choking
            && l.picker.have().get(req.index as usize)
            && req.length > 0
            && req.length <= MAX_SERVED_BLOCK
            && req.begin as u64 + req.length as u64 <= l.info.piece_size(req.index) as u64;
        let all_sent = l.first_upload.all_sent();
        let unsent = l.first_upload.unsent();
        let now = Instant::now();
        let mut serve = valid && (!l.finished || !peer.fast);
        if valid && !serve {
            let mut first_copies = self.shared.first_copies.lock().expect("first copies lock");
            let others_first = first_copies.others_sending(self.info_hash, now);
            serve = l
                .first_upload
                .allows(req.index, key, |k| peers.contains_key(k), others_first);
            if l.first_upload.unsent() < unsent {
                first_copies.sent(self.info_hash, now);
            }
            if !all_sent && l.first_upload.all_sent() {
                first_copies.done(self.info_hash);
                tracing::debug!(info_hash = %self.info_hash, "every piece has been uploaded once");
            }
        }
        if serve {
            let _ = peer.tx.send(PeerCmd::Upload(req, l.storage.clone()));
            let peer = self.peers.get_mut(&key).expect("present");
            if peer.requested.len() >= REQUEST_MEMORY && !peer.requested.contains_key(&req) {
                peer.requested.clear();
            }
            peer.requested.insert(req, served + 1);
        } else if peer.fast {
            peer.send(Message::RejectRequest(req));
        }
    }

    fn on_extended(&mut self, key: PeerKey, id: u8, payload: Bytes) -> Result<(), String> {
        match id {
            0 => {
                let ext = ExtHandshake::decode(&payload)
                    .map_err(|e| format!("extension handshake: {e}"))?;
                let peer = self.peers.get_mut(&key).expect("present");
                if let Some(port) = ext.listen_port.filter(|p| *p != 0) {
                    let listen = SocketAddr::new(peer.addr.ip(), port);
                    if peer.listen.is_none() {
                        peer.listen = Some(listen);
                        self.addrs.entry(listen).or_default().connected = true;
                    }
                }
                let size = ext.metadata_size.filter(|_| self.metadata);
                let names: Vec<String> = self
                    .shared
                    .extensions
                    .iter()
                    .filter(|n| ext.ext_id(n).is_some())
                    .cloned()
                    .collect();
                let peer = self.peers.get_mut(&key).expect("present");
                let addr = peer.addr;
                let first = peer.ext.is_none();
                peer.ext = Some(ext);
                // It may have told its zone.
                self.zone_news(key, None);
                if first && !names.is_empty() {
                    self.emit(Event::ExtensionsReady { addr, names });
                }
                if let (State::Metadata(fetch), Some(size)) = (&mut self.state, size) {
                    if !fetch.offer_size(key, size) {
                        tracing::debug!(%addr, size, "metadata size refused");
                    }
                    self.request_metadata();
                }
                self.send_pex_to(key, true);
            }
            UT_METADATA if self.metadata => {
                let msg = MetadataMsg::decode(&payload).map_err(|e| format!("ut_metadata: {e}"))?;
                match msg {
                    MetadataMsg::Request { piece } => {
                        let answer = metadata::serve(self.info().map(|i| i.as_bytes()), piece);
                        let peer = &self.peers[&key];
                        if let Some(their_id) = peer.ext_id("ut_metadata") {
                            peer.send(Message::Extended {
                                id: their_id,
                                payload: answer.encode().into(),
                            });
                        }
                    }
                    other => {
                        let State::Metadata(fetch) = &mut self.state else {
                            return Ok(());
                        };
                        match fetch.on_message(key, other, self.content_hash) {
                            Fetched::Pending => self.request_metadata(),
                            Fetched::Bad(keys) => {
                                let why = "sent metadata that does not match the info-hash";
                                for bad in keys {
                                    if !self.ban_peer(bad, BanReason::BadMetadata, false, why) {
                                        self.drop_peer(bad, why);
                                    }
                                }
                                self.request_metadata();
                            }
                            Fetched::Complete(raw) => match Info::from_bytes(&raw) {
                                Ok(info) => self.got_info(Arc::new(info)),
                                Err(e) => self.fail(TorrentError::BadMetadata(e.to_string())),
                            },
                        }
                    }
                }
            }
            UT_PEX => {
                let pex = PexMsg::decode(&payload).map_err(|e| format!("ut_pex: {e}"))?;
                self.learn_addrs(pex.added.into_iter().map(SocketAddr::V4).collect());
            }
            id => match self.shared.extension_name(id) {
                Some(name) => {
                    let addr = self.peers[&key].addr;
                    let name = name.to_string();
                    self.emit(Event::ExtensionMessage {
                        addr,
                        name,
                        payload,
                    });
                }
                // An id we never offered (or ut_metadata when we keep our
                // metadata): a confused peer, not a reason to lose it.
                None => tracing::debug!(id, "extension message with an id we did not offer"),
            },
        }
        Ok(())
    }

    /// The extensions we offer: BEP 9 unless this torrent keeps its
    /// metadata to itself, BEP 11, and the session's registered ones.
    fn our_extensions(&self) -> std::collections::BTreeMap<String, u8> {
        let mut m = std::collections::BTreeMap::new();
        if self.metadata {
            m.insert("ut_metadata".to_string(), UT_METADATA);
        }
        m.insert("ut_pex".to_string(), UT_PEX);
        for name in &self.shared.extensions {
            let id = self.shared.extension_id(name).expect("registered");
            m.insert(name.clone(), id);
        }
        m
    }

    /// Sends a message on a registered extension to the connected peer at
    /// `addr`, if it speaks it.
    pub(super) fn send_extension(&mut self, addr: SocketAddr, name: &str, payload: Bytes) {
        let Some(peer) = self.peers.values().find(|p| p.addr == addr) else {
            return tracing::debug!(%addr, name, "extension message for a peer that is gone");
        };
        match peer.ext_id(name) {
            Some(id) => peer.send(Message::Extended { id, payload }),
            None => tracing::debug!(%addr, name, "peer does not speak the extension"),
        }
    }

    /// Sends outstanding metadata requests (magnet phase).
    pub(super) fn request_metadata(&mut self) {
        let State::Metadata(fetch) = &mut self.state else {
            return;
        };
        let can_ask: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.ext_id("ut_metadata").is_some())
            .map(|(k, _)| *k)
            .collect();
        for (key, piece) in fetch.requests(&can_ask, Instant::now()) {
            let peer = &self.peers[&key];
            let id = peer.ext_id("ut_metadata").expect("filtered");
            peer.send(Message::Extended {
                id,
                payload: MetadataMsg::Request { piece }.encode().into(),
            });
        }
    }

    pub(super) fn send_pex(&mut self) {
        let keys: Vec<_> = self.peers.keys().copied().collect();
        for key in keys {
            self.send_pex_to(key, false);
        }
    }

    /// Tells a peer which other peers we are connected to (BEP 11).
    fn send_pex_to(&mut self, key: PeerKey, first: bool) {
        let current: HashSet<SocketAddrV4> = self
            .peers
            .iter()
            .filter(|(k, _)| **k != key)
            .filter_map(|(_, p)| match p.listen {
                Some(SocketAddr::V4(a)) => Some(a),
                _ => None,
            })
            .collect();
        let peer = self.peers.get_mut(&key).expect("present");
        let Some(id) = peer.ext_id("ut_pex") else {
            return;
        };
        let interval = if peer.is_p2pfile() {
            PEX_FAST
        } else {
            PEX_SLOW
        };
        if !first && peer.last_pex.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        let added: Vec<_> = current.difference(&peer.pex_sent).copied().collect();
        let dropped: Vec<_> = peer.pex_sent.difference(&current).copied().collect();
        if added.is_empty() && dropped.is_empty() {
            return;
        }
        peer.pex_sent = current;
        peer.last_pex = Some(Instant::now());
        peer.send(Message::Extended {
            id,
            payload: PexMsg { added, dropped }.encode().into(),
        });
    }

    /// Recomputes the unchoke set.
    pub(super) fn rechoke(&mut self) {
        let ours = self.shared.zone.as_deref();
        let candidates: Vec<Candidate<PeerKey>> = self
            .peers
            .iter()
            .map(|(k, p)| Candidate {
                key: *k,
                interested: p.peer_interested,
                download_rate: p.down_rate.get(),
                uploaded: p.uploaded,
                same_zone: ours.is_some_and(|z| p.in_zone(z)),
            })
            .collect();
        let finished = self.finished();
        let unchoke: HashSet<PeerKey> =
            choker::unchoke_set(&candidates, UNCHOKE_SLOTS, finished, &mut self.rng)
                .into_iter()
                .collect();
        for (k, p) in self.peers.iter_mut() {
            let choke = !unchoke.contains(k);
            if choke != p.am_choking {
                p.am_choking = choke;
                p.send(if choke {
                    Message::Choke
                } else {
                    Message::Unchoke
                });
            }
        }
    }
}
