//! The sync's hands on the folder: every change it makes on disk goes
//! through here, so the rules that keep data safe live in one place.
//!
//! - Nothing is destroyed: a file that sync replaces or deletes is first
//!   moved to `DIR/.p2pfile/trash/<path>~<YYYYMMDD-HHMMSS>` and kept there
//!   for the trash's keep time ([`FolderFs::expire_trash`]); what an
//!   interrupted run left in `tmp/` goes after a day ([`FolderFs::expire_tmp`]).
//! - A change is made only while the path still holds what our index says
//!   it held ([`FolderFs::matches`]): an edit made since the last scan is
//!   scanned and merged first, never overwritten.
//! - Content arrives complete and verified in `DIR/.p2pfile/tmp/` (the
//!   engine's part files live there too) and is renamed into place, so no
//!   half-written file ever stands under a final name. The rename stays on
//!   one file system because `.p2pfile/` is inside the folder.
//!
//! The check-then-rename leaves a window of microseconds in which an edit
//! could slip in; the edit is then in the trash, not lost.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::index::{FileRecord, Kind, MODE_MASK, Mtime, PRIVATE_DIR, RelPath};
use super::merge::utc_stamp;
use super::scan;

/// Where the sync keeps its own files inside the folder.
#[derive(Clone, Debug)]
pub struct FolderFs {
    root: PathBuf,
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The path no longer holds what the index says: it changed since the
    /// last scan. Nothing was touched; scan, then merge again.
    #[error("{0} changed since it was scanned")]
    Changed(PathBuf),
    /// A directory is in the way of a file, or the other way round, and it
    /// is not ours to move (it holds files the index does not know).
    #[error("{0} is in the way")]
    InTheWay(PathBuf),
    /// Disk I/O failed.
    #[error("cannot update {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl ApplyError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
        move |source| ApplyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl FolderFs {
    /// The folder at `root`.
    pub fn new(root: &Path) -> FolderFs {
        FolderFs {
            root: root.to_path_buf(),
        }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `DIR/.p2pfile`.
    pub fn private_dir(&self) -> PathBuf {
        self.root.join(PRIVATE_DIR)
    }

    /// Where content arrives before it is renamed into place.
    pub fn tmp_dir(&self) -> PathBuf {
        self.private_dir().join("tmp")
    }

    /// Where replaced and deleted files are kept.
    pub fn trash_dir(&self) -> PathBuf {
        self.private_dir().join("trash")
    }

    /// Creates `.p2pfile/`, its `tmp/` and `trash/`.
    pub fn create_private_dirs(&self) -> io::Result<()> {
        fs::create_dir_all(self.tmp_dir())?;
        fs::create_dir_all(self.trash_dir())
    }

    /// Where `path` is on disk.
    pub fn path(&self, path: &RelPath) -> PathBuf {
        path.to_path(&self.root)
    }

    /// Whether the disk at `path` still holds what `expected` says (nothing
    /// at all for `None` or a tombstone): same kind, and for a file the same
    /// size and mtime, for a link the same target.
    pub fn matches(&self, path: &RelPath, expected: Option<&FileRecord>) -> bool {
        let full = self.path(path);
        let meta = fs::symlink_metadata(&full);
        let Some(expected) = expected.filter(|e| !e.deleted) else {
            return meta.is_err();
        };
        let Ok(meta) = meta else {
            return false;
        };
        match &expected.kind {
            Kind::File => {
                meta.is_file()
                    && meta.len() == expected.size()
                    && scan::mtime(&meta) == expected.mtime
            }
            Kind::Dir => meta.is_dir(),
            Kind::Symlink { target } => {
                meta.file_type().is_symlink()
                    && fs::read_link(&full).is_ok_and(|t| t.to_str() == Some(target))
            }
        }
    }

    /// Moves whatever is at `path` into the trash; returns where it went
    /// (`None` if nothing was there). A directory goes only when empty of
    /// anything but other empty directories: its files are handled one by
    /// one, and what the index does not know stays where it is.
    pub fn to_trash(&self, path: &RelPath, now: SystemTime) -> Result<Option<PathBuf>, ApplyError> {
        let full = self.path(path);
        let Ok(meta) = fs::symlink_metadata(&full) else {
            return Ok(None);
        };
        if meta.is_dir() {
            return match fs::remove_dir(&full) {
                Ok(()) => Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    Err(ApplyError::InTheWay(full))
                }
                Err(e) => Err(ApplyError::io(&full)(e)),
            };
        }
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let base = path.to_path(&self.trash_dir());
        let mut dest = PathBuf::from(format!("{}~{}", base.display(), utc_stamp(secs)));
        let mut n = 1;
        while fs::symlink_metadata(&dest).is_ok() {
            n += 1;
            dest = PathBuf::from(format!("{}~{}-{n}", base.display(), utc_stamp(secs)));
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(ApplyError::io(parent))?;
        }
        fs::rename(&full, &dest).map_err(ApplyError::io(&full))?;
        Ok(Some(dest))
    }

    /// Puts the verified file `source` (in [`Self::tmp_dir`]) at
    /// `record.path` with the record's mode and mtime, if the path still
    /// holds what `expected` says; what was there goes to the trash first.
    pub fn commit_file(
        &self,
        source: &Path,
        record: &FileRecord,
        expected: Option<&FileRecord>,
        now: SystemTime,
    ) -> Result<(), ApplyError> {
        self.commit(source, record, expected, now, false)
    }

    /// As [`Self::commit_file`], but the source stays: the file is a hard
    /// link to it (a copy where links are refused).
    pub fn commit_link(
        &self,
        source: &Path,
        record: &FileRecord,
        expected: Option<&FileRecord>,
        now: SystemTime,
    ) -> Result<(), ApplyError> {
        self.commit(source, record, expected, now, true)
    }

    fn commit(
        &self,
        source: &Path,
        record: &FileRecord,
        expected: Option<&FileRecord>,
        now: SystemTime,
        link: bool,
    ) -> Result<(), ApplyError> {
        let full = self.path(&record.path);
        if !self.matches(&record.path, expected) {
            return Err(ApplyError::Changed(full));
        }
        set_mode_and_mtime(source, record.mode, record.mtime).map_err(ApplyError::io(source))?;
        self.make_parents(&record.path)?;
        self.to_trash(&record.path, now)?;
        if link {
            // The source stays where it is (the engine still seeds it to
            // peers fetching the same pack); the file shares its bytes.
            if fs::hard_link(source, &full).is_err() {
                self.copy_into_place(source, &full, record)
                    .map_err(ApplyError::io(&full))?;
            }
        } else {
            fs::rename(source, &full).map_err(ApplyError::io(&full))?;
        }
        Ok(())
    }

    /// Where links are refused: a copy made in tmp/, given the record's
    /// mode and mtime, then renamed into place, so a full disk or a kill
    /// mid-copy never leaves a half-written file under the final name (and
    /// the copy does not look like a local edit to the next scan).
    fn copy_into_place(&self, source: &Path, full: &Path, record: &FileRecord) -> io::Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let copy = self.copy_to_tmp(source, &name).inspect_err(|_| {
            let _ = fs::remove_file(self.tmp_dir().join(format!("copy-{name}")));
        })?;
        set_mode_and_mtime(&copy, record.mode, record.mtime)
            .and_then(|()| fs::rename(&copy, full))
            .inspect_err(|_| {
                let _ = fs::remove_file(&copy);
            })
    }

