//! LAN discovery for `p2pfile sync`: peers of one folder on one LAN find
//! each other without `--peers`.
//!
//! Every few seconds ([`DEFAULT_INTERVAL`]) each running sync sends one
//! announcement by UDP to the limited broadcast address 255.255.255.255 and
//! to the multicast group [`MULTICAST_GROUP`] (BitTorrent's local service
//! discovery group, on our own port), on [`DISCOVERY_PORT`]. It listens on
//! the same port and reports the verified announcements of its folder.
//!
//! # Packet
//!
//! One bencoded dictionary of at most [`MAX_PACKET`] bytes:
//!
//! | key | value |
//! |-----|-------|
//! | `v` | 1, the version |
//! | `f` | the folder id (16 bytes) |
//! | `d` | the device id, 8 bytes big-endian ([`DeviceId::to_bytes`]: a bencode integer is an `i64` and cannot hold every id) |
//! | `p` | the TCP port the sender's sync listens on |
//! | `t` | the sender's Unix time in seconds |
//! | `n` | 16 random bytes |
//! | `m` | `key.proof("p2pfile discovery v1" ‖ f ‖ d ‖ p (2 BE) ‖ t (8 BE) ‖ n)` |
//!
//! The folder id is public and one-way, so it names the folder without
//! giving anyone the means to forge `m`. Other keys are ignored (not
//! authenticated). The announced address is the datagram's source IP with
//! port `p`.
//!
//! # Receiving
//!
//! Checks run cheapest first, because most datagrams on a busy LAN belong
//! to other folders and must cost no HMAC: size, bencode, version, folder
//! id, field shapes, our own device id, clock skew ([`MAX_CLOCK_SKEW_SECS`]),
//! the proof, and last the replay cache ([`ReplayCache`]), which only
//! verified packets may enter so that forged ones cannot flush it.
//!
//! # Sockets
//!
//! Two per instance. The receiving socket is bound to `0.0.0.0:port`:
//! Linux delivers broadcasts only to sockets bound to the wildcard address.
//! It sets `SO_REUSEADDR` and `SO_REUSEPORT` so several p2pfile processes on
//! one host can all listen; broadcast and multicast datagrams reach every
//! socket of a reuse-port group (only unicast is load-balanced). The sending
//! socket is bound to the caller's `bind_ip`, so the source address that
//! peers report is the one the caller chose, and the kernel sends a limited
//! broadcast or multicast out of the interface owning that address.
//!
//! Measured on Linux 6.18: from a socket bound to 127.0.0.x both the limited
//! broadcast and the group go out through `lo` (the kernel picks the device
//! by the source address, `ip route get 255.255.255.255 from 127.0.0.1`
//! says `dev lo`) and reach every listener on the host, even though `lo`
//! has neither the BROADCAST nor the MULTICAST flag.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pfile_engine::bencode::{self, BencodeError, Value};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug};

use super::key::{FolderId, FolderKey};
use super::version::DeviceId;

/// The UDP port discovery uses unless told otherwise. Unassigned by IANA;
/// BitTorrent's local service discovery uses 6771 on the same group, so our
/// packets never reach its listeners.
pub const DISCOVERY_PORT: u16 = 42069;

/// The multicast group announcements go to: BitTorrent's local service
/// discovery group (BEP 14), administratively scoped to the organisation.
pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(239, 192, 152, 143);

/// How often an instance announces itself by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);

/// Largest datagram accepted or sent. An announcement is about 130 bytes;
/// 512 stays far below any link's MTU, so it is never fragmented.
pub const MAX_PACKET: usize = 512;

/// The packet version this module speaks.
pub const VERSION: i64 = 1;

/// How far a packet's time may be from the receiver's clock. Limits how
/// long a captured packet can be replayed, while allowing for unsynced
/// clocks on a LAN.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// How long a (device, nonce) pair is remembered. A packet passes the clock
/// check for at most `2 × MAX_CLOCK_SKEW_SECS` of the receiver's time (from
/// `t - 300` to `t + 300`), so remembering it that long catches every
/// replay that the clock check lets through.
pub const REPLAY_WINDOW_SECS: u64 = 2 * MAX_CLOCK_SKEW_SECS;

/// Most (device, nonce) pairs the replay cache holds. At the default
/// interval a device sends 200 announcements per window (its broadcast and
/// multicast copies share a nonce), so this covers five devices for the
/// whole window; past that the oldest pairs go early. The sync handshake
/// proves the key again, so a replayed announcement can at worst point at
/// an address that fails that handshake.
pub const REPLAY_CACHE_CAPACITY: usize = 1024;

/// A device already reported at the same address is reported again only
/// after it has been silent this long (30 default intervals), so the caller
/// hears of a peer that went away and came back, not of every announcement.
pub const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(90);

/// Domain tag of the proof's context, so the proof can never be mistaken
/// for one made for another purpose with the same key.
const CONTEXT_TAG: &[u8] = b"p2pfile discovery v1";

/// Field names on the wire (bencode dict keys).
const F_VERSION: &[u8] = b"v";
const F_FOLDER: &[u8] = b"f";
const F_DEVICE: &[u8] = b"d";
const F_PORT: &[u8] = b"p";
const F_TIME: &[u8] = b"t";
const F_NONCE: &[u8] = b"n";
const F_PROOF: &[u8] = b"m";

/// The random bytes that make each announcement unique.
pub type Nonce = [u8; 16];

/// A verified announcement of our folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// The announcing device.
    pub device: DeviceId,
    /// The TCP port its sync listens on.
    pub port: u16,
    /// Its Unix time in seconds when it sent the packet.
    pub time: u64,
    /// The packet's nonce.
    pub nonce: Nonce,
}

