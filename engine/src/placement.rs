//! Where a download's files live, before and after completion.
//!
//! A download is written to `DIR/.<name>.p2pfile-part` and moved to
//! `DIR/<name>` only after every piece is verified and flushed, so a script
//! never finds a truncated file under the final name. An interrupted
//! download resumes from the verified pieces of its part. A new version of
//! content that is already at `DIR/<name>` reuses every piece of the old
//! version that still matches at the same path (delta), and any piece the
//! caller knows to lie elsewhere on this machine ([`PieceSource`] hints,
//! checked by hash).
//!
//! Completion commits file by file, never over a local edit: `prepare`
//! records each target file's size, mtime and inode before reading it, and
//! `finalize` replaces a target file only when it is absent both times or
//! still as recorded. A file changed meanwhile (or a directory, or a file
//! where a directory is needed) is left as it is and reported in
//! [`Finalized::kept_local`], with our version kept in the part. Files of an
//! older version that the new torrent does not have are kept too: nothing
//! here knows whether they came from an earlier download or from the user,
//! and a user's file is never deleted silently. BEP 47 pad files are
//! neither created, checked nor committed.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::bitfield::Bitfield;
use crate::metainfo::Info;
use crate::storage::{PieceSource, Storage};

/// The final and temporary paths of one download.
#[derive(Debug)]
pub(crate) struct Placement {
    /// `DIR/<name>`.
    pub target: PathBuf,
    /// `DIR/.<name>.p2pfile-part`.
    pub part: PathBuf,
    /// What `prepare` saw, for `finalize`. Behind a lock because `prepare`
    /// takes `&self` (its caller moves the placement on afterwards); the two
    /// calls run one after the other, so it is never contended. Boxed to
    /// keep the placement small in the coordinator's messages.
    plan: Mutex<Option<Box<Plan>>>,
}

/// Storage ready for downloading (or seeding, when already complete).
pub(crate) struct Prepared {
    pub storage: Storage,
    pub have: Bitfield,
    /// The target already held exactly this content.
    pub already_complete: bool,
}

/// What [`Placement::finalize`] left alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Finalized {
    /// Paths under the target left untouched: a file changed since
    /// `prepare` looked at it (a local edit made while downloading), or a
    /// directory or file in the way. Our version stays in the part.
    pub kept_local: Vec<PathBuf>,
}

/// The files to commit and what their targets looked like at `prepare`.
#[derive(Debug)]
struct Plan {
    files: Vec<FilePlan>,
    empty_dirs: Vec<PathBuf>,
}

#[derive(Debug)]
struct FilePlan {
    part: PathBuf,
    target: PathBuf,
    seen: Option<Stamp>,
}

/// Enough of a file's metadata to tell that it changed: an edit changes
/// the mtime (and usually the size), an editor's save-by-rename the inode.
/// Like rsync and Syncthing we trust it: an edit that keeps the size within
/// one tick of the file system's clock goes unseen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    ino: u64,
    dir: bool,
}

/// The stamp of whatever is at `path` (not following a symlink), or `None`
/// when nothing is, or it cannot be looked at.
fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::symlink_metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        mtime: m.modified().ok(),
        ino: m.ino(),
        dir: m.is_dir(),
    })
}

impl Placement {
    pub(crate) fn new(dir: &Path, info: &Info) -> Self {
        Self {
            target: dir.join(&info.name),
            part: dir.join(format!(".{}.p2pfile-part", info.name)),
            plan: Mutex::new(None),
        }
    }

