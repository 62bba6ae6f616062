//! A fixed-size set of piece indices, in the wire's bit order (BEP 3: the
//! high bit of the first byte is piece 0).

/// Which pieces a peer (or we) have. Spare bits in the last byte stay zero:
/// a peer that sets them is sending a malformed bitfield.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: usize,
    ones: usize,
}

impl Bitfield {
    /// An empty set for `len` pieces.
    pub fn new(len: usize) -> Self {
        Self {
            bytes: vec![0; len.div_ceil(8)],
            len,
            ones: 0,
        }
    }

    /// The full set for `len` pieces.
    pub fn full(len: usize) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Builds from wire bytes; `None` when the length is wrong or spare bits are set.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Option<Self> {
        if bytes.len() != len.div_ceil(8) {
            return None;
        }
        let spare = bytes.len() * 8 - len;
        if spare > 0 && bytes[bytes.len() - 1] & ((1u8 << spare) - 1) != 0 {
            return None;
        }
        let ones = bytes.iter().map(|b| b.count_ones() as usize).sum();
        Some(Self {
            bytes: bytes.to_vec(),
            len,
            ones,
        })
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of pieces the set ranges over.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the set ranges over no pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces present.
    pub fn count(&self) -> usize {
        self.ones
    }

    /// True when every piece is present.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Whether piece `i` is present; out of range is `false`.
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.bytes[i / 8] & (0x80 >> (i % 8)) != 0
    }

    /// Adds piece `i`; returns whether it was newly added.
    pub fn set(&mut self, i: usize) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bytes[i / 8] |= 0x80 >> (i % 8);
        self.ones += 1;
        true
    }

    /// Removes piece `i`; returns whether it was present.
    pub fn clear(&mut self, i: usize) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bytes[i / 8] &= !(0x80 >> (i % 8));
        self.ones -= 1;
        true
    }

    /// Indices of present pieces, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// The pieces of this set that are not in `other`.
    pub fn difference(&self, other: &Bitfield) -> Bitfield {
        let bytes: Vec<u8> = self
            .bytes
            .iter()
            .zip(other.bytes.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a & !b)
            .collect();
        let ones = bytes.iter().map(|b| b.count_ones() as usize).sum();
        Bitfield {
            bytes,
            len: self.len,
            ones,
        }
    }

    /// Adds every piece of `other` (of the same length) to this set.
    pub fn union_with(&mut self, other: &Bitfield) {
        for (a, b) in self.bytes.iter_mut().zip(&other.bytes) {
            *a |= b;
        }
        self.ones = self.bytes.iter().map(|b| b.count_ones() as usize).sum();
    }

    /// Removes every piece.
    pub fn clear_all(&mut self) {
        self.bytes.iter_mut().for_each(|b| *b = 0);
        self.ones = 0;
    }

    /// True when `other` has a piece this set lacks.
    pub fn lacks_any_of(&self, other: &Bitfield) -> bool {
        self.bytes
            .iter()
            .zip(&other.bytes)
            .any(|(mine, theirs)| theirs & !mine != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_order_and_counts() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0));
        assert!(b.set(9));
        assert!(!b.set(9));
        assert!(!b.set(10));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count(), 2);
        assert!(b.clear(0));
        assert!(!b.clear(0));
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![9]);
    }

    #[test]
    fn from_bytes_rejects_spare_bits_and_bad_length() {
        assert!(Bitfield::from_bytes(&[0xff, 0xc0], 10).is_some());
        assert!(Bitfield::from_bytes(&[0xff, 0xe0], 10).is_none());
        assert!(Bitfield::from_bytes(&[0xff], 10).is_none());
        assert_eq!(Bitfield::from_bytes(&[0xff, 0xc0], 10).unwrap().count(), 10);
        assert!(Bitfield::full(10).is_full());
    }

    #[test]
    fn difference_and_clear() {
        let mut a = Bitfield::full(10);
        let mut b = Bitfield::new(10);
        b.set(3);
        b.set(9);
        let d = a.difference(&b);
        assert_eq!(d.count(), 8);
        assert!(!d.get(3) && !d.get(9) && d.get(0));
        a.clear_all();
        assert_eq!(a.count(), 0);
        assert!(!a.get(0));
    }

    #[test]
    fn union_adds_and_counts() {
        let mut a = Bitfield::new(10);
        a.set(1);
        let mut b = Bitfield::new(10);
        b.set(1);
        b.set(9);
        a.union_with(&b);
        assert_eq!(a.iter_ones().collect::<Vec<_>>(), vec![1, 9]);
        assert_eq!(a.count(), 2);
    }

    #[test]
    fn lacks_any_of() {
        let mut a = Bitfield::new(9);
        let mut b = Bitfield::new(9);
        b.set(8);
        assert!(a.lacks_any_of(&b));
        a.set(8);
        assert!(!a.lacks_any_of(&b));
    }

    mod properties {
        use super::*;
        use crate::arb;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(arb::config(1024))]

            /// A peer's bitfield message: accepted exactly when it has one
            /// bit per piece and its spare bits are clear, and then read
            /// bit for bit.
            #[test]
            fn any_bitfield_message_reads_or_is_refused(bytes in arb::bytes(40), len in 0usize..330) {
                let valid = bytes.len() == len.div_ceil(8)
                    && bytes.last().is_none_or(|&last| {
                        let spare = bytes.len() * 8 - len;
                        last & ((1u16 << spare) - 1) as u8 == 0
                    });
                match Bitfield::from_bytes(&bytes, len) {
                    None => prop_assert!(!valid),
                    Some(b) => {
                        prop_assert!(valid);
                        prop_assert_eq!(b.as_bytes(), &bytes[..]);
                        prop_assert_eq!(b.len(), len);
                        let ones: Vec<usize> = (0..len).filter(|&i| bytes[i / 8] & (0x80 >> (i % 8)) != 0).collect();
                        prop_assert_eq!(b.count(), ones.len());
                        prop_assert_eq!(b.iter_ones().collect::<Vec<_>>(), ones);
                    }
                }
            }

            #[test]
            fn every_bitfield_round_trips(len in 0usize..330, picks in prop::collection::vec(any::<prop::sample::Index>(), 0..40)) {
                let mut b = Bitfield::new(len);
                if len > 0 {
                    for i in picks {
                        b.set(i.index(len));
                    }
                }
                let back = Bitfield::from_bytes(b.as_bytes(), len).expect("its own bytes");
                prop_assert_eq!(back, b);
            }
        }
    }
}
