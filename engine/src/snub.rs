//! The block requests in flight to one peer, and when they count as
//! unanswered (snubbing).
//!
//! Three timers, all measured from what the peer itself did, never from a
//! fixed guess at its speed, so a slow but honest peer (an `--upload-limit`,
//! a long queue) is never taken for a hostile one:
//! - **Overtaken**: a request still unanswered [`SNUB_TIMEOUT`] after it was
//!   sent, while the peer has answered a request sent *after* it. Uploaders
//!   serve their queue in order (ours does, libtorrent does), so a slow peer
//!   never overtakes; one that claims a piece and never sends it does.
//! - **Stalled**: no block at all while requests are owed, for as long as
//!   [`STALL_BLOCKS`] blocks take at the peer's own measured rate (within
//!   [`STALL_MIN`]..=[`STALL_TIMEOUT`]): every request is handed to others.
//! - **Serves nothing**: no block for [`SERVES_NOTHING`] while requests were
//!   owed the whole time, across stalls: the connection is closed.
//!
//! Pure: no I/O; time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::wire::{BLOCK_SIZE, BlockRequest};

/// How long a request may stay unanswered after a later one to the same
/// peer was answered. A few seconds: an in-order uploader never overtakes,
/// so this only needs to cover reordering by parallel disk reads
/// (milliseconds), and is short enough that a peer skipping every third
/// piece costs the downloader little.
pub(crate) const SNUB_TIMEOUT: Duration = Duration::from_secs(3);
/// Skipped requests kept owed (waiting out [`SNUB_TIMEOUT`]) beyond the
/// pipeline. Only memory (a few dozen bytes each): a peer skipping a third
/// of what it is asked at 11 MiB/s skips ~350 a second, and a cap of twice
/// the pipeline (~170) stopped our requests, its rate and so its pipeline
/// collapsed (56 of 682 served pieces in a minute).
pub(crate) const MAX_SKIPPED: usize = 2048;
/// The longest a peer may send no block at all while owing us some before
/// its requests go to others (the coordinator's tick is one second): a
/// peer of unknown rate, or one slower than 16 KiB/s (the smallest upload
/// limit, `crate::rate::MIN_LIMIT`). Such a peer loses its queue and is
/// asked again, and is never closed for it while it sends something.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(8);
/// The shortest: a fast peer that goes silent with requests owed is
/// skipping them. Long enough for a disk stall on the sender; short
/// enough that a peer whose whole pipeline sits on one unanswered piece
/// (slow start: 16 requests, one piece of 256 KiB) does not cost more.
pub(crate) const STALL_MIN: Duration = Duration::from_secs(2);
/// Silence, in blocks at the peer's measured rate, that counts as a stall:
/// eight blocks' time lets an honest peer's rate wobble by far more than
/// it does over a second.
pub(crate) const STALL_BLOCKS: f64 = 8.0;

/// Silence, in blocks at the peer's measured rate, after which requests
/// older than it stop holding the pipeline (within [`PROBE_MIN`] and
/// [`STALL_TIMEOUT`]): more are sent, for other pieces. A peer whose newest
/// requests all fall on pieces it skips answers nothing later, so they
/// are never overtaken; without this its pipeline sat on them until the
/// stall, its rate fell, its pipeline shrank to one piece, and every third
/// piece cost a stall (56 of 682 served pieces in a minute).
pub(crate) const PROBE_BLOCKS: f64 = 4.0;
/// The shortest such silence: the coordinator's tick.
pub(crate) const PROBE_MIN: Duration = Duration::from_secs(1);

/// How long a silence of a peer sending `rate` bytes/s (0 when unknown)
/// before older requests stop holding its pipeline.
pub(crate) fn probe_after(rate: f64) -> Duration {
    if rate <= 0.0 {
        return STALL_TIMEOUT;
    }
    Duration::from_secs_f64(PROBE_BLOCKS * BLOCK_SIZE as f64 / rate).clamp(PROBE_MIN, STALL_TIMEOUT)
}