    /// Checks what is already on disk and opens the part for writing.
    ///
    /// Pieces come, in this order, from the part (resume), from the same
    /// piece of the target (an older version), and from `hints` (bytes
    /// the caller believes are the piece, used when they hash right).
    pub(crate) fn prepare(&self, info: &Info, hints: &[PieceSource]) -> io::Result<Prepared> {
        // Stamp before reading anything, so an edit made while we read is
        // seen as a change at finalize.
        self.record_plan(info);
        let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
        let mut target_have = None;
        if exists(&self.target) && info.piece_count() > 0 {
            let target = Storage::new(info, &self.target, false);
            let have = target.verify(&info.pieces);
            if have.is_full() && layout_matches(info, &self.target) {
                return Ok(Prepared {
                    storage: target,
                    have,
                    already_complete: true,
                });
            }
            target_have = Some((target, have));
        }
        // A part of the other shape (file vs directory) is from other content.
        if let Ok(meta) = fs::symlink_metadata(&self.part)
            && meta.is_dir() == info.single_file
        {
            remove_any(&self.part)?;
        }
        let storage = Storage::new(info, &self.part, true);
        let mut have = if exists(&self.part) {
            storage.verify(&info.pieces)
        } else {
            Bitfield::new(info.piece_count())
        };
        // Before the first write: a download that cannot fit fails now,
        // not with a full disk halfway through.
        let need = to_write(&storage, &have);
        let dir = self.part.parent().unwrap_or(Path::new("."));
        if let Some(free) = crate::storage::free_space(dir)
            && need > free
        {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                NotEnoughSpace { need, free },
            ));
        }
        storage.prepare()?;
        if let Some((target, target_have)) = target_have {
            let mut buf = Vec::new();
            for i in target_have.iter_ones() {
                if have.get(i) {
                    continue;
                }
                let index = i as u32;
                buf.resize(storage.piece_size(index), 0);
                target.read_at(target.piece_offset(index), &mut buf)?;
                storage.write_at(storage.piece_offset(index), &buf)?;
                have.set(i);
            }
        }
        storage.copy_from_hints(hints, &info.pieces, &mut have)?;
        Ok(Prepared {
            storage,
            have,
            already_complete: false,
        })
    }

    fn record_plan(&self, info: &Info) {
        let files = info
            .files
            .iter()
            .filter(|f| !f.is_pad())
            .map(|f| {
                let (mut part, mut target) = (self.part.clone(), self.target.clone());
                part.extend(&f.path);
                target.extend(&f.path);
                let seen = stamp(&target);
                FilePlan { part, target, seen }
            })
            .collect();
        let empty_dirs = info
            .empty_dirs
            .iter()
            .map(|d| {
                let mut p = self.target.clone();
                p.extend(d);
                p
            })
            .collect();
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Box::new(Plan { files, empty_dirs }));
    }

    /// Flushes the part and moves each of its files over its target,
    /// unless the target changed since [`Placement::prepare`] (see the
    /// module doc). The part is removed when nothing was kept back.
    pub(crate) fn finalize(&self, storage: &Storage) -> io::Result<Finalized> {
        storage.sync_all()?;
        let plan = self
            .plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("bug: finalize before prepare"))?;
        let mut kept = Vec::new();
        let mut touched = BTreeSet::new();
        for f in &plan.files {
            let now = stamp(&f.target);
            let blocker = if now != f.seen || now.is_some_and(|s| s.dir) {
                Some(f.target.clone())
            } else {
                f.target.parent().and_then(|p| self.blocker(p))
            };
            if let Some(b) = blocker {
                if !kept.contains(&b) {
                    kept.push(b);
                }
                continue;
            }
            let parent = f.target.parent().expect("target has a parent");
            fs::create_dir_all(parent)?;
            fs::rename(&f.part, &f.target)?;
            touched.insert(parent.to_path_buf());
        }
        for d in &plan.empty_dirs {
            if let Some(b) = self.blocker(d) {
                if !kept.contains(&b) {
                    kept.push(b);
                }
                continue;
            }
            fs::create_dir_all(d)?;
            touched.extend(d.parent().map(Path::to_path_buf));
        }
        if kept.is_empty() {
            // Only empty directories, or leftovers of other content that
            // was once downloaded here, remain in the part.
            remove_any(&self.part)?;
        } else {
            remove_empty_dirs(&self.part)?;
            for k in &kept {
                tracing::debug!(
                    "{} changed while downloading: kept it; the new version is in {}",
                    k.display(),
                    self.part.display()
                );
            }
        }
        self.sync_dirs(&touched);
        Ok(Finalized { kept_local: kept })
    }

    /// The path at or above `dir`, within the target, that is not a
    /// directory and so keeps us from creating `dir`.
    fn blocker(&self, dir: &Path) -> Option<PathBuf> {
        for a in dir.ancestors().take_while(|a| a.starts_with(&self.target)) {
            match fs::metadata(a) {
                Ok(m) if m.is_dir() => return None,
                Ok(_) => return Some(a.to_path_buf()),
                Err(_) => continue,
            }
        }
        None
    }

    /// Makes renames and new directories durable: each directory that got
    /// an entry, and its ancestors up to `DIR`, is synced once, however
    /// many files went into it.
    fn sync_dirs(&self, touched: &BTreeSet<PathBuf>) {
        let Some(top) = self.target.parent() else {
            return;
        };
        let mut dirs = BTreeSet::new();
        for t in touched {
            for a in t.ancestors().take_while(|a| a.starts_with(top)) {
                if !dirs.insert(a.to_path_buf()) {
                    break;
                }
            }
        }
        for d in dirs {
            if let Ok(f) = fs::File::open(&d) {
                let _ = f.sync_all();
            }
        }
    }
}

