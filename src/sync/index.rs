//! The index peers exchange: one signed record per path.
//!
//! A record says what a path holds (file, directory, symlink or nothing: a
//! tombstone), the file's own BitTorrent v1 piece hashes, and the version
//! vector of the change that produced it. Records arrive from peers that
//! may be hostile, so every decoded field is checked: paths cannot leave the
//! folder ([`RelPath`]), piece lists must match the size, batches are capped
//! at [`MAX_BATCH`] records, and decoding returns typed errors, never panics.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use p2pfile_engine::bencode::{self, BencodeError, Value};
use p2pfile_engine::metainfo::piece_length_for;
use sha1::{Digest, Sha1};

use super::key::{FolderId, FolderKey};
use super::version::{DeviceId, VersionError, VersionVector};

/// The folder's private directory (state, trash, partial files). It sits
/// at the top of the folder and is never scanned, announced or written to
/// by a peer.
pub const PRIVATE_DIR: &str = ".p2pfile";

/// Names starting with this are the sync's own temporary files, written
/// next to their target and renamed over it when complete (so the rename is
/// atomic on the same file system). They are never scanned or announced, and
/// no peer may name a path like this, at any depth.
pub const TEMP_PREFIX: &str = ".p2pfile-tmp-";

/// Longest path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component accepted, in bytes (`NAME_MAX` on common file
/// systems).
pub const MAX_NAME_LEN: usize = 255;
/// Most records in one index batch (Syncthing's limit too): bounds the work
/// and memory one message can cause.
pub const MAX_BATCH: usize = 1000;
/// Highest permission bits a record may carry: rwx for user, group, other.
/// Set-id and sticky bits are never synced, so a peer cannot plant a setuid
/// file.
pub const MODE_MASK: u32 = 0o777;

/// Tag in front of the bytes a record signature covers.
const RECORD_TAG: &[u8] = b"p2pfile record v1";
/// Tag in front of the bytes hashed into a content id.
const CONTENT_TAG: &[u8] = b"p2pfile content v1";
/// Read size while hashing a file: large enough for sequential throughput,
/// small enough to keep memory flat whatever the piece length.
const READ_CHUNK: usize = 1 << 20;

/// Why a string is not an acceptable relative path.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum PathError {
    /// The empty string.
    #[error("path is empty")]
    Empty,
    /// Starts with `/`.
    #[error("path is absolute")]
    Absolute,
    /// `a//b` or a trailing `/`.
    #[error("path has an empty component")]
    EmptyComponent,
    /// A `.` or `..` component.
    #[error("path has a . or .. component")]
    DotComponent,
    /// A NUL byte, which no file system name can hold.
    #[error("path contains a nul byte")]
    Nul,
    /// More than [`MAX_PATH_LEN`] bytes.
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// A component over [`MAX_NAME_LEN`] bytes.
    #[error("path has a name longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    /// Inside the folder's private `.p2pfile/` directory.
    #[error("path is inside the private .p2pfile directory")]
    Private,
    /// A name starting with [`TEMP_PREFIX`].
    #[error("path names a sync temporary file")]
    Temporary,
}

/// A validated path inside a synced folder: `/`-separated, relative, with
/// no empty, `.` or `..` component, no NUL, not in [`PRIVATE_DIR`] and no
/// [`TEMP_PREFIX`] name. This is the guard against a hostile index naming
/// `../x` or `/etc/passwd`: every path from a peer is one of these.
///
/// Ordered by its string, so a directory sorts before everything inside it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Checks `path` against every rule above.
    pub fn new(path: &str) -> Result<RelPath, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if path.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if path.contains('\0') {
            return Err(PathError::Nul);
        }
        for (i, name) in path.split('/').enumerate() {
            match name {
                "" => return Err(PathError::EmptyComponent),
                "." | ".." => return Err(PathError::DotComponent),
                PRIVATE_DIR if i == 0 => return Err(PathError::Private),
                _ if name.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong),
                _ if name.starts_with(TEMP_PREFIX) => return Err(PathError::Temporary),
                _ => {}
            }
        }
        Ok(RelPath(path.to_string()))
    }

    /// The path as written, `/`-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The names from the top down.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last name.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The directory holding this path, `None` at the top of the folder.
    pub fn parent(&self) -> Option<RelPath> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| RelPath(parent.to_string()))
    }

    /// The same directory with another last name (checked like any path).
    pub fn with_file_name(&self, name: &str) -> Result<RelPath, PathError> {
        match self.parent() {
            Some(parent) => RelPath::new(&format!("{}/{name}", parent.0)),
            None => RelPath::new(name),
        }
    }

    /// Whether `self` is a proper ancestor directory of `other`.
    #[cfg(test)]
    pub fn is_ancestor_of(&self, other: &RelPath) -> bool {
        other
            .0
            .strip_prefix(&self.0)
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Where the path is under `root` on this machine.
    pub fn to_path(&self, root: &Path) -> PathBuf {
        let mut path = root.to_path_buf();
        path.extend(self.components());
        path
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What a path holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, recorded with its target and never followed.
    Symlink {
        /// The link's target as stored in the link (may point anywhere; the
        /// sync never writes through a link).
        target: String,
    },
}

/// A modification time: seconds since the Unix epoch and nanoseconds.
/// Ordered by time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub struct Mtime {
    /// Whole seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds within the second, below 1,000,000,000.
    pub nanos: u32,
}