/// How long a peer sending `rate` bytes/s (0 when unknown) may stay silent
/// with requests owed.
pub(crate) fn stall_timeout(rate: f64) -> Duration {
    if rate <= 0.0 {
        return STALL_TIMEOUT;
    }
    Duration::from_secs_f64(STALL_BLOCKS * BLOCK_SIZE as f64 / rate).clamp(STALL_MIN, STALL_TIMEOUT)
}
/// How long a peer may send no block while requests to it are owed, across
/// stalls and re-requests, before the connection is closed: its slot is
/// better used by another. Several stalls long, so a peer that merely
/// paused (disk, a burst of other uploads) is kept.
pub(crate) const SERVES_NOTHING: Duration = Duration::from_secs(30);

/// One outstanding request: its place in the order we sent them, and when.
#[derive(Clone, Copy, Debug)]
struct Sent {
    seq: u64,
    at: Instant,
}

/// Requests in flight to one peer.
#[derive(Debug)]
pub(crate) struct Requests {
    sent: HashMap<BlockRequest, Sent>,
    next_seq: u64,
    /// The latest (by send order) request the peer answered.
    answered: Option<u64>,
    /// Since when the peer has sent no block while owing one (reset at each
    /// stall, so a stalled peer is asked again for a full period).
    waiting_since: Option<Instant>,
    /// Since when it has sent no block while owing one, across stalls.
    starved_since: Option<Instant>,
}

impl Requests {
    pub(crate) fn new() -> Self {
        Self {
            sent: HashMap::new(),
            next_seq: 0,
            answered: None,
            waiting_since: None,
            starved_since: None,
        }
    }

    /// Requests owed, skipped ones included.
    pub(crate) fn len(&self) -> usize {
        self.sent.len()
    }

    /// No request of ours is owed by the peer (admission counts a peer
    /// that owes some as useful).
    pub(crate) fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Requests not skipped: none sent after them was answered yet.
    fn unskipped(&self) -> impl Iterator<Item = (&BlockRequest, &Sent)> {
        let answered = self.answered;
        self.sent
            .iter()
            .filter(move |(_, s)| answered.is_none_or(|a| s.seq > a))
    }

    /// Requests that hold the pipeline: neither skipped (a later one was
    /// answered) nor older than a silence of [`probe_after`] the peer's
    /// `rate`.
    fn in_flight(&self, now: Instant, rate: f64) -> usize {
        let probe = probe_after(rate);
        let silent = self
            .waiting_since
            .is_some_and(|w| now.duration_since(w) >= probe);
        self.unskipped()
            .filter(|(_, s)| !silent || now.duration_since(s.at) < probe)
            .count()
    }

    /// How many more requests to send to keep `depth` in flight. Skipped
    /// requests, though owed until they time out, do not hold the pipeline
    /// (else a peer skipping every third piece fills it with requests it
    /// will never answer, and its rate, and so its depth, collapse: 5 % of
    /// what it served came in a minute). At most [`MAX_SKIPPED`] of them
    /// are kept beyond it. Refills come in batches of a quarter of `depth` at least,
    /// so a fast peer is not sent one request per block it sends.
    pub(crate) fn room(&self, depth: usize, now: Instant, rate: f64) -> usize {
        let in_flight = self.in_flight(now, rate);
        if in_flight > depth - depth / 4 {
            return 0;
        }
        (depth - in_flight).min((depth + MAX_SKIPPED).saturating_sub(self.sent.len()))
    }

