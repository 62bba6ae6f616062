//! Which block to request next.
//!
//! Policy, in order: finish pieces already started; then start the rarest
//! piece the peer has (ties broken at random, so downloaders that all see
//! one seed start on different pieces and have something to trade); when
//! every missing block is already requested, endgame: request blocks other
//! peers are still sending, at most [`ENDGAME_DUPLICATES`] times each, and
//! only of a peer expected to send them sooner than those already asked
//! (see [`Arrivals`]), the latest-expected first: at the end a fast host
//! takes over what a slow one still owes, and a slow one never copies what
//! a fast one is about to send.
//!
//! Invariants (checked by the tests and `debug_assert!`):
//! - a piece is in at most one of: `have`, `partial`;
//! - a block's `requested` count equals the number of outstanding requests
//!   the coordinator holds for it, because every pick is matched by exactly
//!   one of `received` or `cancelled`;
//! - the number of started pieces stays at or under `max_partial`, except
//!   that a peer which can help no started piece may start one more, up to
//!   twice the limit (so one slow piece cannot stall a peer). Pieces whose
//!   requests timed out (see [`Picker::timed_out`]) and that nobody was
//!   asked for since do not count: a peer that claims pieces and never
//!   sends them would otherwise fill the limit and stop the download.
//!
//! Padding (BEP 47) at the end of a piece is never requested: its blocks
//! cover only the data before it, the last one shortened, and a piece of
//! padding only has no block at all (see [`Picker::take_empty`]). The
//! coordinator adds the zeros before hashing.
//!
//! Pure: no I/O, no clock; randomness is passed in.

use std::collections::{BTreeMap, HashMap};

use rand::Rng;

use crate::bitfield::Bitfield;
use crate::wire::{BLOCK_SIZE, BlockRequest};

/// How many peers may be asked for the same block during endgame.
pub const ENDGAME_DUPLICATES: u8 = 2;

/// When requested blocks are expected, for the endgame, in seconds from
/// now as the caller estimates them from each peer's measured rate and
/// queue. A block not in `held` is expected never (its peers' rates are
/// unknown, or they skipped it): anyone may be asked for a copy. The
/// default, nothing known, lets any peer copy any block, in piece order.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// When the peer being asked would send a block asked of it now.
    pub ours: f64,
    /// The earliest expected arrival of each block in flight, among the
    /// other peers asked for it.
    pub held: HashMap<BlockRequest, f64>,
}

impl Arrivals {
    fn of(&self, req: &BlockRequest) -> f64 {
        self.held.get(req).copied().unwrap_or(f64::INFINITY)
    }

    /// Whether the peer being asked should copy `req`: it is expected
    /// sooner, or the block is not expected at all.
    fn worth_copying(&self, req: &BlockRequest) -> bool {
        let theirs = self.of(req);
        theirs.is_infinite() || theirs > self.ours
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Free,
    Requested(u8),
    Received,
}

#[derive(Debug)]
struct Partial {
    blocks: Vec<Block>,
    received: usize,
    /// A request for it timed out and none was sent since.
    stalled: bool,
}

/// What a received block meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Not wanted (already had, or a duplicate in endgame).
    Unwanted,
    /// Stored; the piece still misses blocks.
    Stored,
    /// The last block of its piece: hash it now.
    PieceComplete,
}

/// Piece and block state of one torrent.
#[derive(Debug)]
pub struct Picker {
    piece_length: u32,
    total: u64,
    have: Bitfield,
    availability: Vec<u32>,
    partial: BTreeMap<u32, Partial>,
    /// Pieces whose blocks all arrived and are being hashed.
    verifying: Bitfield,
    max_partial: usize,
    /// Pieces that end in padding and their data lengths, by piece (see
    /// [`crate::storage::Storage::padded_pieces`]); empty, and never
    /// searched, for a torrent without pad files.
    padded: Vec<(u32, u32)>,
}

