//! What the engine reports. The binary renders these; the engine never prints.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::bans::BanReason;
use crate::error::TorrentError;
use crate::metainfo::InfoHash;

/// An [`Event`] and the torrent it happened to, as the session's one event
/// stream carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct TorrentEvent {
    /// The torrent's id in the session: its info-hash on the wire.
    pub info_hash: InfoHash,
    /// What happened.
    pub event: Event,
}

/// Something that happened to one torrent.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The info dictionary is known (at once for a `.torrent` or a served
    /// path; after BEP 9 exchange for a magnet).
    Metadata {
        /// Torrent name.
        name: String,
        /// Content length in bytes.
        total: u64,
        /// Number of pieces.
        pieces: usize,
        /// The info dictionary itself (to keep, so a rerun needs no peer).
        info: std::sync::Arc<crate::metainfo::Info>,
    },
    /// Existing data on disk was checked before downloading.
    Checked {
        /// Pieces that were already valid (resume or delta).
        valid_pieces: usize,
        /// Bytes those pieces hold.
        valid_bytes: u64,
        /// `DIR/<name>` already held exactly this content: nothing will be
        /// written, and `Completed` follows at once.
        already_complete: bool,
    },
    /// A downloaded piece passed its hash check and is on disk.
    PieceVerified {
        /// The piece.
        index: u32,
    },
    /// A peer sent a piece whose hash did not match.
    HashFailed {
        /// The piece.
        index: u32,
        /// The peers that sent blocks of it (listen address when known).
        peers: Vec<SocketAddr>,
    },
    /// A peer misbehaved and its address is banned for the session (see
    /// [`BanReason::duration`]): its connections are closed, it is refused
    /// at accept and not dialled by any torrent until the ban expires.
    /// Once per ban, from the torrent that saw the offence.
    PeerBanned {
        /// Where the peer accepts connections when known (its listen
        /// address), else the connection's remote address. The ban covers
        /// every port of its IP.
        addr: SocketAddr,
        /// Why.
        reason: BanReason,
    },
    /// A peer connection completed its handshake.
    PeerConnected {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// A peer connection ended.
    PeerDisconnected {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Some files at the final path changed while the download ran (a
    /// local edit), so they were left as they are; the new versions stay in
    /// the part (`DIR/.<name>.p2pfile-part`). Comes just before `Completed`.
    LocalEditsKept {
        /// The final paths that were not replaced.
        paths: Vec<std::path::PathBuf>,
    },
    /// An entry was in the way of the download (a file where the torrent
    /// has a directory, a directory or symlink where it has a file) and was
    /// moved, not deleted, to `DIR/.p2pfile-replaced/<YYYYMMDD-HHMMSS>/`
    /// followed by its path below `DIR`. Comes before `Completed` (or
    /// `Failed`, if moving into place failed afterwards).
    Replaced {
        /// Where the entry was.
        from: std::path::PathBuf,
        /// Where it is now.
        to: std::path::PathBuf,
    },
    /// A peer that lacked pieces when it first announced now holds every
    /// piece: it finished this torrent. Once per peer (by peer id) and run.
    PeerCompleted {
        /// Where the peer accepts connections: its IP with the listen port
        /// from its extension handshake (or the port we dialed), else the
        /// connection's remote address.
        addr: SocketAddr,
        /// The zone the peer said it is in (see [`crate::zone`]), if any.
        zone: Option<String>,
    },
    /// A seeded file no longer has the length or modification time it had
    /// when it was hashed (see [`crate::Target::SeedScanned`]), or is gone:
    /// the torrent stopped serving (its phase is `Failed`) rather than send
    /// bytes that may not match their hashes. Serving again needs a new
    /// hash.
    SourceChanged {
        /// The changed file.
        path: std::path::PathBuf,
    },
    /// Every piece is verified and the content is at its final path.
    Completed,
    /// The torrent stopped for good because of an error (disk full, say).
    Failed {
        /// What went wrong; its kind tells a full disk from other I/O.
        error: TorrentError,
    },
    /// A peer's extension handshake (BEP 10) named extensions that this
    /// session registered too (see `SessionConfig::extensions`): from now
    /// on messages can go both ways with [`crate::Session::send_extension`].
    ExtensionsReady {
        /// The peer's address (the connection's remote address).
        addr: SocketAddr,
        /// The registered extensions the peer speaks.
        names: Vec<String>,
    },
    /// A peer sent a message on a registered extension.
    ExtensionMessage {
        /// The peer's address (the connection's remote address).
        addr: SocketAddr,
        /// The extension's name.
        name: String,
        /// The message as sent, after the extension id byte.
        payload: Bytes,
    },
    /// The torrent was removed from the session (or the session shut
    /// down); no event about it follows.
    Removed,
}

/// Where a torrent is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the info dictionary from peers.
    FetchingMetadata,
    /// Checking data already on disk.
    Checking,
    /// Downloading pieces.
    Downloading,
    /// Complete and uploading.
    Seeding,
    /// Stopped after an error.
    Failed,
}

/// A snapshot of one torrent's counters, refreshed about once a second and
/// on every verified piece.
#[derive(Clone, Debug)]
pub struct Stats {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Where it is.
    pub phase: Phase,
    /// Content length (0 until metadata is known).
    pub total: u64,
    /// Verified bytes held.
    pub have: u64,
    /// Payload bytes received from peers this run (including waste).
    pub downloaded: u64,
    /// Of `downloaded`, the bytes from peers outside this host's zone
    /// (another zone, or none said): what crossed the link between zones.
    /// 0 when this host has no zone (see `SessionConfig::zone`).
    pub downloaded_other_zone: u64,
    /// Of `downloaded`, the bytes thrown away: blocks that came after their
    /// request was cancelled, choked off (by a peer without the fast
    /// extension) or handed to another peer, blocks another peer had sent
    /// first (the endgame), and blocks never asked for. A few percent at
    /// most in a healthy swarm; more is upload spent for nothing.
    pub discarded: u64,
    /// Payload bytes sent to peers this run.
    pub uploaded: u64,
    /// Bytes per second received, smoothed.
    pub download_rate: f64,
    /// Bytes per second sent, smoothed.
    pub upload_rate: f64,
    /// Connected peers.
    pub peers: usize,
    /// Connected peers that hold every piece.
    pub seeds: usize,
    /// Connected peers that are downloading from us (interested and unchoked).
    pub leechers: usize,
    /// Connected peers that lack pieces.
    pub incomplete_peers: usize,
    /// Distinct peers seen to finish: first seen incomplete, later holding
    /// every piece (by bitfield and HAVE), connected now or not.
    pub completed_peers: usize,
    /// Distinct peers that held every piece when first seen (other seeds).
    pub seeds_seen: usize,
    /// Addresses known to try (magnet hints, DHT, PEX, incoming).
    pub known_addrs: usize,
    /// Connection attempts that failed.
    pub failed_connects: u64,
    /// Pieces downloaded this run that passed their hash check (pieces
    /// found valid on disk by the check before downloading are not counted).
    pub pieces_verified: u64,
    /// Pieces downloaded this run whose hash did not match (each one is
    /// downloaded again).
    pub hash_failures: u64,
}

impl Stats {
    /// Zeroed counters of a torrent in `phase`.
    pub fn new(info_hash: InfoHash, phase: Phase) -> Self {
        Self {
            info_hash,
            phase,
            total: 0,
            have: 0,
            downloaded: 0,
            downloaded_other_zone: 0,
            discarded: 0,
            uploaded: 0,
            download_rate: 0.0,
            upload_rate: 0.0,
            peers: 0,
            seeds: 0,
            leechers: 0,
            incomplete_peers: 0,
            completed_peers: 0,
            seeds_seen: 0,
            known_addrs: 0,
            failed_connects: 0,
            pieces_verified: 0,
            hash_failures: 0,
        }
    }
}