/// A file's content identity: its own BitTorrent v1 piece hashes.
///
/// The file is cut from its first byte into pieces of
/// `p2pfile_engine::metainfo::piece_length_for(size)` bytes (the same
/// function the engine uses for torrents), each hashed with SHA-1, the last
/// one padded with zeros to the piece length (BEP 47 pad files). Since the
/// pieces depend only on the bytes and the size, the same content has the
/// same pieces on every peer whatever its path: that is what lets a rename
/// move no data, a folder pre-filled by copying need no transfer, and peers
/// fetch one file's pieces from anyone holding the same content.
///
/// A content is not changed after it is made: [`Content::id`] is computed
/// once and kept (a folder of 5,000 files asks for ids millions of times
/// while matching packs to holders).
#[derive(Clone, Debug)]
pub struct Content {
    /// Length in bytes.
    pub size: u64,
    /// Piece length, always `piece_length_for(size)`.
    pub piece_length: u32,
    /// SHA-1 of each piece, in order (none for an empty file).
    pub pieces: Vec<[u8; 20]>,
    /// The id, once computed.
    id: std::sync::OnceLock<[u8; 20]>,
}

impl PartialEq for Content {
    fn eq(&self, other: &Content) -> bool {
        (self.size, self.piece_length, &self.pieces)
            == (other.size, other.piece_length, &other.pieces)
    }
}

impl Eq for Content {}

/// Why a piece list does not fit its size.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("{found} piece hashes given where {expected} are needed for the size")]
pub struct PieceCountError {
    /// Pieces the size needs.
    pub expected: u64,
    /// Pieces given.
    pub found: u64,
}

impl Content {
    /// The content of an empty file, and of every directory, symlink and
    /// tombstone record.
    pub fn empty() -> Content {
        Content {
            size: 0,
            piece_length: piece_length_for(0),
            pieces: Vec::new(),
            id: Default::default(),
        }
    }

    /// How many pieces content of `size` bytes has.
    pub fn piece_count(size: u64) -> u64 {
        size.div_ceil(u64::from(piece_length_for(size)))
    }

    /// Content of `size` bytes with these piece hashes, checked for count.
    pub fn from_parts(size: u64, pieces: Vec<[u8; 20]>) -> Result<Content, PieceCountError> {
        let expected = Content::piece_count(size);
        if pieces.len() as u64 != expected {
            return Err(PieceCountError {
                expected,
                found: pieces.len() as u64,
            });
        }
        Ok(Content {
            size,
            piece_length: piece_length_for(size),
            pieces,
            id: Default::default(),
        })
    }

    /// Hashes `size` bytes from `reader`, in 1 MiB reads. Fails with
    /// `InvalidData` if the reader yields more or fewer bytes than `size`
    /// (the file changed under us), so a wrong hash is never returned.
    pub fn from_reader(mut reader: impl Read, size: u64) -> io::Result<Content> {
        let piece_length = u64::from(piece_length_for(size));
        let mut pieces = Vec::with_capacity(Content::piece_count(size).min(1 << 16) as usize);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut hasher = Sha1::new();
        let mut in_piece = 0u64;
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += n as u64;
            if total > size {
                break;
            }
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                let take = chunk.len().min((piece_length - in_piece) as usize);
                hasher.update(&chunk[..take]);
                in_piece += take as u64;
                chunk = &chunk[take..];
                if in_piece == piece_length {
                    pieces.push(hasher.finalize_reset().into());
                    in_piece = 0;
                }
            }
        }
        if total != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file changed size while it was hashed",
            ));
        }
        if in_piece > 0 {
            // The last piece is hashed as if padded with zeros to the piece
            // length (BEP 47): then a file's pieces are the same whether it
            // travels alone or packed with others, each padded to a piece
            // boundary, in one torrent.
            hasher.update(vec![0u8; (piece_length - in_piece) as usize]);
            pieces.push(hasher.finalize().into());
        }
        Ok(Content {
            size,
            piece_length: piece_length as u32,
            pieces,
            id: Default::default(),
        })
    }

    /// The content identity used to find a file's bytes anywhere by hash:
    /// SHA-1 over a tag, the size (8 bytes big-endian), the piece length
    /// (4 bytes big-endian) and the piece hashes.
    pub fn id(&self) -> [u8; 20] {
        *self.id.get_or_init(|| {
            let mut h = Sha1::new();
            h.update(CONTENT_TAG);
            h.update(self.size.to_be_bytes());
            h.update(self.piece_length.to_be_bytes());
            for piece in &self.pieces {
                h.update(piece);
            }
            h.finalize().into()
        })
    }
}

