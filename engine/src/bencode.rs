//! Strict bencode (BEP 3) for input that may come from hostile peers.
//!
//! Decoding never allocates more than the input could justify: a string's
//! declared length is checked against the remaining input before any copy,
//! and nesting is capped at [`MAX_DEPTH`] so a crafted `llll…` cannot
//! exhaust the stack.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// Deepest nesting of lists and dicts the decoder accepts; real metainfo
/// and extension messages stay within a handful of levels.
pub const MAX_DEPTH: usize = 64;

/// One bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer (`i42e`).
    Int(i64),
    /// A byte string (`4:spam`); not necessarily UTF-8.
    Bytes(Vec<u8>),
    /// A list (`l…e`).
    List(Vec<Value>),
    /// A dictionary (`d…e`); the map keeps keys in the canonical order.
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why some input is not valid bencode.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum BencodeError {
    /// The input stopped in the middle of a value.
    #[error("unexpected end of input")]
    UnexpectedEnd,
    /// A byte that cannot start or continue a value here.
    #[error("invalid byte at offset {at}")]
    InvalidByte {
        /// Offset of the offending byte.
        at: usize,
    },
    /// An integer with no digits, leading zeros, `-0` or out of `i64` range.
    #[error("malformed integer at offset {at}")]
    BadInteger {
        /// Offset of the integer's `i`.
        at: usize,
    },
    /// A string length prefix with leading zeros or a missing `:`.
    #[error("malformed string length at offset {at}")]
    BadLength {
        /// Offset of the length prefix.
        at: usize,
    },
    /// A string whose declared length exceeds the remaining input.
    #[error("string at offset {at} is longer than the remaining input")]
    TooLong {
        /// Offset of the length prefix.
        at: usize,
    },
    /// Lists and dicts nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Bytes left over after a complete value.
    #[error("trailing data at offset {at}")]
    TrailingData {
        /// Offset of the first extra byte.
        at: usize,
    },
    /// A dictionary key that appears twice in the same dictionary.
    #[error("duplicate dictionary key at offset {at}")]
    DuplicateKey {
        /// Offset of the second occurrence.
        at: usize,
    },
}

impl Value {
    /// Build a dictionary from `(key, value)` pairs; later duplicates win.
    pub fn dict<K, I>(entries: I) -> Value
    where
        K: Into<Vec<u8>>,
        I: IntoIterator<Item = (K, Value)>,
    {
        Value::Dict(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The raw bytes, if this is a string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The string, if this is a byte string holding valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The items, if this is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The entries, if this is a dictionary.
    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The value under `key`, if this is a dictionary holding it.
    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.as_dict().and_then(|d| d.get(key))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Bytes(s.into_bytes())
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value::Bytes(b.to_vec())
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Bytes(b)
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}

impl From<BTreeMap<Vec<u8>, Value>> for Value {
    fn from(d: BTreeMap<Vec<u8>, Value>) -> Self {
        Value::Dict(d)
    }
}

/// Decode exactly one value spanning all of `input` (trailing bytes are an error).
pub fn decode(input: &[u8]) -> Result<Value, BencodeError> {
    let (value, used) = decode_prefix(input)?;
    if used != input.len() {
        return Err(BencodeError::TrailingData { at: used });
    }
    Ok(value)
}

/// Decode one value from the start of `input`; return it and the number of
/// bytes it used (for ut_metadata messages where raw data follows the dict).
pub fn decode_prefix(input: &[u8]) -> Result<(Value, usize), BencodeError> {
    let mut d = Decoder { input, pos: 0 };
    let value = d.value(0)?;
    Ok((value, d.pos))
}

/// Canonical encoding (dict keys sorted, as `BTreeMap` gives).
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Int(n) => {
            out.push(b'i');
            out.extend_from_slice(n.to_string().as_bytes());
            out.push(b'e');
        }
        Value::Bytes(b) => encode_bytes(b, out),
        Value::List(items) => {
            out.push(b'l');
            for item in items {
                encode_into(item, out);
            }
            out.push(b'e');
        }
        Value::Dict(entries) => {
            out.push(b'd');
            for (k, v) in entries {
                encode_bytes(k, out);
                encode_into(v, out);
            }
            out.push(b'e');
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Find the raw bytes of the value under top-level dict key `key` in
/// `input`, exactly as they appear (needed for the info-hash: SHA-1 over
/// the raw `info` bytes of a .torrent). Returns `None` if input isn't a
/// dict or lacks the key.
///
/// The whole input is validated as strictly as [`decode`] does, so a
/// malformed or ambiguous file (say, two `info` keys) never yields a hash.
pub fn raw_dict_value<'a>(input: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, BencodeError> {
    if input.first() != Some(&b'd') {
        decode(input)?;
        return Ok(None);
    }
    let mut d = Decoder { input, pos: 1 };
    let mut seen = BTreeSet::new();
    let mut found = None;
    while d.peek()? != b'e' {
        let key_at = d.pos;
        let k = d.string()?;
        if !seen.insert(k) {
            return Err(BencodeError::DuplicateKey { at: key_at });
        }
        let start = d.pos;
        d.value(1)?;
        if k == key {
            found = Some(&input[start..d.pos]);
        }
    }
    d.pos += 1;
    if d.pos != input.len() {
        return Err(BencodeError::TrailingData { at: d.pos });
    }
    Ok(found)
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::UnexpectedEnd)
    }