    /// Copies a local file into the tmp dir (a copy or rename of content
    /// this machine already has: no transfer). Returns the copy's path.
    pub fn copy_to_tmp(&self, from: &Path, name: &str) -> io::Result<PathBuf> {
        let dest = self.tmp_dir().join(format!("copy-{name}"));
        fs::copy(from, &dest)?;
        File::open(&dest)?.sync_all()?;
        Ok(dest)
    }

    /// Makes the directory `record.path` (and its parents) with its mode.
    pub fn make_dir(
        &self,
        record: &FileRecord,
        expected: Option<&FileRecord>,
    ) -> Result<(), ApplyError> {
        let full = self.path(&record.path);
        if fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
            let perm = fs::Permissions::from_mode(record.mode & MODE_MASK);
            return fs::set_permissions(&full, perm).map_err(ApplyError::io(&full));
        }
        if !self.matches(&record.path, expected) {
            return Err(ApplyError::Changed(full));
        }
        self.to_trash(&record.path, SystemTime::now())?;
        fs::create_dir_all(&full).map_err(ApplyError::io(&full))?;
        let perm = fs::Permissions::from_mode(record.mode & MODE_MASK);
        fs::set_permissions(&full, perm).map_err(ApplyError::io(&full))
    }

    /// Makes the symlink `record.path`. Its target is stored as given; the
    /// sync never writes through a link.
    pub fn make_symlink(
        &self,
        record: &FileRecord,
        expected: Option<&FileRecord>,
        now: SystemTime,
    ) -> Result<(), ApplyError> {
        let Kind::Symlink { target } = &record.kind else {
            return Err(ApplyError::InTheWay(self.path(&record.path)));
        };
        let full = self.path(&record.path);
        if !self.matches(&record.path, expected) {
            return Err(ApplyError::Changed(full));
        }
        self.make_parents(&record.path)?;
        self.to_trash(&record.path, now)?;
        std::os::unix::fs::symlink(target, &full).map_err(ApplyError::io(&full))
    }

    /// Applies a tombstone: moves the path to the trash if it still holds
    /// what `expected` says.
    pub fn delete(
        &self,
        path: &RelPath,
        expected: Option<&FileRecord>,
        now: SystemTime,
    ) -> Result<(), ApplyError> {
        if !self.matches(path, expected) {
            return Err(ApplyError::Changed(self.path(path)));
        }
        self.to_trash(path, now).map(drop)
    }

    /// Renames a local file aside (a conflict loser), if it still holds
    /// what `expected` says and `to` is free.
    pub fn rename(
        &self,
        from: &RelPath,
        to: &RelPath,
        expected: &FileRecord,
    ) -> Result<(), ApplyError> {
        if !self.matches(from, Some(expected)) {
            return Err(ApplyError::Changed(self.path(from)));
        }
        let dest = self.path(to);
        if fs::symlink_metadata(&dest).is_ok() {
            return Err(ApplyError::InTheWay(dest));
        }
        self.make_parents(to)?;
        fs::rename(self.path(from), &dest).map_err(ApplyError::io(&dest))
    }

    /// Removes trash entries older than `keep` (by the time they were moved
    /// there, which is their ctime: rename updates it). Returns how many.
    pub fn expire_trash(&self, keep: Duration, now: SystemTime) -> io::Result<usize> {
        expire(&self.trash_dir(), keep, now)
    }

    /// Removes what an interrupted run left in the tmp dir and nobody
    /// touched for `keep` (a partial fetch of a pack that is never asked for
    /// again). A part still in use is written to, which renews its ctime.
    pub fn expire_tmp(&self, keep: Duration, now: SystemTime) -> io::Result<usize> {
        expire(&self.tmp_dir(), keep, now)
    }

    /// Creates the parent directories of `path`. A file where a parent
    /// directory should be is in the way.
    fn make_parents(&self, path: &RelPath) -> Result<(), ApplyError> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let full = self.path(&parent);
        match fs::create_dir_all(&full) {
            Ok(()) => Ok(()),
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Err(ApplyError::InTheWay(full))
            }
            Err(e) => Err(ApplyError::io(&full)(e)),
        }
    }
}

