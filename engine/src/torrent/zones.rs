//! The zone rule (see `crate::zone`) fed from the peer table: which pieces
//! a peer of another zone may be asked for.

use std::time::Instant;

use super::peers::Peer;
use super::{State, Torrent};
use crate::bitfield::Bitfield;
use crate::peer::PeerKey;
use crate::zone;

/// What the coordinator keeps for the rule.
pub(super) struct Zoning {
    /// The pieces assigned to the other members, by member set.
    split: zone::Split,
    /// Pieces held in the zone (by us or a connected member) and bytes
    /// we received, at the last look, and when either last grew.
    known: usize,
    received: u64,
    news: Instant,
}

impl Zoning {
    pub(super) fn new(me: &[u8; 20], pieces: usize) -> Self {
        Self {
            split: zone::Split::new(zone::member_key(me), pieces),
            known: 0,
            received: 0,
            news: Instant::now(),
        }
    }
}

impl Peer {
    /// Whether the peer said it is in `ours` (a zone we have).
    pub(super) fn in_zone(&self, ours: &str) -> bool {
        self.ext
            .as_ref()
            .and_then(|e| e.zone.as_deref())
            .is_some_and(|z| z == ours)
    }

    /// The zone the peer said, if any.
    pub(super) fn zone(&self) -> Option<&str> {
        self.ext.as_ref().and_then(|e| e.zone.as_deref())
    }
}

impl Torrent {
    /// Whether bytes from this peer come across the link to another zone:
    /// only when we have a zone and the peer is not in it.
    pub(super) fn is_other_zone(&self, peer: &Peer) -> bool {
        self.shared
            .zone
            .as_deref()
            .is_some_and(|ours| !peer.in_zone(ours))
    }

    /// The pieces peer `key` may be asked for under the zone rule, or
    /// `None` for no restriction: we have no zone, the peer is in ours, or
    /// the zone made no progress for `zone::stall_after` its piece length.
    pub(super) fn zone_offer(&mut self, key: PeerKey) -> Option<Bitfield> {
        let ours = self.shared.zone.as_deref()?;
        let peer = self.peers.get(&key)?;
        if peer.in_zone(ours) {
            return None;
        }
        let State::Live(l) = &mut self.state else {
            return None;
        };
        if l.finished {
            return None;
        }
        let z = l.zoning.as_mut()?;
        let mut zone_has = Bitfield::new(l.picker.have().len());
        let mut members = Vec::new();
        for p in self.peers.values().filter(|p| p.in_zone(ours)) {
            zone_has.union_with(&p.has);
            members.push(zone::member_key(&p.peer_id));
        }
        let mut known = zone_has.clone();
        known.union_with(l.picker.have());
        let now = Instant::now();
        if known.count() > z.known || self.downloaded > z.received {
            z.news = now;
        }
        z.known = known.count();
        z.received = self.downloaded;
        if zone::stalled(z.news, now, zone::stall_after(l.info.piece_length)) {
            return None;
        }
        let theirs = z.split.theirs(members);
        Some(zone::offer(&peer.has, &zone_has, theirs))
    }
}
