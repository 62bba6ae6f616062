//! The session's ban list: addresses that misbehaved, refused at accept and
//! never dialled until their ban expires.
//!
//! Pure bookkeeping with the clock passed in, no sockets: the coordinators
//! decide what is an offence and call [`Bans::ban`] (at once) or
//! [`Bans::strike`] (after repeats); the accept loop and the dialer ask
//! [`Bans::is_banned`]. Keyed by IP address, not address and port: on a
//! fleet one address is one host, and a misbehaving host that reconnects
//! from a new port (or redials from a new listen port) is the same host.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a ban for corrupt data lasts. libtorrent bans such a peer for
/// the rest of the session; a long-running `serve` is a session of weeks,
/// so an hour instead: far longer than any transfer we run (a 256 MiB
/// fleet rollout takes seconds), short enough that a host whose disk or
/// NIC was repaired rejoins without a restart.
pub const CORRUPT_PIECE_BAN: Duration = Duration::from_secs(60 * 60);
/// How long a ban for metadata that does not match the info-hash lasts:
/// as for corrupt pieces, the peer serves wrong data.
pub const BAD_METADATA_BAN: Duration = Duration::from_secs(60 * 60);
/// How long a ban for repeated protocol violations lasts. An old build
/// with a codec bug is not hostile, but redialling it every 1.5 s (what
/// we did) costs both ends; ten minutes outlasts a transfer and lets an
/// upgraded host back soon.
pub const PROTOCOL_VIOLATION_BAN: Duration = Duration::from_secs(10 * 60);
/// How long a ban for flooding requests for one block lasts (as for a
/// protocol violation: a buggy client more likely than an attack).
pub const REQUEST_FLOOD_BAN: Duration = Duration::from_secs(10 * 60);
/// How long an offence counts towards a ban by strikes: repeats further
/// apart than this are forgotten.
pub const STRIKE_MEMORY: Duration = Duration::from_secs(10 * 60);
/// Most addresses kept (bans and strikes together). Each entry is a few
/// dozen bytes; beyond this the entry that expires soonest is forgotten,
/// so a flood of addresses cannot grow memory without bound.
pub const MAX_ENTRIES: usize = 65_536;

/// Why an address was banned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BanReason {
    /// It sent blocks of a piece that failed its hash check.
    CorruptPiece,
    /// It sent metadata (BEP 9) that does not match the info-hash.
    BadMetadata,
    /// It broke the wire protocol (a malformed or out-of-range message)
    /// more than once.
    ProtocolViolation,
    /// It asked for the same block over and over.
    RequestFlood,
}

impl BanReason {
    /// How long a ban for this reason lasts.
    pub fn duration(self) -> Duration {
        match self {
            BanReason::CorruptPiece => CORRUPT_PIECE_BAN,
            BanReason::BadMetadata => BAD_METADATA_BAN,
            BanReason::ProtocolViolation => PROTOCOL_VIOLATION_BAN,
            BanReason::RequestFlood => REQUEST_FLOOD_BAN,
        }
    }

    /// Offences within [`STRIKE_MEMORY`] that make a ban when counted
    /// with [`Bans::strike`].
    ///
    /// A corrupt piece with several contributors cannot tell which one
    /// lied (an honest peer shares the blame), so three, as before; a
    /// protocol violation may be one bad message from a stale build, so
    /// the second; metadata and floods are unambiguous, so the first.
    pub fn strikes(self) -> u32 {
        match self {
            BanReason::CorruptPiece => 3,
            BanReason::ProtocolViolation => 2,
            BanReason::BadMetadata | BanReason::RequestFlood => 1,
        }
    }

    /// The name used in messages and JSON: `corrupt-piece`, `bad-metadata`,
    /// `protocol-violation`, `request-flood`.
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::CorruptPiece => "corrupt-piece",
            BanReason::BadMetadata => "bad-metadata",
            BanReason::ProtocolViolation => "protocol-violation",
            BanReason::RequestFlood => "request-flood",
        }
    }
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known of one address.
#[derive(Debug, Default)]
struct Entry {
    /// Banned until then, and why.
    ban: Option<(Instant, BanReason)>,
    /// Recent offences counted towards a ban: reason, count, last one.
    strikes: Vec<(BanReason, u32, Instant)>,
}

