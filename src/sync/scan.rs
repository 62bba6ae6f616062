//! The local scan: what changed on disk since the previous index.
//!
//! The walk uses the `ignore` crate with every git-specific feature and the
//! `.ignore` files off, so only `.p2pignore` files (gitignore syntax, one per
//! directory if wanted) exclude paths. The folder's private [`PRIVATE_DIR`]
//! and the sync's temporary files ([`TEMP_PREFIX`]`*`, at any depth) are
//! always skipped.
//!
//! `.p2pignore` files themselves are synced like any file, so every peer of
//! a folder ignores the same paths: a path one peer ignores and another
//! syncs would look deleted to neither and stay different forever. Syncthing
//! made the opposite choice for `.stignore` (local only) and users share it
//! by hand with `#include`.
//!
//! Ignored paths are never announced and never touched: a file that becomes
//! ignored keeps its last record in the index (it is not turned into a
//! tombstone), so peers keep their copies.
//!
//! Scanning reads files sequentially, correctness first: a file is re-hashed
//! only when its size or mtime differ from the previous record, and a file
//! that changes while being hashed is skipped this round, not recorded with
//! a wrong hash.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::{Match, WalkBuilder};

use super::index::{
    Content, FileRecord, Index, Kind, MODE_MASK, Mtime, PRIVATE_DIR, PathError, RelPath,
    TEMP_PREFIX,
};
use super::version::DeviceId;

/// The per-directory ignore file, in gitignore syntax.
pub const IGNORE_FILE: &str = ".p2pignore";

/// Turns a file into its [`Content`]. A trait so the caller can choose how
/// to read (and tests can change a file in the middle of hashing).
pub trait Hasher {
    /// Hashes the file at `path`, expected to be `size` bytes long.
    fn hash(&mut self, path: &Path, size: u64) -> io::Result<Content>;
}

/// Reads the file sequentially in 1 MiB chunks ([`Content::from_reader`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct FileHasher;

impl Hasher for FileHasher {
    fn hash(&mut self, path: &Path, size: u64) -> io::Result<Content> {
        Content::from_reader(File::open(path)?, size)
    }
}

/// Why the scan could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The folder itself cannot be read.
    #[error("cannot read folder {path}")]
    Root {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The folder has no `.p2pfile` directory. Scanning it anyway would be
    /// dangerous: an unmounted or replaced folder looks like every file was
    /// deleted, and the tombstones would delete them on every peer.
    #[error("{0} is not a synced folder: it has no .p2pfile directory")]
    NotAFolder(PathBuf),
}

/// Why one path was left out of this scan. Nothing is recorded for it, and
/// its previous record (if any) stays as it was.
#[derive(Debug)]
pub enum SkipReason {
    /// Size or mtime changed while the file was hashed: try again later.
    ChangedWhileHashing,
    /// The name is not UTF-8 or breaks a [`RelPath`] rule.
    BadName(Option<PathError>),
    /// A fifo, socket or device: not synced.
    Special,
    /// Reading it failed.
    Io(io::Error),
    /// The walk could not read it (an unreadable directory, a bad
    /// `.p2pignore` line).
    Walk(ignore::Error),
    /// A previously known path that was not walked but is still on disk
    /// (under an unreadable directory, say): not deleted, so no tombstone.
    NotWalked,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::ChangedWhileHashing => f.write_str("changed while it was read; next scan"),
            SkipReason::BadName(Some(e)) => write!(f, "name not synced: {e}"),
            SkipReason::BadName(None) => f.write_str("name is not UTF-8"),
            SkipReason::Special => f.write_str("not a regular file, directory or symlink"),
            SkipReason::Io(e) => write!(f, "cannot read it: {e}"),
            SkipReason::Walk(e) => write!(f, "cannot walk it: {e}"),
            SkipReason::NotWalked => f.write_str("not reached by the walk; kept as it was"),
        }
    }
}

impl SkipReason {
    /// Whether the user should hear of it: the path is not synced until
    /// they act (a bad name, an unreadable file), unlike a file that was
    /// being written and is picked up next time.
    pub fn needs_attention(&self) -> bool {
        matches!(
            self,
            SkipReason::BadName(_) | SkipReason::Io(_) | SkipReason::Walk(_)
        )
    }
}