/// One path's state as a device announces it.
///
/// The size is `content.size` (kept once so the two cannot disagree).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FileRecord {
    /// Where, inside the folder.
    pub path: RelPath,
    /// File, directory or symlink (for a tombstone: what was deleted).
    pub kind: Kind,
    /// A tombstone: the path was deleted by this version.
    pub deleted: bool,
    /// Permission bits only (`& MODE_MASK`).
    pub mode: u32,
    /// Modification time on the device that made the change.
    pub mtime: Mtime,
    /// The piece hashes (empty for anything but a live file).
    pub content: Content,
    /// The version this record is.
    pub version: VersionVector,
    /// The device that made this change.
    pub modified_by: DeviceId,
    /// Signature by the folder's read-write key over
    /// [`signed_bytes`](Self::signed_bytes).
    pub signature: Option<[u8; 64]>,
}

/// Why index bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum IndexError {
    /// Not bencode.
    #[error("index data is not valid bencode")]
    Bencode(#[source] BencodeError),
    /// A batch that is not a list.
    #[error("index batch is not a list of records")]
    NotAList,
    /// More records than [`MAX_BATCH`].
    #[error("index batch has {0} records, more than {MAX_BATCH}")]
    TooManyRecords(usize),
    /// The same path twice in one batch: which one holds would be ambiguous.
    #[error("index batch names {0} twice")]
    DuplicatePath(RelPath),
    /// A record that is not a dictionary.
    #[error("index record is not a dictionary")]
    NotADict,
    /// A required field is absent.
    #[error("index record has no {0} field")]
    Missing(&'static str),
    /// A field this version does not know: refused rather than dropped,
    /// because the signature covers the fields as re-encoded here.
    #[error("index record has an unknown field")]
    UnknownField,
    /// A field of the wrong type or out of range.
    #[error("index record field {0} is invalid")]
    BadField(&'static str),
    /// A path that breaks a [`RelPath`] rule.
    #[error("index record has an unacceptable path")]
    Path(#[source] PathError),
    /// A malformed version vector.
    #[error("index record has a bad version vector")]
    Version(#[source] VersionError),
    /// Piece hashes that do not fit the size.
    #[error("index record pieces do not fit its size")]
    Pieces(#[source] PieceCountError),
    /// Fields that contradict each other (a tombstone or directory with
    /// content, an empty version).
    #[error("index record is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// Field names on the wire (bencode dict keys).
const F_PATH: &[u8] = b"path";
const F_KIND: &[u8] = b"kind";
const F_TARGET: &[u8] = b"target";
const F_DELETED: &[u8] = b"deleted";
const F_MODE: &[u8] = b"mode";
const F_MTIME: &[u8] = b"mtime";
const F_MTIME_NS: &[u8] = b"mtime ns";
const F_SIZE: &[u8] = b"size";
const F_PIECE_LENGTH: &[u8] = b"piece length";
const F_PIECES: &[u8] = b"pieces";
const F_VERSION: &[u8] = b"version";
const F_BY: &[u8] = b"by";
const F_SIG: &[u8] = b"sig";
const FIELDS: &[&[u8]] = &[
    F_PATH,
    F_KIND,
    F_TARGET,
    F_DELETED,
    F_MODE,
    F_MTIME,
    F_MTIME_NS,
    F_SIZE,
    F_PIECE_LENGTH,
    F_PIECES,
    F_VERSION,
    F_BY,
    F_SIG,
];

impl FileRecord {
    /// The size in bytes (0 for anything but a live file).
    pub fn size(&self) -> u64 {
        self.content.size
    }

    /// Whether both records hold the same thing: both deleted, or both live
    /// with the same kind (and symlink target) and the same content id.
    pub fn same_content(&self, other: &FileRecord) -> bool {
        match (self.deleted, other.deleted) {
            (true, true) => true,
            (false, false) => self.kind == other.kind && self.content.id() == other.content.id(),
            _ => false,
        }
    }

    /// The bytes a signature covers: a tag, the folder id (so a record
    /// cannot be replayed into another folder) and the canonical bencode of
    /// every field but the signature.
    pub fn signed_bytes(&self, folder: FolderId) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(RECORD_TAG);
        bytes.extend_from_slice(&folder.0);
        bytes.extend_from_slice(&bencode::encode(&self.to_bencode(false)));
        bytes
    }

    /// Signs the record with `key`; false (and no signature) for a
    /// read-only key.
    pub fn sign(&mut self, key: &FolderKey) -> bool {
        self.signature = key.sign(&self.signed_bytes(key.folder_id()));
        self.signature.is_some()
    }

    /// Whether the record carries a valid signature of `key`'s folder.
    pub fn verify(&self, key: &FolderKey) -> bool {
        self.signature
            .is_some_and(|sig| key.verify(&self.signed_bytes(key.folder_id()), &sig))
    }

    /// The record as one bencode dictionary (with its signature, if any).
    pub fn encode(&self) -> Vec<u8> {
        bencode::encode(&self.to_bencode(true))
    }

    /// Reads one record, checking every field.
    pub fn decode(bytes: &[u8]) -> Result<FileRecord, IndexError> {
        FileRecord::from_bencode(&bencode::decode(bytes).map_err(IndexError::Bencode)?)
    }

    fn to_bencode(&self, with_signature: bool) -> Value {
        let (kind, target) = match &self.kind {
            Kind::File => (0, None),
            Kind::Dir => (1, None),
            Kind::Symlink { target } => (2, Some(target.as_str())),
        };
        let pieces: Vec<u8> = self.content.pieces.concat();
        let mut fields = vec![
            (F_PATH, Value::from(self.path.as_str())),
            (F_KIND, Value::Int(kind)),
            (F_DELETED, Value::Int(i64::from(self.deleted))),
            (F_MODE, Value::Int(i64::from(self.mode))),
            (F_MTIME, Value::Int(self.mtime.secs)),
            (F_MTIME_NS, Value::Int(i64::from(self.mtime.nanos))),
            // Sizes come from files on disk or from a decoded record, both
            // at most i64::MAX.
            (F_SIZE, Value::Int(self.content.size as i64)),
            (
                F_PIECE_LENGTH,
                Value::Int(i64::from(self.content.piece_length)),
            ),
            (F_PIECES, Value::from(pieces)),
            (F_VERSION, self.version.to_bencode()),
            (F_BY, Value::from(self.modified_by.to_bytes().to_vec())),
        ];
        if let Some(target) = target {
            fields.push((F_TARGET, Value::from(target)));
        }
        if let (true, Some(sig)) = (with_signature, &self.signature) {
            fields.push((F_SIG, Value::from(sig.to_vec())));
        }
        Value::dict(fields.into_iter().map(|(k, v)| (k.to_vec(), v)))
    }

    fn from_bencode(value: &Value) -> Result<FileRecord, IndexError> {
        let dict = value.as_dict().ok_or(IndexError::NotADict)?;
        if dict.keys().any(|k| !FIELDS.contains(&k.as_slice())) {
            return Err(IndexError::UnknownField);
        }
        let field = |name: &'static [u8]| -> Result<&Value, IndexError> {
            dict.get(name).ok_or(IndexError::Missing(field_name(name)))
        };
        let int = |name: &'static [u8], max: i64| -> Result<i64, IndexError> {
            field(name)?
                .as_int()
                .filter(|n| (0..=max).contains(n))
                .ok_or(IndexError::BadField(field_name(name)))
        };

        let path = field(F_PATH)?
            .as_str()
            .ok_or(IndexError::BadField("path"))?;
        let path = RelPath::new(path).map_err(IndexError::Path)?;
        let kind = match int(F_KIND, 2)? {
            0 => Kind::File,
            1 => Kind::Dir,
            _ => {
                let target = field(F_TARGET)?
                    .as_str()
                    .filter(|t| !t.is_empty() && t.len() <= MAX_PATH_LEN && !t.contains('\0'))
                    .ok_or(IndexError::BadField("target"))?;
                Kind::Symlink {
                    target: target.to_string(),
                }
            }
        };
        if !matches!(kind, Kind::Symlink { .. }) && dict.contains_key(F_TARGET) {
            return Err(IndexError::Inconsistent(
                "a target on something not a symlink",
            ));
        }
        let deleted = int(F_DELETED, 1)? == 1;
        let mode = int(F_MODE, i64::from(MODE_MASK))? as u32;
        let secs = field(F_MTIME)?
            .as_int()
            .ok_or(IndexError::BadField("mtime"))?;
        let nanos = int(F_MTIME_NS, 999_999_999)? as u32;
        let size = int(F_SIZE, i64::MAX)? as u64;
        let piece_length = int(F_PIECE_LENGTH, i64::from(u32::MAX))? as u32;
        if piece_length != piece_length_for(size) {
            return Err(IndexError::BadField("piece length"));
        }
        let pieces = field(F_PIECES)?
            .as_bytes()
            .ok_or(IndexError::BadField("pieces"))?;
        if pieces.len() % 20 != 0 {
            return Err(IndexError::BadField("pieces"));
        }
        // The count is checked against the size before anything is copied.
        let expected = Content::piece_count(size);
        if (pieces.len() / 20) as u64 != expected {
            return Err(IndexError::Pieces(PieceCountError {
                expected,
                found: (pieces.len() / 20) as u64,
            }));
        }
        let pieces = pieces
            .chunks_exact(20)
            .map(|c| c.try_into().expect("bug: chunks_exact(20)"))
            .collect();
        let content = Content::from_parts(size, pieces).map_err(IndexError::Pieces)?;
        if (deleted || kind != Kind::File) && size != 0 {
            return Err(IndexError::Inconsistent(
                "content on a tombstone, directory or symlink",
            ));
        }
        let version =
            VersionVector::from_bencode(field(F_VERSION)?).map_err(IndexError::Version)?;
        if version.is_empty() {
            return Err(IndexError::Inconsistent("an empty version vector"));
        }
        let by: [u8; 8] = field(F_BY)?
            .as_bytes()
            .and_then(|b| b.try_into().ok())
            .ok_or(IndexError::BadField("by"))?;
        let signature = match dict.get(F_SIG) {
            None => None,
            Some(sig) => Some(
                sig.as_bytes()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(IndexError::BadField("sig"))?,
            ),
        };
        Ok(FileRecord {
            path,
            kind,
            deleted,
            mode,
            mtime: Mtime { secs, nanos },
            content,
            version,
            modified_by: DeviceId(u64::from_be_bytes(by)),
            signature,
        })
    }
}

fn field_name(name: &'static [u8]) -> &'static str {
    // Field names are ASCII constants above.
    std::str::from_utf8(name).unwrap_or("?")
}

/// Encodes a batch as a bencode list of records; at most [`MAX_BATCH`].
pub fn encode_batch(records: &[FileRecord]) -> Result<Vec<u8>, IndexError> {
    if records.len() > MAX_BATCH {
        return Err(IndexError::TooManyRecords(records.len()));
    }
    Ok(bencode::encode(&Value::List(
        records.iter().map(|r| r.to_bencode(true)).collect(),
    )))
}

/// Decodes a batch, refusing more than [`MAX_BATCH`] records or a path
/// given twice.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<FileRecord>, IndexError> {
    let value = bencode::decode(bytes).map_err(IndexError::Bencode)?;
    let items = value.as_list().ok_or(IndexError::NotAList)?;
    if items.len() > MAX_BATCH {
        return Err(IndexError::TooManyRecords(items.len()));
    }
    let records = items
        .iter()
        .map(FileRecord::from_bencode)
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::BTreeSet::new();
    for r in &records {
        if !seen.insert(&r.path) {
            return Err(IndexError::DuplicatePath(r.path.clone()));
        }
    }
    Ok(records)
}

/// A device's view of the folder: the latest record for each path,
/// tombstones included (they stop a deleted file from coming back).
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Index {
    records: BTreeMap<RelPath, FileRecord>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// The record for `path`.
    pub fn get(&self, path: &RelPath) -> Option<&FileRecord> {
        self.records.get(path)
    }

    /// Stores `record`, returning the one it replaces.
    pub fn insert(&mut self, record: FileRecord) -> Option<FileRecord> {
        self.records.insert(record.path.clone(), record)
    }

    /// All records in path order (a directory before its contents).
    pub fn iter(&self) -> impl Iterator<Item = &FileRecord> {
        self.records.values()
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.records.len()
    }
}

impl FromIterator<FileRecord> for Index {
    fn from_iter<I: IntoIterator<Item = FileRecord>>(records: I) -> Index {
        let mut index = Index::new();
        for r in records {
            index.insert(r);
        }
        index
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn path(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    /// A live file record holding `bytes`.
    pub(crate) fn file(p: &str, bytes: &[u8], device: u64, counter: u64) -> FileRecord {
        FileRecord {
            path: path(p),
            kind: Kind::File,
            deleted: false,
            mode: 0o644,
            mtime: Mtime {
                secs: 1_700_000_000,
                nanos: 5,
            },
            content: Content::from_reader(bytes, bytes.len() as u64).unwrap(),
            version: VersionVector::new().update(DeviceId(device), counter),
            modified_by: DeviceId(device),
            signature: None,
        }
    }

    #[test]
    fn rel_path_rules() {
        for (bad, why) in [
            ("", PathError::Empty),
            ("../x", PathError::DotComponent),
            ("a/../../b", PathError::DotComponent),
            ("a/./b", PathError::DotComponent),
            (".", PathError::DotComponent),
            ("..", PathError::DotComponent),
            ("/etc/passwd", PathError::Absolute),
            ("/", PathError::Absolute),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            (".p2pfile", PathError::Private),
            (".p2pfile/x", PathError::Private),
            ("a\0b", PathError::Nul),
            (".p2pfile-tmp-1234", PathError::Temporary),
            ("a/.p2pfile-tmp-x", PathError::Temporary),
        ] {
            assert_eq!(RelPath::new(bad), Err(why), "{bad:?}");
        }
        assert_eq!(RelPath::new(&"a/".repeat(2500)), Err(PathError::TooLong));
        assert_eq!(RelPath::new(&"x".repeat(5000)), Err(PathError::TooLong));
        assert_eq!(RelPath::new(&"x".repeat(256)), Err(PathError::NameTooLong));
        RelPath::new(&"x".repeat(255)).unwrap();
        RelPath::new(&["y"; 2048].join("/")).unwrap();

        for good in [
            "a/b c/ü.txt",
            "a/.p2pfile/x",
            ".p2pfilex",
            "..x",
            "a/b..",
            ".bashrc",
        ] {
            assert_eq!(path(good).as_str(), good);
        }
        let p = path("a/b c/ü.txt");
        assert_eq!(p.file_name(), "ü.txt");
        assert_eq!(p.parent(), Some(path("a/b c")));
        assert_eq!(path("top").parent(), None);
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b c", "ü.txt"]);
        assert_eq!(p.to_path(Path::new("/r")), Path::new("/r/a/b c/ü.txt"));
        assert_eq!(p.with_file_name("x").unwrap(), path("a/b c/x"));
        assert_eq!(p.with_file_name(".."), Err(PathError::DotComponent));
        assert!(path("a").is_ancestor_of(&p));
        assert!(!path("a/b").is_ancestor_of(&p));
        assert!(!p.is_ancestor_of(&p));
        assert!(path("a") < path("a/b") && path("a/b") < path("a/b/c"));
    }

    #[test]
    fn content_pieces_follow_the_engine_piece_length() {
        let empty = Content::from_reader(&b""[..], 0).unwrap();
        assert_eq!(empty, Content::empty());
        assert!(empty.pieces.is_empty());

        // 40 KiB + 1: three 16 KiB pieces, the last short and hashed as if
        // padded with zeros (BEP 47), as it is in a padded torrent.
        let data: Vec<u8> = (0..40 * 1024 + 1).map(|i| (i % 251) as u8).collect();
        let c = Content::from_reader(&data[..], data.len() as u64).unwrap();
        assert_eq!(c.piece_length, 16 * 1024);
        assert_eq!(c.pieces.len(), 3);
        let mut padded = data.clone();
        padded.resize(48 * 1024, 0);
        let expected: Vec<[u8; 20]> = padded
            .chunks(16 * 1024)
            .map(|p| Sha1::digest(p).into())
            .collect();
        assert_eq!(c.pieces, expected);

        // A reader that hands out odd sizes gives the same pieces.
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7777);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let d = Content::from_reader(Dribble(&data), data.len() as u64).unwrap();
        assert_eq!(d, c);
        assert_eq!(d.id(), c.id());

        // Wrong length either way: an error, never a hash.
        for size in [data.len() as u64 - 1, data.len() as u64 + 1] {
            let e = Content::from_reader(&data[..], size).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
        assert_ne!(
            Content::from_reader(&data[1..], data.len() as u64 - 1)
                .unwrap()
                .id(),
            c.id()
        );
        assert_eq!(
            Content::from_parts(5, vec![]),
            Err(PieceCountError {
                expected: 1,
                found: 0
            })
        );
    }

    #[test]
    fn record_round_trips_and_signs() {
        let key = FolderKey::from_seed([1; 32]);
        let mut r = file("a/b.txt", b"hello", 7, 3);
        r.sign(&key);
        assert!(r.verify(&key));
        assert!(r.verify(&key.read_only()));
        let back = FileRecord::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert!(back.verify(&key));

        // Another folder's key, or a changed field, breaks the signature.
        assert!(!r.verify(&FolderKey::from_seed([2; 32])));
        let mut moved = r.clone();
        moved.path = path("a/c.txt");
        assert!(!moved.verify(&key));
        let mut bumped = r.clone();
        bumped.version = bumped.version.update(DeviceId(7), 0);
        assert!(!bumped.verify(&key));
        let mut unsigned = r.clone();
        unsigned.signature = None;
        assert!(!unsigned.verify(&key));
        assert!(!unsigned.clone().sign(&key.read_only()));
        assert!(
            FileRecord::decode(&unsigned.encode())
                .unwrap()
                .signature
                .is_none()
        );

        let link = FileRecord {
            kind: Kind::Symlink {
                target: "../elsewhere".into(),
            },
            content: Content::empty(),
            ..file("l", b"", 1, 1)
        };
        assert_eq!(FileRecord::decode(&link.encode()).unwrap(), link);
        let dir = FileRecord {
            kind: Kind::Dir,
            mode: 0o755,
            ..file("d", b"", 1, 1)
        };
        assert_eq!(FileRecord::decode(&dir.encode()).unwrap(), dir);
    }

    fn with(r: &FileRecord, key: &[u8], value: Value) -> Vec<u8> {
        let mut v = r.to_bencode(true);
        if let Value::Dict(d) = &mut v {
            d.insert(key.to_vec(), value);
        }
        bencode::encode(&v)
    }

    fn without(r: &FileRecord, key: &[u8]) -> Vec<u8> {
        let mut v = r.to_bencode(true);
        if let Value::Dict(d) = &mut v {
            d.remove(key);
        }
        bencode::encode(&v)
    }

    #[test]
    fn record_decode_checks_every_field() {
        let r = file("x", &[9u8; 20_000], 1, 1);
        let err = |b: Vec<u8>| FileRecord::decode(&b).unwrap_err();
        assert_eq!(
            err(with(&r, b"path", Value::from("../x"))),
            IndexError::Path(PathError::DotComponent)
        );
        assert_eq!(
            err(with(&r, b"path", Value::from(vec![0xffu8]))),
            IndexError::BadField("path")
        );
        assert_eq!(
            err(with(&r, b"kind", Value::Int(3))),
            IndexError::BadField("kind")
        );
        assert_eq!(
            err(with(&r, b"kind", Value::Int(2))),
            IndexError::Missing("target")
        );
        assert!(matches!(
            err(with(&r, b"target", Value::from("t"))),
            IndexError::Inconsistent(_)
        ));
        assert_eq!(
            err(with(&r, b"mode", Value::Int(0o4755))),
            IndexError::BadField("mode")
        );
        assert_eq!(
            err(with(&r, b"mode", Value::Int(-1))),
            IndexError::BadField("mode")
        );
        assert_eq!(
            err(with(&r, b"deleted", Value::Int(2))),
            IndexError::BadField("deleted")
        );
        assert_eq!(
            err(with(&r, b"mtime ns", Value::Int(1_000_000_000))),
            IndexError::BadField("mtime ns")
        );
        assert_eq!(
            err(with(&r, b"size", Value::Int(-1))),
            IndexError::BadField("size")
        );
        assert_eq!(
            err(with(&r, b"piece length", Value::Int(32768))),
            IndexError::BadField("piece length")
        );
        assert_eq!(
            err(with(&r, b"pieces", Value::from(vec![0u8; 21]))),
            IndexError::BadField("pieces")
        );
        assert!(matches!(
            err(with(&r, b"size", Value::Int(i64::MAX))),
            IndexError::BadField("piece length") | IndexError::Pieces(_)
        ));
        assert_eq!(
            err(with(&r, b"pieces", Value::from(vec![0u8; 60]))),
            IndexError::Pieces(PieceCountError {
                expected: 2,
                found: 3
            })
        );
        assert_eq!(
            err(with(&r, b"extra", Value::Int(1))),
            IndexError::UnknownField
        );
        assert_eq!(err(without(&r, b"version")), IndexError::Missing("version"));
        assert_eq!(err(without(&r, b"path")), IndexError::Missing("path"));
        assert!(matches!(
            err(with(&r, b"version", Value::List(vec![]))),
            IndexError::Inconsistent(_)
        ));
        assert!(matches!(
            err(with(&r, b"version", Value::Int(1))),
            IndexError::Version(_)
        ));
        assert!(matches!(
            err(with(&r, b"deleted", Value::Int(1))),
            IndexError::Inconsistent(_)
        ));
        assert!(matches!(
            err(with(&r, b"kind", Value::Int(1))),
            IndexError::Inconsistent(_)
        ));
        assert_eq!(
            err(with(&r, b"by", Value::from(vec![0u8; 7]))),
            IndexError::BadField("by")
        );
        assert_eq!(
            err(with(&r, b"sig", Value::from(vec![0u8; 63]))),
            IndexError::BadField("sig")
        );
        assert_eq!(FileRecord::decode(b"le"), Err(IndexError::NotADict));
        assert!(matches!(
            FileRecord::decode(b"d"),
            Err(IndexError::Bencode(_))
        ));
        // Messages are lowercase fragments naming the field.
        assert_eq!(
            IndexError::BadField("mode").to_string(),
            "index record field mode is invalid"
        );
    }

    #[test]
    fn batches_are_capped_and_unique() {
        let records: Vec<FileRecord> = (0..3)
            .map(|i| file(&format!("f{i}"), &[i as u8], 1, 1))
            .collect();
        let bytes = encode_batch(&records).unwrap();
        assert_eq!(decode_batch(&bytes).unwrap(), records);
        assert_eq!(decode_batch(b"le").unwrap(), vec![]);
        assert_eq!(decode_batch(b"de"), Err(IndexError::NotAList));

        let twice = encode_batch(&[records[0].clone(), records[0].clone()]).unwrap();
        assert_eq!(
            decode_batch(&twice),
            Err(IndexError::DuplicatePath(path("f0")))
        );

        let many: Vec<FileRecord> = (0..=MAX_BATCH)
            .map(|i| file(&format!("f{i}"), b"", 1, 1))
            .collect();
        assert_eq!(
            encode_batch(&many),
            Err(IndexError::TooManyRecords(MAX_BATCH + 1))
        );
        assert_eq!(
            encode_batch(&many[..MAX_BATCH]).map(|b| decode_batch(&b).unwrap().len()),
            Ok(MAX_BATCH)
        );
        // Hand-built oversize batch: refused by count, before any record is read.
        let list = [b"l".as_slice(), &b"i0e".repeat(MAX_BATCH + 1), b"e"].concat();
        assert_eq!(
            decode_batch(&list),
            Err(IndexError::TooManyRecords(MAX_BATCH + 1))
        );
    }

    #[test]
    fn index_keeps_the_latest_record_per_path() {
        let mut index: Index = [file("b", b"1", 1, 1), file("a", b"2", 1, 1)]
            .into_iter()
            .collect();
        assert_eq!(index.len(), 2);
        let old = index.insert(file("b", b"3", 1, 2)).unwrap();
        assert_eq!(old.content, file("b", b"1", 1, 1).content);
        assert_eq!(index.len(), 2);
        assert_eq!(
            index.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(index.get(&path("c")).is_none());
    }

    proptest! {
        #![proptest_config(p2pfile_engine::arb::config(512))]

        #[test]
        fn every_record_round_trips(r in crate::sync::arb::record()) {
            prop_assert_eq!(FileRecord::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn every_batch_round_trips(records in crate::sync::arb::batch(6)) {
            prop_assert_eq!(decode_batch(&encode_batch(&records).unwrap()), Ok(records));
        }

        #[test]
        fn edited_records_decode_or_error(
            r in crate::sync::arb::record(),
            edits in p2pfile_engine::arb::edits(),
        ) {
            let bytes = p2pfile_engine::arb::apply(&r.encode(), &edits);
            if let Ok(back) = FileRecord::decode(&bytes) {
                prop_assert_eq!(FileRecord::decode(&back.encode()), Ok(back));
            }
        }

        #[test]
        fn decode_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes);
            let _ = FileRecord::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_damaged_batches(cut in 0usize..2000, flip in 0usize..2000, bit in 0u8..8) {
            let key = FolderKey::from_seed([3; 32]);
            let mut records = vec![file("a/b", &[1u8; 40_000], 1, 2), file("c", b"", 2, 1)];
            records.push(FileRecord { kind: Kind::Symlink { target: "t".into() }, ..file("l", b"", 3, 3) });
            for r in &mut records {
                r.sign(&key);
            }
            let bytes = encode_batch(&records).unwrap();
            let cut = cut % bytes.len();
            prop_assert!(decode_batch(&bytes[..cut]).is_err());
            let mut damaged = bytes.clone();
            let flip = flip % damaged.len();
            damaged[flip] ^= 1 << bit;
            // Damage is either refused or, if it still parses, breaks a signature.
            if let Ok(back) = decode_batch(&damaged) {
                prop_assert!(back != records);
                prop_assert!(back.iter().any(|r| !r.verify(&key)));
            }
        }
    }
}
