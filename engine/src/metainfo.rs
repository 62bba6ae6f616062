//! Torrent metainfo (BEP 3, v1 only): the info dictionary, its hash, and
//! `.torrent` files. Pure: parsing, building and printing, no I/O.
//!
//! p2pfile adds one key to the info dictionary, `p2pfile.empty dirs`, a list
//! of path lists, because v1 torrents cannot otherwise carry empty
//! directories. Other clients ignore unknown info keys (they still hash them),
//! so the torrent stays interoperable.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sha1::{Digest, Sha1};

use crate::bencode::{self, BencodeError, Value};

/// Key under which p2pfile records empty directories.
const EMPTY_DIRS_KEY: &[u8] = b"p2pfile.empty dirs";

/// Smallest and largest piece sizes [`piece_length_for`] chooses.
pub const MIN_PIECE_LENGTH: u32 = 16 * 1024;
/// See [`MIN_PIECE_LENGTH`].
pub const MAX_PIECE_LENGTH: u32 = 4 * 1024 * 1024;
/// [`piece_length_for`] aims at about this many pieces.
const TARGET_PIECES: u64 = 1500;

/// Largest info dictionary we accept from a peer or a file (BEP 9 sizes it
/// in 16 KiB pieces; 16 MiB covers about 800,000 pieces).
pub const MAX_INFO_LEN: usize = 16 * 1024 * 1024;

/// The piece size for content of `total` bytes: the power of two nearest
/// above `total / 1500`, clamped to 16 KiB..=4 MiB. A fixed function of the
/// size, so the same content gives the same info-hash on every machine.
pub fn piece_length_for(total: u64) -> u32 {
    let want = total.div_ceil(TARGET_PIECES).max(1).next_power_of_two();
    want.clamp(MIN_PIECE_LENGTH as u64, MAX_PIECE_LENGTH as u64) as u32
}

/// A v1 info-hash: SHA-1 of the bencoded info dictionary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

impl FromStr for InfoHash {
    type Err = MetainfoError;

    /// Accepts 40 hex digits (either case) or 32 base32 characters, the two
    /// forms magnets use.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MetainfoError::BadInfoHash(s.to_string());
        let mut out = [0u8; 20];
        match s.len() {
            40 => {
                for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
                    let hex = std::str::from_utf8(chunk).map_err(|_| bad())?;
                    out[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
                }
            }
            32 => {
                let mut acc: u64 = 0;
                let mut bits = 0;
                let mut n = 0;
                for c in s.bytes() {
                    let v = match c.to_ascii_uppercase() {
                        c @ b'A'..=b'Z' => c - b'A',
                        c @ b'2'..=b'7' => c - b'2' + 26,
                        _ => return Err(bad()),
                    };
                    acc = (acc << 5) | v as u64;
                    bits += 5;
                    if bits >= 8 {
                        bits -= 8;
                        out[n] = (acc >> bits) as u8;
                        n += 1;
                    }
                }
            }
            _ => return Err(bad()),
        }
        Ok(InfoHash(out))
    }
}

/// Errors from parsing metainfo.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    /// Not bencode at all.
    #[error("not bencode")]
    Bencode(#[source] BencodeError),
    /// Bencode, but not a torrent.
    #[error("not a torrent: {0}")]
    Invalid(String),
    /// A path that would escape the download directory or is not portable.
    #[error("unsafe path in torrent: {0:?}")]
    UnsafePath(String),
    /// An info-hash that is neither 40 hex nor 32 base32 characters.
    #[error("info-hash {0:?} is not 40 hex or 32 base32 characters")]
    BadInfoHash(String),
}

/// One file of a torrent, in torrent order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components below the torrent's root; empty for a single-file torrent.
    pub path: Vec<String>,
    /// Length in bytes.
    pub length: u64,
}