impl Picker {
    /// A picker for `total` bytes in pieces of `piece_length`, starting from `have`.
    pub fn new(piece_length: u32, total: u64, have: Bitfield, max_partial: usize) -> Self {
        let n = have.len();
        Self {
            piece_length,
            total,
            have,
            availability: vec![0; n],
            partial: BTreeMap::new(),
            verifying: Bitfield::new(n),
            max_partial: max_partial.max(1),
            padded: Vec::new(),
        }
    }

    /// The same picker, requesting of each piece in `padded` (sorted
    /// `(piece, data length)` pairs) only its first data-length bytes: the
    /// rest is padding, zeros the coordinator adds itself.
    pub fn with_padding(mut self, padded: Vec<(u32, u32)>) -> Self {
        debug_assert!(padded.windows(2).all(|w| w[0].0 < w[1].0), "bug: unsorted");
        self.padded = padded;
        self
    }

    /// Pieces verified so far.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// True when every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Number of started pieces.
    pub fn partial_count(&self) -> usize {
        self.partial.len()
    }

    /// Started pieces that count against the limit: those not stalled.
    fn started_count(&self) -> usize {
        self.partial.values().filter(|p| !p.stalled).count()
    }

    /// Length of piece `index`.
    pub fn piece_size(&self, index: u32) -> u32 {
        let start = index as u64 * self.piece_length as u64;
        (self.total - start).min(self.piece_length as u64) as u32
    }

    /// Bytes of piece `index` to download: its length without the padding
    /// at its end.
    pub fn data_size(&self, index: u32) -> u32 {
        if !self.padded.is_empty()
            && let Ok(i) = self.padded.binary_search_by_key(&index, |&(p, _)| p)
        {
            return self.padded[i].1;
        }
        self.piece_size(index)
    }

    /// Number of blocks to request of piece `index`.
    pub fn block_count(&self, index: u32) -> usize {
        self.data_size(index).div_ceil(BLOCK_SIZE) as usize
    }

    fn block(&self, index: u32, b: usize) -> BlockRequest {
        let begin = b as u32 * BLOCK_SIZE;
        BlockRequest {
            index,
            begin,
            length: (self.data_size(index) - begin).min(BLOCK_SIZE),
        }
    }

    /// Pieces of padding only that are neither had nor being verified:
    /// marks them as being verified and returns them, for the coordinator
    /// to hash their zeros without requesting anything. Each must later be
    /// passed to [`piece_verified`](Self::piece_verified) or
    /// [`piece_failed`](Self::piece_failed); a failed one is not picked
    /// again (no peer can send it other bytes).
    pub fn take_empty(&mut self) -> Vec<u32> {
        let empty: Vec<u32> = self
            .padded
            .iter()
            .filter(|&&(p, data)| {
                data == 0 && !self.have.get(p as usize) && !self.verifying.get(p as usize)
            })
            .map(|&(p, _)| p)
            .collect();
        for &p in &empty {
            self.verifying.set(p as usize);
        }
        empty
    }

    /// A peer announced piece `index`.
    pub fn add_availability(&mut self, index: u32) {
        if let Some(a) = self.availability.get_mut(index as usize) {
            *a += 1;
        }
    }

    /// A peer with bitfield `has` joined.
    pub fn add_peer(&mut self, has: &Bitfield) {
        for i in has.iter_ones() {
            self.availability[i] += 1;
        }
    }

    /// A peer with bitfield `has` left.
    pub fn remove_peer(&mut self, has: &Bitfield) {
        for i in has.iter_ones() {
            self.availability[i] = self.availability[i].saturating_sub(1);
        }
    }

    /// How many connected peers have piece `index`.
    pub fn availability(&self, index: u32) -> u32 {
        self.availability[index as usize]
    }

    /// Whether `has` holds any piece we still need.
    pub fn wants_any(&self, has: &Bitfield) -> bool {
        self.have.lacks_any_of(has)
    }