/// One path the scan left out, and why.
#[derive(Debug)]
pub struct Skipped {
    /// Where, on disk.
    pub path: PathBuf,
    /// Why.
    pub reason: SkipReason,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// New and changed records (tombstones included), in path order,
    /// unsigned: the caller signs them with the folder key.
    pub changed: Vec<FileRecord>,
    /// Paths left out this round.
    pub skipped: Vec<Skipped>,
}

/// Scans `dir` against `previous`, the index of the last scan.
///
/// A file whose size and mtime equal its previous record is not re-hashed.
/// Every new or changed path gets `previous.version.update(device,
/// now_secs)` and `modified_by = device`. A known path that is gone (and is
/// not ignored now) becomes a tombstone. All directories get records, empty
/// or not, so a directory's creation, mode and deletion sync too.
pub fn scan(
    dir: &Path,
    previous: &Index,
    device: DeviceId,
    now_secs: u64,
    hasher: &mut dyn Hasher,
) -> Result<ScanResult, ScanError> {
    let root_error = |source| ScanError::Root {
        path: dir.to_path_buf(),
        source,
    };
    let meta = fs::metadata(dir).map_err(root_error)?;
    if !meta.is_dir() {
        return Err(root_error(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    if !dir.join(PRIVATE_DIR).is_dir() {
        return Err(ScanError::NotAFolder(dir.to_path_buf()));
    }

    let mut scanner = Scanner {
        dir,
        previous,
        device,
        now_secs,
        result: ScanResult::default(),
        seen: BTreeSet::new(),
        rules: IgnoreRules::default(),
    };
    // A bad line is reported by the walk below; the rest still apply.
    let _ = scanner.rules.add(dir.to_path_buf(), String::new());
    for entry in walker(dir).build() {
        match entry {
            Ok(entry) if entry.depth() == 0 => {}
            Ok(entry) => scanner.entry(&entry, hasher),
            Err(e) => scanner.skip(dir.to_path_buf(), SkipReason::Walk(e)),
        }
    }
    scanner.tombstones();
    let mut result = scanner.result;
    result.changed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(result)
}

/// The walk: `.p2pignore` only, no git rules, hidden files included, links
/// not followed, private and temporary names cut off before descending.
fn walker(dir: &Path) -> WalkBuilder {
    let mut walk = WalkBuilder::new(dir);
    walk.git_ignore(false)
        .git_exclude(false)
        .git_global(false)
        // `.ignore` files belong to ripgrep and friends, not to sync.
        .ignore(false)
        .hidden(false)
        // Rules above the folder are not the folder's: every peer must
        // compute the same ignored set from synced files alone.
        .parents(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            !(name.starts_with(TEMP_PREFIX) || (e.depth() == 1 && name == PRIVATE_DIR))
        });
    walk
}

struct Scanner<'a> {
    dir: &'a Path,
    previous: &'a Index,
    device: DeviceId,
    now_secs: u64,
    result: ScanResult,
    /// Paths found on disk this round (recorded, unchanged or skipped): none
    /// of them may become a tombstone.
    seen: BTreeSet<RelPath>,
    rules: IgnoreRules,
}

impl Scanner<'_> {
    fn skip(&mut self, path: PathBuf, reason: SkipReason) {
        self.result.skipped.push(Skipped { path, reason });
    }

    fn entry(&mut self, entry: &ignore::DirEntry, hasher: &mut dyn Hasher) {
        let abs = entry.path();
        let rel = match relative(self.dir, abs) {
            Ok(rel) => rel,
            Err(e) => return self.skip(abs.to_path_buf(), SkipReason::BadName(e)),
        };
        self.seen.insert(rel.clone());
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) => return self.skip(abs.to_path_buf(), SkipReason::Walk(e)),
        };
        let prev = self.previous.get(&rel).filter(|p| !p.deleted);
        let file_type = meta.file_type();
        let (kind, content) = if file_type.is_dir() {
            // A bad line is reported by the walk itself; the rest still apply.
            let _ = self.rules.add(abs.to_path_buf(), rel.as_str().to_string());
            if prev.is_some_and(|p| p.kind == Kind::Dir && p.mode == mode(&meta)) {
                return;
            }
            (Kind::Dir, Content::empty())
        } else if file_type.is_symlink() {
            let target = match fs::read_link(abs) {
                Ok(t) => t,
                Err(e) => return self.skip(abs.to_path_buf(), SkipReason::Io(e)),
            };
            let Some(target) = target.to_str().filter(|t| !t.is_empty()) else {
                return self.skip(abs.to_path_buf(), SkipReason::BadName(None));
            };
            let kind = Kind::Symlink {
                target: target.to_string(),
            };
            if prev.is_some_and(|p| p.kind == kind) {
                return;
            }
            (kind, Content::empty())
        } else if file_type.is_file() {
            let size = meta.len();
            let mtime = mtime(&meta);
            let same_stat =
                |p: &FileRecord| p.kind == Kind::File && p.content.size == size && p.mtime == mtime;
            let content = match prev.filter(|p| same_stat(p)) {
                Some(p) if p.mode == mode(&meta) => return,
                // Only the permissions changed: no need to read the bytes.
                Some(p) => p.content.clone(),
                None => match self.hash(abs, &meta, hasher) {
                    Ok(content) => content,
                    Err(reason) => return self.skip(abs.to_path_buf(), reason),
                },
            };
            (Kind::File, content)
        } else {
            return self.skip(abs.to_path_buf(), SkipReason::Special);
        };
        let version = self
            .previous
            .get(&rel)
            .map(|p| p.version.clone())
            .unwrap_or_default()
            .update(self.device, self.now_secs);
        self.result.changed.push(FileRecord {
            path: rel,
            kind,
            deleted: false,
            mode: mode(&meta),
            mtime: mtime(&meta),
            content,
            version,
            modified_by: self.device,
            signature: None,
        });
    }

    /// Hashes a file and checks it did not change meanwhile.
    fn hash(
        &self,
        abs: &Path,
        before: &Metadata,
        hasher: &mut dyn Hasher,
    ) -> Result<Content, SkipReason> {
        let content = match hasher.hash(abs, before.len()) {
            Ok(content) => content,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(SkipReason::ChangedWhileHashing);
            }
            Err(e) => return Err(SkipReason::Io(e)),
        };
        let after = fs::symlink_metadata(abs).map_err(SkipReason::Io)?;
        if !after.is_file() || after.len() != before.len() || mtime(&after) != mtime(before) {
            return Err(SkipReason::ChangedWhileHashing);
        }
        Ok(content)
    }

    /// Known live paths not seen on disk: tombstones, unless now ignored or
    /// still present (and merely not walked).
    fn tombstones(&mut self) {
        for prev in self.previous.iter() {
            if prev.deleted || self.seen.contains(&prev.path) {
                continue;
            }
            if self
                .rules
                .is_ignored(self.dir, &prev.path, prev.kind == Kind::Dir)
            {
                continue;
            }
            let abs = prev.path.to_path(self.dir);
            match fs::symlink_metadata(&abs) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) => {}
                Ok(_) => {
                    self.skip(abs, SkipReason::NotWalked);
                    continue;
                }
                Err(e) => {
                    self.skip(abs, SkipReason::Io(e));
                    continue;
                }
            }
            self.result.changed.push(FileRecord {
                path: prev.path.clone(),
                kind: prev.kind.clone(),
                deleted: true,
                mode: 0,
                mtime: Mtime {
                    secs: i64::try_from(self.now_secs).unwrap_or(i64::MAX),
                    nanos: 0,
                },
                content: Content::empty(),
                version: prev.version.update(self.device, self.now_secs),
                modified_by: self.device,
                signature: None,
            });
        }
    }
}