/// Why [`Placement::prepare`] refused to start: the bytes still to be
/// written exceed the space free. Carried inside the `io::Error` it returns.
#[derive(Debug)]
pub(crate) struct NotEnoughSpace {
    pub need: u64,
    pub free: u64,
}

impl std::fmt::Display for NotEnoughSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "needs {} bytes, {} free", self.need, self.free)
    }
}

impl std::error::Error for NotEnoughSpace {}

/// Bytes of the pieces not in `have`, padding left out: what a part
/// still needs on disk.
fn to_write(storage: &Storage, have: &Bitfield) -> u64 {
    (0..storage.piece_count())
        .filter(|&i| !have.get(i))
        .map(|i| storage.data_size(i as u32) as u64)
        .sum()
}

/// What a download of `info` into `dir` finds at `DIR/<name>`, read
/// without writing anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetCheck {
    /// Pieces of the torrent.
    pub pieces: usize,
    /// Pieces whose bytes at the target match their hash (0 when the
    /// files' sizes already show the target is not this content).
    pub valid_pieces: usize,
    /// The target holds exactly this content: every piece, right layout.
    pub complete: bool,
}

/// Checks `DIR/<name>` against `info`, hashing only when every file is
/// there with its size (otherwise it cannot be complete, and the download
/// that follows checks the pieces anyway).
pub fn verify_target(dir: &Path, info: &Info) -> TargetCheck {
    let target = dir.join(&info.name);
    let pieces = info.piece_count();
    if !layout_matches(info, &target) {
        return TargetCheck {
            pieces,
            valid_pieces: 0,
            complete: false,
        };
    }
    let have = Storage::new(info, &target, false).verify(&info.pieces);
    TargetCheck {
        pieces,
        valid_pieces: have.count(),
        complete: have.is_full(),
    }
}

/// Bytes a download of `info` into `dir` still has to write: the content
/// less the pieces already verified in its part (a resumed download).
pub fn bytes_to_write(dir: &Path, info: &Info) -> u64 {
    let part = Placement::new(dir, info).part;
    let storage = Storage::new(info, &part, false);
    let have = if fs::symlink_metadata(&part).is_ok() {
        storage.verify(&info.pieces)
    } else {
        Bitfield::new(info.piece_count())
    };
    to_write(&storage, &have)
}

