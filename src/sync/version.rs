//! Version vectors: which edits a file's version has seen.
//!
//! Each device that changes a file bumps its own counter in the file's
//! vector. Comparing two vectors says whether one version descends from the
//! other (fast-forward) or whether both were edited without seeing each
//! other (concurrent: a possible conflict). Same scheme as Syncthing's BEP.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use data_encoding::BASE32_NOPAD;
use p2pfile_engine::bencode::Value;

/// Most entries a decoded vector may hold: one per device that ever changed
/// the file. Far above any real folder, low enough to bound work on hostile
/// input.
pub const MAX_DEVICES: usize = 1000;

/// Counters stay within bencode's `i64` integers.
const MAX_COUNTER: u64 = i64::MAX as u64;

/// A device's id. Later derived from a random id kept in the state database.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct DeviceId(pub u64);

impl DeviceId {
    /// Big-endian bytes: the wire and signing form (a bencode integer is an
    /// `i64` and cannot hold every `u64`). Byte order equals numeric order.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for DeviceId {
    /// A 7-character uppercase base32 short id, like Syncthing's short
    /// device id, for conflict-file names and messages. It is the first 35
    /// of the id's 64 bits, so it is a name for people, not an identity: two
    /// devices among n share one with probability about n² / 2³⁶.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = BASE32_NOPAD.encode(&self.to_bytes());
        f.write_str(&full[..7])
    }
}

/// How two version vectors relate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ordering4 {
    /// The same versions.
    Equal,
    /// `self` has seen everything `other` has, and more.
    Greater,
    /// `other` has seen everything `self` has, and more.
    Lesser,
    /// Each has seen an edit the other has not.
    Concurrent,
}

/// Why a decoded version vector was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum VersionError {
    /// Not a list of `[8-byte id, counter]` pairs.
    #[error("version vector is not a list of [device, counter] pairs")]
    Malformed,
    /// Counters must be positive (a zero entry is the same as no entry, so
    /// allowing it would give one vector two encodings).
    #[error("version vector counter out of range")]
    BadCounter,
    /// Ids not strictly increasing: not canonical, or a device twice.
    #[error("version vector devices are not sorted and unique")]
    NotSorted,
    /// More than [`MAX_DEVICES`] entries.
    #[error("version vector has more than {MAX_DEVICES} devices")]
    TooMany,
}

/// A version vector: a counter per device, absent meaning zero. Kept in a
/// `BTreeMap` so iteration, equality and encoding are in device order, and
/// zero counters are never stored, so equal vectors are equal values.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct VersionVector {
    counters: BTreeMap<DeviceId, u64>,
}

impl VersionVector {
    /// The empty vector: no device has changed anything.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The counter for `device` (0 if absent).
    pub fn get(&self, device: DeviceId) -> u64 {
        self.counters.get(&device).copied().unwrap_or(0)
    }

