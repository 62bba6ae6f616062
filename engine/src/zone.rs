//! Zones: hosts that share a fast network (a rack, a room, a data centre)
//! and reach the rest of the fleet through a slower link. With zones, a
//! piece should cross that link about once per zone and then be traded
//! inside it, with no scheduler: each host decides alone, from what its
//! peers told it.
//!
//! The rule, for a host that has a zone (`SessionConfig::zone`):
//! - Every p2pfile host says its zone in the extension handshake (key
//!   [`HANDSHAKE_KEY`]). A peer that says none (another client, or p2pfile
//!   run without a zone) counts as another zone.
//! - From a peer of its own zone it asks anything, as without zones.
//! - From a peer of another zone it asks only the pieces that no connected
//!   peer of its own zone has, and of those only the ones assigned to it:
//!   the zone's members it knows (itself and its connected same-zone peers)
//!   split the pieces by rendezvous hashing, each piece going to the
//!   member with the highest [`score`] for it. The hosts of a zone thus
//!   fetch different pieces across the link, each about 1/n of them, and
//!   take the rest from each other. A member that leaves drops out of the
//!   split and its pieces go to the others at once.
//! - When nothing in the zone has progressed for [`stall_after`] (no block
//!   received here, no piece announced by a same-zone peer), the rule is
//!   lifted, so a member that froze, views of the zone that disagree, or a
//!   same-zone peer that has a piece but will not send it, cost at most
//!   that long; the rule returns with the next block.
//! - The choker gives its regular slots to interested same-zone peers
//!   first (see [`crate::choker::unchoke_set`]).
//!
//! Without a zone none of this applies, and the picker and choker behave
//! exactly as before zones existed. Pure: no I/O, the clock passed in.

use std::time::{Duration, Instant};

use crate::bitfield::Bitfield;

/// The extension handshake key that carries the sender's zone.
pub const HANDSHAKE_KEY: &str = "p2pfile_zone";

/// Longest zone name, in bytes.
pub const MAX_LEN: usize = 64;

/// How long the zone may make no progress before the rule is lifted, at
/// the least: far above the gap between two blocks, or two pieces of the
/// usual 256 KiB, on any link a zone is worth having (0.08 s for a piece
/// at a quarter of 100 Mbit/s), and short next to a run.
pub const STALL: Duration = Duration::from_secs(1);

/// Piece bytes that add a second to [`STALL`].
const STALL_BYTES_PER_SECOND: u32 = 512 * 1024;

/// How long the zone may make no progress before the rule is lifted, for
/// pieces of `piece_length`: [`STALL`], or a second per 512 KiB of piece
/// when longer. Near the end, a host may wait on nothing but the pieces
/// other members are still fetching across; a big piece shared by several
/// hosts on a thin link takes seconds (4 MiB at 25 Mbit/s: 1.3 s), and
/// lifting the rule then would fetch it twice.
pub fn stall_after(piece_length: u32) -> Duration {
    STALL.max(Duration::from_secs_f64(
        f64::from(piece_length) / f64::from(STALL_BYTES_PER_SECOND),
    ))
}

