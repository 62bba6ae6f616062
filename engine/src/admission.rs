//! Admission: who gets a connection slot, and who must give one up.
//!
//! Pure decisions with the clock passed in, no sockets: how many
//! connections one address may hold (before and after the handshake), the
//! slot budgets for incoming and outgoing connections, when a silent peer
//! is closed, and which peer a newcomer displaces when every slot is taken.
//! The accept loop (`session`) and the coordinator (`torrent`) act on them.
//!
//! The threat is one address (a scanner, a broken client, one compromised
//! host) opening many connections and saying nothing, so that honest peers
//! find every slot taken. Each limit below bounds what one address can
//! hold; a slot held without use is given to the next peer that asks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most connected peers per torrent (incoming and outgoing together).
pub(crate) const MAX_PEERS: usize = 60;
/// Slots each direction keeps for itself: incoming connections may take
/// at most `MAX_PEERS - max(outgoing, RESERVED_PER_DIRECTION)`, and
/// outgoing alike, so a flood of incoming connections cannot stop us
/// dialing the seeds we know, and our own dialing cannot shut out
/// downloaders. A fifth of the slots: a seed with no outgoing connections
/// still serves 48 peers.
pub(crate) const RESERVED_PER_DIRECTION: usize = 12;
/// Most connections one IP address may hold in one torrent. On a fleet one
/// address is one host, which needs one connection (two while both sides
/// dial at once); 8 leaves room for several processes behind one address
/// (the engine's own tests run many sessions on 127.0.0.1) while one
/// address can hold at most 8 of the 60 slots.
pub(crate) const MAX_PER_ADDRESS: usize = 8;
/// Most connections one IP address may have open with the session before
/// their handshake names a torrent. Each waits at most
/// `peer::HANDSHAKE_TIMEOUT` (5 s); beyond this they are closed at accept,
/// so a flood from one address costs it one descriptor per extra connect
/// for a moment, and holds nobody else's place. 32, not fewer: each
/// torrent has its own connection, and aria2 and libtorrent open one per
/// torrent at once, so a host starting 20 artifacts from one seed opens
/// 20 (with 8, twelve were closed at accept and waited for a retry).
pub(crate) const MAX_PENDING_PER_ADDRESS: usize = 32;
/// Most connections the session keeps waiting for a handshake, from all
/// addresses together: bounds descriptors and tasks under a flood from
/// many addresses (a handshake takes one round trip, so honest peers pass
/// through this in milliseconds).
pub(crate) const MAX_PENDING: usize = 256;
/// A peer that has said nothing of use after its handshake (no bitfield,
/// HAVE, interest, request or extension message; keep-alives and the
/// extension handshake do not count) this long is closed. Honest clients
/// announce what they have with their handshake, within one round trip;
/// 5 s also covers a peer whose coordinator is busy checking files.
pub(crate) const SILENT_GRACE: Duration = Duration::from_secs(5);
/// A peer connected less than this is not displaced: it has had no time to
/// announce anything, and a flood of newcomers would otherwise churn honest
/// peers out before they spoke.
pub(crate) const MIN_AGE_TO_DISPLACE: Duration = Duration::from_secs(2);
/// Interest, requests, blocks and extension messages keep a peer useful for
/// this long; after that it is useful only while it holds pieces we want,
/// or wants ours and waits for an upload slot.
pub(crate) const USEFUL_FOR: Duration = Duration::from_secs(30);

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The peer connected to us.
    Incoming,
    /// We dialed the peer.
    Outgoing,
}

/// A connected peer as admission sees it.
#[derive(Clone, Debug)]
pub(crate) struct Standing<K> {
    pub key: K,
    pub ip: IpAddr,
    pub direction: Direction,
    /// When the connection was admitted.
    pub since: Instant,
    /// It has pieces we lack, wants pieces we have and waits for an upload
    /// slot, or serves metadata we need: never displaced.
    pub useful: bool,
    /// The last time it sent something of use (see [`USEFUL_FOR`]).
    pub last_useful: Option<Instant>,
}

impl<K> Standing<K> {
    fn useful_at(&self, now: Instant) -> bool {
        self.useful
            || self
                .last_useful
                .is_some_and(|t| now.saturating_duration_since(t) < USEFUL_FOR)
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address already holds [`MAX_PER_ADDRESS`] connections.
    AddressFull,
    /// Every slot of its direction is taken by a useful peer.
    SlotsFull,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::AddressFull => "too many connections from its address",
            Refused::SlotsFull => "every peer slot is taken by a useful peer",
        })
    }
}