/// Why a received datagram was dropped. All are normal on a LAN and are
/// logged at debug level only.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DropReason {
    /// Longer than [`MAX_PACKET`] (the received length, possibly truncated).
    #[error("announcement of {0} bytes is longer than {MAX_PACKET}")]
    TooLarge(usize),
    /// Not bencode at all.
    #[error("announcement is not bencode")]
    NotBencode(#[source] BencodeError),
    /// A version this module does not speak.
    #[error("announcement has unknown version {0}")]
    UnknownVersion(i64),
    /// Another folder's announcement: the common case.
    #[error("announcement is for another folder")]
    OtherFolder,
    /// A field is missing or has the wrong type or size.
    #[error("announcement field {0} is missing or malformed")]
    Malformed(&'static str),
    /// Our own announcement, looped back.
    #[error("announcement is our own")]
    OwnDevice,
    /// The sender's clock is more than [`MAX_CLOCK_SKEW_SECS`] away from ours.
    #[error("announcement time {sent} is too far from our time {now}")]
    ClockSkew {
        /// The packet's time.
        sent: u64,
        /// Our time.
        now: u64,
    },
    /// The proof does not verify: a wrong key, or a changed field.
    #[error("announcement proof does not verify")]
    BadProof,
    /// A (device, nonce) pair seen within [`REPLAY_WINDOW_SECS`].
    #[error("announcement was already seen")]
    Replay,
}

/// The bytes the proof covers.
fn context(folder: FolderId, device: DeviceId, port: u16, time: u64, nonce: &Nonce) -> Vec<u8> {
    let mut c = Vec::with_capacity(CONTEXT_TAG.len() + 16 + 8 + 2 + 8 + 16);
    c.extend_from_slice(CONTEXT_TAG);
    c.extend_from_slice(&folder.0);
    c.extend_from_slice(&device.to_bytes());
    c.extend_from_slice(&port.to_be_bytes());
    c.extend_from_slice(&time.to_be_bytes());
    c.extend_from_slice(nonce);
    c
}

/// Encodes the announcement of `device`, whose sync listens on TCP `port`,
/// at Unix time `now` (seconds) with a fresh random `nonce`.
pub fn encode_announcement(
    key: &FolderKey,
    device: DeviceId,
    port: u16,
    now: u64,
    nonce: Nonce,
) -> Vec<u8> {
    // bencode integers are i64; a clock past 2^63 s is not a real clock,
    // but clamping keeps the packet and its proof consistent anyway.
    let time = now.min(i64::MAX as u64);
    let folder = key.folder_id();
    let proof = key.proof(&context(folder, device, port, time, &nonce));
    bencode::encode(&Value::dict([
        (F_VERSION, Value::Int(VERSION)),
        (F_FOLDER, Value::from(folder.0.to_vec())),
        (F_DEVICE, Value::from(device.to_bytes().to_vec())),
        (F_PORT, Value::Int(i64::from(port))),
        (F_TIME, Value::Int(time as i64)),
        (F_NONCE, Value::from(nonce.to_vec())),
        (F_PROOF, Value::from(proof.to_vec())),
    ]))
}

/// Decodes and verifies an announcement of `key`'s folder received at Unix
/// time `now`. Does not check the sender against our own device id nor the
/// replay cache: [`Screen`] does both.
#[cfg(test)]
pub fn decode_announcement(
    key: &FolderKey,
    bytes: &[u8],
    now: u64,
) -> Result<Announcement, DropReason> {
    decode(key, key.folder_id(), None, bytes, now)
}

/// [`decode_announcement`] with the folder id computed once, and our own
/// device id checked before the HMAC (our own packets come back every
/// interval).
fn decode(
    key: &FolderKey,
    folder: FolderId,
    own: Option<DeviceId>,
    bytes: &[u8],
    now: u64,
) -> Result<Announcement, DropReason> {
    if bytes.len() > MAX_PACKET {
        return Err(DropReason::TooLarge(bytes.len()));
    }
    let value = bencode::decode(bytes).map_err(DropReason::NotBencode)?;
    let dict = value
        .as_dict()
        .ok_or(DropReason::Malformed("(not a dictionary)"))?;
    let int = |k: &[u8]| dict.get(k).and_then(Value::as_int);
    let version = int(F_VERSION).ok_or(DropReason::Malformed("v"))?;
    if version != VERSION {
        return Err(DropReason::UnknownVersion(version));
    }
    let sent_folder: [u8; 16] = fixed(dict.get(F_FOLDER), "f")?;
    if sent_folder != folder.0 {
        return Err(DropReason::OtherFolder);
    }
    let device = DeviceId(u64::from_be_bytes(fixed(dict.get(F_DEVICE), "d")?));
    let port = int(F_PORT)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or(DropReason::Malformed("p"))?;
    let time = int(F_TIME)
        .and_then(|t| u64::try_from(t).ok())
        .ok_or(DropReason::Malformed("t"))?;
    let nonce: Nonce = fixed(dict.get(F_NONCE), "n")?;
    let proof: [u8; 32] = fixed(dict.get(F_PROOF), "m")?;
    if own == Some(device) {
        return Err(DropReason::OwnDevice);
    }
    if time.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        return Err(DropReason::ClockSkew { sent: time, now });
    }
    if !key.verify_proof(&context(folder, device, port, time, &nonce), &proof) {
        return Err(DropReason::BadProof);
    }
    Ok(Announcement {
        device,
        port,
        time,
        nonce,
    })
}

/// A byte-string field of exactly `N` bytes.
fn fixed<const N: usize>(value: Option<&Value>, name: &'static str) -> Result<[u8; N], DropReason> {
    value
        .and_then(Value::as_bytes)
        .and_then(|b| b.try_into().ok())
        .ok_or(DropReason::Malformed(name))
}

