//! Torrent metainfo (BEP 3, v1 only): the info dictionary, its hash, and
//! `.torrent` files. Pure: parsing, building and printing, no I/O.
//!
//! p2pfile adds one key to the info dictionary, `p2pfile.empty dirs`, a list
//! of path lists, because v1 torrents cannot otherwise carry empty
//! directories. Other clients ignore unknown info keys (they still hash them),
//! so the torrent stays interoperable.
//!
//! BEP 47 file attributes are read and written (`attr`). A pad file (`p`)
//! is a run of zeros that makes the next file start on a piece boundary,
//! so a file's pieces hash the same whatever precedes it; storage never
//! puts one on disk. Only the `attr` flag makes a pad file: the old
//! libtorrent `.pad/` path and BitComet's `_____padding_file_` names without
//! the flag are taken as ordinary files, because treating a real file as
//! zeros would be wrong, while materialising an unflagged pad only costs a
//! file of zeros (libtorrent has written the flag with its pad files since
//! 2009).

use std::collections::BTreeMap;
use std::convert::Infallible;
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
                // Digit by digit: `u8::from_str_radix` also reads a sign,
                // so "+a" passed for a pair of hex digits.
                let digit = |b: u8| char::from(b).to_digit(16).ok_or_else(bad);
                for (i, pair) in s.as_bytes().chunks(2).enumerate() {
                    out[i] = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
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

/// BEP 47 attributes of one file, the info dictionary's `attr` string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileAttr {
    /// `p`: padding, zeros that are never stored on disk.
    pub pad: bool,
    /// `h`: hidden.
    pub hidden: bool,
    /// `x`: executable.
    pub executable: bool,
    /// `l`: a symbolic link (its target is not read: the entry is kept as
    /// an ordinary file of its length).
    pub symlink: bool,
}

impl FileAttr {
    /// No attribute set: the entry gets no `attr` key, so torrents without
    /// attributes encode exactly as before BEP 47 support.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn from_bytes(b: &[u8]) -> Self {
        Self {
            pad: b.contains(&b'p'),
            hidden: b.contains(&b'h'),
            executable: b.contains(&b'x'),
            symlink: b.contains(&b'l'),
        }
    }
}

impl fmt::Display for FileAttr {
    /// Letters in libtorrent's order (`phxl`), so the same torrent built by
    /// either gets the same bytes for this key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (set, c) in [
            (self.pad, 'p'),
            (self.hidden, 'h'),
            (self.executable, 'x'),
            (self.symlink, 'l'),
        ] {
            if set {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for FileAttr {
    type Err = Infallible;

    /// Unknown letters are ignored, as BEP 47 asks, so a later attribute
    /// does not make a torrent unreadable.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from_bytes(s.as_bytes()))
    }
}

/// One file of a torrent, in torrent order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components below the torrent's root; empty for a single-file torrent.
    pub path: Vec<String>,
    /// Length in bytes.
    pub length: u64,
    /// BEP 47 attributes.
    pub attr: FileAttr,
}

impl FileEntry {
    /// An ordinary file with no attributes.
    pub fn new(path: Vec<String>, length: u64) -> Self {
        Self {
            path,
            length,
            attr: FileAttr::default(),
        }
    }

    /// A pad file of `length` zeros, named `.pad/<length>` as libtorrent
    /// names them (the name is never used on disk).
    pub fn pad(length: u64) -> Self {
        Self {
            path: vec![".pad".into(), length.to_string()],
            length,
            attr: FileAttr {
                pad: true,
                ..FileAttr::default()
            },
        }
    }

    /// Whether this entry is padding (BEP 47 `p`): zeros, never on disk.
    pub fn is_pad(&self) -> bool {
        self.attr.pad
    }

    /// Whether the file is marked executable (BEP 47 `x`).
    pub fn executable(&self) -> bool {
        self.attr.executable
    }
}

/// `files` with a pad entry after each one that does not end on a piece
/// boundary, the last included: every file then starts on a boundary and
/// its last piece is its tail plus zeros, so a file's piece hashes depend
/// on its content alone, not on its neighbours or its place in the list.
/// Pad entries already in `files` are dropped first.
pub fn pad_to_pieces(
    files: impl IntoIterator<Item = FileEntry>,
    piece_length: u32,
) -> Vec<FileEntry> {
    let piece = piece_length as u64;
    let mut out = Vec::new();
    for f in files.into_iter().filter(|f| !f.is_pad()) {
        let rest = f.length % piece;
        out.push(f);
        if rest != 0 {
            out.push(FileEntry::pad(piece - rest));
        }
    }
    out
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
    /// Sum of the file lengths, kept because [`Info::piece_size`] needs it
    /// on every piece: summed on each call it made a 10,000-file download
    /// spend 80 % of its CPU adding file lengths (bench/files.sh).
    total: u64,
}