/// What to do with a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admit<K> {
    /// A slot is free.
    Accept,
    /// Close this peer and give its slot to the newcomer.
    Displace(K),
    /// Close the newcomer.
    Refuse(Refused),
}

/// How many slots `direction` may use while the other side uses `other`.
pub(crate) fn limit(other: usize) -> usize {
    MAX_PEERS - other.max(RESERVED_PER_DIRECTION)
}

/// Free slots for `direction` given the connected peers.
pub(crate) fn room<K>(peers: &[Standing<K>], direction: Direction) -> usize {
    let mine = peers.iter().filter(|p| p.direction == direction).count();
    let other = peers.len() - mine;
    limit(other).saturating_sub(mine)
}

/// Decides on a new connection from `ip`, opened in `direction`, given the
/// peers connected now.
pub(crate) fn admit<K: Copy>(
    peers: &[Standing<K>],
    ip: IpAddr,
    direction: Direction,
    now: Instant,
) -> Admit<K> {
    if peers.iter().filter(|p| p.ip == ip).count() >= MAX_PER_ADDRESS {
        return Admit::Refuse(Refused::AddressFull);
    }
    if room(peers, direction) > 0 {
        return Admit::Accept;
    }
    match victim(peers, direction, now) {
        Some(k) => Admit::Displace(k),
        None => Admit::Refuse(Refused::SlotsFull),
    }
}

/// The least useful peer of `direction`: of those neither useful now nor
/// lately and older than [`MIN_AGE_TO_DISPLACE`], the one idle longest.
pub(crate) fn victim<K: Copy>(
    peers: &[Standing<K>],
    direction: Direction,
    now: Instant,
) -> Option<K> {
    peers
        .iter()
        .filter(|p| p.direction == direction)
        .filter(|p| now.saturating_duration_since(p.since) >= MIN_AGE_TO_DISPLACE)
        .filter(|p| !p.useful_at(now))
        .min_by_key(|p| p.last_useful.unwrap_or(p.since))
        .map(|p| p.key)
}

/// Whether a peer admitted at `since` that has not `spoken` is overdue.
pub(crate) fn silent_too_long(since: Instant, spoken: bool, now: Instant) -> bool {
    !spoken && now.saturating_duration_since(since) >= SILENT_GRACE
}

/// Connections waiting for their handshake, per address and in all.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
}