    /// `depth` counts the containers already open around this value.
    fn value(&mut self, depth: usize) -> Result<Value, BencodeError> {
        match self.peek()? {
            b'i' => self.int().map(Value::Int),
            b'0'..=b'9' => self.string().map(|s| Value::Bytes(s.to_vec())),
            b'l' => {
                let depth = self.open(depth)?;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                let depth = self.open(depth)?;
                let mut entries = BTreeMap::new();
                while self.peek()? != b'e' {
                    let key_at = self.pos;
                    let key = self.string()?.to_vec();
                    let value = self.value(depth)?;
                    // Unsorted keys are tolerated (some clients emit them),
                    // but a duplicate makes the meaning ambiguous.
                    if entries.insert(key, value).is_some() {
                        return Err(BencodeError::DuplicateKey { at: key_at });
                    }
                }
                self.pos += 1;
                Ok(Value::Dict(entries))
            }
            _ => Err(BencodeError::InvalidByte { at: self.pos }),
        }
    }

    fn open(&mut self, depth: usize) -> Result<usize, BencodeError> {
        if depth >= MAX_DEPTH {
            return Err(BencodeError::TooDeep);
        }
        self.pos += 1;
        Ok(depth + 1)
    }

    fn int(&mut self) -> Result<i64, BencodeError> {
        let at = self.pos;
        let bad = BencodeError::BadInteger { at };
        self.pos += 1;
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits_at = self.pos;
        let mut n: i64 = 0;
        while let b @ b'0'..=b'9' = self.peek()? {
            let digit = i64::from(b - b'0');
            // Accumulate with the final sign so i64::MIN parses too.
            n = n
                .checked_mul(10)
                .and_then(|n| {
                    if negative {
                        n.checked_sub(digit)
                    } else {
                        n.checked_add(digit)
                    }
                })
                .ok_or_else(|| bad.clone())?;
            self.pos += 1;
        }
        let digits = &self.input[digits_at..self.pos];
        let leading_zero = digits.len() > 1 && digits[0] == b'0';
        let negative_zero = negative && digits == b"0";
        if digits.is_empty() || leading_zero || negative_zero || self.peek()? != b'e' {
            return Err(bad);
        }
        self.pos += 1;
        Ok(n)
    }