/// Two infos are equal when their raw bytes are (the info-hash covers
/// exactly those).
impl PartialEq for Info {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for Info {}

impl Info {
    /// Builds the info dictionary for content already hashed.
    ///
    /// `files` with a single entry whose path is empty makes a single-file
    /// torrent. Keys are written in bencode's sorted order, so equal content
    /// gives equal bytes. Pad entries ([`FileEntry::pad`], or see
    /// [`pad_to_pieces`]) are written with `attr` `p`; an entry without
    /// attributes gets no `attr` key.
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
            insert_attr(&mut dict, files[0].attr);
        } else {
            let list = files
                .iter()
                .map(|f| {
                    let mut d = BTreeMap::new();
                    d.insert(b"length".to_vec(), Value::Int(f.length as i64));
                    d.insert(b"path".to_vec(), path_value(&f.path));
                    insert_attr(&mut d, f.attr);
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
            let attr = attr_of(&value);
            if attr.pad {
                return Err(invalid("the single file is a pad file"));
            }
            (
                vec![FileEntry {
                    path: vec![],
                    length,
                    attr,
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
                files.push(FileEntry {
                    path,
                    length,
                    attr: attr_of(f),
                });
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
        // Checked: file lengths summing past 2^64 panicked here in debug
        // builds and wrapped in release, where a total of exactly 2^64
        // passed as an empty torrent of three exabyte-sized files.
        let total = files
            .iter()
            .try_fold(0u64, |total, f| total.checked_add(f.length))
            .ok_or_else(|| invalid("file lengths add up to more than 2^64 bytes"))?;
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
            total,
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
        self.total
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

/// The BEP 47 attributes of a file dictionary (or of a single-file info).
fn attr_of(dict: &Value) -> FileAttr {
    dict.get(b"attr")
        .and_then(Value::as_bytes)
        .map(FileAttr::from_bytes)
        .unwrap_or_default()
}

fn insert_attr(dict: &mut BTreeMap<Vec<u8>, Value>, attr: FileAttr) {
    if !attr.is_empty() {
        dict.insert(
            b"attr".to_vec(),
            Value::Bytes(attr.to_string().into_bytes()),
        );
    }
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
                FileEntry::new(vec!["a".into()], 20000),
                FileEntry::new(vec!["d".into(), "b".into()], 0),
                FileEntry::new(vec!["d".into(), "c".into()], 100),
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
        // Found by `info_hashes_round_trip_and_parse_only_hex_or_base32`.
        assert!(
            "00AaA0a000aAAA000aa0a0AaA0aAAA+a000aaA0A"
                .parse::<InfoHash>()
                .is_err()
        );
        assert!("+a".repeat(20).parse::<InfoHash>().is_err());
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
            vec![FileEntry::new(vec![], 5)],
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
                vec![FileEntry::new(vec![], 5)],
                vec![],
            )
        };
        assert!(matches!(bad(".."), Err(MetainfoError::UnsafePath(_))));
        assert!(matches!(bad("a/b"), Err(MetainfoError::UnsafePath(_))));
        let traversal = Info::new(
            "x",
            16384,
            vec![[0; 20]],
            vec![FileEntry::new(vec!["..".into(), "etc".into()], 5)],
            vec![],
        );
        assert!(matches!(traversal, Err(MetainfoError::UnsafePath(_))));
        let wrong_count = Info::new(
            "x",
            16384,
            vec![[0; 20], [0; 20]],
            vec![FileEntry::new(vec![], 5)],
            vec![],
        );
        assert!(matches!(wrong_count, Err(MetainfoError::Invalid(_))));
        assert!(matches!(
            Info::from_torrent_file(b"not bencode"),
            Err(MetainfoError::Bencode(_))
        ));
        assert!(Info::from_torrent_file(b"d3:fooi1ee").is_err());
    }

    /// Found by `near_valid_infos_parse_or_error`: lengths that add up to
    /// exactly 2^64 (a panic in debug builds; in release the total wrapped
    /// to 0 and the info passed with no pieces).
    #[test]
    fn file_lengths_past_u64_are_refused() {
        let file = |length: i64, name: &str| {
            Value::dict([
                ("length", Value::from(length)),
                ("path", Value::List(vec![Value::from(name)])),
            ])
        };
        let info = Value::dict([
            (
                "files",
                Value::List(vec![
                    file(7_723_632_371_531_240_510, "a"),
                    file(8_464_450_515_394_266_161, "b"),
                    file(2_258_661_186_784_044_945, "c"),
                ]),
            ),
            ("name", Value::from("x")),
            ("piece length", Value::from(16384)),
            ("pieces", Value::from("")),
        ]);
        let err = Info::from_bytes(&bencode::encode(&info)).unwrap_err();
        assert!(err.to_string().contains("more than 2^64"), "{err}");
    }

    #[test]
    fn file_attr_display_fromstr_round_trip() {
        let all = FileAttr {
            pad: true,
            hidden: true,
            executable: true,
            symlink: true,
        };
        assert_eq!(all.to_string(), "phxl");
        assert_eq!("phxl".parse::<FileAttr>().unwrap(), all);
        for a in ["", "p", "x", "hx", "pl"] {
            assert_eq!(a.parse::<FileAttr>().unwrap().to_string(), a);
        }
        // Unknown letters are ignored, order does not matter.
        assert_eq!("xqp".parse::<FileAttr>().unwrap().to_string(), "px");
        assert!("z".parse::<FileAttr>().unwrap().is_empty());
    }

    /// Entries without attributes encode as before BEP 47 support, so the
    /// info-hash of every torrent made so far is unchanged.
    #[test]
    fn plain_files_encode_without_attr() {
        let info = Info::new(
            "t",
            16384,
            vec![[1; 20]],
            vec![FileEntry::new(vec!["a".into()], 3)],
            vec![],
        )
        .unwrap();
        let mut want =
            b"d5:filesld6:lengthi3e4:pathl1:aeee4:name1:t12:piece lengthi16384e6:pieces20:"
                .to_vec();
        want.extend([1u8; 20]);
        want.push(b'e');
        assert_eq!(info.as_bytes(), want);
    }

    fn padded(pad_after_a: u64) -> Info {
        let files = vec![
            FileEntry::new(vec!["a".into()], 10 * 1024),
            FileEntry::pad(pad_after_a),
            FileEntry::new(vec!["b".into()], 5 * 1024),
            FileEntry::pad(11 * 1024),
        ];
        let total: u64 = files.iter().map(|f| f.length).sum();
        let pieces = vec![[3; 20]; total.div_ceil(16384) as usize];
        Info::new("p", 16384, pieces, files, vec![]).unwrap()
    }

    #[test]
    fn pad_entries_round_trip_and_hash_canonically() {
        let info = padded(6 * 1024);
        let back = Info::from_bytes(info.as_bytes()).unwrap();
        assert_eq!(back.files, info.files);
        let pads: Vec<bool> = back.files.iter().map(FileEntry::is_pad).collect();
        assert_eq!(pads, vec![false, true, false, true]);
        assert_eq!(back.files[1].path, vec![".pad", "6144"]);
        let raw = String::from_utf8_lossy(info.as_bytes()).into_owned();
        assert!(
            raw.contains("d4:attr1:p6:lengthi6144e4:pathl4:.pad4:6144ee"),
            "{raw}"
        );
        // Two builds of the same list agree; a different pad does not.
        assert_eq!(padded(6 * 1024).info_hash(), info.info_hash());
        assert_ne!(padded(6 * 1024 + 1).info_hash(), info.info_hash());
        let mut unflagged = info.files.clone();
        unflagged[1].attr.pad = false;
        let plain = Info::new("p", 16384, info.pieces.clone(), unflagged, vec![]).unwrap();
        assert_ne!(plain.info_hash(), info.info_hash());
        // The old `.pad/` name alone does not make a pad file.
        assert!(!plain.files[1].is_pad());
    }

    #[test]
    fn pad_to_pieces_aligns_every_file() {
        let files = vec![
            FileEntry::new(vec!["a".into()], 10),
            FileEntry::pad(3),
            FileEntry::new(vec!["e".into()], 0),
            FileEntry::new(vec!["b".into()], 32),
            FileEntry::new(vec!["c".into()], 17),
        ];
        let out = pad_to_pieces(files, 16);
        let shape: Vec<(bool, u64)> = out.iter().map(|f| (f.is_pad(), f.length)).collect();
        assert_eq!(
            shape,
            vec![
                (false, 10),
                (true, 6),
                (false, 0),
                (false, 32),
                (false, 17),
                (true, 15)
            ]
        );
    }

    #[test]
    fn single_file_attr() {
        let mut f = FileEntry::new(vec![], 5);
        f.attr.executable = true;
        let info = Info::new("run.sh", 16384, vec![[0; 20]], vec![f], vec![]).unwrap();
        let back = Info::from_bytes(info.as_bytes()).unwrap();
        assert!(back.files[0].executable() && !back.files[0].is_pad());
        let mut pad = FileEntry::pad(5);
        pad.path.clear();
        assert!(matches!(
            Info::new("x", 16384, vec![[0; 20]], vec![pad], vec![]),
            Err(MetainfoError::Invalid(_))
        ));
    }

    mod properties {
        use super::*;
        use crate::arb::{self, memory};
        use proptest::prelude::*;

        /// A name or path component p2pfile accepts.
        fn component() -> impl Strategy<Value = String> {
            "[^/\\\\\u{0}]{1,12}".prop_filter("not . or ..", |c| c != "." && c != "..")
        }

        fn attr(pad: bool) -> impl Strategy<Value = FileAttr> {
            (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                move |(p, hidden, executable, symlink)| FileAttr {
                    pad: p && pad,
                    hidden,
                    executable,
                    symlink,
                },
            )
        }

        /// The fields of a valid info dictionary: single or multi-file.
        #[allow(clippy::type_complexity)]
        fn fields() -> impl Strategy<Value = (String, u32, Vec<FileEntry>, Vec<Vec<String>>)> {
            let file = (
                prop::collection::vec(component(), 1..4),
                0u64..100_000,
                attr(true),
            )
                .prop_map(|(path, length, attr)| FileEntry { path, length, attr });
            let files = prop_oneof![
                (0u64..100_000, attr(false)).prop_map(|(length, attr)| (
                    vec![FileEntry {
                        path: vec![],
                        length,
                        attr
                    }],
                    vec![]
                )),
                (
                    prop::collection::vec(file, 1..6),
                    prop::collection::vec(prop::collection::vec(component(), 1..3), 0..3),
                ),
            ];
            let piece_length = prop_oneof![(14u32..=26).prop_map(|s| 1 << s), 1u32..100_000];
            (component(), piece_length, files)
                .prop_map(|(name, pl, (files, dirs))| (name, pl, files, dirs))
        }

        /// Info dictionaries with every field present or absent, of any
        /// type, at the edges of its range, or invalid.
        fn near_valid_info() -> impl Strategy<Value = Value> {
            // Mostly valid fields, so that a case gets past the early
            // checks to the later ones.
            let name = prop_oneof![
                4 => component().prop_map(Value::from),
                1 => prop::sample::select(vec!["", ".", "..", "a/b", "a\\b", "a\0"]).prop_map(Value::from),
                1 => arb::value(),
            ];
            let int = || prop_oneof![3 => arb::edge_int().prop_map(Value::Int), 1 => arb::value()];
            let piece_length =
                prop_oneof![3 => (14u32..=26).prop_map(|s| Value::Int(1 << s)), 1 => int()];
            let path = prop_oneof![
                4 => prop::collection::vec(component().prop_map(Value::from), 1..3).prop_map(Value::List),
                1 => prop::collection::vec(component().prop_map(Value::from), 0..3).prop_map(Value::List),
                1 => arb::value(),
            ];
            let file = (int(), path.clone(), proptest::option::of(arb::bytes(3))).prop_map(
                |(length, path, attr)| {
                    let mut d = vec![("length", length), ("path", path)];
                    if let Some(a) = attr {
                        d.push(("attr", Value::Bytes(a)));
                    }
                    Value::dict(d)
                },
            );
            (
                proptest::option::weighted(0.9, name),
                proptest::option::weighted(0.9, piece_length),
                proptest::option::weighted(0.9, (0usize..6, prop::bool::weighted(0.9))),
                proptest::option::of(int()),
                proptest::option::weighted(
                    0.9,
                    prop::collection::vec(file, 0..5).prop_map(Value::List),
                ),
                proptest::option::of(prop::collection::vec(path, 0..3).prop_map(Value::List)),
            )
                .prop_map(|(name, piece_length, pieces, length, files, dirs)| {
                    let mut d: Vec<(&[u8], Value)> = Vec::new();
                    let mut put = |k: &'static [u8], v: Option<Value>| {
                        if let Some(v) = v {
                            d.push((k, v));
                        }
                    };
                    put(b"name", name);
                    put(b"piece length", piece_length);
                    put(
                        b"pieces",
                        pieces
                            .map(|(n, whole)| Value::Bytes(vec![9; n * 20 + usize::from(!whole)])),
                    );
                    put(b"length", length);
                    put(b"files", files);
                    put(EMPTY_DIRS_KEY, dirs);
                    Value::dict(d)
                })
        }

        /// Both entry points on an info dict's bytes; what parses is valid
        /// and re-parses from its own torrent file.
        fn parse_all(raw: &[u8]) {
            let torrent = [&b"d4:info"[..], raw, b"e"].concat();
            let ((info, file), held) =
                memory::peak(|| (Info::from_bytes(raw), Info::from_torrent_file(&torrent)));
            assert!(
                held <= memory::bound(torrent.len()),
                "{held} for {}",
                torrent.len()
            );
            assert_eq!(info.is_ok(), file.is_ok());
            if let Ok(info) = info {
                let total = info
                    .files
                    .iter()
                    .try_fold(0u64, |t, f| t.checked_add(f.length));
                let total = total.expect("an accepted info's length fits a u64");
                assert_eq!(
                    info.piece_count() as u64,
                    total.div_ceil(u64::from(info.piece_length))
                );
                assert_eq!(
                    Info::from_torrent_file(&info.to_torrent_file()).ok(),
                    Some(info)
                );
            }
        }

        proptest! {
            #![proptest_config(arb::config(1024))]

            #[test]
            fn arbitrary_bytes_parse_or_error(raw in arb::bytes(200)) {
                parse_all(&raw);
                let _ = Info::from_torrent_file(&raw);
            }

            #[test]
            fn near_valid_infos_parse_or_error(info in near_valid_info(), edits in arb::edits()) {
                let raw = bencode::encode(&info);
                parse_all(&raw);
                parse_all(&arb::apply(&raw, &edits));
            }

            #[test]
            fn every_info_round_trips((name, piece_length, files, dirs) in fields(), seed in any::<u8>()) {
                let total: u64 = files.iter().map(|f| f.length).sum();
                let count = total.div_ceil(u64::from(piece_length)) as usize;
                let pieces: Vec<[u8; 20]> =
                    (0..count).map(|i| [seed.wrapping_add(i as u8); 20]).collect();
                let info = Info::new(&name, piece_length, pieces.clone(), files.clone(), dirs.clone()).unwrap();
                let back = Info::from_torrent_file(&info.to_torrent_file()).unwrap();
                prop_assert_eq!(&back.name, &name);
                prop_assert_eq!(back.piece_length, piece_length);
                prop_assert_eq!(&back.pieces, &pieces);
                prop_assert_eq!(&back.files, &files);
                prop_assert_eq!(back.single_file, files[0].path.is_empty());
                let dirs = if back.single_file { vec![] } else { dirs };
                prop_assert_eq!(&back.empty_dirs, &dirs);
                prop_assert_eq!(back.info_hash(), info.info_hash());
            }

            #[test]
            fn info_hashes_round_trip_and_parse_only_hex_or_base32(
                hash in prop::array::uniform20(any::<u8>()),
                text in prop_oneof![
                    // Pairs of hex digits, or of a sign and a digit, which
                    // Rust's integer parser also reads.
                    prop::collection::vec(
                        prop_oneof![9 => "[0-9a-fA-F]{2}", 1 => "[+-][0-9a-f]"],
                        20,
                    )
                    .prop_map(|p| p.concat()),
                    "[A-Za-z2-7]{32}",
                    "\\PC{0,50}",
                ],
            ) {
                let h = InfoHash(hash);
                prop_assert_eq!(h.to_string().parse::<InfoHash>().ok(), Some(h));
                prop_assert_eq!(h.to_string().to_uppercase().parse::<InfoHash>().ok(), Some(h));
                let hex = text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit());
                let base32 = text.len() == 32
                    && text.bytes().all(|b| matches!(b.to_ascii_uppercase(), b'A'..=b'Z' | b'2'..=b'7'));
                prop_assert_eq!(text.parse::<InfoHash>().is_ok(), hex || base32, "{:?}", text);
            }
        }
    }
}