impl Pending {
    /// Takes a place for a new connection from `ip`; `false` when its
    /// address or the session is at its limit (close the connection).
    pub(crate) fn enter(&mut self, ip: IpAddr) -> bool {
        let n = self.per_ip.entry(ip).or_default();
        if *n >= MAX_PENDING_PER_ADDRESS || self.total >= MAX_PENDING {
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }

    /// Gives back a place taken by [`Pending::enter`].
    pub(crate) fn leave(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Connections waiting from `ip`.
    #[cfg(test)]
    fn from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// Counts of keys by address (for tests and reports).
#[cfg(test)]
fn per_address<K>(peers: &[Standing<K>]) -> HashMap<IpAddr, usize> {
    let mut m = HashMap::new();
    for p in peers {
        *m.entry(p.ip).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn peer(key: u64, host: u8, direction: Direction, since: Instant) -> Standing<u64> {
        Standing {
            key,
            ip: ip(host),
            direction,
            since,
            useful: false,
            last_useful: None,
        }
    }

    /// `n` idle incoming peers, each from its own address, admitted at `t`.
    fn idle(n: usize, t: Instant) -> Vec<Standing<u64>> {
        (0..n)
            .map(|i| peer(i as u64, i as u8, Direction::Incoming, t))
            .collect()
    }

    #[test]
    fn one_address_gets_at_most_its_cap() {
        let t = Instant::now();
        let mut peers = Vec::new();
        for k in 0..20u64 {
            match admit(&peers, ip(200), Direction::Incoming, t) {
                Admit::Accept => peers.push(peer(k, 200, Direction::Incoming, t)),
                Admit::Refuse(Refused::AddressFull) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(peers.len(), MAX_PER_ADDRESS);
        assert_eq!(per_address(&peers)[&ip(200)], MAX_PER_ADDRESS);
        assert_eq!(admit(&peers, ip(1), Direction::Incoming, t), Admit::Accept);
    }

    #[test]
    fn each_direction_keeps_its_reserve() {
        let t = Instant::now();
        let incoming = idle(MAX_PEERS - RESERVED_PER_DIRECTION, t);
        assert_eq!(room(&incoming, Direction::Incoming), 0);
        assert_eq!(room(&incoming, Direction::Outgoing), RESERVED_PER_DIRECTION);
        let mut both = incoming.clone();
        for i in 0..RESERVED_PER_DIRECTION {
            both.push(peer(1000 + i as u64, 100, Direction::Outgoing, t));
        }
        assert_eq!(both.len(), MAX_PEERS);
        assert_eq!(room(&both, Direction::Outgoing), 0);
        // Few outgoing: incoming may take all but the reserve, not more.
        assert_eq!(limit(0), MAX_PEERS - RESERVED_PER_DIRECTION);
        assert_eq!(limit(30), MAX_PEERS - 30);
    }

    #[test]
    fn a_newcomer_displaces_the_peer_idle_longest_once_it_is_old_enough() {
        let t0 = Instant::now();
        let mut peers = idle(MAX_PEERS - RESERVED_PER_DIRECTION, t0);
        peers[3].last_useful = Some(t0 + Duration::from_millis(10));
        // Too young to displace anyone.
        let early = t0 + MIN_AGE_TO_DISPLACE / 2;
        assert_eq!(
            admit(&peers, ip(250), Direction::Incoming, early),
            Admit::Refuse(Refused::SlotsFull)
        );
        let later = t0 + MIN_AGE_TO_DISPLACE + USEFUL_FOR;
        let Admit::Displace(k) = admit(&peers, ip(250), Direction::Incoming, later) else {
            panic!("no one displaced");
        };
        assert_ne!(k, 3, "the peer useful most recently stays");
    }

    #[test]
    fn useful_peers_are_never_displaced() {
        let t0 = Instant::now();
        let mut peers = idle(MAX_PEERS - RESERVED_PER_DIRECTION, t0);
        for p in &mut peers {
            p.useful = true;
        }
        let later = t0 + Duration::from_secs(600);
        assert_eq!(
            admit(&peers, ip(250), Direction::Incoming, later),
            Admit::Refuse(Refused::SlotsFull)
        );
        // Useful lately counts until USEFUL_FOR has passed.
        peers[7].useful = false;
        peers[7].last_useful = Some(later);
        assert_eq!(victim(&peers, Direction::Incoming, later), None);
        let after = later + USEFUL_FOR;
        assert_eq!(victim(&peers, Direction::Incoming, after), Some(7));
    }

    #[test]
    fn an_incoming_newcomer_displaces_only_incoming_peers() {
        let t0 = Instant::now();
        let mut peers: Vec<_> = (0..MAX_PEERS / 2)
            .map(|i| {
                let mut p = peer(i as u64, i as u8, Direction::Incoming, t0);
                p.useful = true;
                p
            })
            .collect();
        for i in 0..MAX_PEERS / 2 {
            peers.push(peer(100 + i as u64, 100 + i as u8, Direction::Outgoing, t0));
        }
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            admit(&peers, ip(250), Direction::Incoming, later),
            Admit::Refuse(Refused::SlotsFull)
        );
        assert!(matches!(
            admit(&peers, ip(250), Direction::Outgoing, later),
            Admit::Displace(k) if k >= 100
        ));
    }

    #[test]
    fn silence_is_closed_after_the_grace() {
        let t0 = Instant::now();
        assert!(!silent_too_long(t0, false, t0 + SILENT_GRACE / 2));
        assert!(silent_too_long(t0, false, t0 + SILENT_GRACE));
        assert!(!silent_too_long(t0, true, t0 + SILENT_GRACE * 10));
    }

    #[test]
    fn pending_connections_are_capped_per_address_and_in_all() {
        let mut p = Pending::default();
        for _ in 0..MAX_PENDING_PER_ADDRESS {
            assert!(p.enter(ip(200)));
        }
        assert!(!p.enter(ip(200)));
        assert_eq!(p.from(ip(200)), MAX_PENDING_PER_ADDRESS);
        p.leave(ip(200));
        assert!(p.enter(ip(200)));
        // Many addresses together stop at MAX_PENDING.
        let mut admitted = MAX_PENDING_PER_ADDRESS;
        'fill: for a in 0..=255u8 {
            for b in 0..MAX_PENDING_PER_ADDRESS {
                let other = IpAddr::V4(Ipv4Addr::new(10, 1, a, b as u8));
                if !p.enter(other) {
                    break 'fill;
                }
                admitted += 1;
            }
        }
        assert_eq!(admitted, MAX_PENDING);
        assert!(!p.enter(ip(9)));
        assert_eq!(p.from(ip(9)), 0, "a refused address leaves no entry");
        for _ in 0..MAX_PENDING_PER_ADDRESS {
            p.leave(ip(200));
        }
        assert_eq!(p.from(ip(200)), 0);
        assert!(p.enter(ip(9)));
    }
}
