//! Shared pieces of the decoder property tests (issue #10): the case count,
//! generators of valid values, edits that make near-valid input from a valid
//! encoding, and (in the engine's own tests) a measure of the memory a call
//! allocates.
//!
//! Built for the engine's tests and, through the `testing` feature, for the
//! binary's (its sync messages and discovery packets are bencode too). Not a
//! public interface.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use crate::bencode::Value;

/// The config of one property test: `cases` cases, the count chosen so that
/// every property of the workspace together stays within a few seconds of
/// `cargo test` on a 2-core machine. `PROPTEST_CASES` in the environment
/// overrides it, which is how `bench/proptest.sh` makes the long run.
pub fn config(cases: u32) -> Config {
    let from_env = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        from_env
    } else {
        Config { cases, ..from_env }
    }
}

/// Arbitrary bytes, up to `max` of them.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// Integers where decoders have edges: signs, zero, the ends of the integer
/// types fields are converted to, and 4 GiB.
pub fn edge_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => any::<i64>(),
        1 => prop::sample::select(vec![
            i64::MIN,
            -1,
            0,
            1,
            255,
            256,
            65_535,
            65_536,
            16 * 1024,
            16 * 1024 + 1,
            64 * 1024 * 1024,
            64 * 1024 * 1024 + 1,
            i64::from(u32::MAX),
            1 << 32,
            i64::MAX,
        ]),
    ]
}

/// Any bencode value, nested a few levels.
pub fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        edge_int().prop_map(Value::Int),
        bytes(24).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            prop::collection::btree_map(bytes(8), inner, 0..6).prop_map(Value::Dict),
        ]
    })
}

/// A socket address a peer could announce: any IPv4 or IPv6 address (no
/// flow label or scope, which no text or compact form carries), port 1..
pub fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), 1..=u16::MAX)
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<u128>(), 1..=u16::MAX).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ]
}

/// Any peer wire message, with short payloads.
pub fn message() -> impl Strategy<Value = crate::wire::Message> {
    use crate::wire::{BlockRequest, Message};
    let block = (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(index, begin, length)| {
        BlockRequest {
            index,
            begin,
            length,
        }
    });
    let payload = || bytes(64).prop_map(bytes::Bytes::from);
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::Choke),
        Just(Message::Unchoke),
        Just(Message::Interested),
        Just(Message::NotInterested),
        any::<u32>().prop_map(Message::Have),
        payload().prop_map(Message::Bitfield),
        block.clone().prop_map(Message::Request),
        (any::<u32>(), any::<u32>(), payload()).prop_map(|(index, begin, data)| Message::Piece {
            index,
            begin,
            data
        }),
        block.clone().prop_map(Message::Cancel),
        any::<u16>().prop_map(Message::Port),
        any::<u32>().prop_map(Message::SuggestPiece),
        Just(Message::HaveAll),
        Just(Message::HaveNone),
        block.prop_map(Message::RejectRequest),
        any::<u32>().prop_map(Message::AllowedFast),
        (any::<u8>(), payload()).prop_map(|(id, payload)| Message::Extended { id, payload }),
    ]
}

/// Numbers that replace a digit run in [`Edit::Digits`]: declared lengths
/// of 2 and 4 GiB and beyond every integer type, and non-canonical forms.
const NUMBERS: &[&str] = &[
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "0",
    "00",
    "01",
    "-0",
    "-1",
    "",
];

/// One change to a valid encoding.
#[derive(Clone, Debug)]
pub enum Edit {
    /// Cut the input at this point.
    Truncate(Index),
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Insert bytes here.
    Insert(Index, Vec<u8>),
    /// Remove up to this many bytes from here.
    Remove(Index, usize),
    /// Replace the first run of ASCII digits at or after this point with
    /// one of [`NUMBERS`]: a huge declared length or integer.
    Digits(Index, &'static str),
}

/// One to four edits.
pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), 1..=u8::MAX).prop_map(|(i, x)| Edit::Flip(i, x)),
        (any::<Index>(), bytes(8)).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1..16usize).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<Index>(), prop::sample::select(NUMBERS)).prop_map(|(i, n)| Edit::Digits(i, n)),
    ];
    prop::collection::vec(edit, 1..=4)
}

/// `bytes` with `edits` applied in order.
pub fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for edit in edits {
        // An index into 0..=len, so the end is a place too.
        let at = |i: &Index, len: usize| i.index(len + 1);
        match edit {
            Edit::Truncate(i) => out.truncate(at(i, out.len())),
            Edit::Flip(i, x) => {
                if !out.is_empty() {
                    let i = i.index(out.len());
                    out[i] ^= x;
                }
            }
            Edit::Insert(i, b) => {
                let i = at(i, out.len());
                out.splice(i..i, b.iter().copied());
            }
            Edit::Remove(i, n) => {
                let i = at(i, out.len());
                let end = (i + n).min(out.len());
                out.drain(i..end);
            }
            Edit::Digits(i, n) => {
                let from = at(i, out.len());
                if let Some(start) = out[from..].iter().position(u8::is_ascii_digit) {
                    let start = from + start;
                    let len = out[start..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    out.splice(start..start + len, n.bytes());
                }
            }
        }
    }
    out
}

/// Measures the memory a call allocates: the engine's test binary counts
/// every allocation per thread.
#[cfg(test)]
pub(crate) mod memory {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// The system allocator, counting the live bytes of each thread.
    struct Counting;

    thread_local! {
        // `const` and without `Drop`: usable inside the allocator at any
        // time, even while the thread is being torn down.
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: isize) {
        let live = LIVE.get() + n;
        LIVE.set(live);
        if live > PEAK.get() {
            PEAK.set(live);
        }
    }

    // SAFETY: every call is passed to `System` unchanged; the counting only
    // touches two thread-local integers.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Runs `f` and returns its result and the most bytes it held
    /// allocated at once (beyond what was live when it started).
    pub(crate) fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let base = LIVE.get();
        PEAK.set(base);
        let out = f();
        (out, (PEAK.get() - base).max(0) as usize)
    }

    /// The most a decoder may hold for `input` bytes. Decoded values cost
    /// more than their encoding (a one-entry dict of 7 bytes is a B-tree
    /// node of about 600), so the bound is linear in the input, with room
    /// for the nesting cap: what it must never depend on is a length or a
    /// count the input declares.
    pub(crate) fn bound(input: usize) -> usize {
        128 * input + 64 * 1024
    }

    #[test]
    fn counts_what_a_call_allocates() {
        let (v, n) = peak(|| vec![0u8; 100_000]);
        assert!(n >= 100_000, "{n}");
        drop(v);
        let ((), n) = peak(|| drop(vec![0u8; 10]));
        assert!(n < 100, "{n}");
    }
}
