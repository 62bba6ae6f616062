//! BEP 9: fetching the info dictionary from peers for a magnet, and
//! serving ours to peers that fetch it.
//!
//! Pure bookkeeping, no sockets: which size each peer offers, one assembly
//! per offered size (so a peer announcing a wrong size delays nobody who
//! offers the right one), who sent each piece, and what a failed check
//! against the info-hash says about the senders.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::metainfo::InfoHash;
use crate::peer::PeerKey;
use crate::wire::{METADATA_PIECE_SIZE, MetadataMsg};

/// Largest `metadata_size` we fetch; a peer announcing more is not asked.
/// The largest info dictionary p2pfile builds in practice, 10,000 files
/// with 60-byte paths over 1 TiB of content (262,144 pieces of 4 MiB: 5 MiB
/// of piece hashes), is 6,312,946 bytes (6.0 MiB, measured by
/// `cap::the_cap_covers_ten_thousand_files_over_a_tebibyte`), so 8 MiB
/// leaves room. An assembly holds at most this much, and there is at
/// most one per size that a connected peer offers. libtorrent allows
/// 30 MiB (`max_metadata_size`); a 4 GiB claim with junk costs us nothing.
pub(crate) const MAX_METADATA_SIZE: usize = 8 << 20;

/// A metadata request not answered in this time goes to another peer
/// (loopback and LAN peers answer in milliseconds; the timer runs on the
/// torrent's 1 s tick, so a silent peer costs at most about 4 s).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The pieces of one candidate size.
#[derive(Debug)]
struct Assembly {
    /// Each piece received, with its sender.
    pieces: Vec<Option<(PeerKey, Bytes)>>,
    /// Piece -> the peer asked and when.
    requested: HashMap<u32, (PeerKey, Instant)>,
    /// Peers that let a request of this size expire or rejected one: asked
    /// only when no other peer offers the size.
    late: HashSet<PeerKey>,
    /// Set after a failed check with pieces from several peers: from then
    /// on every piece of an attempt comes from one peer (`owner`), so the
    /// next failure names the peer that lied.
    solo: bool,
    owner: Option<PeerKey>,
    /// Peers that were owner since the last reset.
    tried: HashSet<PeerKey>,
}

impl Assembly {
    fn new(size: usize) -> Self {
        Assembly {
            pieces: vec![None; size.div_ceil(METADATA_PIECE_SIZE)],
            requested: HashMap::new(),
            late: HashSet::new(),
            solo: false,
            owner: None,
            tried: HashSet::new(),
        }
    }

    fn forget_peer(&mut self, key: PeerKey) {
        self.requested.retain(|_, (k, _)| *k != key);
        if self.owner == Some(key) {
            self.set_owner(None);
        }
    }

    /// Changes the solo owner; pieces of anyone else are dropped.
    fn set_owner(&mut self, owner: Option<PeerKey>) {
        self.owner = owner;
        for p in &mut self.pieces {
            if p.as_ref().is_some_and(|(k, _)| Some(*k) != owner) {
                *p = None;
            }
        }
        self.requested.retain(|_, (k, _)| Some(*k) == owner);
    }
}

/// Progress of a BEP 9 fetch.
#[derive(Debug, Default)]
pub(crate) struct MetadataFetch {
    /// The size each connected peer offers (within the cap).
    offers: HashMap<PeerKey, usize>,
    /// One assembly per size some connected peer offers.
    sizes: HashMap<usize, Assembly>,
    /// Peers that sent bad metadata: never asked again.
    bad: HashSet<PeerKey>,
}

/// Result of feeding a message to the fetch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// Nothing complete yet.
    Pending,
    /// All pieces of one size arrived and hash to the info-hash.
    Complete(Vec<u8>),
    /// These peers sent metadata that cannot be the info-hash's (alone all
    /// the pieces of a failed attempt, or a piece of another size or length
    /// than they announced). They are never asked again; the caller drops
    /// and bans them.
    Bad(Vec<PeerKey>),
}