    fn string(&mut self) -> Result<&'a [u8], BencodeError> {
        let at = self.pos;
        if !self.peek()?.is_ascii_digit() {
            return Err(BencodeError::InvalidByte { at });
        }
        let mut len: usize = 0;
        while let b @ b'0'..=b'9' = self.peek()? {
            // A length that overflows usize can never fit in the input.
            len = len
                .checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(b - b'0')))
                .ok_or(BencodeError::TooLong { at })?;
            self.pos += 1;
        }
        if (self.pos - at > 1 && self.input[at] == b'0') || self.peek()? != b':' {
            return Err(BencodeError::BadLength { at });
        }
        self.pos += 1;
        if len > self.input.len() - self.pos {
            return Err(BencodeError::TooLong { at });
        }
        let s = &self.input[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &[u8]) -> BencodeError {
        decode(input).unwrap_err()
    }

    #[test]
    fn decodes_scalars() {
        assert_eq!(decode(b"i42e").unwrap(), Value::Int(42));
        assert_eq!(decode(b"i0e").unwrap(), Value::Int(0));
        assert_eq!(decode(b"i-7e").unwrap(), Value::Int(-7));
        assert_eq!(
            decode(b"i9223372036854775807e").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap(),
            Value::Int(i64::MIN)
        );
        assert_eq!(decode(b"4:spam").unwrap(), Value::from("spam"));
        assert_eq!(decode(b"0:").unwrap(), Value::from(""));
    }

    #[test]
    fn decodes_containers() {
        assert_eq!(
            decode(b"l4:spami1ee").unwrap(),
            Value::from(vec![Value::from("spam"), Value::from(1)])
        );
        let d = decode(b"d3:cow3:moo4:spaml1:a1:bee").unwrap();
        assert_eq!(d.get(b"cow").and_then(Value::as_str), Some("moo"));
        assert_eq!(
            d.get(b"spam").and_then(Value::as_list).map(<[_]>::len),
            Some(2)
        );
        assert_eq!(decode(b"le").unwrap(), Value::List(vec![]));
        assert_eq!(decode(b"de").unwrap(), Value::Dict(BTreeMap::new()));
    }

    #[test]
    fn accepts_unsorted_keys_and_encodes_them_sorted() {
        let v = decode(b"d1:bi2e1:ai1ee").unwrap();
        assert_eq!(encode(&v), b"d1:ai1e1:bi2ee");
    }

    #[test]
    fn rejects_bad_integers() {
        for input in [
            &b"ie"[..],
            b"i-e",
            b"i-0e",
            b"i03e",
            b"i-03e",
            b"i00e",
            b"i1x",
            b"i+1e",
            b"i9223372036854775808e",
            b"i-9223372036854775809e",
            b"i99999999999999999999999e",
        ] {
            assert_eq!(err(input), BencodeError::BadInteger { at: 0 }, "{input:?}");
        }
    }

    #[test]
    fn rejects_bad_strings() {
        assert_eq!(err(b"01:a"), BencodeError::BadLength { at: 0 });
        assert_eq!(err(b"3x"), BencodeError::BadLength { at: 0 });
        assert_eq!(err(b"5:abc"), BencodeError::TooLong { at: 0 });
        assert_eq!(err(b"l3:ab"), BencodeError::TooLong { at: 1 });
    }

    #[test]
    fn rejects_structural_errors() {
        assert_eq!(err(b""), BencodeError::UnexpectedEnd);
        assert_eq!(err(b"x"), BencodeError::InvalidByte { at: 0 });
        assert_eq!(err(b"l-e"), BencodeError::InvalidByte { at: 1 });
        assert_eq!(err(b"di1ei2ee"), BencodeError::InvalidByte { at: 1 });
        assert_eq!(err(b"i1ei2e"), BencodeError::TrailingData { at: 3 });
        assert_eq!(err(b"d1:ai1e1:ai2ee"), BencodeError::DuplicateKey { at: 7 });
        assert_eq!(err(b"e"), BencodeError::InvalidByte { at: 0 });
    }

    #[test]
    fn rejects_every_truncation() {
        let full = b"d4:infod6:lengthi5e4:name1:x5:piecel1:ai-1eeee";
        decode(full).unwrap();
        for cut in 0..full.len() {
            assert!(decode(&full[..cut]).is_err(), "prefix {cut} decoded");
        }
    }

    #[test]
    fn huge_length_prefix_errors_without_allocating() {
        assert_eq!(
            err(b"18446744073709551615:x"),
            BencodeError::TooLong { at: 0 }
        );
        assert_eq!(
            err(b"99999999999999999999999999:x"),
            BencodeError::TooLong { at: 0 }
        );
        assert_eq!(err(b"4294967296:x"), BencodeError::TooLong { at: 0 });
    }

    #[test]
    fn nesting_is_capped() {
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        decode(&ok).unwrap();
        let deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert_eq!(err(&deep), BencodeError::TooDeep);
        // The cap must trip before the missing terminators are noticed.
        assert_eq!(err(&vec![b'l'; 100_000]), BencodeError::TooDeep);
        assert_eq!(err(&b"d1:a".repeat(100_000)), BencodeError::TooDeep);
    }

    #[test]
    fn decode_prefix_reports_bytes_used() {
        let (v, used) = decode_prefix(b"d1:ai1eeRAWDATA").unwrap();
        assert_eq!(used, 8);
        assert_eq!(v.get(b"a").and_then(Value::as_int), Some(1));
    }

    #[test]
    fn mixed_value_round_trips() {
        let v = Value::dict([
            ("announce", Value::from("http://tracker/announce")),
            ("neg", Value::from(-42)),
            ("bin", Value::from(vec![0u8, 255, 19, b':'])),
            (
                "list",
                Value::from(vec![
                    Value::from(0),
                    Value::List(vec![]),
                    Value::dict([("x", Value::from("y"))]),
                ]),
            ),
            ("empty", Value::dict(Vec::<(&str, Value)>::new())),
        ]);
        let bytes = encode(&v);
        assert_eq!(decode(&bytes).unwrap(), v);
        assert_eq!(encode(&decode(&bytes).unwrap()), bytes);
    }

    #[test]
    fn accessors_reject_other_variants() {
        let v = Value::from(1);
        assert_eq!(v.as_bytes(), None);
        assert_eq!(v.as_list(), None);
        assert!(v.as_dict().is_none());
        assert!(v.get(b"a").is_none());
        assert_eq!(Value::from("x").as_int(), None);
        assert_eq!(Value::from(vec![0xffu8]).as_str(), None);
    }

    #[test]
    fn raw_dict_value_finds_info_bytes() {
        let info =
            b"d6:lengthi3e4:name5:a.txt12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        let torrent = [
            &b"d8:announce14:http://t/a/ann"[..],
            b"4:info",
            info,
            b"8:url-listl1:xee",
        ]
        .concat();
        decode(&torrent).unwrap();
        assert_eq!(raw_dict_value(&torrent, b"info").unwrap(), Some(&info[..]));
        assert_eq!(
            raw_dict_value(&torrent, b"announce").unwrap(),
            Some(&b"14:http://t/a/ann"[..])
        );
        assert_eq!(raw_dict_value(&torrent, b"missing").unwrap(), None);
        assert_eq!(raw_dict_value(b"li1ee", b"info").unwrap(), None);
    }

    #[test]
    fn raw_dict_value_keeps_non_canonical_bytes() {
        // Hashing must use the bytes as sent, not a re-encoding.
        let torrent = b"d4:infod1:bi1e1:ai2eee";
        assert_eq!(
            raw_dict_value(torrent, b"info").unwrap(),
            Some(&b"d1:bi1e1:ai2ee"[..])
        );
    }

    #[test]
    fn raw_dict_value_validates_input() {
        assert_eq!(
            raw_dict_value(b"d4:infoi1e4:infoi2ee", b"info"),
            Err(BencodeError::DuplicateKey { at: 10 })
        );
        assert_eq!(
            raw_dict_value(b"d4:infoi1eex", b"info"),
            Err(BencodeError::TrailingData { at: 11 })
        );
        assert_eq!(
            raw_dict_value(b"d4:infoi1e", b"info"),
            Err(BencodeError::UnexpectedEnd)
        );
        assert_eq!(
            raw_dict_value(b"i01e", b"info"),
            Err(BencodeError::BadInteger { at: 0 })
        );
    }

    mod properties {
        use super::*;
        use crate::arb::{self, memory};
        use proptest::prelude::*;

        /// Every entry point on `input`: an error or a value, and no more
        /// memory than the input justifies.
        fn decode_all(input: &[u8]) -> Result<Value, BencodeError> {
            let (result, held) = memory::peak(|| {
                let whole = decode(input);
                let prefix = decode_prefix(input);
                let info = raw_dict_value(input, b"info");
                (whole, prefix, info)
            });
            assert!(
                held <= memory::bound(input.len()),
                "{held} bytes for {}",
                input.len()
            );
            let (whole, prefix, info) = result;
            match &prefix {
                Ok((v, used)) => {
                    assert!(*used <= input.len());
                    assert_eq!(decode(&input[..*used]).as_ref(), Ok(v));
                }
                Err(e) => assert_eq!(whole.as_ref(), Err(e)),
            }
            if let Ok(Some(raw)) = info {
                assert_eq!(
                    decode(raw).as_ref(),
                    whole.as_ref().map(|w| w.get(b"info").expect("found"))
                );
            }
            whole
        }

        proptest! {
            #![proptest_config(arb::config(1024))]

            #[test]
            fn arbitrary_bytes_decode_or_error(input in arb::bytes(256)) {
                if let Ok(v) = decode_all(&input) {
                    // What decodes re-encodes to something that decodes to it.
                    prop_assert_eq!(decode(&encode(&v)), Ok(v));
                }
            }

            #[test]
            fn every_value_round_trips(v in arb::value()) {
                let bytes = encode(&v);
                prop_assert_eq!(decode_all(&bytes), Ok(v.clone()));
                prop_assert_eq!(decode_prefix(&bytes), Ok((v.clone(), bytes.len())));
                // The canonical encoding is the only one of its value.
                prop_assert_eq!(encode(&decode(&bytes).unwrap()), bytes.clone());
                if let Value::Dict(d) = &v {
                    for (k, inner) in d {
                        prop_assert_eq!(raw_dict_value(&bytes, k), Ok(Some(&encode(inner)[..])));
                    }
                }
            }

            #[test]
            fn edited_encodings_decode_or_error(v in arb::value(), edits in arb::edits()) {
                let _ = decode_all(&arb::apply(&encode(&v), &edits));
            }

            /// A string that declares more bytes than follow errors: 4 GiB
            /// declared is never 4 GiB allocated.
            #[test]
            fn huge_declared_lengths_error(
                v in arb::value(),
                declared in prop_oneof![
                    Just(u64::from(u32::MAX) + 1),
                    Just(u64::MAX),
                    1u64 << 20..1 << 40,
                ],
                tail in arb::bytes(32),
            ) {
                let head = [&b"d1:a"[..], &encode(&v), b"1:b"].concat();
                let input = [&head[..], declared.to_string().as_bytes(), b":", &tail, b"e"].concat();
                prop_assert_eq!(
                    decode_all(&input),
                    Err(BencodeError::TooLong { at: head.len() })
                );
            }
        }
    }
}