    pub(crate) fn contains(&self, req: &BlockRequest) -> bool {
        self.sent.contains_key(req)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &BlockRequest> {
        self.sent.keys()
    }

    /// `req` was sent now.
    pub(crate) fn insert(&mut self, req: BlockRequest, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.insert(req, Sent { seq, at: now });
        self.waiting_since.get_or_insert(now);
        self.starved_since.get_or_insert(now);
    }

    /// A block arrived; true when it answered one of our requests.
    pub(crate) fn received(&mut self, req: &BlockRequest, now: Instant) -> bool {
        let Some(sent) = self.sent.remove(req) else {
            return false;
        };
        self.answered = self.answered.max(Some(sent.seq));
        let owed = (!self.sent.is_empty()).then_some(now);
        self.waiting_since = owed;
        self.starved_since = owed;
        true
    }

    /// `req` will not be answered and is not owed any more (rejected,
    /// cancelled because another peer sent it).
    pub(crate) fn remove(&mut self, req: &BlockRequest) -> bool {
        let removed = self.sent.remove(req).is_some();
        if self.sent.is_empty() {
            self.waiting_since = None;
            self.starved_since = None;
        }
        removed
    }

    /// The peer choked us without the fast extension, which cancels every
    /// request (BEP 3); it said it stopped serving, which is not snubbing.
    /// Returns what was owed.
    pub(crate) fn drain(&mut self) -> Vec<BlockRequest> {
        self.waiting_since = None;
        self.starved_since = None;
        self.sent.drain().map(|(r, _)| r).collect()
    }

    /// Removes and returns the requests overtaken by a later answered one
    /// and older than [`SNUB_TIMEOUT`].
    pub(crate) fn take_overtaken(&mut self, now: Instant) -> Vec<BlockRequest> {
        let Some(answered) = self.answered else {
            return Vec::new();
        };
        let late: Vec<BlockRequest> = self
            .sent
            .iter()
            .filter(|(_, s)| s.seq < answered && now.duration_since(s.at) >= SNUB_TIMEOUT)
            .map(|(r, _)| *r)
            .collect();
        for r in &late {
            self.sent.remove(r);
        }
        if self.sent.is_empty() {
            // Still starved: the peer answered nothing since.
            self.waiting_since = None;
        }
        late
    }

    /// When no block came for [`stall_timeout`] of the peer's `rate` while
    /// requests were owed: removes and returns all of them. The peer stays
    /// starved (see [`serves_nothing`](Self::serves_nothing)).
    pub(crate) fn take_stalled(&mut self, now: Instant, rate: f64) -> Vec<BlockRequest> {
        match self.waiting_since {
            Some(since) if now.duration_since(since) >= stall_timeout(rate) => {
                self.waiting_since = None;
                self.sent.drain().map(|(r, _)| r).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The peer sent no block for [`SERVES_NOTHING`] while requests to it
    /// were owed, re-requests included: close it.
    pub(crate) fn serves_nothing(&self, now: Instant) -> bool {
        self.starved_since
            .is_some_and(|since| now.duration_since(since) >= SERVES_NOTHING)
    }

    /// When each request in flight is expected from a peer sending `rate`
    /// bytes/s, in seconds from now: it serves them in the order sent, so
    /// a request waits for its own bytes and those of every request sent
    /// before it. Skipped ones (a later request was answered), and all of
    /// them while the rate is unknown, are not expected and not listed.
    pub(crate) fn arrivals(&self, rate: f64) -> Vec<(BlockRequest, f64)> {
        if rate <= 0.0 {
            return Vec::new();
        }
        let mut waiting: Vec<(&BlockRequest, &Sent)> = self.unskipped().collect();
        waiting.sort_by_key(|(_, s)| s.seq);
        let mut bytes = 0u64;
        waiting
            .into_iter()
            .map(|(r, _)| {
                bytes += r.length as u64;
                (*r, bytes as f64 / rate)
            })
            .collect()
    }

    /// When a block asked now of a peer sending `rate` bytes/s would
    /// arrive, behind the requests it still owes (infinite while the rate
    /// is unknown).
    pub(crate) fn next_arrival(&self, rate: f64) -> f64 {
        if rate <= 0.0 {
            return f64::INFINITY;
        }
        let owed: u64 = self.unskipped().map(|(r, _)| r.length as u64).sum();
        (owed + BLOCK_SIZE as u64) as f64 / rate
    }

    /// The peer is owed nothing and we will ask it nothing more: a stall
    /// that ended because we stopped asking is not starving.
    pub(crate) fn idle(&mut self) {
        if self.sent.is_empty() {
            self.waiting_since = None;
            self.starved_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(index: u32) -> BlockRequest {
        BlockRequest {
            index,
            begin: 0,
            length: 16384,
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn arrivals_follow_the_order_sent_and_skip_the_skipped() {
        let t0 = Instant::now();
        let mut r = Requests::new();
        for i in 0..4 {
            r.insert(req(i), t0);
        }
        let rate = 16384.0 * 10.0;
        assert!(r.arrivals(0.0).is_empty(), "rate unknown");
        assert_eq!(r.next_arrival(0.0), f64::INFINITY);
        let mut got = r.arrivals(rate);
        got.sort_by_key(|(q, _)| q.index);
        let etas: Vec<f64> = got.iter().map(|(_, t)| *t).collect();
        assert_eq!(etas, vec![0.1, 0.2, 0.3, 0.4]);
        assert_eq!(r.next_arrival(rate), 0.5);
        // Request 2 answered: 0 and 1 were skipped and are not expected.
        assert!(r.received(&req(2), t0));
        let got = r.arrivals(rate);
        assert_eq!(got, vec![(req(3), 0.1)]);
        assert_eq!(r.next_arrival(rate), 0.2);
    }

    #[test]
    fn a_slow_in_order_peer_is_never_overtaken() {
        let t0 = Instant::now();
        let mut r = Requests::new();
        for i in 0..16 {
            r.insert(req(i), t0);
        }
        // One block every 4 s (a peer on a tight upload limit), in order.
        for i in 0..16 {
            let now = t0 + 4 * S * (i + 1);
            assert!(r.take_overtaken(now).is_empty(), "block {i}");
            assert!(r.take_stalled(now, 0.0).is_empty());
            assert!(r.received(&req(i), now));
            assert!(!r.serves_nothing(now));
        }
        assert!(r.is_empty());
    }

    #[test]
    fn a_skipped_request_times_out_once_a_later_one_is_answered() {
        let t0 = Instant::now();
        let mut r = Requests::new();
        for i in 0..4 {
            r.insert(req(i), t0);
        }
        // Nothing answered yet: no later request overtook piece 0.
        assert!(r.take_overtaken(t0 + 10 * S).is_empty());
        r.received(&req(1), t0 + S);
        assert!(r.take_overtaken(t0 + 2 * S).is_empty(), "not yet 3 s");
        assert_eq!(r.take_overtaken(t0 + SNUB_TIMEOUT), vec![req(0)]);
        // 2 and 3 were sent after 1, so 1's answer says nothing about them.
        assert_eq!(r.len(), 2);
        assert!(!r.contains(&req(0)));
    }

    #[test]
    fn the_timeout_runs_from_when_each_request_was_sent() {
        let t0 = Instant::now();
        let mut r = Requests::new();
        r.insert(req(0), t0);
        r.insert(req(1), t0 + 3 * S);
        r.insert(req(2), t0 + 3 * S);
        r.received(&req(2), t0 + 4 * S);
        assert_eq!(r.take_overtaken(t0 + 3 * S), vec![req(0)]);
        assert!(r.take_overtaken(t0 + 5 * S).is_empty());
        assert_eq!(r.take_overtaken(t0 + 6 * S), vec![req(1)]);
    }

    #[test]
    fn skipped_requests_do_not_hold_the_pipeline() {
        let t0 = Instant::now();
        let mut r = Requests::new();
        assert_eq!(r.room(16, t0, 0.0), 16);
        for i in 0..16 {
            r.insert(req(i), t0);
        }
        assert_eq!(r.room(16, t0, 0.0), 0);
        // In order: room again only once a quarter of the depth is answered.
        for i in 0..3 {
            r.received(&req(i), t0);
        }
        assert_eq!(r.room(16, t0, 0.0), 0);
        r.received(&req(3), t0);
        assert_eq!(r.room(16, t0, 0.0), 4);
        // Request 4 skipped, 5..=15 answered: the pipeline is free but for
        // it, and it stays owed.
        for i in 5..16 {
            r.received(&req(i), t0);
        }
        assert_eq!(r.len(), 1);
        assert_eq!(r.room(16, t0, 0.0), 16);
        // No more than MAX_SKIPPED skipped ones beyond the depth.
        for i in 16..MAX_SKIPPED as u32 + 21 {
            r.insert(req(i), t0);
        }
        r.insert(req(1 << 30), t0);
        r.received(&req(1 << 30), t0);
        assert_eq!(r.len(), MAX_SKIPPED + 6, "all skipped");
        assert_eq!(r.room(16, t0, 0.0), 10, "depth + MAX_SKIPPED owed at most");
        for i in 0..10 {
            r.insert(req((1 << 29) + i), t0);
        }
        assert_eq!(r.room(16, t0, 0.0), 0);
    }

    #[test]
    fn silence_is_measured_in_the_peers_own_blocks() {
        const KIB: f64 = 1024.0;
        assert_eq!(stall_timeout(0.0), STALL_TIMEOUT, "unknown rate");
        assert_eq!(stall_timeout(50_000.0 * KIB), STALL_MIN, "fast");
        assert_eq!(stall_timeout(32.0 * KIB), 4 * S, "eight blocks at 32 KiB/s");
        assert_eq!(stall_timeout(16.0 * KIB), STALL_TIMEOUT, "smallest limit");
        assert_eq!(stall_timeout(1.0), STALL_TIMEOUT);
        let t0 = Instant::now();
        let mut r = Requests::new();
        r.insert(req(0), t0);
        assert!(r.take_stalled(t0 + S, 50_000.0 * KIB).is_empty());
        assert_eq!(r.take_stalled(t0 + 2 * S, 50_000.0 * KIB), vec![req(0)]);
    }

    #[test]
    fn a_silent_peer_gets_one_more_pipeline_per_probe() {
        const RATE: f64 = 10.0 * 1024.0 * 1024.0;
        let t0 = Instant::now();
        let mut r = Requests::new();
        for i in 0..16 {
            r.insert(req(i), t0);
        }
        assert_eq!(r.room(16, t0 + S / 2, RATE), 0);
        // A second of silence from a 10 MiB/s peer: those 16 stop counting.
        assert_eq!(r.room(16, t0 + S, RATE), 16);
        for i in 16..32 {
            r.insert(req(i), t0 + S);
        }
        assert_eq!(r.room(16, t0 + S, RATE), 0, "the new ones count");
        assert_eq!(r.room(16, t0 + 2 * S, RATE), 16);
        // A slow peer (16 KiB/s, one block a second) gets no extra
        // requests for its ordinary gaps.
        assert_eq!(probe_after(16.0 * 1024.0), 4 * S);
        let mut slow = Requests::new();
        for i in 0..16 {
            slow.insert(req(i), t0);
        }
        for i in 0..3 {
            slow.received(&req(i), t0 + S * (i + 1));
            assert_eq!(slow.room(16, t0 + S * (i + 2), 16.0 * 1024.0), 0);
        }
    }

    #[test]
    fn silence_stalls_then_closes() {
        let t0 = Instant::now();
        let mut r = Requests::new();
        r.insert(req(0), t0);
        assert!(r.take_stalled(t0 + 7 * S, 0.0).is_empty());
        assert_eq!(r.take_stalled(t0 + STALL_TIMEOUT, 0.0), vec![req(0)]);
        // Asked again (the stall restarts its period), still nothing.
        r.insert(req(0), t0 + 9 * S);
        assert!(r.take_stalled(t0 + 16 * S, 0.0).is_empty());
        assert!(!r.serves_nothing(t0 + 29 * S));
        assert!(
            r.serves_nothing(t0 + SERVES_NOTHING),
            "measured across stalls"
        );
        // One block resets both.
        r.insert(req(1), t0 + 30 * S);
        r.received(&req(1), t0 + 30 * S);
        assert!(!r.serves_nothing(t0 + 40 * S));
        assert!(r.take_stalled(t0 + 37 * S, 0.0).is_empty());
        assert_eq!(r.take_stalled(t0 + 38 * S, 0.0), vec![req(0)]);
    }

    #[test]
    fn a_peer_that_answers_part_of_its_queue_is_not_starved() {
        let t0 = Instant::now();
        let mut r = Requests::new();
        for i in 0..40 {
            r.insert(req(i), t0 + S * i);
            if i % 3 != 0 {
                r.received(&req(i), t0 + S * i);
            }
            r.take_overtaken(t0 + S * i);
            assert!(r.take_stalled(t0 + S * i, 0.0).is_empty());
            assert!(!r.serves_nothing(t0 + S * i));
        }
    }

    #[test]
    fn choke_and_idle_are_not_starving() {
        let t0 = Instant::now();
        let mut r = Requests::new();
        r.insert(req(0), t0);
        assert_eq!(r.drain(), vec![req(0)]);
        assert!(!r.serves_nothing(t0 + 60 * S));
        r.insert(req(1), t0 + 60 * S);
        assert_eq!(r.take_stalled(t0 + 68 * S, 0.0), vec![req(1)]);
        r.idle();
        assert!(!r.serves_nothing(t0 + 100 * S));
        // A request taken back because another peer sent the block.
        r.insert(req(2), t0 + 100 * S);
        assert!(r.remove(&req(2)));
        assert!(!r.serves_nothing(t0 + 200 * S));
    }
}