impl MetadataFetch {
    /// A peer told us the size in its extension handshake (again, perhaps:
    /// a later handshake replaces the earlier size). Returns false when
    /// the size is refused (0, over [`MAX_METADATA_SIZE`], or a peer that
    /// already sent bad metadata).
    pub(crate) fn offer_size(&mut self, key: PeerKey, size: u32) -> bool {
        let size = size as usize;
        if self.bad.contains(&key) || size == 0 || size > MAX_METADATA_SIZE {
            self.peer_gone(key);
            return false;
        }
        if self.offers.get(&key) != Some(&size) {
            self.peer_gone(key);
            self.offers.insert(key, size);
            self.sizes
                .entry(size)
                .or_insert_with(|| Assembly::new(size));
        }
        true
    }

    /// Pieces to request now, as (peer, piece), from the peers that can be
    /// asked (`can_ask`: connected, speaking ut_metadata). Each size's
    /// missing pieces are spread over the peers offering it, one
    /// outstanding request per piece; a request older than
    /// [`REQUEST_TIMEOUT`] is given to another peer when there is one.
    pub(crate) fn requests(&mut self, can_ask: &[PeerKey], now: Instant) -> Vec<(PeerKey, u32)> {
        let mut out = Vec::new();
        let mut sizes: Vec<usize> = self.sizes.keys().copied().collect();
        sizes.sort_unstable();
        for size in sizes {
            let mut peers: Vec<PeerKey> = can_ask
                .iter()
                .copied()
                .filter(|k| self.offers.get(k) == Some(&size))
                .collect();
            peers.sort_unstable();
            let a = self.sizes.get_mut(&size).expect("listed");
            let late = &mut a.late;
            a.requested.retain(|_, (k, at)| {
                let expired = now.duration_since(*at) >= REQUEST_TIMEOUT;
                if expired {
                    late.insert(*k);
                }
                !expired && peers.contains(k)
            });
            if peers.is_empty() {
                continue;
            }
            let prompt: Vec<PeerKey> = peers
                .iter()
                .copied()
                .filter(|k| !a.late.contains(k))
                .collect();
            let ask = if prompt.is_empty() { &peers } else { &prompt };
            if a.solo {
                if a.owner.is_some_and(|o| !ask.contains(&o)) {
                    a.set_owner(None);
                }
                if a.owner.is_none() {
                    if ask.iter().all(|k| a.tried.contains(k)) {
                        a.tried.clear();
                    }
                    let next = *ask.iter().find(|k| !a.tried.contains(k)).expect("one");
                    a.tried.insert(next);
                    a.set_owner(Some(next));
                }
            }
            let mut turn = 0;
            for (i, piece) in a.pieces.iter().enumerate() {
                let i = i as u32;
                if piece.is_some() || a.requested.contains_key(&i) {
                    continue;
                }
                let key = match a.owner {
                    Some(o) => o,
                    None => ask[turn % ask.len()],
                };
                turn += 1;
                a.requested.insert(i, (key, now));
                out.push((key, i));
            }
        }
        out
    }

    /// A peer answered.
    pub(crate) fn on_message(
        &mut self,
        from: PeerKey,
        msg: MetadataMsg,
        info_hash: InfoHash,
    ) -> Fetched {
        let Some(&size) = self.offers.get(&from) else {
            return Fetched::Pending;
        };
        let a = self.sizes.get_mut(&size).expect("offered sizes have one");
        match msg {
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => {
                let i = piece as usize;
                if total_size as usize != size || i >= a.pieces.len() {
                    return self.bad_peers(vec![from]);
                }
                let expected =
                    (size - (i * METADATA_PIECE_SIZE).min(size)).min(METADATA_PIECE_SIZE);
                if data.len() != expected {
                    return self.bad_peers(vec![from]);
                }
                if a.pieces[i].is_some() || a.owner.is_some_and(|o| o != from) {
                    // A late answer to a request given to someone else.
                    return Fetched::Pending;
                }
                if a.requested.get(&piece).is_some_and(|(k, _)| *k == from) {
                    a.requested.remove(&piece);
                }
                a.late.remove(&from);
                a.pieces[i] = Some((from, data));
                if a.pieces.iter().any(Option::is_none) {
                    return Fetched::Pending;
                }
                let raw: Vec<u8> = a
                    .pieces
                    .iter()
                    .flatten()
                    .flat_map(|(_, b)| b.iter().copied())
                    .collect();
                if Sha1::digest(&raw).as_slice() == info_hash.0 {
                    return Fetched::Complete(raw);
                }
                let mut senders: Vec<PeerKey> =
                    a.pieces.iter().flatten().map(|(k, _)| *k).collect();
                senders.sort_unstable();
                senders.dedup();
                a.pieces.iter_mut().for_each(|p| *p = None);
                a.requested.clear();
                if senders.len() == 1 {
                    return self.bad_peers(senders);
                }
                // Someone among several senders lied: ask one at a time.
                a.solo = true;
                a.set_owner(None);
            }
            MetadataMsg::Reject { piece } => {
                if a.requested.get(&piece).is_some_and(|(k, _)| *k == from) {
                    a.requested.remove(&piece);
                    a.late.insert(from);
                    if a.owner == Some(from) {
                        a.set_owner(None);
                    }
                }
            }
            MetadataMsg::Request { .. } => {}
        }
        Fetched::Pending
    }