impl Entry {
    /// When this entry stops mattering.
    fn expires(&self) -> Option<Instant> {
        let ban = self.ban.map(|(until, _)| until);
        let strike = self
            .strikes
            .iter()
            .map(|(_, _, at)| *at + STRIKE_MEMORY)
            .max();
        ban.max(strike)
    }
}

/// Banned addresses with their expiry, and offences counted towards bans.
/// One per session, shared by all its torrents.
#[derive(Debug, Default)]
pub(crate) struct Bans {
    entries: HashMap<IpAddr, Entry>,
}

impl Bans {
    /// Bans `ip` for `reason`'s duration from `now`. Returns true when the
    /// address was not banned before (report it then, once); a ban of an
    /// address already banned keeps the later expiry and says false.
    pub fn ban(&mut self, ip: IpAddr, reason: BanReason, now: Instant) -> bool {
        self.make_room(ip, now);
        let entry = self.entries.entry(ip).or_default();
        let until = now + reason.duration();
        match entry.ban {
            Some((old, old_reason)) if old > now => {
                if until > old {
                    entry.ban = Some((until, old_reason));
                }
                false
            }
            _ => {
                entry.ban = Some((until, reason));
                entry.strikes.clear();
                true
            }
        }
    }

    /// Counts one offence of `ip`; bans it (and returns true, as
    /// [`Bans::ban`]) when this makes [`BanReason::strikes`] offences of
    /// that reason within [`STRIKE_MEMORY`].
    pub fn strike(&mut self, ip: IpAddr, reason: BanReason, now: Instant) -> bool {
        if self.is_banned(ip, now) {
            return false;
        }
        self.make_room(ip, now);
        let entry = self.entries.entry(ip).or_default();
        entry
            .strikes
            .retain(|(_, _, at)| now.saturating_duration_since(*at) < STRIKE_MEMORY);
        let count = match entry.strikes.iter_mut().find(|(r, _, _)| *r == reason) {
            Some(s) => {
                s.1 += 1;
                s.2 = now;
                s.1
            }
            None => {
                entry.strikes.push((reason, 1, now));
                1
            }
        };
        count >= reason.strikes() && self.ban(ip, reason, now)
    }