/// A parsed, validated v1 info dictionary. Keeps the raw bytes it came
/// from, because the info-hash covers exactly those bytes.
#[derive(Clone, Debug)]
pub struct Info {
    /// Suggested name of the file or top directory.
    pub name: String,
    /// Bytes per piece (the last may be shorter).
    pub piece_length: u32,
    /// SHA-1 of each piece.
    pub pieces: Vec<[u8; 20]>,
    /// Files in torrent order. A single-file torrent has one entry with an empty path.
    pub files: Vec<FileEntry>,
    /// Whether the torrent names one file rather than a directory.
    pub single_file: bool,
    /// Empty directories to create below the root (p2pfile's own key).
    pub empty_dirs: Vec<Vec<String>>,
    raw: Vec<u8>,
    hash: InfoHash,
}

impl Info {
    /// Builds the info dictionary for content already hashed.
    ///
    /// `files` with a single entry whose path is empty makes a single-file
    /// torrent. Keys are written in bencode's sorted order, so equal content
    /// gives equal bytes.
    pub fn new(
        name: &str,
        piece_length: u32,
        pieces: Vec<[u8; 20]>,
        files: Vec<FileEntry>,
        empty_dirs: Vec<Vec<String>>,
    ) -> Result<Self, MetainfoError> {
        let mut dict = BTreeMap::new();
        let single = files.len() == 1 && files[0].path.is_empty();
        if single {
            dict.insert(b"length".to_vec(), Value::Int(files[0].length as i64));
        } else {
            let list = files
                .iter()
                .map(|f| {
                    let mut d = BTreeMap::new();
                    d.insert(b"length".to_vec(), Value::Int(f.length as i64));
                    d.insert(b"path".to_vec(), path_value(&f.path));
                    Value::Dict(d)
                })
                .collect();
            dict.insert(b"files".to_vec(), Value::List(list));
            if !empty_dirs.is_empty() {
                let dirs = empty_dirs.iter().map(|p| path_value(p)).collect();
                dict.insert(EMPTY_DIRS_KEY.to_vec(), Value::List(dirs));
            }
        }
        dict.insert(b"name".to_vec(), Value::Bytes(name.as_bytes().to_vec()));
        dict.insert(b"piece length".to_vec(), Value::Int(piece_length as i64));
        dict.insert(b"pieces".to_vec(), Value::Bytes(pieces.concat()));
        Self::from_bytes(&bencode::encode(&Value::Dict(dict)))
    }

    /// Parses and validates raw info-dictionary bytes (from a `.torrent` or
    /// from peers through BEP 9).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, MetainfoError> {
        if raw.len() > MAX_INFO_LEN {
            return Err(invalid("info dictionary larger than 16 MiB"));
        }
        let value = bencode::decode(raw).map_err(MetainfoError::Bencode)?;
        let name = value
            .get(b"name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("info has no UTF-8 name"))?
            .to_string();
        check_component(&name)?;
        let piece_length = value
            .get(b"piece length")
            .and_then(Value::as_int)
            .filter(|&n| n > 0 && n <= 64 * 1024 * 1024)
            .ok_or_else(|| invalid("piece length missing or out of range"))?
            as u32;
        let hashes = value
            .get(b"pieces")
            .and_then(Value::as_bytes)
            .filter(|p| p.len() % 20 == 0)
            .ok_or_else(|| invalid("pieces missing or not a multiple of 20 bytes"))?;
        let pieces: Vec<[u8; 20]> = hashes
            .chunks(20)
            .map(|c| c.try_into().expect("chunks of 20"))
            .collect();

        let (files, single_file) = if let Some(len) = value.get(b"length") {
            let length = len
                .as_int()
                .filter(|&n| n >= 0)
                .ok_or_else(|| invalid("negative length"))? as u64;
            (
                vec![FileEntry {
                    path: vec![],
                    length,
                }],
                true,
            )
        } else {
            let list = value
                .get(b"files")
                .and_then(Value::as_list)
                .ok_or_else(|| invalid("info has neither length nor files"))?;
            let mut files = Vec::with_capacity(list.len());
            for f in list {
                let length = f
                    .get(b"length")
                    .and_then(Value::as_int)
                    .filter(|&n| n >= 0)
                    .ok_or_else(|| invalid("file without a valid length"))?
                    as u64;
                let path = parse_path(f.get(b"path"))?;
                if path.is_empty() {
                    return Err(invalid("file with an empty path"));
                }
                files.push(FileEntry { path, length });
            }
            if files.is_empty() {
                return Err(invalid("empty file list"));
            }
            (files, false)
        };
        let mut empty_dirs = Vec::new();
        if let Some(dirs) = value.get(EMPTY_DIRS_KEY).and_then(Value::as_list) {
            for d in dirs {
                empty_dirs.push(parse_path(Some(d))?);
            }
        }
        let total: u64 = files.iter().map(|f| f.length).sum();
        let expected = total.div_ceil(piece_length as u64);
        if pieces.len() as u64 != expected {
            return Err(invalid(&format!(
                "{} piece hashes for {} bytes in pieces of {}",
                pieces.len(),
                total,
                piece_length
            )));
        }
        Ok(Info {
            name,
            piece_length,
            pieces,
            files,
            single_file,
            empty_dirs,
            raw: raw.to_vec(),
            hash: InfoHash(Sha1::digest(raw).into()),
        })
    }