/// The `.p2pignore` rules met during the walk, to tell whether a path that
/// was not walked is ignored (and so must not become a tombstone).
///
/// It asks the same question the walker does, the same way: each ancestor
/// from the top down, against the rules of the directories above it,
/// deepest first, the first match deciding.
#[derive(Default)]
struct IgnoreRules {
    /// Rules per directory, keyed by its relative path ("" for the top).
    by_dir: HashMap<String, Gitignore>,
}

impl IgnoreRules {
    fn add(&mut self, abs_dir: PathBuf, key: String) -> Result<(), ignore::Error> {
        let file = abs_dir.join(IGNORE_FILE);
        if !file.is_file() {
            return Ok(());
        }
        let mut builder = GitignoreBuilder::new(&abs_dir);
        let partial = builder.add(&file);
        let rules = builder.build()?;
        self.by_dir.insert(key, rules);
        partial.map_or(Ok(()), Err)
    }

    fn is_ignored(&self, root: &Path, path: &RelPath, is_dir: bool) -> bool {
        let names: Vec<&str> = path.components().collect();
        for end in 1..=names.len() {
            let candidate = root.join(names[..end].join("/"));
            let candidate_is_dir = end < names.len() || is_dir;
            for depth in (0..end).rev() {
                let Some(rules) = self.by_dir.get(&names[..depth].join("/")) else {
                    continue;
                };
                match rules.matched(&candidate, candidate_is_dir) {
                    Match::Ignore(_) => return true,
                    Match::Whitelist(_) => break,
                    Match::None => {}
                }
            }
        }
        false
    }
}