/// Removes the files under `top` whose ctime is older than `keep`, then
/// the directories that are left empty and were not changed within `keep`
/// either. Returns how many files went.
///
/// A young empty directory stays: the engine makes a download's part
/// directories before their files, and removing one in between failed
/// that download ("cannot prepare ...: No such file or directory").
fn expire(top: &Path, keep: Duration, now: SystemTime) -> io::Result<usize> {
    let mut removed = 0;
    if !top.is_dir() {
        return Ok(0);
    }
    let old = |meta: &fs::Metadata| {
        let changed = UNIX_EPOCH
            + Duration::from_secs(std::os::unix::fs::MetadataExt::ctime(meta).max(0) as u64);
        now.duration_since(changed).is_ok_and(|age| age >= keep)
    };
    let mut stack = vec![top.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
                // Judged by its age before this pass removes anything.
                if old(&meta) {
                    dirs.push(entry.path());
                }
                continue;
            }
            if old(&meta) {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    // Deepest first, so emptied parents go too.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(d);
    }
    Ok(removed)
}

/// Gives a file the record's permission bits and modification time.
pub fn set_mode_and_mtime(path: &Path, mode: u32, mtime: Mtime) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode & MODE_MASK))?;
    let t = if mtime.secs >= 0 {
        UNIX_EPOCH + Duration::new(mtime.secs as u64, mtime.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(mtime.secs.unsigned_abs())
            + Duration::from_nanos(mtime.nanos.into())
    };
    File::options().write(true).open(path)?.set_modified(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::index::Content;
    use crate::sync::version::{DeviceId, VersionVector};

    fn file_record(fs_: &FolderFs, path: &str) -> FileRecord {
        let rel = RelPath::new(path).unwrap();
        let meta = fs::symlink_metadata(fs_.path(&rel)).unwrap();
        FileRecord {
            path: rel.clone(),
            kind: Kind::File,
            deleted: false,
            mode: 0o644,
            mtime: scan::mtime(&meta),
            content: Content::from_reader(File::open(fs_.path(&rel)).unwrap(), meta.len()).unwrap(),
            version: VersionVector::new().update(DeviceId(1), 1),
            modified_by: DeviceId(1),
            signature: None,
        }
    }

    fn setup() -> (tempfile::TempDir, FolderFs) {
        let dir = tempfile::tempdir().unwrap();
        let f = FolderFs::new(dir.path());
        f.create_private_dirs().unwrap();
        (dir, f)
    }

    #[test]
    fn commit_replaces_unchanged_file_and_keeps_old_in_trash() {
        let (_d, f) = setup();
        fs::create_dir_all(f.root().join("a")).unwrap();
        fs::write(f.root().join("a/x.txt"), b"old").unwrap();
        let old = file_record(&f, "a/x.txt");
        let src = f.tmp_dir().join("new");
        fs::write(&src, b"new content").unwrap();
        let mut new = old.clone();
        new.mtime = Mtime {
            secs: 1_600_000_000,
            nanos: 0,
        };
        new.mode = 0o600;
        f.commit_file(&src, &new, Some(&old), SystemTime::now())
            .unwrap();
        assert_eq!(fs::read(f.root().join("a/x.txt")).unwrap(), b"new content");
        let meta = fs::metadata(f.root().join("a/x.txt")).unwrap();
        assert_eq!(scan::mtime(&meta), new.mtime);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let trashed: Vec<_> = fs::read_dir(f.trash_dir().join("a")).unwrap().collect();
        assert_eq!(trashed.len(), 1);
        let p = trashed[0].as_ref().unwrap().path();
        assert!(
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("x.txt~"),
            "{p:?}"
        );
        assert_eq!(fs::read(p).unwrap(), b"old");
        assert!(!src.exists());
    }

    /// Where links are refused, the copy arrives whole with the record's
    /// mtime and mode, the source keeps seeding, and tmp/ keeps no copy.
    #[test]
    fn a_copy_in_place_of_a_link_arrives_whole_with_its_mtime() {
        let (_d, f) = setup();
        fs::write(f.root().join("x"), b"old").unwrap();
        let mut record = file_record(&f, "x");
        record.mtime = Mtime {
            secs: 1_600_000_000,
            nanos: 0,
        };
        record.mode = 0o600;
        let src = f.tmp_dir().join("fetched");
        fs::write(&src, b"fetched bytes").unwrap();
        let full = f.path(&record.path);
        f.copy_into_place(&src, &full, &record).unwrap();
        assert_eq!(fs::read(&full).unwrap(), b"fetched bytes");
        let meta = fs::metadata(&full).unwrap();
        assert_eq!(scan::mtime(&meta), record.mtime);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&src).unwrap(), b"fetched bytes");
        let left: Vec<_> = fs::read_dir(f.tmp_dir()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the seeded source: {left:?}");
    }

    #[test]
    fn commit_refuses_a_file_edited_since_the_scan() {
        let (_d, f) = setup();
        fs::write(f.root().join("x"), b"old").unwrap();
        let old = file_record(&f, "x");
        fs::write(f.root().join("x"), b"edited!").unwrap();
        let src = f.tmp_dir().join("new");
        fs::write(&src, b"incoming").unwrap();
        let err = f.commit_file(&src, &old, Some(&old), SystemTime::now());
        assert!(matches!(err, Err(ApplyError::Changed(_))), "{err:?}");
        assert_eq!(fs::read(f.root().join("x")).unwrap(), b"edited!");
        assert!(
            src.exists(),
            "the incoming version is kept for the next try"
        );
        // A file that appeared where the index knew nothing is not clobbered.
        fs::write(f.root().join("new"), b"mine").unwrap();
        let mut rec = old.clone();
        rec.path = RelPath::new("new").unwrap();
        assert!(matches!(
            f.commit_file(&src, &rec, None, SystemTime::now()),
            Err(ApplyError::Changed(_))
        ));
        assert_eq!(fs::read(f.root().join("new")).unwrap(), b"mine");
    }

    #[test]
    fn delete_moves_to_trash_and_trash_expires() {
        let (_d, f) = setup();
        fs::write(f.root().join("gone"), b"bye").unwrap();
        let rec = file_record(&f, "gone");
        let path = rec.path.clone();
        f.delete(&path, Some(&rec), SystemTime::now()).unwrap();
        assert!(!f.root().join("gone").exists());
        assert_eq!(
            f.expire_trash(Duration::from_secs(3600), SystemTime::now())
                .unwrap(),
            0
        );
        let later = SystemTime::now() + Duration::from_secs(7200);
        assert_eq!(f.expire_trash(Duration::from_secs(3600), later).unwrap(), 1);
        assert_eq!(fs::read_dir(f.trash_dir()).unwrap().count(), 0);
        // Left-overs of an interrupted fetch go the same way, after a day.
        fs::create_dir_all(f.tmp_dir().join(".pack.p2pfile-part")).unwrap();
        fs::write(f.tmp_dir().join(".pack.p2pfile-part/x"), b"part").unwrap();
        assert_eq!(f.expire_tmp(Duration::from_secs(86_400), later).unwrap(), 0);
        let next_day = SystemTime::now() + Duration::from_secs(90_000);
        assert_eq!(
            f.expire_tmp(Duration::from_secs(86_400), next_day).unwrap(),
            1
        );
        assert_eq!(fs::read_dir(f.tmp_dir()).unwrap().count(), 0);
        // A part directory made a moment ago, its files not yet created,
        // is a download starting, not a left-over.
        fs::create_dir_all(f.tmp_dir().join(".new.p2pfile-part/sub")).unwrap();
        assert_eq!(
            f.expire_tmp(Duration::from_secs(86_400), SystemTime::now())
                .unwrap(),
            0
        );
        assert!(f.tmp_dir().join(".new.p2pfile-part/sub").is_dir());
    }

    #[test]
    fn a_directory_with_unknown_files_is_never_removed() {
        let (_d, f) = setup();
        fs::create_dir_all(f.root().join("d")).unwrap();
        fs::write(f.root().join("d/keep"), b"x").unwrap();
        let path = RelPath::new("d").unwrap();
        let res = f.to_trash(&path, SystemTime::now());
        assert!(matches!(res, Err(ApplyError::InTheWay(_))), "{res:?}");
        assert!(f.root().join("d/keep").exists());
    }

    #[test]
    fn conflict_rename_needs_a_free_name_and_an_unchanged_file() {
        let (_d, f) = setup();
        fs::write(f.root().join("c.txt"), b"mine").unwrap();
        let rec = file_record(&f, "c.txt");
        let to = RelPath::new("c.sync-conflict-x.txt").unwrap();
        f.rename(&rec.path, &to, &rec).unwrap();
        assert_eq!(fs::read(f.path(&to)).unwrap(), b"mine");
        fs::write(f.root().join("c.txt"), b"again").unwrap();
        let rec2 = file_record(&f, "c.txt");
        assert!(matches!(
            f.rename(&rec2.path, &to, &rec2),
            Err(ApplyError::InTheWay(_))
        ));
    }
}