    /// The raw bencoded dictionary, as hashed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// SHA-1 of the raw dictionary.
    pub fn info_hash(&self) -> InfoHash {
        self.hash
    }

    /// Total content length in bytes.
    pub fn total_length(&self) -> u64 {
        self.files.iter().map(|f| f.length).sum()
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> usize {
        self.pieces.len()
    }

    /// Length of piece `index` (the last piece may be short).
    pub fn piece_size(&self, index: u32) -> u32 {
        let start = index as u64 * self.piece_length as u64;
        (self.total_length() - start).min(self.piece_length as u64) as u32
    }

    /// A `.torrent` file holding this info dictionary. No creation date or
    /// creator, so the file is the same bytes on every machine.
    pub fn to_torrent_file(&self) -> Vec<u8> {
        let mut out = b"d4:info".to_vec();
        out.extend_from_slice(&self.raw);
        out.push(b'e');
        out
    }

    /// Parses a `.torrent` file, hashing the info dictionary's raw bytes.
    pub fn from_torrent_file(bytes: &[u8]) -> Result<Self, MetainfoError> {
        bencode::decode(bytes).map_err(MetainfoError::Bencode)?;
        let raw = bencode::raw_dict_value(bytes, b"info")
            .map_err(MetainfoError::Bencode)?
            .ok_or_else(|| invalid("no info dictionary"))?;
        Self::from_bytes(raw)
    }
}

fn invalid(msg: &str) -> MetainfoError {
    MetainfoError::Invalid(msg.to_string())
}

fn path_value(path: &[String]) -> Value {
    Value::List(
        path.iter()
            .map(|c| Value::Bytes(c.as_bytes().to_vec()))
            .collect(),
    )
}

fn parse_path(v: Option<&Value>) -> Result<Vec<String>, MetainfoError> {
    let list = v
        .and_then(Value::as_list)
        .ok_or_else(|| invalid("path is not a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let s = c
            .as_str()
            .ok_or_else(|| invalid("path component is not UTF-8"))?;
        check_component(s)?;
        out.push(s.to_string());
    }
    Ok(out)
}

/// Rejects components that could climb out of the download directory or
/// name something other than a plain entry.
fn check_component(c: &str) -> Result<(), MetainfoError> {
    if c.is_empty() || c == "." || c == ".." || c.contains(['/', '\\', '\0']) {
        return Err(MetainfoError::UnsafePath(c.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_multi() -> Info {
        Info::new(
            "tree",
            16384,
            vec![[1; 20], [2; 20]],
            vec![
                FileEntry {
                    path: vec!["a".into()],
                    length: 20000,
                },
                FileEntry {
                    path: vec!["d".into(), "b".into()],
                    length: 0,
                },
                FileEntry {
                    path: vec!["d".into(), "c".into()],
                    length: 100,
                },
            ],
            vec![vec!["empty".into()]],
        )
        .unwrap()
    }

    #[test]
    fn piece_length_is_a_fixed_function_of_size() {
        assert_eq!(piece_length_for(0), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for(1), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for(256 << 20), 256 * 1024);
        assert_eq!(piece_length_for(1 << 30), 1024 * 1024);
        assert_eq!(piece_length_for(1 << 40), MAX_PIECE_LENGTH);
    }

    #[test]
    fn info_hash_display_fromstr_round_trip() {
        let h = InfoHash([0xab; 20]);
        let s = h.to_string();
        assert_eq!(s, "ab".repeat(20));
        assert_eq!(s.parse::<InfoHash>().unwrap(), h);
        assert_eq!(s.to_uppercase().parse::<InfoHash>().unwrap(), h);
        // base32 of twenty 0xab bytes
        let b32 = "VOV2XK5LVOV2XK5LVOV2XK5LVOV2XK5L";
        assert_eq!(b32.parse::<InfoHash>().unwrap(), h);
        assert!("abc".parse::<InfoHash>().is_err());
        assert!("zz".repeat(20).parse::<InfoHash>().is_err());
    }

    #[test]
    fn multi_file_round_trip_through_torrent_file() {
        let info = sample_multi();
        assert!(!info.single_file);
        assert_eq!(info.total_length(), 20100);
        assert_eq!(info.piece_size(0), 16384);
        assert_eq!(info.piece_size(1), 20100 - 16384);
        let file = info.to_torrent_file();
        let back = Info::from_torrent_file(&file).unwrap();
        assert_eq!(back.info_hash(), info.info_hash());
        assert_eq!(back.files, info.files);
        assert_eq!(back.empty_dirs, vec![vec!["empty".to_string()]]);
    }

    #[test]
    fn single_file() {
        let info = Info::new(
            "f.bin",
            16384,
            vec![[0; 20]],
            vec![FileEntry {
                path: vec![],
                length: 5,
            }],
            vec![],
        )
        .unwrap();
        assert!(info.single_file);
        let back = Info::from_bytes(info.as_bytes()).unwrap();
        assert_eq!(back.files[0].length, 5);
    }

    #[test]
    fn same_content_same_hash() {
        assert_eq!(sample_multi().info_hash(), sample_multi().info_hash());
    }

    #[test]
    fn rejects_traversal_and_bad_counts() {
        let bad = |name: &str| {
            Info::new(
                name,
                16384,
                vec![[0; 20]],
                vec![FileEntry {
                    path: vec![],
                    length: 5,
                }],
                vec![],
            )
        };
        assert!(matches!(bad(".."), Err(MetainfoError::UnsafePath(_))));
        assert!(matches!(bad("a/b"), Err(MetainfoError::UnsafePath(_))));
        let traversal = Info::new(
            "x",
            16384,
            vec![[0; 20]],
            vec![FileEntry {
                path: vec!["..".into(), "etc".into()],
                length: 5,
            }],
            vec![],
        );
        assert!(matches!(traversal, Err(MetainfoError::UnsafePath(_))));
        let wrong_count = Info::new(
            "x",
            16384,
            vec![[0; 20], [0; 20]],
            vec![FileEntry {
                path: vec![],
                length: 5,
            }],
            vec![],
        );
        assert!(matches!(wrong_count, Err(MetainfoError::Invalid(_))));
        assert!(matches!(
            Info::from_torrent_file(b"not bencode"),
            Err(MetainfoError::Bencode(_))
        ));
        assert!(Info::from_torrent_file(b"d3:fooi1ee").is_err());
    }
}