    /// Whether no device has a counter.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// The `(device, counter)` pairs in device order.
    pub fn iter(&self) -> impl Iterator<Item = (DeviceId, u64)> + '_ {
        self.counters.iter().map(|(d, c)| (*d, *c))
    }

    /// This vector after `device` made a change at `now_secs` (Unix time):
    /// its counter becomes `max(old + 1, now_secs)`.
    ///
    /// Using the clock, as Syncthing does, means a device that lost its
    /// database (counters back to zero) still produces versions newer than
    /// the ones it announced before: a plain `old + 1` would restart at 1,
    /// and its new edits would look older than its old ones to every peer.
    /// The `+ 1` keeps the counter moving when the clock stands still or
    /// goes back.
    pub fn update(&self, device: DeviceId, now_secs: u64) -> VersionVector {
        let mut next = self.clone();
        let old = self.get(device);
        // Stops at i64::MAX (the wire's limit), which only hostile input
        // reaches; there the result equals the input instead of exceeding it.
        let counter = old.saturating_add(1).max(now_secs).min(MAX_COUNTER);
        next.counters.insert(device, counter);
        next
    }

    /// Element-wise maximum: a version that has seen both.
    pub fn merge(&self, other: &VersionVector) -> VersionVector {
        let mut merged = self.clone();
        for (device, counter) in other.iter() {
            let entry = merged.counters.entry(device).or_insert(0);
            *entry = (*entry).max(counter);
        }
        merged
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Ordering4 {
        let mut greater = false;
        let mut lesser = false;
        let devices = self.counters.keys().chain(other.counters.keys());
        for &device in devices {
            match self.get(device).cmp(&other.get(device)) {
                Ordering::Greater => greater = true,
                Ordering::Less => lesser = true,
                Ordering::Equal => {}
            }
        }
        match (greater, lesser) {
            (false, false) => Ordering4::Equal,
            (true, false) => Ordering4::Greater,
            (false, true) => Ordering4::Lesser,
            (true, true) => Ordering4::Concurrent,
        }
    }

    /// Whether `self` has seen every change `other` has (Equal or Greater).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Ordering4::Equal | Ordering4::Greater)
    }

    /// The canonical form, used for signing and on the wire: a bencode list
    /// of `[8-byte big-endian device id, counter]` pairs in device order.
    pub fn to_bencode(&self) -> Value {
        Value::List(
            self.iter()
                .map(|(d, c)| {
                    // Counters never exceed MAX_COUNTER (update and decode
                    // both enforce it), so the cast is exact.
                    Value::List(vec![
                        Value::from(d.to_bytes().to_vec()),
                        Value::Int(c as i64),
                    ])
                })
                .collect(),
        )
    }

    /// Reads [`to_bencode`](Self::to_bencode)'s form, accepting only the
    /// canonical encoding (sorted, unique, positive), so that a decoded and
    /// re-encoded vector signs to the same bytes.
    pub fn from_bencode(value: &Value) -> Result<VersionVector, VersionError> {
        let items = value.as_list().ok_or(VersionError::Malformed)?;
        if items.len() > MAX_DEVICES {
            return Err(VersionError::TooMany);
        }
        let mut counters = BTreeMap::new();
        let mut last: Option<DeviceId> = None;
        for item in items {
            let [id, counter] = item.as_list().ok_or(VersionError::Malformed)? else {
                return Err(VersionError::Malformed);
            };
            let id: [u8; 8] = id
                .as_bytes()
                .and_then(|b| b.try_into().ok())
                .ok_or(VersionError::Malformed)?;
            let device = DeviceId(u64::from_be_bytes(id));
            let counter = counter.as_int().ok_or(VersionError::Malformed)?;
            if counter <= 0 {
                return Err(VersionError::BadCounter);
            }
            if last.is_some_and(|last| last >= device) {
                return Err(VersionError::NotSorted);
            }
            last = Some(device);
            counters.insert(device, counter as u64);
        }
        Ok(VersionVector { counters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pfile_engine::bencode::{decode, encode};
    use proptest::prelude::*;

    const A: DeviceId = DeviceId(1);
    const B: DeviceId = DeviceId(2);

    fn vv(pairs: &[(DeviceId, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(d, c) in pairs {
            v.counters.insert(d, c);
        }
        v
    }

    #[test]
    fn short_device_id_is_seven_base32_characters() {
        assert_eq!(DeviceId(0).to_string(), "AAAAAAA");
        assert_eq!(DeviceId(u64::MAX).to_string(), "7777777");
        let s = DeviceId(0x0123_4567_89ab_cdef).to_string();
        assert_eq!(s.len(), 7);
        assert_eq!(s, "AERUKZ4");
        // Only the top 35 bits show: ids differing below them look alike.
        assert_eq!(DeviceId(1).to_string(), DeviceId(0).to_string());
    }

    #[test]
    fn update_uses_the_clock_and_always_moves_forward() {
        let v = VersionVector::new().update(A, 1000);
        assert_eq!(v.get(A), 1000);
        // Clock behind the counter: +1.
        assert_eq!(v.update(A, 5).get(A), 1001);
        // No clock at all still counts.
        assert_eq!(VersionVector::new().update(A, 0).get(A), 1);
        // Other devices are untouched.
        assert_eq!(v.update(B, 7).get(A), 1000);
        assert_eq!(vv(&[(A, MAX_COUNTER)]).update(A, 0).get(A), MAX_COUNTER);
    }

    #[test]
    fn compare_cases() {
        let a1 = vv(&[(A, 1)]);
        let a2 = vv(&[(A, 2)]);
        let b1 = vv(&[(B, 1)]);
        let a1b1 = vv(&[(A, 1), (B, 1)]);
        assert_eq!(a1.compare(&a1), Ordering4::Equal);
        assert_eq!(a2.compare(&a1), Ordering4::Greater);
        assert_eq!(a1.compare(&a2), Ordering4::Lesser);
        assert_eq!(a1.compare(&b1), Ordering4::Concurrent);
        assert_eq!(a1b1.compare(&a1), Ordering4::Greater);
        assert_eq!(a2.compare(&a1b1), Ordering4::Concurrent);
        assert_eq!(VersionVector::new().compare(&a1), Ordering4::Lesser);
        assert!(a1b1.dominates(&a1) && a1b1.dominates(&a1b1) && !a1.dominates(&b1));
        assert_eq!(a2.merge(&b1), vv(&[(A, 2), (B, 1)]));
    }

    #[test]
    fn encoding_is_canonical_and_strict() {
        let v = vv(&[(B, 5), (DeviceId(u64::MAX), 7), (A, 1)]);
        let bytes = encode(&v.to_bencode());
        assert_eq!(
            &bytes[..],
            &b"ll8:\0\0\0\0\0\0\0\x01i1eel8:\0\0\0\0\0\0\0\x02i5eel8:\xff\xff\xff\xff\xff\xff\xff\xffi7eee"[..]
        );
        assert_eq!(
            VersionVector::from_bencode(&decode(&bytes).unwrap()).unwrap(),
            v
        );

        let parse = |b: &[u8]| VersionVector::from_bencode(&decode(b).unwrap());
        assert_eq!(parse(b"le"), Ok(VersionVector::new()));
        assert_eq!(parse(b"i1e"), Err(VersionError::Malformed));
        assert_eq!(
            parse(b"ll8:\0\0\0\0\0\0\0\x01ee"),
            Err(VersionError::Malformed)
        );
        assert_eq!(
            parse(b"ll7:\0\0\0\0\0\0\x01i1eee"),
            Err(VersionError::Malformed)
        );
        assert_eq!(
            parse(b"ll8:\0\0\0\0\0\0\0\x01i0eee"),
            Err(VersionError::BadCounter)
        );
        assert_eq!(
            parse(b"ll8:\0\0\0\0\0\0\0\x01i-3eee"),
            Err(VersionError::BadCounter)
        );
        assert_eq!(
            parse(b"ll8:\0\0\0\0\0\0\0\x02i1eel8:\0\0\0\0\0\0\0\x01i1eee"),
            Err(VersionError::NotSorted)
        );
        assert_eq!(
            parse(b"ll8:\0\0\0\0\0\0\0\x01i1eel8:\0\0\0\0\0\0\0\x01i2eee"),
            Err(VersionError::NotSorted)
        );
        let many = Value::List(
            (0..=MAX_DEVICES as u64)
                .map(|i| vv(&[(DeviceId(i), 1)]).to_bencode().as_list().unwrap()[0].clone())
                .collect(),
        );
        assert_eq!(
            VersionVector::from_bencode(&many),
            Err(VersionError::TooMany)
        );
    }

    fn arb_vector() -> impl Strategy<Value = VersionVector> {
        prop::collection::btree_map((0u64..4).prop_map(DeviceId), 1u64..5, 0..4)
            .prop_map(|counters| VersionVector { counters })
    }

    proptest! {
        #[test]
        fn compare_is_antisymmetric(a in arb_vector(), b in arb_vector()) {
            let expected = match a.compare(&b) {
                Ordering4::Equal => Ordering4::Equal,
                Ordering4::Greater => Ordering4::Lesser,
                Ordering4::Lesser => Ordering4::Greater,
                Ordering4::Concurrent => Ordering4::Concurrent,
            };
            prop_assert_eq!(b.compare(&a), expected);
            prop_assert_eq!(a.compare(&b) == Ordering4::Equal, a == b);
        }

        #[test]
        fn merge_is_a_join(a in arb_vector(), b in arb_vector(), c in arb_vector()) {
            prop_assert_eq!(a.merge(&b), b.merge(&a));
            prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
            prop_assert_eq!(a.merge(&a), a.clone());
            let m = a.merge(&b);
            prop_assert!(m.dominates(&a) && m.dominates(&b));
        }

        #[test]
        fn update_is_greater(a in arb_vector(), d in 0u64..6, now in 0u64..10) {
            let next = a.update(DeviceId(d), now);
            prop_assert_eq!(next.compare(&a), Ordering4::Greater);
        }

        #[test]
        fn encoding_round_trips(a in arb_vector()) {
            let back = VersionVector::from_bencode(&decode(&encode(&a.to_bencode())).unwrap());
            prop_assert_eq!(back, Ok(a));
        }
    }
}