/// The (device, nonce) pairs seen in the last [`REPLAY_WINDOW_SECS`], at
/// most a fixed number, oldest evicted first. The clock is passed in.
///
/// Invariant: `order` holds each key of `seen` exactly once, in insertion
/// order (a pair already present is never inserted again).
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashMap<(DeviceId, Nonce), u64>,
    order: VecDeque<(DeviceId, Nonce)>,
    capacity: usize,
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` pairs (at least one).
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `(device, nonce)` as seen at Unix time `now`; false if it was
    /// already seen within the window (a replay or a second copy).
    pub fn insert(&mut self, device: DeviceId, nonce: Nonce, now: u64) -> bool {
        self.expire(now);
        let pair = (device, nonce);
        if self.seen.contains_key(&pair) {
            return false;
        }
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(pair, now);
        self.order.push_back(pair);
        true
    }

    /// How many pairs the cache holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the cache holds no pair.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Forgets pairs older than the window. Insertion times only grow while
    /// the clock does, so the oldest are at the front; after the clock steps
    /// back some may wait behind a newer one until the capacity evicts them.
    fn expire(&mut self, now: u64) {
        while let Some(front) = self.order.front() {
            let at = self.seen.get(front).copied().unwrap_or(0);
            if now.saturating_sub(at) < REPLAY_WINDOW_SECS {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

/// All receive-side checks: [`decode_announcement`], our own device id and
/// the replay cache. Pure: the clock is passed in.
#[derive(Debug)]
pub struct Screen {
    key: FolderKey,
    folder: FolderId,
    own: DeviceId,
    replay: ReplayCache,
}

impl Screen {
    /// Checks for `key`'s folder, dropping the announcements of `own`.
    pub fn new(key: FolderKey, own: DeviceId) -> Screen {
        Screen {
            folder: key.folder_id(),
            key,
            own,
            replay: ReplayCache::new(REPLAY_CACHE_CAPACITY),
        }
    }

    /// Checks a datagram received at Unix time `now`.
    pub fn check(&mut self, bytes: &[u8], now: u64) -> Result<Announcement, DropReason> {
        let a = decode(&self.key, self.folder, Some(self.own), bytes, now)?;
        if !self.replay.insert(a.device, a.nonce, now) {
            return Err(DropReason::Replay);
        }
        Ok(a)
    }
}

/// Where each device was last seen, to decide when to report it again.
/// Only verified devices enter, so its size is bounded by the folder's
/// devices; it is pruned of long-silent ones anyway.
#[derive(Debug, Default)]
pub struct Sightings {
    last: HashMap<DeviceId, (SocketAddr, Instant)>,
}

/// Prune [`Sightings`] of silent devices once it holds this many.
const SIGHTINGS_PRUNE_AT: usize = 1024;

impl Sightings {
    /// Records that `device` announced `addr` at `now`; true if the caller
    /// should be told: a new device, a new address, or a device silent for
    /// [`REPORT_AGAIN_AFTER`].
    pub fn observe(&mut self, device: DeviceId, addr: SocketAddr, now: Instant) -> bool {
        let report = match self.last.get(&device) {
            None => true,
            Some(&(known, seen)) => {
                known != addr || now.saturating_duration_since(seen) >= REPORT_AGAIN_AFTER
            }
        };
        self.last.insert(device, (addr, now));
        if self.last.len() >= SIGHTINGS_PRUNE_AT {
            self.last
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < REPORT_AGAIN_AFTER);
        }
        report
    }

    /// Forgets `device`, so its next announcement is reported (used when a
    /// report could not be delivered).
    pub fn forget(&mut self, device: DeviceId) {
        self.last.remove(&device);
    }
}

/// Shortest interval accepted, so a zero from a config cannot spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Pause after a failed receive, so a persistent socket error logs and
/// retries a few times a second instead of spinning.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// Reports waiting for the caller. Reports are rare (see
/// [`REPORT_AGAIN_AFTER`]); one that finds the queue full is retried at the
/// device's next announcement.
const FOUND_QUEUE: usize = 64;

/// What a [`Discovery`] announces and how.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The folder's key: names the folder and makes the proofs.
    pub key: FolderKey,
    /// Our device id, announced and used to ignore our own packets.
    pub device: DeviceId,
    /// The TCP port our sync listens on, announced to peers.
    pub announce_port: u16,
    /// The local address to send from; peers report it as our address.
    /// `0.0.0.0` lets the kernel choose, which on a host with several
    /// interfaces may be the wrong one (or none, for the limited broadcast).
    pub bind_ip: Ipv4Addr,
    /// The UDP port to listen and announce on (normally [`DISCOVERY_PORT`]).
    pub port: u16,
    /// Time between two announcements.
    pub interval: Duration,
    /// Whether to announce to 255.255.255.255.
    pub broadcast: bool,
    /// Whether to announce to and listen on [`MULTICAST_GROUP`].
    pub multicast: bool,
}

impl DiscoveryConfig {
    /// The defaults: any local address, [`DISCOVERY_PORT`],
    /// [`DEFAULT_INTERVAL`], broadcast and multicast.
    pub fn new(key: FolderKey, device: DeviceId, announce_port: u16) -> DiscoveryConfig {
        DiscoveryConfig {
            key,
            device,
            announce_port,
            bind_ip: Ipv4Addr::UNSPECIFIED,
            port: DISCOVERY_PORT,
            interval: DEFAULT_INTERVAL,
            broadcast: true,
            multicast: true,
        }
    }
}

/// Why discovery could not start. Sync still works with `--peers`, so the
/// caller turns any of these into a warning, not a failure.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Neither broadcast nor multicast is enabled.
    #[error("LAN discovery needs broadcast or multicast")]
    NoTransport,
    /// The operating system gave no socket.
    #[error("cannot create a UDP socket for LAN discovery")]
    Socket(#[source] io::Error),
    /// A socket option was refused.
    #[error("cannot set {option} on the LAN discovery socket")]
    SocketOption {
        /// The option's name.
        option: &'static str,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The discovery port is taken by a program that does not share it, or
    /// the address to send from is not local.
    #[error("cannot bind the LAN discovery socket to {addr}")]
    Bind {
        /// The address tried.
        addr: SocketAddrV4,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Multicast is the only transport and the group cannot be joined.
    #[error("cannot join multicast group {MULTICAST_GROUP} on {interface}")]
    JoinGroup {
        /// The interface address asked for.
        interface: Ipv4Addr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The sockets cannot be handed to the Tokio runtime.
    #[error("cannot register the LAN discovery sockets with the runtime")]
    Runtime(#[source] io::Error),
}

/// A peer of our folder seen on the LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Its device id.
    pub device: DeviceId,
    /// Where its sync listens: the announcement's source IP and port `p`.
    pub addr: SocketAddr,
}

/// The two bound sockets a [`Discovery`] runs on, non-blocking.
///
/// A socket stays in the network namespace it was created in, so a caller
/// (or a test) can create these on a thread that entered another namespace
/// and start the discovery from anywhere with
/// [`Discovery::start_with_sockets`].
#[derive(Debug)]
pub struct DiscoverySockets {
    recv: std::net::UdpSocket,
    send: std::net::UdpSocket,
}

impl DiscoverySockets {
    /// Creates and binds the receiving socket (`0.0.0.0:port`, shared with
    /// other p2pfile processes, in the group if multicast is on) and the
    /// sending one (`bind_ip`, any port).
    pub fn bind(config: &DiscoveryConfig) -> Result<DiscoverySockets, DiscoveryError> {
        if !config.broadcast && !config.multicast {
            return Err(DiscoveryError::NoTransport);
        }
        let recv = udp_socket()?;
        option("SO_REUSEADDR", recv.set_reuse_address(true))?;
        option("SO_REUSEPORT", recv.set_reuse_port(true))?;
        bind(&recv, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port))?;
        if config.multicast {
            match recv.join_multicast_v4(&MULTICAST_GROUP, &config.bind_ip) {
                Ok(()) => {}
                Err(source) if !config.broadcast => {
                    return Err(DiscoveryError::JoinGroup {
                        interface: config.bind_ip,
                        source,
                    });
                }
                // Hosts without a multicast route are common; broadcast
                // still works there.
                Err(e) => debug!(
                    interface = %config.bind_ip,
                    error = %e,
                    "cannot join the discovery group; broadcast only"
                ),
            }
        }

        let send = udp_socket()?;
        bind(&send, SocketAddrV4::new(config.bind_ip, 0))?;
        if config.broadcast {
            option("SO_BROADCAST", send.set_broadcast(true))?;
        }
        if config.multicast {
            if !config.bind_ip.is_unspecified() {
                option("IP_MULTICAST_IF", send.set_multicast_if_v4(&config.bind_ip))?;
            }
            // One hop: announcements are for this LAN only.
            option("IP_MULTICAST_TTL", send.set_multicast_ttl_v4(1))?;
            // Other p2pfile processes on this host listen too.
            option("IP_MULTICAST_LOOP", send.set_multicast_loop_v4(true))?;
        }
        for s in [&recv, &send] {
            option("O_NONBLOCK", s.set_nonblocking(true))?;
        }
        Ok(DiscoverySockets {
            recv: recv.into(),
            send: send.into(),
        })
    }
}

fn udp_socket() -> Result<Socket, DiscoveryError> {
    Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(DiscoveryError::Socket)
}

fn option(option: &'static str, result: io::Result<()>) -> Result<(), DiscoveryError> {
    result.map_err(|source| DiscoveryError::SocketOption { option, source })
}

fn bind(socket: &Socket, addr: SocketAddrV4) -> Result<(), DiscoveryError> {
    socket
        .bind(&addr.into())
        .map_err(|source| DiscoveryError::Bind { addr, source })
}

/// A running LAN discovery: announces us every interval and reports peers
/// of our folder. Dropping it (or [`shutdown`](Self::shutdown)) stops its
/// task and closes its sockets.
#[derive(Debug)]
pub struct Discovery {
    found: mpsc::Receiver<Found>,
    task: JoinHandle<()>,
}

impl Discovery {
    /// Binds the sockets ([`DiscoverySockets::bind`]) and starts.
    pub async fn start(config: DiscoveryConfig) -> Result<Discovery, DiscoveryError> {
        let sockets = DiscoverySockets::bind(&config)?;
        Discovery::start_with_sockets(config, sockets).await
    }

    /// Starts on sockets made by [`DiscoverySockets::bind`], possibly in
    /// another network namespace. `config.port` must be the port they were
    /// bound with.
    pub async fn start_with_sockets(
        config: DiscoveryConfig,
        sockets: DiscoverySockets,
    ) -> Result<Discovery, DiscoveryError> {
        let recv = UdpSocket::from_std(sockets.recv).map_err(DiscoveryError::Runtime)?;
        let send = UdpSocket::from_std(sockets.send).map_err(DiscoveryError::Runtime)?;
        let (tx, found) = mpsc::channel(FOUND_QUEUE);
        let span = tracing::debug_span!(
            "discovery",
            folder = %config.key.folder_id(),
            device = %config.device,
        );
        let task = tokio::spawn(run(config, recv, send, tx).instrument(span));
        Ok(Discovery { found, task })
    }

    /// The peers found, as a channel (tests poll it without waiting).
    #[cfg(test)]
    pub fn found(&mut self) -> &mut mpsc::Receiver<Found> {
        &mut self.found
    }

    /// The next peer found; `None` only if the task has ended.
    pub async fn next(&mut self) -> Option<Found> {
        self.found.recv().await
    }

    /// Stops the task and waits until its sockets are closed.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // The only possible error is the cancellation just asked for.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The discovery task: the only owner of the sockets, the screen and the
/// sightings.
async fn run(config: DiscoveryConfig, recv: UdpSocket, send: UdpSocket, tx: mpsc::Sender<Found>) {
    let mut targets = Vec::new();
    if config.broadcast {
        targets.push(SocketAddr::from((Ipv4Addr::BROADCAST, config.port)));
    }
    if config.multicast {
        targets.push(SocketAddr::from((MULTICAST_GROUP, config.port)));
    }
    let mut screen = Screen::new(config.key.clone(), config.device);
    let mut sightings = Sightings::default();
    let mut tick = tokio::time::interval(config.interval.max(MIN_INTERVAL));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One byte more than allowed, so an oversized datagram shows as such
    // instead of being silently truncated to a valid-looking length.
    let mut buf = [0u8; MAX_PACKET + 1];
    loop {
        tokio::select! {
            _ = tick.tick() => announce(&config, &send, &targets).await,
            received = recv.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    let found = receive(&mut screen, &buf[..len], from, unix_now());
                    if let Some(found) = found {
                        if !report(&mut sightings, &tx, found) {
                            return;
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, "discovery receive failed");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                }
            },
        }
    }
}

/// Sends one announcement to every target. Failures (no route, network
/// unreachable) are normal on hosts without a broadcast or multicast route
/// and are retried at the next interval.
async fn announce(config: &DiscoveryConfig, send: &UdpSocket, targets: &[SocketAddr]) {
    let mut nonce = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut nonce) {
        debug!(error = %e, "no randomness for a discovery nonce; skipping this announcement");
        return;
    }
    let packet = encode_announcement(
        &config.key,
        config.device,
        config.announce_port,
        unix_now(),
        nonce,
    );
    for target in targets {
        if let Err(e) = send.send_to(&packet, target).await {
            debug!(%target, error = %e, "announcement not sent; retrying next interval");
        }
    }
}

/// Checks a datagram from `from`; the peer it announces, if it passes.
fn receive(screen: &mut Screen, bytes: &[u8], from: SocketAddr, now: u64) -> Option<Found> {
    match screen.check(bytes, now) {
        Ok(a) => Some(Found {
            device: a.device,
            addr: SocketAddr::new(from.ip(), a.port),
        }),
        Err(reason) => {
            debug!(%from, %reason, "dropped discovery packet");
            None
        }
    }
}

/// Tells the caller about `found` unless it was reported recently; false
/// once the caller is gone.
fn report(sightings: &mut Sightings, tx: &mpsc::Sender<Found>, found: Found) -> bool {
    if !sightings.observe(found.device, found.addr, Instant::now()) {
        return true;
    }
    match tx.try_send(found) {
        Ok(()) => {
            debug!(device = %found.device, addr = %found.addr, "found a peer on the LAN");
            true
        }
        Err(TrySendError::Full(_)) => {
            sightings.forget(found.device);
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

/// Seconds since the Unix epoch; 0 for a clock set before it (every
/// announcement then fails the skew check, which is the honest outcome).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    fn key(n: u8) -> FolderKey {
        FolderKey::from_seed([n; 32])
    }

    fn packet(k: &FolderKey, device: u64, port: u16, time: u64, nonce: u8) -> Vec<u8> {
        encode_announcement(k, DeviceId(device), port, time, [nonce; 16])
    }

    /// The packet's dict with `field` replaced, re-encoded.
    fn with_field(bytes: &[u8], field: &[u8], value: Option<Value>) -> Vec<u8> {
        let Value::Dict(mut d) = bencode::decode(bytes).unwrap() else {
            panic!("not a dict")
        };
        match value {
            Some(v) => d.insert(field.to_vec(), v),
            None => d.remove(field),
        };
        bencode::encode(&Value::Dict(d))
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        for (device, port, time) in [(7, 6881, NOW), (u64::MAX, 65535, NOW + 300), (0, 1, 0)] {
            let bytes = packet(&k, device, port, time, 9);
            assert!(
                bytes.len() <= MAX_PACKET && bytes.len() < 200,
                "{}",
                bytes.len()
            );
            let a = decode_announcement(&k, &bytes, time).unwrap();
            assert_eq!(
                a,
                Announcement {
                    device: DeviceId(device),
                    port,
                    time,
                    nonce: [9; 16]
                }
            );
            // A read-only holder of the same folder verifies it too.
            assert_eq!(decode_announcement(&k.read_only(), &bytes, time), Ok(a));
        }
    }

    #[test]
    fn the_packet_holds_the_folder_id_and_not_the_key() {
        let k = key(2);
        let bytes = packet(&k, 1, 2, NOW, 3);
        let v = bencode::decode(&bytes).unwrap();
        assert_eq!(v.get(b"f").unwrap().as_bytes(), Some(&k.folder_id().0[..]));
        let FolderKey::ReadWrite { signing, read } = &k else {
            unreachable!()
        };
        for secret in [&signing.to_bytes()[..], &read[..]] {
            assert!(!bytes.windows(8).any(|w| w == &secret[..8]));
        }
    }

    #[test]
    fn each_drop_reason() {
        let k = key(3);
        let good = packet(&k, 5, 7000, NOW, 1);
        let check = |bytes: &[u8]| decode_announcement(&k, bytes, NOW);

        assert_eq!(check(&[b'x'; 600]), Err(DropReason::TooLarge(600)));
        assert!(matches!(check(b"d1:v"), Err(DropReason::NotBencode(_))));
        assert!(matches!(check(b""), Err(DropReason::NotBencode(_))));
        assert_eq!(
            check(b"i1e"),
            Err(DropReason::Malformed("(not a dictionary)"))
        );
        assert_eq!(
            check(&with_field(&good, b"v", Some(Value::Int(2)))),
            Err(DropReason::UnknownVersion(2))
        );
        assert_eq!(
            check(&with_field(&good, b"v", None)),
            Err(DropReason::Malformed("v"))
        );
        assert_eq!(
            check(&packet(&key(4), 5, 7000, NOW, 1)),
            Err(DropReason::OtherFolder)
        );
        for (field, name, bad) in [
            (&b"f"[..], "f", Value::from(vec![0u8; 15])),
            (b"d", "d", Value::Int(5)),
            (b"p", "p", Value::Int(0)),
            (b"p", "p", Value::Int(65536)),
            (b"p", "p", Value::Int(-1)),
            (b"t", "t", Value::Int(-1)),
            (b"t", "t", Value::from("now")),
            (b"n", "n", Value::from(vec![0u8; 17])),
            (b"m", "m", Value::from(vec![0u8; 31])),
        ] {
            assert_eq!(
                check(&with_field(&good, field, Some(bad))),
                Err(DropReason::Malformed(name)),
                "{name}"
            );
            assert_eq!(
                check(&with_field(&good, field, None)),
                Err(DropReason::Malformed(name)),
                "{name} missing"
            );
        }
        assert_eq!(
            decode_announcement(&k, &good, NOW + 301),
            Err(DropReason::ClockSkew {
                sent: NOW,
                now: NOW + 301
            })
        );
        assert_eq!(
            decode_announcement(&k, &good, NOW - 301),
            Err(DropReason::ClockSkew {
                sent: NOW,
                now: NOW - 301
            })
        );
        assert!(decode_announcement(&k, &good, NOW + 300).is_ok());
        assert!(decode_announcement(&k, &good, NOW - 300).is_ok());
        assert_eq!(
            check(&with_field(&good, b"m", Some(Value::from(vec![0u8; 32])))),
            Err(DropReason::BadProof)
        );
        // Unknown keys are ignored, not authenticated.
        assert!(check(&with_field(&good, b"x", Some(Value::Int(1)))).is_ok());

        let mut screen = Screen::new(k.clone(), DeviceId(5));
        assert_eq!(screen.check(&good, NOW), Err(DropReason::OwnDevice));
        let mut screen = Screen::new(k.clone(), DeviceId(6));
        assert!(screen.check(&good, NOW).is_ok());
        assert_eq!(screen.check(&good, NOW + 1), Err(DropReason::Replay));
        // Another nonce from the same device is a new announcement.
        assert!(screen.check(&packet(&k, 5, 7000, NOW, 2), NOW + 1).is_ok());
        // Cheap checks still come first in the screen.
        assert_eq!(
            screen.check(&packet(&key(4), 5, 7000, NOW, 1), NOW),
            Err(DropReason::OtherFolder)
        );
    }

    #[test]
    fn drop_reasons_read_as_fragments() {
        assert_eq!(
            DropReason::Malformed("p").to_string(),
            "announcement field p is missing or malformed"
        );
        assert_eq!(
            DropReason::TooLarge(600).to_string(),
            "announcement of 600 bytes is longer than 512"
        );
    }

    #[test]
    fn another_key_with_the_same_folder_id_forged_in_fails() {
        let victim = key(5);
        let forger = key(6);
        let forged = with_field(
            &packet(&forger, 9, 7000, NOW, 1),
            b"f",
            Some(Value::from(victim.folder_id().0.to_vec())),
        );
        assert_eq!(
            decode_announcement(&victim, &forged, NOW),
            Err(DropReason::BadProof)
        );
    }

    #[test]
    fn tampered_fields_fail_the_proof() {
        let k = key(7);
        let good = packet(&k, 9, 7000, NOW, 1);
        for (field, value) in [
            (&b"p"[..], Value::Int(7001)),
            (b"t", Value::Int(NOW as i64 + 1)),
            (b"d", Value::from(DeviceId(10).to_bytes().to_vec())),
            (b"n", Value::from(vec![2u8; 16])),
        ] {
            assert_eq!(
                decode_announcement(&k, &with_field(&good, field, Some(value)), NOW),
                Err(DropReason::BadProof),
                "{}",
                String::from_utf8_lossy(field)
            );
        }
    }

    #[test]
    fn replay_cache_remembers_for_the_window_and_evicts_the_oldest() {
        let mut c = ReplayCache::new(3);
        let d = DeviceId(1);
        assert!(c.is_empty());
        assert!(c.insert(d, [1; 16], 100));
        assert!(!c.insert(d, [1; 16], 100 + REPLAY_WINDOW_SECS - 1));
        assert!(!c.insert(d, [1; 16], 100));
        assert!(c.insert(DeviceId(2), [1; 16], 100), "pair, not nonce alone");
        assert!(c.insert(d, [2; 16], 200));
        assert_eq!(c.len(), 3);
        // Full: the oldest pair goes.
        assert!(c.insert(d, [3; 16], 201));
        assert_eq!(c.len(), 3);
        assert!(c.insert(d, [1; 16], 202), "evicted, so accepted again");
        assert!(!c.insert(d, [3; 16], 202));
        // Past the window every pair expires.
        assert!(c.insert(d, [2; 16], 202 + REPLAY_WINDOW_SECS));
        assert_eq!(c.len(), 1);

        let mut c = ReplayCache::new(0);
        assert!(c.insert(d, [1; 16], 1));
        assert!(!c.insert(d, [1; 16], 1));
        assert!(c.insert(d, [2; 16], 1));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn replay_cache_survives_a_clock_step_back() {
        let mut c = ReplayCache::new(2);
        let d = DeviceId(1);
        assert!(c.insert(d, [1; 16], 10_000));
        assert!(c.insert(d, [2; 16], 5));
        assert!(!c.insert(d, [1; 16], 6));
        // [2] is past the window but waits behind [1]: still refused.
        assert!(!c.insert(d, [2; 16], 700));
        // The capacity evicts [1]; then [2] expires as it should.
        assert!(c.insert(d, [3; 16], 700));
        assert!(c.insert(d, [2; 16], 701));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn sightings_report_new_devices_new_addresses_and_returns_after_silence() {
        let mut s = Sightings::default();
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7000".parse().unwrap();
        let d = DeviceId(1);
        assert!(s.observe(d, a, t0));
        assert!(!s.observe(d, a, t0 + Duration::from_secs(3)));
        assert!(s.observe(DeviceId(2), a, t0), "another device");
        assert!(s.observe(d, b, t0 + Duration::from_secs(6)));
        assert!(!s.observe(d, b, t0 + Duration::from_secs(95)));
        assert!(s.observe(d, b, t0 + Duration::from_secs(95) + REPORT_AGAIN_AFTER));
        s.forget(d);
        assert!(s.observe(d, b, t0 + Duration::from_secs(200)));
    }

    #[test]
    fn sightings_prune_silent_devices() {
        let mut s = Sightings::default();
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        for i in 0..SIGHTINGS_PRUNE_AT as u64 {
            s.observe(DeviceId(i), a, t0);
        }
        s.observe(DeviceId(u64::MAX), a, t0 + REPORT_AGAIN_AFTER);
        assert_eq!(s.last.len(), 1);
    }

    #[test]
    fn a_large_packet_never_panics() {
        let k = key(8);
        let mut big = packet(&k, 1, 2, NOW, 3);
        big.resize(600, b'e');
        assert_eq!(
            decode_announcement(&k, &big, NOW),
            Err(DropReason::TooLarge(600))
        );
        // A well-formed dict padded to 600 bytes with an extra key.
        let padded = with_field(
            &packet(&k, 1, 2, NOW, 3),
            b"x",
            Some(Value::from(vec![0u8; 450])),
        );
        assert!(padded.len() > MAX_PACKET);
        assert!(matches!(
            decode_announcement(&k, &padded, NOW),
            Err(DropReason::TooLarge(_))
        ));
    }

    /// A hang guard only: peers normally meet within a few intervals.
    const MEET_TIMEOUT: Duration = Duration::from_secs(10);

    /// A UDP port free on the wildcard address right now.
    fn free_port() -> u16 {
        std::net::UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn config(seed: u8, device: u64, bind_ip: Ipv4Addr, port: u16) -> DiscoveryConfig {
        DiscoveryConfig {
            bind_ip,
            port,
            interval: Duration::from_millis(100),
            ..DiscoveryConfig::new(key(seed), DeviceId(device), 7000 + device as u16)
        }
    }

    /// Waits until `d` reports `want`; panics on anything else or a hang.
    async fn expect_found(d: &mut Discovery, want: Found) {
        let got = tokio::time::timeout(MEET_TIMEOUT, d.next())
            .await
            .unwrap_or_else(|_| panic!("{want:?} not found within {MEET_TIMEOUT:?}"));
        assert_eq!(got, Some(want));
    }

    /// Runs A and B (same folder) and C (another folder) until A and B
    /// find each other; checks that nothing else is reported.
    async fn meet(
        mut a: Discovery,
        mut b: Discovery,
        mut c: Discovery,
        a_addr: SocketAddr,
        b_addr: SocketAddr,
    ) {
        tokio::join!(
            expect_found(
                &mut a,
                Found {
                    device: DeviceId(2),
                    addr: b_addr
                }
            ),
            expect_found(
                &mut b,
                Found {
                    device: DeviceId(1),
                    addr: a_addr
                }
            ),
        );
        // Several more intervals: no repeat report, nothing from or to C.
        tokio::time::sleep(Duration::from_millis(600)).await;
        for (name, d) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
            assert_eq!(
                d.found().try_recv(),
                Err(mpsc::error::TryRecvError::Empty),
                "{name} reported more"
            );
        }
        tokio::join!(a.shutdown(), b.shutdown(), c.shutdown());
    }

    /// On `lo` both transports work without namespaces (see the module
    /// docs): senders bound to 127.0.0.x send through `lo` only, so nothing
    /// leaves the host. Each transport is tried alone.
    #[tokio::test]
    async fn loopback_peers_find_each_other_by_broadcast_and_by_multicast() {
        for (broadcast, multicast) in [(true, false), (false, true), (true, true)] {
            let port = free_port();
            let ips = [
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
            ];
            let mut started = Vec::new();
            for (i, (seed, ip)) in [(1, ips[0]), (1, ips[1]), (2, ips[2])]
                .into_iter()
                .enumerate()
            {
                let cfg = DiscoveryConfig {
                    broadcast,
                    multicast,
                    ..config(seed, i as u64 + 1, ip, port)
                };
                started.push(Discovery::start(cfg).await.unwrap());
            }
            let [a, b, c] = <[Discovery; 3]>::try_from(started).unwrap();
            eprintln!("loopback broadcast={broadcast} multicast={multicast}");
            meet(
                a,
                b,
                c,
                "127.0.0.1:7001".parse().unwrap(),
                "127.0.0.2:7002".parse().unwrap(),
            )
            .await;
        }
    }

    #[tokio::test]
    async fn a_port_taken_without_sharing_is_a_typed_error() {
        let taken = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = Discovery::start(config(1, 1, Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, DiscoveryError::Bind { addr, .. } if addr.port() == port),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("cannot bind the LAN discovery socket to 0.0.0.0:{port}")
        );
        let e = DiscoverySockets::bind(&DiscoveryConfig {
            broadcast: false,
            multicast: false,
            ..config(1, 1, Ipv4Addr::LOCALHOST, port)
        })
        .unwrap_err();
        assert!(matches!(e, DiscoveryError::NoTransport), "{e:?}");
    }

    #[tokio::test]
    async fn shutdown_and_drop_close_the_sockets() {
        let port = free_port();
        let a = Discovery::start(config(1, 1, Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let b = Discovery::start(config(1, 2, Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        assert!(
            std::net::UdpSocket::bind(("0.0.0.0", port)).is_err(),
            "port is shared, not free"
        );
        a.shutdown().await;
        drop(b);
        // Drop only asks the task to stop; give the runtime a moment.
        let deadline = Instant::now() + MEET_TIMEOUT;
        while std::net::UdpSocket::bind(("0.0.0.0", port)).is_err() {
            assert!(Instant::now() < deadline, "sockets still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Network namespaces made for one test, deleted on drop (even when the
    /// test fails). Deleting a namespace deletes the links in it.
    struct Netns {
        names: Vec<String>,
    }

    impl Netns {
        /// `ip ARGS`, panicking with the command on failure.
        fn ip(args: &[&str]) {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
            assert!(status.success(), "ip {args:?}: {status}");
        }

        /// Adds namespace `p2pd-PID-TAG`; `None` if namespaces are not
        /// available here.
        fn add(&mut self, tag: &str) -> Option<String> {
            let name = format!("p2pd-{}-{tag}", std::process::id());
            let status = std::process::Command::new("ip")
                .args(["netns", "add", &name])
                .stderr(std::process::Stdio::null())
                .status()
                .ok()?;
            if !status.success() {
                return None;
            }
            self.names.push(name.clone());
            Netns::ip(&["-n", &name, "link", "set", "lo", "up"]);
            Some(name)
        }

        /// Makes the sockets inside namespace `ns`: a socket keeps the
        /// namespace it was created in, so a short-lived thread enters it
        /// and the runtime's threads never do.
        fn sockets(ns: &str, cfg: &DiscoveryConfig) -> DiscoverySockets {
            use std::os::fd::AsRawFd;
            let path = format!("/var/run/netns/{ns}");
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).unwrap();
                // SAFETY: a plain syscall on a valid fd; it changes only
                // this thread's network namespace, and the thread ends here.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
                DiscoverySockets::bind(&cfg).unwrap()
            })
            .join()
            .unwrap()
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            for name in self.names.iter().rev() {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", name])
                    .status();
            }
        }
    }

    /// Three namespaces A, B, C with 10.231.0.1-3/24 on one bridge (in a
    /// fourth namespace): A and B share a folder and find each other, C has
    /// another folder and neither reports nor is reported. Run once with
    /// broadcast only and once with multicast only, on the real port. A
    /// fifth namespace with no interface up checks that send failures are
    /// not fatal. Nothing is sent outside these namespaces.
    #[tokio::test]
    async fn namespaces_on_a_bridge_find_each_other() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: network namespaces need root");
            return;
        }
        let mut lab = Netns { names: Vec::new() };
        let Some(br) = lab.add("br") else {
            eprintln!("skipped: `ip netns add` is not available here");
            return;
        };
        Netns::ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        Netns::ip(&["-n", &br, "link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for (i, tag) in ["a", "b", "c"].into_iter().enumerate() {
            let ns = lab.add(tag).expect("second namespace");
            let port = format!("p{tag}");
            let ip = Ipv4Addr::new(10, 231, 0, i as u8 + 1);
            Netns::ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &br,
            ]);
            Netns::ip(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            Netns::ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            Netns::ip(&["-n", &br, "link", "set", &port, "master", "br0"]);
            Netns::ip(&["-n", &br, "link", "set", &port, "up"]);
            hosts.push((ns, ip));
        }

        for (broadcast, multicast) in [(true, false), (false, true)] {
            eprintln!("namespaces broadcast={broadcast} multicast={multicast}");
            let mut started = Vec::new();
            for (i, (seed, (ns, ip))) in [1, 1, 2].into_iter().zip(&hosts).enumerate() {
                let cfg = DiscoveryConfig {
                    broadcast,
                    multicast,
                    ..config(seed, i as u64 + 1, *ip, DISCOVERY_PORT)
                };
                let sockets = Netns::sockets(ns, &cfg);
                started.push(Discovery::start_with_sockets(cfg, sockets).await.unwrap());
            }
            let [a, b, c] = <[Discovery; 3]>::try_from(started).unwrap();
            meet(
                a,
                b,
                c,
                "10.231.0.1:7001".parse().unwrap(),
                "10.231.0.2:7002".parse().unwrap(),
            )
            .await;
        }

        // No route at all: the group cannot be joined and every send fails
        // with "network unreachable"; discovery runs on regardless.
        let lonely = lab.add("lonely").expect("another namespace");
        Netns::ip(&["-n", &lonely, "link", "set", "lo", "down"]);
        let cfg = config(1, 9, Ipv4Addr::UNSPECIFIED, DISCOVERY_PORT);
        let sockets = Netns::sockets(&lonely, &cfg);
        let mut d = Discovery::start_with_sockets(cfg, sockets).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            d.found().try_recv(),
            Err(mpsc::error::TryRecvError::Empty),
            "the task must still be running"
        );
        d.shutdown().await;
    }

    proptest! {
        #![proptest_config(p2pfile_engine::arb::config(512))]

        #[test]
        fn every_announcement_round_trips(
            device in any::<u64>(),
            port in 1..=u16::MAX,
            time in 0..=i64::MAX as u64,
            nonce in any::<Nonce>(),
            skew in 0..=MAX_CLOCK_SKEW_SECS,
        ) {
            let k = key(11);
            let bytes = encode_announcement(&k, DeviceId(device), port, time, nonce);
            prop_assert!(bytes.len() <= MAX_PACKET);
            let want = Announcement { device: DeviceId(device), port, time, nonce };
            prop_assert_eq!(decode_announcement(&k, &bytes, time.saturating_add(skew)), Ok(want));
            prop_assert_eq!(decode_announcement(&k, &bytes, time.saturating_sub(skew)), Ok(want));
        }

        #[test]
        fn edited_packets_never_panic_nor_pass(edits in p2pfile_engine::arb::edits()) {
            let k = key(12);
            let good = packet(&k, 5, 7000, NOW, 1);
            let bytes = p2pfile_engine::arb::apply(&good, &edits);
            prop_assume!(bytes != good);
            prop_assert!(decode_announcement(&k, &bytes, NOW).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let mut screen = Screen::new(key(9), DeviceId(1));
            prop_assert!(screen.check(&bytes, NOW).is_err());
        }

        #[test]
        fn mutated_packets_never_panic_nor_pass(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        ) {
            let k = key(10);
            let good = packet(&k, 5, 7000, NOW, 1);
            let mut bytes = good.clone();
            for (i, x) in flips {
                let i = i.index(bytes.len());
                bytes[i] ^= x;
            }
            // Two flips of one byte may cancel out.
            prop_assume!(bytes != good);
            // Every byte is structure or a field the proof covers.
            prop_assert!(decode_announcement(&k, &bytes, NOW).is_err());
        }
    }
}