    fn bad_peers(&mut self, keys: Vec<PeerKey>) -> Fetched {
        for &k in &keys {
            self.peer_gone(k);
            self.bad.insert(k);
        }
        Fetched::Bad(keys)
    }

    /// A peer left (or changed its size): its requests go to others, and a
    /// size nobody offers any more is forgotten.
    pub(crate) fn peer_gone(&mut self, key: PeerKey) {
        self.offers.remove(&key);
        for a in self.sizes.values_mut() {
            a.forget_peer(key);
        }
        let offered: HashSet<usize> = self.offers.values().copied().collect();
        self.sizes.retain(|size, _| offered.contains(size));
    }
}

/// Our answer to a peer's metadata request.
pub(crate) fn serve(raw: Option<&[u8]>, piece: u32) -> MetadataMsg {
    let Some(raw) = raw else {
        return MetadataMsg::Reject { piece };
    };
    let start = piece as usize * METADATA_PIECE_SIZE;
    if start >= raw.len() {
        return MetadataMsg::Reject { piece };
    }
    let end = (start + METADATA_PIECE_SIZE).min(raw.len());
    MetadataMsg::Data {
        piece,
        total_size: raw.len() as u32,
        data: Bytes::copy_from_slice(&raw[start..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Info bytes of `len` and their hash.
    fn meta(len: usize) -> (Vec<u8>, InfoHash) {
        let raw: Vec<u8> = (0..len as u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let hash = InfoHash(Sha1::digest(&raw).into());
        (raw, hash)
    }

    /// Answers every request in `reqs` from whoever it was sent to, with the
    /// true bytes unless the sender is in `liars`; returns each outcome that
    /// is not `Pending`.
    fn answer(
        f: &mut MetadataFetch,
        reqs: &[(PeerKey, u32)],
        raw: &[u8],
        hash: InfoHash,
        liars: &[PeerKey],
    ) -> Vec<Fetched> {
        let mut out = Vec::new();
        for &(k, p) in reqs {
            let mut msg = serve(Some(raw), p);
            if liars.contains(&k)
                && let MetadataMsg::Data { data, .. } = &mut msg
            {
                *data = Bytes::from(vec![0xAA; data.len()]);
            }
            match f.on_message(k, msg, hash) {
                Fetched::Pending => {}
                other => out.push(other),
            }
        }
        out
    }

    #[test]
    fn pieces_are_spread_over_peers_and_verified() {
        let (raw, hash) = meta(40_000);
        let mut f = MetadataFetch::default();
        let now = Instant::now();
        assert!(f.requests(&[1, 2], now).is_empty(), "no size offered yet");
        assert!(f.offer_size(1, raw.len() as u32));
        assert!(f.offer_size(2, raw.len() as u32));
        let reqs = f.requests(&[1, 2], now);
        assert_eq!(reqs, vec![(1, 0), (2, 1), (1, 2)]);
        assert!(f.requests(&[1, 2], now).is_empty(), "one request per piece");
        assert_eq!(
            answer(&mut f, &reqs, &raw, hash, &[]),
            vec![Fetched::Complete(raw.clone())]
        );
    }

    #[test]
    fn a_wrong_size_does_not_hold_up_the_right_one() {
        let (raw, hash) = meta(20_000);
        let mut f = MetadataFetch::default();
        let now = Instant::now();
        // The liar offers first; the honest peer's size gets its own assembly.
        assert!(f.offer_size(1, 25_000));
        assert!(f.offer_size(2, raw.len() as u32));
        let reqs = f.requests(&[1, 2], now);
        assert_eq!(reqs, vec![(2, 0), (2, 1), (1, 0), (1, 1)]);
        let junk = |piece, len| MetadataMsg::Data {
            piece,
            total_size: 25_000,
            data: Bytes::from(vec![0xAA; len]),
        };
        assert_eq!(f.on_message(1, junk(0, 16_384), hash), Fetched::Pending);
        assert_eq!(
            f.on_message(1, junk(1, 25_000 - 16_384), hash),
            Fetched::Bad(vec![1]),
            "a failed size from one sender names it"
        );
        assert!(!f.offer_size(1, raw.len() as u32), "never asked again");
        assert_eq!(
            answer(&mut f, &reqs[..2], &raw, hash, &[]),
            vec![Fetched::Complete(raw.clone())]
        );
    }

    #[test]
    fn sizes_over_the_cap_are_refused() {
        let mut f = MetadataFetch::default();
        assert!(!f.offer_size(1, 0xFFFF_0000));
        assert!(!f.offer_size(1, MAX_METADATA_SIZE as u32 + 1));
        assert!(!f.offer_size(1, 0));
        assert!(f.requests(&[1], Instant::now()).is_empty());
        assert!(f.offer_size(1, MAX_METADATA_SIZE as u32));
        assert_eq!(
            f.requests(&[1], Instant::now()).len(),
            MAX_METADATA_SIZE / METADATA_PIECE_SIZE
        );
    }

    #[test]
    fn answers_that_contradict_the_announced_size_are_bad() {
        let (raw, hash) = meta(20_000);
        let mut f = MetadataFetch::default();
        f.offer_size(1, 20_000);
        f.offer_size(2, 20_000);
        f.requests(&[1, 2], Instant::now());
        let other_total = MetadataMsg::Data {
            piece: 0,
            total_size: 30_000,
            data: Bytes::from(vec![0; METADATA_PIECE_SIZE]),
        };
        assert_eq!(f.on_message(1, other_total, hash), Fetched::Bad(vec![1]));
        let short = MetadataMsg::Data {
            piece: 1,
            total_size: 20_000,
            data: Bytes::from(vec![0; 10]),
        };
        assert_eq!(f.on_message(2, short, hash), Fetched::Bad(vec![2]));
        let beyond = MetadataMsg::Data {
            piece: 5,
            total_size: 20_000,
            data: Bytes::new(),
        };
        f.offer_size(3, 20_000);
        assert_eq!(f.on_message(3, beyond, hash), Fetched::Bad(vec![3]));
        assert!(f.requests(&[1, 2, 3], Instant::now()).is_empty());
        // Nobody offers the size any more: it is forgotten.
        assert!(f.sizes.is_empty());
        let _ = raw;
    }

    /// Peers 1 and 2 offer 40,000 bytes of metadata and `liar` answers
    /// junk: the first attempt fails with pieces from both, and blames
    /// nobody.
    fn after_a_mixed_failure(liar: PeerKey) -> (MetadataFetch, Vec<u8>, InfoHash, Instant) {
        let (raw, hash) = meta(40_000);
        let mut f = MetadataFetch::default();
        let now = Instant::now();
        f.offer_size(1, raw.len() as u32);
        f.offer_size(2, raw.len() as u32);
        let reqs = f.requests(&[1, 2], now);
        assert!(
            answer(&mut f, &reqs, &raw, hash, &[liar]).is_empty(),
            "two senders: nobody can be blamed yet"
        );
        (f, raw, hash, now)
    }

    #[test]
    fn a_mixed_failure_asks_one_peer_at_a_time_and_names_the_liar() {
        let (mut f, raw, hash, now) = after_a_mixed_failure(1);
        let reqs = f.requests(&[1, 2], now);
        assert_eq!(reqs, vec![(1, 0), (1, 1), (1, 2)], "all from one peer");
        assert_eq!(
            answer(&mut f, &reqs, &raw, hash, &[1]),
            vec![Fetched::Bad(vec![1])]
        );
        let reqs = f.requests(&[1, 2], now);
        assert_eq!(reqs, vec![(2, 0), (2, 1), (2, 2)]);
        assert_eq!(
            answer(&mut f, &reqs, &raw, hash, &[1]),
            vec![Fetched::Complete(raw.clone())]
        );
    }

    #[test]
    fn a_mixed_failure_with_an_honest_first_owner_completes() {
        let (mut f, raw, hash, now) = after_a_mixed_failure(2);
        let reqs = f.requests(&[1, 2], now);
        // A late junk piece from the other peer does not spoil the attempt.
        let junk = MetadataMsg::Data {
            piece: 0,
            total_size: raw.len() as u32,
            data: Bytes::from(vec![0xAA; METADATA_PIECE_SIZE]),
        };
        assert_eq!(f.on_message(2, junk, hash), Fetched::Pending);
        assert_eq!(
            answer(&mut f, &reqs, &raw, hash, &[2]),
            vec![Fetched::Complete(raw.clone())]
        );
    }

    #[test]
    fn a_silent_peer_loses_its_pieces_after_the_timeout() {
        let (raw, hash) = meta(40_000);
        let mut f = MetadataFetch::default();
        let t0 = Instant::now();
        f.offer_size(1, raw.len() as u32);
        f.offer_size(2, raw.len() as u32);
        let reqs = f.requests(&[1, 2], t0);
        let (silent, answered): (Vec<_>, Vec<_>) = reqs.iter().partition(|(k, _)| *k == 1);
        assert!(answer(&mut f, &answered, &raw, hash, &[]).is_empty());
        assert!(f.requests(&[1, 2], t0 + REQUEST_TIMEOUT / 2).is_empty());
        let again = f.requests(&[1, 2], t0 + REQUEST_TIMEOUT);
        assert_eq!(
            again,
            silent.iter().map(|(_, p)| (2, *p)).collect::<Vec<_>>(),
            "the silent peer's pieces go to the other"
        );
        assert_eq!(
            answer(&mut f, &again, &raw, hash, &[]),
            vec![Fetched::Complete(raw.clone())]
        );
    }

    #[test]
    fn rejects_and_departures_move_requests_to_others() {
        let (raw, hash) = meta(40_000);
        let mut f = MetadataFetch::default();
        let now = Instant::now();
        f.offer_size(7, raw.len() as u32);
        let reqs = f.requests(&[7], now);
        assert_eq!(reqs, vec![(7, 0), (7, 1), (7, 2)]);
        f.offer_size(8, raw.len() as u32);
        f.on_message(7, MetadataMsg::Reject { piece: 0 }, hash);
        assert_eq!(f.requests(&[7, 8], now), vec![(8, 0)]);
        f.peer_gone(7);
        assert_eq!(f.requests(&[8], now), vec![(8, 1), (8, 2)]);
        assert!(matches!(serve(None, 0), MetadataMsg::Reject { piece: 0 }));
        assert!(matches!(
            serve(Some(&raw), 3),
            MetadataMsg::Reject { piece: 3 }
        ));
    }
}

#[cfg(test)]
mod cap {
    use super::MAX_METADATA_SIZE;
    use crate::metainfo::{FileEntry, Info, MAX_PIECE_LENGTH};

    /// The cap covers the largest info dictionary we build in practice:
    /// 10,000 files with 60-byte paths over 1 TiB in 4 MiB pieces.
    #[test]
    fn the_cap_covers_ten_thousand_files_over_a_tebibyte() {
        let each = (1u64 << 40) / 10_000;
        let files = (0..10_000).map(|i| {
            let path = vec![
                "release-1.4".to_string(),
                format!("subdirectory-{:03}", i / 100),
                format!("a-file-name-of-some-length-{i:05}.extension"),
            ];
            FileEntry::new(path, each)
        });
        let files: Vec<FileEntry> = files.collect();
        let total: u64 = files.iter().map(|f| f.length).sum();
        let pieces = total.div_ceil(MAX_PIECE_LENGTH as u64) as usize;
        let info = Info::new(
            "release",
            MAX_PIECE_LENGTH,
            vec![[7; 20]; pieces],
            files,
            vec![],
        )
        .unwrap();
        let len = info.as_bytes().len();
        assert!(len > 6 << 20, "{len} bytes: measured 6,312,946");
        assert!(len < MAX_METADATA_SIZE, "{len} bytes");
    }
}