    /// Whether `ip` is banned at `now`.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.reason(ip, now).is_some()
    }

    /// Why `ip` is banned at `now`, if it is.
    pub fn reason(&self, ip: IpAddr, now: Instant) -> Option<BanReason> {
        let (until, reason) = self.entries.get(&ip)?.ban?;
        (until > now).then_some(reason)
    }

    /// Keeps the table within [`MAX_ENTRIES`] before `ip` is added:
    /// expired entries go first, then the one that expires soonest.
    fn make_room(&mut self, ip: IpAddr, now: Instant) {
        if self.entries.len() < MAX_ENTRIES || self.entries.contains_key(&ip) {
            return;
        }
        self.entries
            .retain(|_, e| e.expires().is_some_and(|at| at > now));
        if self.entries.len() >= MAX_ENTRIES
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.expires())
                .map(|(ip, _)| *ip)
        {
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
    }

    #[test]
    fn a_ban_holds_until_it_expires() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        assert!(!bans.is_banned(ip(5), t0));
        assert!(bans.ban(ip(5), BanReason::CorruptPiece, t0));
        assert!(bans.is_banned(ip(5), t0));
        assert!(!bans.is_banned(ip(6), t0));
        let almost = t0 + CORRUPT_PIECE_BAN - Duration::from_secs(1);
        assert!(bans.is_banned(ip(5), almost));
        assert_eq!(bans.reason(ip(5), almost), Some(BanReason::CorruptPiece));
        assert!(!bans.is_banned(ip(5), t0 + CORRUPT_PIECE_BAN));
    }

    #[test]
    fn each_reason_has_its_own_expiry() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        bans.ban(ip(1), BanReason::ProtocolViolation, t0);
        bans.ban(ip(2), BanReason::RequestFlood, t0);
        bans.ban(ip(3), BanReason::BadMetadata, t0);
        let later = t0 + PROTOCOL_VIOLATION_BAN.max(REQUEST_FLOOD_BAN);
        assert!(!bans.is_banned(ip(1), later));
        assert!(!bans.is_banned(ip(2), later));
        assert!(bans.is_banned(ip(3), later));
        assert!(!bans.is_banned(ip(3), t0 + BAD_METADATA_BAN));
    }

    #[test]
    fn a_ban_is_new_once_and_again_after_expiry() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        assert!(bans.ban(ip(5), BanReason::RequestFlood, t0));
        assert!(!bans.ban(ip(5), BanReason::RequestFlood, t0));
        // A longer ban while banned extends it, keeping the first reason.
        assert!(!bans.ban(ip(5), BanReason::CorruptPiece, t0));
        let after_flood = t0 + REQUEST_FLOOD_BAN;
        assert_eq!(
            bans.reason(ip(5), after_flood),
            Some(BanReason::RequestFlood)
        );
        let expired = t0 + CORRUPT_PIECE_BAN;
        assert!(!bans.is_banned(ip(5), expired));
        assert!(bans.ban(ip(5), BanReason::ProtocolViolation, expired));
    }

    #[test]
    fn the_second_protocol_violation_bans() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        assert!(!bans.strike(ip(7), BanReason::ProtocolViolation, t0));
        assert!(!bans.is_banned(ip(7), t0));
        let t1 = t0 + Duration::from_secs(2);
        assert!(bans.strike(ip(7), BanReason::ProtocolViolation, t1));
        assert_eq!(bans.reason(ip(7), t1), Some(BanReason::ProtocolViolation));
        // Strikes while banned are not new bans.
        assert!(!bans.strike(ip(7), BanReason::ProtocolViolation, t1));
    }

    #[test]
    fn strikes_are_forgotten_after_their_memory() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        assert!(!bans.strike(ip(7), BanReason::ProtocolViolation, t0));
        let t1 = t0 + STRIKE_MEMORY;
        assert!(!bans.strike(ip(7), BanReason::ProtocolViolation, t1));
        assert!(!bans.is_banned(ip(7), t1));
    }

    #[test]
    fn strikes_count_per_reason() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        assert!(!bans.strike(ip(8), BanReason::CorruptPiece, t0));
        assert!(!bans.strike(ip(8), BanReason::ProtocolViolation, t0));
        assert!(!bans.strike(ip(8), BanReason::CorruptPiece, t0));
        assert!(bans.strike(ip(8), BanReason::CorruptPiece, t0));
        assert_eq!(bans.reason(ip(8), t0), Some(BanReason::CorruptPiece));
        assert!(bans.strike(ip(9), BanReason::RequestFlood, t0));
    }

    #[test]
    fn the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut bans = Bans::default();
        for i in 0..MAX_ENTRIES as u32 + 10 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            bans.ban(
                a,
                BanReason::ProtocolViolation,
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(bans.entries.len(), MAX_ENTRIES);
        // The newest ban is kept; the one that expired soonest went.
        let newest = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + MAX_ENTRIES as u32 + 9));
        assert!(bans.is_banned(newest, t0 + Duration::from_secs(1)));
        let first = IpAddr::V4(Ipv4Addr::from(0x0a00_0000));
        assert!(!bans.is_banned(first, t0));
    }

    #[test]
    fn reasons_print_their_names() {
        let names: Vec<String> = [
            BanReason::CorruptPiece,
            BanReason::BadMetadata,
            BanReason::ProtocolViolation,
            BanReason::RequestFlood,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            names,
            [
                "corrupt-piece",
                "bad-metadata",
                "protocol-violation",
                "request-flood"
            ]
        );
    }
}