    /// Up to `max` blocks to request from a peer holding `has`.
    /// `outstanding(req)` says whether this peer already has `req` in flight
    /// and `arrivals` when the blocks in flight are expected (both only
    /// consulted in endgame). Every returned block must later be passed to
    /// [`received`](Self::received) or [`cancelled`](Self::cancelled).
    pub fn pick(
        &mut self,
        has: &Bitfield,
        max: usize,
        outstanding: impl Fn(&BlockRequest) -> bool,
        arrivals: &Arrivals,
        rng: &mut impl Rng,
    ) -> Vec<BlockRequest> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        // 1. Finish started pieces, most complete first.
        let mut started: Vec<(u32, usize)> = self
            .partial
            .iter()
            .filter(|(i, _)| has.get(**i as usize))
            .map(|(i, p)| (*i, p.received))
            .collect();
        started.sort_by_key(|&(i, received)| (std::cmp::Reverse(received), i));
        for (index, _) in started {
            self.take_free(index, max, &mut out);
            if out.len() == max {
                return out;
            }
        }
        // 2. Start rarest pieces.
        let helped_started = !out.is_empty();
        while out.len() < max {
            let limit = if helped_started {
                self.max_partial
            } else {
                self.max_partial * 2
            };
            if self.started_count() >= limit {
                break;
            }
            let Some(index) = self.rarest(has, rng) else {
                break;
            };
            let blocks = vec![Block::Free; self.block_count(index)];
            self.partial.insert(
                index,
                Partial {
                    blocks,
                    received: 0,
                    stalled: false,
                },
            );
            self.take_free(index, max, &mut out);
        }
        if !out.is_empty() {
            return out;
        }
        // 3. Endgame: only when no block of the whole torrent is free. A
        // peer that merely has nothing new for us is not the end: asking it
        // for blocks others are sending would only duplicate traffic.
        if !self.in_endgame() {
            return out;
        }
        let mut candidates: Vec<BlockRequest> = self
            .partial
            .iter()
            .filter(|(i, _)| has.get(**i as usize))
            .flat_map(|(&i, p)| {
                p.blocks
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| matches!(b, Block::Requested(n) if *n < ENDGAME_DUPLICATES))
                    .map(move |(b, _)| (i, b))
            })
            .map(|(i, b)| self.block(i, b))
            .filter(|r| !outstanding(r) && arrivals.worth_copying(r))
            .collect();
        // Latest expected first; stable, so piece order among equals.
        candidates.sort_by(|a, b| arrivals.of(b).total_cmp(&arrivals.of(a)));
        candidates.truncate(max);
        for r in candidates {
            let slot = &mut self.partial.get_mut(&r.index).expect("partial").blocks
                [(r.begin / BLOCK_SIZE) as usize];
            if let Block::Requested(n) = slot {
                *n += 1;
            }
            out.push(r);
        }
        out
    }

    /// Every missing piece is started and every block of them requested.
    pub fn in_endgame(&self) -> bool {
        // Counted, not scanned: the coordinator asks at every top-up.
        // `have`, `verifying` and `partial` never share a piece; pieces of
        // padding only are started by definition.
        let unrequestable = self
            .padded
            .iter()
            .filter(|&&(p, data)| {
                data == 0 && !self.have.get(p as usize) && !self.verifying.get(p as usize)
            })
            .count();
        let started =
            self.have.count() + self.verifying.count() + self.partial.len() + unrequestable;
        debug_assert!(started <= self.have.len(), "bug: a piece counted twice");
        started == self.have.len()
            && self
                .partial
                .values()
                .all(|p| p.blocks.iter().all(|b| *b != Block::Free))
    }

    fn take_free(&mut self, index: u32, max: usize, out: &mut Vec<BlockRequest>) {
        let p = self.partial.get_mut(&index).expect("partial");
        let mut picked = Vec::new();
        for (b, state) in p.blocks.iter_mut().enumerate() {
            if out.len() + picked.len() == max {
                break;
            }
            if *state == Block::Free {
                *state = Block::Requested(1);
                picked.push(b);
            }
        }
        if !picked.is_empty() {
            p.stalled = false;
        }
        for b in picked {
            out.push(self.block(index, b));
        }
    }

    /// The rarest piece `has` holds that is neither had, started nor being
    /// verified; ties at random (reservoir sampling, one pass).
    fn rarest(&self, has: &Bitfield, rng: &mut impl Rng) -> Option<u32> {
        let mut best: Option<(u32, u32)> = None;
        let mut ties = 0u32;
        for i in has.iter_ones() {
            let idx = i as u32;
            if self.have.get(i)
                || self.verifying.get(i)
                || self.partial.contains_key(&idx)
                || self.data_size(idx) == 0
            {
                continue;
            }
            let a = self.availability[i];
            match best {
                Some((_, ba)) if a > ba => {}
                Some((_, ba)) if a == ba => {
                    ties += 1;
                    if rng.random_range(0..ties) == 0 {
                        best = Some((idx, a));
                    }
                }
                _ => {
                    best = Some((idx, a));
                    ties = 1;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// A requested block will not arrive from that peer (choked, rejected,
    /// peer gone, or cancelled by us).
    pub fn cancelled(&mut self, req: &BlockRequest) {
        if let Some(p) = self.partial.get_mut(&req.index) {
            let slot = &mut p.blocks[(req.begin / BLOCK_SIZE) as usize];
            *slot = match *slot {
                Block::Requested(n) if n > 1 => Block::Requested(n - 1),
                Block::Requested(_) => Block::Free,
                other => other,
            };
        }
    }

    /// A requested block did not arrive in time from that peer (see
    /// `crate::snub`): it is free again, and its piece no longer counts
    /// against the limit of started pieces until someone is asked for it,
    /// so the peers that do answer can start others.
    pub fn timed_out(&mut self, req: &BlockRequest) {
        self.cancelled(req);
        if let Some(p) = self.partial.get_mut(&req.index) {
            p.stalled = true;
        }
    }

    /// Whether `req` names a real block of a piece we are downloading.
    pub fn is_valid_block(&self, req: &BlockRequest) -> bool {
        (req.index as usize) < self.have.len()
            && req.begin % BLOCK_SIZE == 0
            && req.begin < self.data_size(req.index)
            && req.length
                == self
                    .block(req.index, (req.begin / BLOCK_SIZE) as usize)
                    .length
    }

    /// A block arrived that matched one of our requests to that peer.
    pub fn received(&mut self, req: &BlockRequest) -> Received {
        let Some(p) = self.partial.get_mut(&req.index) else {
            return Received::Unwanted;
        };
        let slot = &mut p.blocks[(req.begin / BLOCK_SIZE) as usize];
        match *slot {
            Block::Received => Received::Unwanted,
            _ => {
                *slot = Block::Received;
                p.received += 1;
                if p.received == p.blocks.len() {
                    self.partial.remove(&req.index);
                    self.verifying.set(req.index as usize);
                    Received::PieceComplete
                } else {
                    Received::Stored
                }
            }
        }
    }

    /// Whether piece `index` still has a block that `req`'s duplicates
    /// should be cancelled for (endgame bookkeeping).
    pub fn is_done(&self, index: u32) -> bool {
        self.have.get(index as usize) || self.verifying.get(index as usize)
    }

    /// The hash of piece `index` matched.
    pub fn piece_verified(&mut self, index: u32) {
        self.verifying.clear(index as usize);
        self.partial.remove(&index);
        self.have.set(index as usize);
    }

    /// The hash of piece `index` did not match: download it again.
    pub fn piece_failed(&mut self, index: u32) {
        self.verifying.clear(index as usize);
        self.partial.remove(&index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    /// `p.pick` with nothing known of arrivals and a fixed seed.
    fn pick(
        p: &mut Picker,
        has: &Bitfield,
        max: usize,
        outstanding: impl Fn(&BlockRequest) -> bool,
    ) -> Vec<BlockRequest> {
        p.pick(has, max, outstanding, &Arrivals::default(), &mut rng())
    }

    fn picker(pieces: usize, max_partial: usize) -> Picker {
        Picker::new(
            BLOCK_SIZE * 2,
            (BLOCK_SIZE as u64 * 2) * pieces as u64 - 100,
            Bitfield::new(pieces),
            max_partial,
        )
    }

    #[test]
    fn finishes_started_pieces_first() {
        let mut p = picker(4, 4);
        let all = Bitfield::full(4);
        p.add_peer(&all);
        let first = pick(&mut p, &all, 1, |_| false);
        assert_eq!(first.len(), 1);
        let second = pick(&mut p, &all, 1, |_| false);
        assert_eq!(
            second[0].index, first[0].index,
            "second block of the same piece"
        );
        assert_eq!(second[0].begin, BLOCK_SIZE);
    }

    #[test]
    fn rarest_first() {
        let mut p = picker(4, 4);
        let all = Bitfield::full(4);
        let mut common = Bitfield::new(4);
        for i in [0, 1, 3] {
            common.set(i);
        }
        p.add_peer(&all);
        p.add_peer(&common);
        p.add_peer(&common);
        let got = pick(&mut p, &all, 2, |_| false);
        assert!(
            got.iter().all(|r| r.index == 2),
            "piece 2 is rarest: {got:?}"
        );
    }

    #[test]
    fn random_ties_spread_downloaders() {
        let mut firsts = std::collections::HashSet::new();
        let mut r = rng();
        for _ in 0..20 {
            let mut p = picker(64, 4);
            let all = Bitfield::full(64);
            p.add_peer(&all);
            firsts.insert(p.pick(&all, 1, |_| false, &Arrivals::default(), &mut r)[0].index);
        }
        assert!(
            firsts.len() > 5,
            "ties must be broken at random: {firsts:?}"
        );
    }

    #[test]
    fn last_block_is_short_and_validated() {
        let p = picker(2, 4);
        let last = p.block(1, 1);
        assert_eq!(last.length, BLOCK_SIZE - 100);
        assert!(p.is_valid_block(&last));
        assert!(!p.is_valid_block(&BlockRequest {
            length: BLOCK_SIZE,
            ..last
        }));
        assert!(!p.is_valid_block(&BlockRequest {
            index: 9,
            begin: 0,
            length: BLOCK_SIZE
        }));
    }

    #[test]
    fn receive_cancel_verify_fail_cycle() {
        let mut p = picker(1, 4);
        let all = Bitfield::full(1);
        p.add_peer(&all);
        let reqs = pick(&mut p, &all, 10, |_| false);
        assert_eq!(reqs.len(), 2);
        p.cancelled(&reqs[1]);
        assert_eq!(p.received(&reqs[0]), Received::Stored);
        assert_eq!(p.received(&reqs[0]), Received::Unwanted);
        let again = pick(&mut p, &all, 10, |_| false);
        assert_eq!(again, vec![reqs[1]]);
        assert_eq!(p.received(&reqs[1]), Received::PieceComplete);
        assert!(pick(&mut p, &all, 10, |_| false).is_empty());
        p.piece_failed(0);
        assert_eq!(pick(&mut p, &all, 10, |_| false).len(), 2);
        for r in &reqs {
            p.received(r);
        }
        p.piece_verified(0);
        assert!(p.is_complete());
        assert!(!p.wants_any(&all));
    }

    #[test]
    fn endgame_duplicates_bounded() {
        let mut p = picker(1, 4);
        let all = Bitfield::full(1);
        p.add_peer(&all);
        let a = pick(&mut p, &all, 10, |_| false);
        let b = pick(&mut p, &all, 10, |r| !a.contains(r));
        assert_eq!(b, a, "endgame re-requests from a second peer");
        let c = pick(&mut p, &all, 10, |_| false);
        assert!(
            c.is_empty(),
            "no more than {ENDGAME_DUPLICATES} requests per block"
        );
        let own = pick(&mut p, &all, 10, |r| a.contains(r));
        assert!(own.is_empty());
    }

    /// One piece of four blocks, all requested from peer A; block 3
    /// also from peer B. Returns the picker and the four requests.
    fn endgame_of_four() -> (Picker, Vec<BlockRequest>) {
        let mut p = Picker::new(BLOCK_SIZE * 4, BLOCK_SIZE as u64 * 4, Bitfield::new(1), 4);
        let all = Bitfield::full(1);
        p.add_peer(&all);
        let a = pick(&mut p, &all, 4, |_| false);
        assert_eq!(a.len(), 4);
        let b = pick(&mut p, &all, 1, |r| *r != a[3]);
        assert_eq!(b, vec![a[3]], "in piece order, with nothing known");
        (p, a)
    }

    #[test]
    fn endgame_copies_the_latest_expected_blocks_first() {
        let (mut p, a) = endgame_of_four();
        // A is slow: its blocks come 1, 2, 3 and 4 s from now; block 3,
        // also asked of B, is not a candidate (two requests already).
        let arrivals = Arrivals {
            ours: 0.05,
            held: a
                .iter()
                .enumerate()
                .map(|(i, r)| (*r, if i == 3 { 0.1 } else { 1.0 + i as f64 }))
                .collect(),
        };
        let got = p.pick(&Bitfield::full(1), 2, |_| false, &arrivals, &mut rng());
        assert_eq!(got, vec![a[2], a[1]], "latest first, within max");
    }

    #[test]
    fn a_slower_peer_does_not_copy_what_a_faster_one_sends() {
        let (mut p, a) = endgame_of_four();
        let held: HashMap<BlockRequest, f64> = a.iter().map(|r| (*r, 0.2)).collect();
        let slow = Arrivals {
            ours: 0.5,
            held: held.clone(),
        };
        let all = Bitfield::full(1);
        assert!(p.pick(&all, 4, |_| false, &slow, &mut rng()).is_empty());
        // A block nobody is expected to send (its peer's rate unknown)
        // may be copied by anyone.
        let mut unknown = held;
        unknown.remove(&a[0]);
        let slow = Arrivals {
            ours: 0.5,
            held: unknown,
        };
        assert_eq!(p.pick(&all, 4, |_| false, &slow, &mut rng()), vec![a[0]]);
    }

    #[test]
    fn no_endgame_while_blocks_are_free_elsewhere() {
        let mut p = picker(4, 4);
        let all = Bitfield::full(4);
        p.add_peer(&all);
        let mut one = Bitfield::new(4);
        // A peer with only piece 0: once piece 0 is fully requested from the
        // seed, that peer gets nothing (pieces 1-3 are still unrequested).
        one.set(0);
        let from_seed = pick(&mut p, &one, 2, |_| false);
        assert_eq!(from_seed.len(), 2);
        assert!(!p.in_endgame());
        assert!(pick(&mut p, &one, 10, |_| false).is_empty());
        // Once everything is requested, endgame duplicates are allowed.
        let rest = pick(&mut p, &all, 100, |_| false);
        assert_eq!(rest.len(), 6);
        assert!(p.in_endgame());
        assert_eq!(pick(&mut p, &one, 10, |_| false).len(), 2);
    }

    #[test]
    fn partial_limit() {
        let mut p = picker(10, 2);
        let all = Bitfield::full(10);
        p.add_peer(&all);
        let got = pick(&mut p, &all, 100, |_| false);
        // a peer that can help no started piece may go to twice the limit
        assert_eq!(p.partial_count(), 4);
        assert_eq!(got.len(), 8);
        let mut one = Bitfield::new(10);
        let other = (0..10)
            .find(|i| !got.iter().any(|r| r.index == *i))
            .unwrap();
        one.set(other as usize);
        assert!(pick(&mut p, &one, 100, |_| false).is_empty());
    }

    /// Three pieces of two blocks: the first ends in padding after one
    /// block and 100 bytes, the second is all padding, the third has 5000
    /// bytes of data.
    fn padded_picker() -> Picker {
        picker(3, 4).with_padding(vec![(0, BLOCK_SIZE + 100), (1, 0), (2, 5000)])
    }

    #[test]
    fn trailing_padding_is_not_requested() {
        let mut p = padded_picker();
        assert_eq!(p.block_count(0), 2);
        assert_eq!(p.block_count(1), 0);
        assert_eq!(p.block_count(2), 1);
        let short = p.block(0, 1);
        assert_eq!((short.begin, short.length), (BLOCK_SIZE, 100));
        assert!(p.is_valid_block(&short));
        assert!(!p.is_valid_block(&BlockRequest {
            length: BLOCK_SIZE,
            ..short
        }));
        assert_eq!(p.block(2, 0).length, 5000);
        let all = Bitfield::full(3);
        p.add_peer(&all);
        let mut got = pick(&mut p, &all, 100, |_| false);
        got.sort_by_key(|r| (r.index, r.begin));
        let layout: Vec<_> = got.iter().map(|r| (r.index, r.begin, r.length)).collect();
        assert_eq!(
            layout,
            vec![(0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, 100), (2, 0, 5000)]
        );
        // Everything requested: endgame, though piece 1 never started.
        assert!(p.in_endgame());
        for r in &got[..2] {
            assert_ne!(p.received(r), Received::Unwanted);
        }
        assert_eq!(p.received(&got[2]), Received::PieceComplete);
    }

    #[test]
    fn a_piece_of_padding_only_is_verified_without_requests() {
        let mut p = padded_picker();
        assert_eq!(p.take_empty(), vec![1]);
        assert!(p.take_empty().is_empty(), "taken once");
        p.piece_verified(1);
        assert!(p.have().get(1));
        assert!(p.take_empty().is_empty(), "had");
        // A failed one is never picked.
        let mut r = padded_picker();
        assert_eq!(r.take_empty(), vec![1]);
        r.piece_failed(1);
        let only = {
            let mut b = Bitfield::new(3);
            b.set(1);
            b
        };
        r.add_peer(&only);
        assert!(pick(&mut r, &only, 10, |_| false).is_empty());
        assert_eq!(r.partial_count(), 0);
    }

    #[test]
    fn timed_out_pieces_do_not_pin_the_started_limit() {
        let mut p = picker(10, 2);
        let all = Bitfield::full(10);
        p.add_peer(&all);
        // A peer that never answers: it is asked for four pieces (twice the
        // limit), then every request times out.
        let lost = pick(&mut p, &all, 100, |_| false);
        assert_eq!(p.partial_count(), 4);
        assert!(pick(&mut p, &all, 100, |_| false).is_empty(), "pinned");
        for r in &lost {
            p.timed_out(r);
        }
        // Another peer, lacking those pieces, can start new ones.
        let mut others = Bitfield::full(10);
        for r in &lost {
            others.clear(r.index as usize);
        }
        let fresh = pick(&mut p, &others, 100, |_| false);
        assert_eq!(fresh.len(), 8, "four more pieces started: {fresh:?}");
        assert_eq!(p.partial_count(), 8);
        // A peer holding a timed-out piece finishes it first: its blocks
        // are free again, and it counts against the limit again.
        let again = pick(&mut p, &all, 2, |_| false);
        assert_eq!(again.len(), 2);
        assert!(lost.iter().any(|r| r.index == again[0].index), "{again:?}");
        assert_eq!(p.started_count(), 5);
    }

    #[test]
    fn a_timed_out_block_can_be_picked_elsewhere_and_in_endgame() {
        let mut p = picker(1, 4);
        let all = Bitfield::full(1);
        p.add_peer(&all);
        p.add_peer(&all);
        let a = pick(&mut p, &all, 10, |_| false);
        assert_eq!(a.len(), 2);
        p.timed_out(&a[0]);
        assert!(!p.in_endgame(), "the timed-out block is free again");
        // The second peer gets the freed block, not a duplicate of a[1].
        let b = pick(&mut p, &all, 1, |r| !a.contains(r));
        assert_eq!(b, vec![a[0]]);
        // Everything requested again: endgame duplicates still work.
        assert!(p.in_endgame());
        let dup = pick(&mut p, &all, 10, |r| b.contains(r));
        assert_eq!(dup, vec![a[1]]);
        assert_eq!(p.received(&a[1]), Received::Stored);
        assert_eq!(p.received(&b[0]), Received::PieceComplete);
    }
}
