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
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use p2pfile_engine::bencode::{self, BencodeError, Value};

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
    let int = |k: &[u8], name| dict.get(k).and_then(Value::as_int).ok_or(name);
    let version = int(F_VERSION, DropReason::Malformed("v"))?;
    if version != VERSION {
        return Err(DropReason::UnknownVersion(version));
    }
    let sent_folder: [u8; 16] = fixed(dict.get(F_FOLDER), "f")?;
    if sent_folder != folder.0 {
        return Err(DropReason::OtherFolder);
    }
    let device = DeviceId(u64::from_be_bytes(fixed(dict.get(F_DEVICE), "d")?));
    let port = int(F_PORT, DropReason::Malformed("p"))
        .ok()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or(DropReason::Malformed("p"))?;
    let time = int(F_TIME, DropReason::Malformed("t"))
        .ok()
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
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the cache holds no pair.
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

    proptest! {
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