/// Whether `name` can be a zone: 1 to [`MAX_LEN`] characters of
/// `A-Z a-z 0-9 . _ -`, so it prints plainly in logs and JSON.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A member's key in the split: a stable 64-bit digest of its peer id
/// (FNV-1a), the same on every host and in every build.
pub fn member_key(peer_id: &[u8; 20]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in peer_id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finalizer: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rendezvous score of `member` for `piece`: the member with the highest
/// score fetches the piece across the link.
pub fn score(member: u64, piece: u32) -> u64 {
    mix(member ^ u64::from(piece).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The member that fetches `piece`: highest score, ties to the higher key.
/// `None` for no members.
pub fn owner(members: &[u64], piece: u32) -> Option<u64> {
    members
        .iter()
        .copied()
        .max_by_key(|&m| (score(m, piece), m))
}

/// The pieces assigned to the other members, kept until the members change.
#[derive(Debug)]
pub struct Split {
    me: u64,
    /// The other members, sorted, that `theirs` was computed for.
    others: Vec<u64>,
    theirs: Bitfield,
}

impl Split {
    /// A split of `pieces` pieces for the member `me`, alone so far.
    pub fn new(me: u64, pieces: usize) -> Self {
        Self {
            me,
            others: Vec::new(),
            theirs: Bitfield::new(pieces),
        }
    }

    /// The pieces other members fetch across the link, with `others` the
    /// other members now (any order; ourselves and repeats ignored).
    pub fn theirs(&mut self, mut others: Vec<u64>) -> &Bitfield {
        others.sort_unstable();
        others.dedup();
        others.retain(|&m| m != self.me);
        if others != self.others {
            let mut all = others.clone();
            all.push(self.me);
            let mut theirs = Bitfield::new(self.theirs.len());
            for i in 0..theirs.len() {
                if owner(&all, i as u32) != Some(self.me) {
                    theirs.set(i);
                }
            }
            self.theirs = theirs;
            self.others = others;
        }
        &self.theirs
    }
}

/// What we may ask a peer of another zone for: what it `has`, less what a
/// connected peer of our zone has (`zone_has`), less the pieces assigned
/// to the other members (`theirs`).
pub fn offer(has: &Bitfield, zone_has: &Bitfield, theirs: &Bitfield) -> Bitfield {
    has.difference(zone_has).difference(theirs)
}

/// Whether the zone has made no progress since `last_news` for `after`
/// (see [`stall_after`]): then the rule is lifted.
pub fn stalled(last_news: Instant, now: Instant, after: Duration) -> bool {
    now.saturating_duration_since(last_news) >= after
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(len: usize, ones: &[usize]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for &i in ones {
            b.set(i);
        }
        b
    }

    #[test]
    fn names() {
        assert!(is_valid("dc1"));
        assert!(is_valid("rack-7.room_2"));
        assert!(is_valid(&"a".repeat(MAX_LEN)));
        assert!(!is_valid(""));
        assert!(!is_valid(&"a".repeat(MAX_LEN + 1)));
        assert!(!is_valid("a b"));
        assert!(!is_valid("zone/1"));
        assert!(!is_valid("zoné"));
        assert!(!is_valid("a\n"));
    }

    #[test]
    fn keys_and_scores_are_stable() {
        // Fixed values: every host, whatever its build, must agree.
        assert_eq!(member_key(&[0; 20]), member_key(&[0; 20]));
        assert_ne!(member_key(&[0; 20]), member_key(&[1; 20]));
        assert_eq!(score(1, 2), score(1, 2));
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161d_100b_05e5);
    }

    #[test]
    fn every_piece_has_one_owner_and_the_split_is_even() {
        let members: Vec<u64> = (0..4u8).map(|i| member_key(&[i; 20])).collect();
        let pieces = 4000;
        let mut count = [0usize; 4];
        for piece in 0..pieces {
            let o = owner(&members, piece).unwrap();
            count[members.iter().position(|&m| m == o).unwrap()] += 1;
        }
        for c in count {
            assert!((800..1200).contains(&c), "uneven split: {count:?}");
        }
        // Each member's view of who owns what is the same: the splits of
        // the four members partition the pieces.
        let mut covered = Bitfield::new(pieces as usize);
        for &me in &members {
            let mut s = Split::new(me, pieces as usize);
            let mine = Bitfield::full(pieces as usize).difference(s.theirs(members.clone()));
            for i in mine.iter_ones() {
                assert!(covered.set(i), "piece {i} owned twice");
            }
        }
        assert!(covered.is_full());
    }

    #[test]
    fn a_member_leaving_moves_only_its_pieces() {
        let members: Vec<u64> = (0..5u8).map(|i| member_key(&[i; 20])).collect();
        let gone = members[4];
        for piece in 0..2000 {
            let before = owner(&members, piece).unwrap();
            let after = owner(&members[..4], piece).unwrap();
            if before != gone {
                assert_eq!(before, after, "piece {piece} moved");
            }
        }
    }

    #[test]
    fn alone_every_piece_is_ours() {
        let mut s = Split::new(7, 100);
        assert_eq!(s.theirs(Vec::new()).count(), 0);
        assert_eq!(s.theirs(vec![7, 7]).count(), 0, "ourselves ignored");
        let with_one = s.theirs(vec![8]).count();
        assert!((30..70).contains(&with_one), "{with_one}");
        assert_eq!(s.theirs(Vec::new()).count(), 0, "recomputed");
    }

    #[test]
    fn offer_skips_what_the_zone_has_and_what_others_fetch() {
        let has = Bitfield::full(6);
        let zone_has = bits(6, &[0, 1]);
        let theirs = bits(6, &[1, 2, 3]);
        assert_eq!(
            offer(&has, &zone_has, &theirs)
                .iter_ones()
                .collect::<Vec<_>>(),
            vec![4, 5]
        );
    }

    #[test]
    fn big_pieces_wait_longer() {
        assert_eq!(stall_after(16 * 1024), STALL);
        assert_eq!(stall_after(256 * 1024), STALL);
        assert_eq!(stall_after(1024 * 1024), Duration::from_secs(2));
        assert_eq!(stall_after(4 * 1024 * 1024), Duration::from_secs(8));
    }

    #[test]
    fn the_rule_is_lifted_after_a_stall() {
        let t = Instant::now();
        assert!(!stalled(t, t, STALL));
        assert!(!stalled(t, t + STALL / 2, STALL));
        assert!(stalled(t, t + STALL, STALL));
        assert!(
            !stalled(t + STALL, t, STALL),
            "a clock before the news is no stall"
        );
    }
}
