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
    /// The zone's pieces, kept up to date by HAVEs and our own pieces, and
    /// rebuilt from the peer table after anything else changed it.
    /// Rebuilding at every top-up cost the bitfields of every zone member
    /// per block received from another zone (about 0.75 MB a block with
    /// 100,000 pieces and 60 members).
    view: Option<ZoneView>,
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
            view: None,
            known: 0,
            received: 0,
            news: Instant::now(),
        }
    }
}

/// The zone as the rule sees it.
struct ZoneView {
    /// Pieces the connected members hold.
    has: Bitfield,
    /// Those and ours.
    known: Bitfield,
    members: Vec<u64>,
}

impl Zoning {
    /// A zone member announced `piece`.
    fn member_has(&mut self, piece: usize) {
        if let Some(v) = &mut self.view {
            v.has.set(piece);
            v.known.set(piece);
        }
    }

    /// We verified `piece`.
    pub(super) fn we_have(&mut self, piece: u32) {
        if let Some(v) = &mut self.view {
            v.known.set(piece as usize);
        }
    }

    /// Something else changed the zone (a member joined, left, or sent a
    /// bitfield): rebuild at the next look.
    fn invalidate(&mut self) {
        self.view = None;
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
    /// Peer `key` announced `piece`, or (`None`) its pieces or zone changed
    /// otherwise, or it left: keeps the zone rule's view current. Call
    /// before removing a peer.
    pub(super) fn zone_news(&mut self, key: PeerKey, piece: Option<u32>) {
        let Some(ours) = self.shared.zone.as_deref() else {
            return;
        };
        let State::Live(l) = &mut self.state else {
            return;
        };
        let Some(z) = l.zoning.as_mut() else {
            return;
        };
        match (piece, self.peers.get(&key)) {
            (Some(i), Some(p)) if p.in_zone(ours) => z.member_has(i as usize),
            (Some(_), _) => {}
            (None, _) => z.invalidate(),
        }
    }

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
        let build = || {
            let mut has = Bitfield::new(l.picker.have().len());
            let mut members = Vec::new();
            for p in self.peers.values().filter(|p| p.in_zone(ours)) {
                has.union_with(&p.has);
                members.push(zone::member_key(&p.peer_id));
            }
            members.sort_unstable();
            let mut known = has.clone();
            known.union_with(l.picker.have());
            ZoneView {
                has,
                known,
                members,
            }
        };
        let view = z.view.get_or_insert_with(build);
        #[cfg(debug_assertions)]
        {
            // The tests hold the kept view to a fresh one at every look.
            let fresh = build();
            debug_assert!(
                view.has == fresh.has && view.known == fresh.known && view.members == fresh.members,
                "bug: the zone view missed a change"
            );
        }
        let now = Instant::now();
        let known = view.known.count();
        if known > z.known || self.downloaded > z.received {
            z.news = now;
        }
        z.known = known;
        z.received = self.downloaded;
        if zone::stalled(z.news, now, zone::stall_after(l.info.piece_length)) {
            return None;
        }
        let view = z.view.as_ref().expect("built above");
        let theirs = z.split.theirs(view.members.clone());
        Some(zone::offer(&peer.has, &view.has, theirs))
    }
}