/// True when a complete target holds exactly the torrent's files (no
/// stray extra bytes at the end of a file, right shape). Pad files are
/// not on disk.
fn layout_matches(info: &Info, target: &Path) -> bool {
    info.files.iter().filter(|f| !f.is_pad()).all(|f| {
        let mut p = target.to_path_buf();
        p.extend(&f.path);
        fs::metadata(&p).is_ok_and(|m| m.is_file() && m.len() == f.length)
    })
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes `dir` and the directories below it that hold no file.
fn remove_empty_dirs(dir: &Path) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_empty_dirs(&e.path())?;
        }
    }
    if fs::read_dir(dir)?.next().is_none() {
        fs::remove_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sha1::{Digest, Sha1};

    use super::*;
    use crate::builder::build;
    use crate::metainfo::{FileEntry, pad_to_pieces};

    fn seed(dir: &Path, content: &[u8]) -> Info {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("f.bin"), content).unwrap();
        build(&dir.join("f.bin")).unwrap().info
    }

    #[test]
    fn fresh_download_writes_part_then_renames() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let info = seed(src.path(), &vec![5u8; 100_000]);
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        assert_eq!(prep.have.count(), 0);
        assert!(pl.part.exists() && !pl.target.exists());
        prep.storage.write_at(0, &vec![5u8; 100_000]).unwrap();
        assert_eq!(pl.finalize(&prep.storage).unwrap(), Finalized::default());
        assert!(!pl.part.exists());
        assert_eq!(fs::read(&pl.target).unwrap(), vec![5u8; 100_000]);
        let again = pl.prepare(&info, &[]).unwrap();
        assert!(again.already_complete);
    }

    #[test]
    fn delta_reuses_matching_pieces_of_old_version() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut data = vec![1u8; 200_000];
        fs::write(dst.path().join("f.bin"), &data).unwrap();
        data[150_000] = 2;
        let info = seed(src.path(), &data);
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        assert!(!prep.already_complete);
        assert_eq!(prep.have.count(), info.piece_count() - 1);
    }

    #[test]
    fn offline_checks_count_what_is_on_disk_and_write_nothing() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let info = seed(src.path(), &data);
        let pieces = info.piece_count();
        let nothing = verify_target(dst.path(), &info);
        assert_eq!((nothing.valid_pieces, nothing.complete), (0, false));
        assert_eq!(bytes_to_write(dst.path(), &info), 200_000);
        // A part holding every piece but the last.
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        let last = info.piece_count() as u32 - 1;
        let upto = prep.storage.piece_offset(last) as usize;
        prep.storage.write_at(0, &data[..upto]).unwrap();
        assert_eq!(
            bytes_to_write(dst.path(), &info),
            info.piece_size(last) as u64
        );
        // The target: complete, then one byte off.
        fs::write(dst.path().join("f.bin"), &data).unwrap();
        let full = verify_target(dst.path(), &info);
        assert_eq!((full.valid_pieces, full.complete), (pieces, true));
        let mut bad = data.clone();
        bad[10] ^= 1;
        fs::write(dst.path().join("f.bin"), &bad).unwrap();
        let off = verify_target(dst.path(), &info);
        assert_eq!((off.valid_pieces, off.complete), (pieces - 1, false));
        // A longer file cannot be the content: not even hashed.
        bad.push(0);
        fs::write(dst.path().join("f.bin"), &bad).unwrap();
        assert_eq!(verify_target(dst.path(), &info).valid_pieces, 0);
        assert_eq!(fs::read(dst.path().join("f.bin")).unwrap(), bad);
    }

    /// A torrent of `files` with each file piece-aligned by pad files, as
    /// sync builds them, and its content stream.
    fn aligned(name: &str, files: &[(&str, &[u8])]) -> (Info, Vec<u8>) {
        let entries = files
            .iter()
            .map(|(p, c)| FileEntry::new(vec![p.to_string()], c.len() as u64));
        let entries = pad_to_pieces(entries, 16384);
        let mut stream = Vec::new();
        for (_, c) in files {
            stream.extend_from_slice(c);
            stream.resize(stream.len().next_multiple_of(16384), 0);
        }
        let pieces = stream
            .chunks(16384)
            .map(|c| Sha1::digest(c).into())
            .collect();
        let info = Info::new(name, 16384, pieces, entries, vec![]).unwrap();
        (info, stream)
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 253) as u8 ^ seed).collect()
    }

    #[test]
    fn padded_torrent_commits_real_files_only() {
        let dst = tempfile::tempdir().unwrap();
        let (a, b) = (bytes(10 * 1024, 1), bytes(5 * 1024, 2));
        let (info, stream) = aligned("t", &[("a", &a), ("b", &b)]);
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        prep.storage.write_at(0, &stream).unwrap();
        assert!(prep.storage.verify(&info.pieces).is_full());
        assert_eq!(pl.finalize(&prep.storage).unwrap(), Finalized::default());
        let mut names: Vec<_> = fs::read_dir(&pl.target)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(fs::read(pl.target.join("b")).unwrap(), b);
        assert!(!pl.part.exists());
        assert!(pl.prepare(&info, &[]).unwrap().already_complete);
    }

    #[test]
    fn hints_reuse_content_moved_to_another_name() {
        let dst = tempfile::tempdir().unwrap();
        let (c, d) = (bytes(40_000, 3), bytes(20_000, 4));
        let (info, _) = aligned("tree", &[("renamed.bin", &c), ("other.bin", &d)]);
        let old = dst.path().join("old");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join("was-c.bin"), &c).unwrap();
        fs::write(old.join("was-d.bin"), &d).unwrap();
        let hint = |piece, file: &str, offset| PieceSource {
            piece,
            path: old.join(file),
            offset,
        };
        // renamed.bin is pieces 0..3, other.bin pieces 3..5. Wrong and
        // past-the-end hints come first and are skipped.
        let mut hints = vec![
            hint(0, "was-d.bin", 0),
            hint(3, "was-d.bin", 1 << 20),
            hint(4, "nowhere", 0),
        ];
        for i in 0..3 {
            hints.push(hint(i, "was-c.bin", i as u64 * 16384));
        }
        for i in 0..2 {
            hints.push(hint(3 + i, "was-d.bin", i as u64 * 16384));
        }
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &hints).unwrap();
        assert!(prep.have.is_full(), "nothing left to fetch");
        assert!(!prep.already_complete);
        assert_eq!(pl.finalize(&prep.storage).unwrap(), Finalized::default());
        assert_eq!(fs::read(pl.target.join("renamed.bin")).unwrap(), c);
        assert_eq!(fs::read(pl.target.join("other.bin")).unwrap(), d);

        // Only bad hints: nothing is reused, nothing fails.
        let other = tempfile::tempdir().unwrap();
        let pl = Placement::new(other.path(), &info);
        let prep = pl.prepare(&info, &hints[..3]).unwrap();
        assert_eq!(prep.have.count(), 0);
    }

    /// Old version in the target: `keep` unchanged, `edit` edited while the
    /// download runs, `extra` not in the new version. New version: `keep`
    /// and `edit` changed, `new` added, and an empty directory.
    #[test]
    fn finalize_commits_per_file_and_keeps_local_edits() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(tree.join("sub/empty")).unwrap();
        fs::write(tree.join("keep"), bytes(30_000, 5)).unwrap();
        fs::write(tree.join("sub/edit"), bytes(20_000, 6)).unwrap();
        fs::write(tree.join("sub/new"), bytes(1_000, 7)).unwrap();
        let built = build(&tree).unwrap();
        let info = built.info;
        let mut stream = Vec::new();
        for f in &built.scan.files {
            stream.extend(fs::read(&f.disk_path).unwrap());
        }
        let target = dst.path().join("tree");
        fs::create_dir_all(target.join("sub")).unwrap();
        fs::write(target.join("keep"), b"old keep").unwrap();
        fs::write(target.join("sub/edit"), b"old edit").unwrap();
        fs::write(target.join("extra"), b"mine").unwrap();

        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        fs::write(target.join("sub/edit"), b"edited while downloading").unwrap();
        prep.storage.write_at(0, &stream).unwrap();
        let done = pl.finalize(&prep.storage).unwrap();

        assert_eq!(done.kept_local, vec![target.join("sub/edit")]);
        assert_eq!(
            fs::read(target.join("sub/edit")).unwrap(),
            b"edited while downloading"
        );
        assert_eq!(fs::read(target.join("keep")).unwrap(), bytes(30_000, 5));
        assert_eq!(fs::read(target.join("sub/new")).unwrap(), bytes(1_000, 7));
        assert_eq!(fs::read(target.join("extra")).unwrap(), b"mine");
        assert!(target.join("sub/empty").is_dir());
        // Only the kept-back file is left in the part.
        assert_eq!(
            fs::read(pl.part.join("sub/edit")).unwrap(),
            bytes(20_000, 6)
        );
        assert!(!pl.part.join("keep").exists() && !pl.part.join("sub/new").exists());
        assert!(!pl.part.join("sub/empty").exists());
    }

    #[test]
    fn single_file_edited_meanwhile_is_kept() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let info = seed(src.path(), &bytes(50_000, 8));
        fs::write(dst.path().join("f.bin"), b"old").unwrap();
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        prep.storage.write_at(0, &bytes(50_000, 8)).unwrap();
        fs::write(&pl.target, b"older, but edited").unwrap();
        let done = pl.finalize(&prep.storage).unwrap();
        assert_eq!(done.kept_local, vec![pl.target.clone()]);
        assert_eq!(fs::read(&pl.target).unwrap(), b"older, but edited");
        assert_eq!(fs::read(&pl.part).unwrap(), bytes(50_000, 8));

        // A file that appeared under the name meanwhile is kept too.
        let dst = tempfile::tempdir().unwrap();
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        prep.storage.write_at(0, &bytes(50_000, 8)).unwrap();
        fs::write(&pl.target, b"new local file").unwrap();
        let done = pl.finalize(&prep.storage).unwrap();
        assert_eq!(done.kept_local, vec![pl.target.clone()]);
    }

    #[test]
    fn a_file_where_the_tree_goes_is_kept() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("a"), b"a").unwrap();
        fs::write(tree.join("b"), b"b").unwrap();
        let info = build(&tree).unwrap().info;
        fs::write(dst.path().join("tree"), b"a file, not a tree").unwrap();
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        prep.storage.write_at(0, b"ab").unwrap();
        let done = pl.finalize(&prep.storage).unwrap();
        assert_eq!(done.kept_local, vec![pl.target.clone()]);
        assert_eq!(fs::read(&pl.target).unwrap(), b"a file, not a tree");
        assert_eq!(fs::read(pl.part.join("b")).unwrap(), b"b");
    }
}