/// `abs` relative to `root`, as a checked [`RelPath`].
fn relative(root: &Path, abs: &Path) -> Result<RelPath, Option<PathError>> {
    let rel = abs.strip_prefix(root).map_err(|_| None)?;
    let mut names = Vec::new();
    for c in rel.components() {
        names.push(c.as_os_str().to_str().ok_or(None)?);
    }
    RelPath::new(&names.join("/")).map_err(Some)
}

pub(crate) fn mtime(meta: &Metadata) -> Mtime {
    let Ok(t) = meta.modified() else {
        return Mtime::default();
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Mtime {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos(),
        },
        // Before 1970: floor to whole seconds below, nanoseconds above.
        Err(e) => {
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => Mtime { secs, nanos: 0 },
                n => Mtime {
                    secs: secs - 1,
                    nanos: 1_000_000_000 - n,
                },
            }
        }
    }
}

#[cfg(unix)]
fn mode(meta: &Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & MODE_MASK
}

#[cfg(not(unix))]
fn mode(meta: &Metadata) -> u32 {
    // No permission bits: the usual defaults, read-only honoured.
    let base = if meta.is_dir() { 0o755 } else { 0o644 };
    if meta.permissions().readonly() {
        base & 0o555
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::index::tests::path;
    use crate::sync::version::Ordering4;
    use std::time::{Duration, SystemTime};

    const DEV: DeviceId = DeviceId(42);

    /// Counts the files it hashes.
    #[derive(Default)]
    struct Counting(Vec<PathBuf>);

    impl Hasher for Counting {
        fn hash(&mut self, path: &Path, size: u64) -> io::Result<Content> {
            self.0.push(path.to_path_buf());
            FileHasher.hash(path, size)
        }
    }

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(PRIVATE_DIR)).unwrap();
        dir
    }

    fn write(dir: &Path, rel: &str, bytes: &[u8]) {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
    }

    fn set_mtime(path: &Path, secs: u64) {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(t))
            .unwrap();
    }

    fn run(dir: &Path, index: &Index, now: u64) -> ScanResult {
        scan(dir, index, DEV, now, &mut FileHasher).unwrap()
    }

    /// Scans and applies the changes to `index`, as the caller will.
    fn rescan(dir: &Path, index: &mut Index, now: u64) -> Vec<FileRecord> {
        let result = run(dir, index, now);
        for r in &result.changed {
            index.insert(r.clone());
        }
        result.changed
    }

    fn paths(records: &[FileRecord]) -> Vec<&str> {
        records.iter().map(|r| r.path.as_str()).collect()
    }

    #[test]
    fn new_files_and_directories_are_recorded() {
        let dir = folder();
        write(dir.path(), "a.txt", b"hello");
        write(dir.path(), "sub/b.bin", &[7u8; 70_000]);
        fs::create_dir(dir.path().join("empty")).unwrap();
        let changed = run(dir.path(), &Index::new(), 1000).changed;
        assert_eq!(paths(&changed), ["a.txt", "empty", "sub", "sub/b.bin"]);
        let a = &changed[0];
        assert_eq!(a.kind, Kind::File);
        assert!(!a.deleted);
        assert_eq!(a.size(), 5);
        assert_eq!(a.content, Content::from_reader(&b"hello"[..], 5).unwrap());
        assert_eq!(a.version.get(DEV), 1000);
        assert_eq!(a.modified_by, DEV);
        assert_eq!(a.signature, None);
        assert_eq!(changed[1].kind, Kind::Dir);
        assert_eq!(changed[1].size(), 0);
        assert_eq!(changed[3].content.pieces.len(), 5);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path().join("a.txt"), fs::Permissions::from_mode(0o4640))
                .unwrap();
            let changed = run(dir.path(), &Index::new(), 1000).changed;
            assert_eq!(changed[0].mode, 0o640, "set-id bits are dropped");
        }
    }

    #[test]
    fn unchanged_files_are_not_rehashed() {
        let dir = folder();
        write(dir.path(), "a", b"1");
        write(dir.path(), "d/b", b"2");
        let mut index = Index::new();
        rescan(dir.path(), &mut index, 10);
        let mut hasher = Counting::default();
        let again = scan(dir.path(), &index, DEV, 20, &mut hasher).unwrap();
        assert!(again.changed.is_empty(), "{:?}", again.changed);
        assert!(again.skipped.is_empty(), "{:?}", again.skipped);
        assert!(hasher.0.is_empty());
    }

    #[test]
    fn modified_file_gets_new_pieces_and_a_newer_version() {
        let dir = folder();
        write(dir.path(), "a", b"one");
        let mut index = Index::new();
        rescan(dir.path(), &mut index, 10);
        let before = index.get(&path("a")).unwrap().clone();

        // Same size, only the mtime tells.
        write(dir.path(), "a", b"two");
        set_mtime(&dir.path().join("a"), 5_000);
        let changed = rescan(dir.path(), &mut index, 11);
        assert_eq!(paths(&changed), ["a"]);
        assert_ne!(changed[0].content.id(), before.content.id());
        assert_eq!(
            changed[0].version.compare(&before.version),
            Ordering4::Greater
        );
        assert_eq!(changed[0].version.get(DEV), 11);
        assert_eq!(changed[0].mtime.secs, 5_000);

        // Clock standing still: the counter still moves.
        write(dir.path(), "a", b"three");
        let changed = rescan(dir.path(), &mut index, 11);
        assert_eq!(changed[0].version.get(DEV), 12);
        assert_eq!(changed[0].size(), 5);
    }

    #[cfg(unix)]
    #[test]
    fn permission_change_is_recorded_without_reading_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = folder();
        write(dir.path(), "a", b"data");
        let mut index = Index::new();
        rescan(dir.path(), &mut index, 10);
        fs::set_permissions(dir.path().join("a"), fs::Permissions::from_mode(0o600)).unwrap();
        let mut hasher = Counting::default();
        let changed = scan(dir.path(), &index, DEV, 20, &mut hasher)
            .unwrap()
            .changed;
        assert!(hasher.0.is_empty());
        assert_eq!(paths(&changed), ["a"]);
        assert_eq!(changed[0].mode, 0o600);
        assert_eq!(changed[0].content, index.get(&path("a")).unwrap().content);
        assert_eq!(changed[0].version.get(DEV), 20);
    }

    #[test]
    fn deleted_paths_become_tombstones_once() {
        let dir = folder();
        write(dir.path(), "a", b"data");
        write(dir.path(), "d/b", b"more");
        let mut index = Index::new();
        rescan(dir.path(), &mut index, 10);
        fs::remove_file(dir.path().join("a")).unwrap();
        fs::remove_dir_all(dir.path().join("d")).unwrap();
        let changed = rescan(dir.path(), &mut index, 20);
        assert_eq!(paths(&changed), ["a", "d", "d/b"]);
        for t in &changed {
            assert!(t.deleted);
            assert_eq!(t.size(), 0);
            assert!(t.content.pieces.is_empty());
            assert_eq!(t.version.get(DEV), 20);
            assert_eq!(t.modified_by, DEV);
        }
        assert_eq!(changed[1].kind, Kind::Dir);
        // A tombstone stays a tombstone.
        assert!(rescan(dir.path(), &mut index, 30).is_empty());
        // And a file coming back descends from it.
        write(dir.path(), "a", b"back");
        let changed = rescan(dir.path(), &mut index, 31);
        assert_eq!(paths(&changed), ["a"]);
        assert!(!changed[0].deleted);
        assert_eq!(changed[0].version.get(DEV), 31);
    }

    #[test]
    fn ignored_paths_never_appear_and_are_never_tombstoned() {
        let dir = folder();
        write(dir.path(), ".p2pignore", b"*.log\nbuild/\n");
        write(dir.path(), "app.log", b"x");
        write(dir.path(), "build/out.o", b"x");
        write(dir.path(), "src/deep.log", b"x");
        write(dir.path(), "src/main.rs", b"fn main() {}");
        write(dir.path(), "src/.p2pignore", b"secret*\n");
        write(dir.path(), "src/secret.txt", b"x");
        write(dir.path(), "secret.txt", b"kept: the rule is in src/ only");
        write(dir.path(), "keep.txt", b"k");
        let mut index = Index::new();
        let changed = rescan(dir.path(), &mut index, 10);
        assert_eq!(
            paths(&changed),
            [
                ".p2pignore",
                "keep.txt",
                "secret.txt",
                "src",
                "src/.p2pignore",
                "src/main.rs"
            ]
        );

        // keep.txt becomes ignored, then is deleted: no record changes.
        write(dir.path(), ".p2pignore", b"*.log\nbuild/\nkeep.txt\n");
        assert_eq!(paths(&rescan(dir.path(), &mut index, 20)), [".p2pignore"]);
        fs::remove_file(dir.path().join("keep.txt")).unwrap();
        assert!(rescan(dir.path(), &mut index, 30).is_empty());
        assert!(!index.get(&path("keep.txt")).unwrap().deleted);

        // Likewise under a nested rule, and for a directory ignored whole.
        write(dir.path(), "src/main.rs.bak", b"x");
        rescan(dir.path(), &mut index, 40);
        write(dir.path(), "src/.p2pignore", b"secret*\n*.bak\n");
        fs::remove_file(dir.path().join("src/main.rs.bak")).unwrap();
        assert_eq!(
            paths(&rescan(dir.path(), &mut index, 50)),
            ["src/.p2pignore"]
        );
        assert!(!index.get(&path("src/main.rs.bak")).unwrap().deleted);

        write(dir.path(), "gen/a", b"x");
        rescan(dir.path(), &mut index, 60);
        write(dir.path(), ".p2pignore", b"*.log\nbuild/\nkeep.txt\ngen/\n");
        fs::remove_dir_all(dir.path().join("gen")).unwrap();
        assert_eq!(paths(&rescan(dir.path(), &mut index, 70)), [".p2pignore"]);
        assert!(!index.get(&path("gen/a")).unwrap().deleted);

        // A re-included name (!) is not ignored, so its deletion counts.
        write(dir.path(), "x.log", b"x");
        write(
            dir.path(),
            ".p2pignore",
            b"*.log\nbuild/\nkeep.txt\ngen/\n!x.log\n",
        );
        assert_eq!(
            paths(&rescan(dir.path(), &mut index, 80)),
            [".p2pignore", "x.log"]
        );
        fs::remove_file(dir.path().join("x.log")).unwrap();
        let changed = rescan(dir.path(), &mut index, 90);
        assert_eq!(paths(&changed), ["x.log"]);
        assert!(changed[0].deleted);
    }

    #[test]
    fn private_dir_and_temporary_files_never_appear() {
        let dir = folder();
        write(dir.path(), ".p2pfile/state.db", b"x");
        write(dir.path(), ".p2pfile-tmp-123", b"partial");
        write(dir.path(), "d/.p2pfile-tmp-9", b"partial");
        write(dir.path(), "d/.p2pfile/ok", b"only the top one is private");
        let changed = run(dir.path(), &Index::new(), 1).changed;
        assert_eq!(paths(&changed), ["d", "d/.p2pfile", "d/.p2pfile/ok"]);
    }

    #[test]
    fn same_bytes_at_two_paths_have_one_content_id() {
        let dir = folder();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        write(dir.path(), "a/x", &data);
        write(dir.path(), "b/renamed", &data);
        write(dir.path(), "c", &data[1..]);
        let changed = run(dir.path(), &Index::new(), 1).changed;
        let id = |p: &str| {
            changed
                .iter()
                .find(|r| r.path.as_str() == p)
                .unwrap()
                .content
                .id()
        };
        assert_eq!(id("a/x"), id("b/renamed"));
        assert_ne!(id("a/x"), id("c"));
    }

    #[test]
    fn a_folder_without_its_private_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", b"x");
        let e = scan(dir.path(), &Index::new(), DEV, 1, &mut FileHasher).unwrap_err();
        assert!(matches!(e, ScanError::NotAFolder(_)), "{e:?}");
        let e = scan(
            &dir.path().join("a"),
            &Index::new(),
            DEV,
            1,
            &mut FileHasher,
        )
        .unwrap_err();
        assert!(matches!(e, ScanError::Root { .. }), "{e:?}");
        let e = scan(
            &dir.path().join("none"),
            &Index::new(),
            DEV,
            1,
            &mut FileHasher,
        )
        .unwrap_err();
        assert!(matches!(e, ScanError::Root { .. }), "{e:?}");
    }

    #[test]
    fn a_file_changing_while_hashed_is_skipped() {
        /// Appends to the file after hashing it, like a writer would.
        struct Appending;
        impl Hasher for Appending {
            fn hash(&mut self, path: &Path, size: u64) -> io::Result<Content> {
                let content = FileHasher.hash(path, size)?;
                let mut f = File::options().append(true).open(path)?;
                io::Write::write_all(&mut f, b"more")?;
                Ok(content)
            }
        }
        /// Sees a different length than the walk did.
        struct Shrunk;
        impl Hasher for Shrunk {
            fn hash(&mut self, path: &Path, size: u64) -> io::Result<Content> {
                FileHasher.hash(path, size + 1)
            }
        }
        let dir = folder();
        write(dir.path(), "busy", b"data");
        for hasher in [&mut Appending as &mut dyn Hasher, &mut Shrunk] {
            let result = scan(dir.path(), &Index::new(), DEV, 1, hasher).unwrap();
            assert!(result.changed.is_empty(), "{:?}", result.changed);
            assert_eq!(result.skipped.len(), 1);
            assert!(matches!(
                result.skipped[0].reason,
                SkipReason::ChangedWhileHashing
            ));
        }
        // A skipped file that was known is not tombstoned either.
        let mut index = Index::new();
        rescan(dir.path(), &mut index, 1);
        write(dir.path(), "busy", b"changed");
        let result = scan(dir.path(), &index, DEV, 2, &mut Appending).unwrap();
        assert!(result.changed.is_empty(), "{:?}", result.changed);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_recorded_not_followed() {
        let dir = folder();
        write(dir.path(), "real/f", b"x");
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("missing", dir.path().join("dangling")).unwrap();
        let mut index = Index::new();
        let changed = rescan(dir.path(), &mut index, 1);
        assert_eq!(
            paths(&changed),
            ["abs", "dangling", "link", "real", "real/f"]
        );
        assert_eq!(
            changed[2].kind,
            Kind::Symlink {
                target: "real".into()
            }
        );
        assert_eq!(
            changed[0].kind,
            Kind::Symlink {
                target: "/etc/passwd".into()
            }
        );
        assert_eq!(changed[2].size(), 0);
        assert!(rescan(dir.path(), &mut index, 2).is_empty());
        fs::remove_file(dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("real/f", dir.path().join("link")).unwrap();
        let changed = rescan(dir.path(), &mut index, 3);
        assert_eq!(
            changed[0].kind,
            Kind::Symlink {
                target: "real/f".into()
            }
        );
    }

    #[cfg(unix)]
    #[test]
    fn special_files_and_bad_names_are_reported() {
        use std::os::unix::ffi::OsStrExt;
        let dir = folder();
        let bad = std::ffi::OsStr::from_bytes(b"bad\xffname");
        fs::write(dir.path().join(bad), b"x").unwrap();
        let sock = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        write(dir.path(), "ok", b"x");
        let result = run(dir.path(), &Index::new(), 1);
        assert_eq!(paths(&result.changed), ["ok"]);
        let reasons: Vec<_> = result.skipped.iter().map(|s| &s.reason).collect();
        assert!(
            matches!(
                reasons[..],
                [SkipReason::BadName(None), SkipReason::Special]
            ),
            "{reasons:?}"
        );
        drop(sock);
    }
}
