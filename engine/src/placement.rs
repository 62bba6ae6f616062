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
//! Completion commits file by file and deletes nothing of the user's:
//! - `prepare` records each target file's size, mtime and inode before
//!   reading it, and `finalize` replaces a target file only when it is
//!   absent both times or still as recorded. A file changed meanwhile is
//!   left as it is and reported in [`Finalized::kept_local`], with our
//!   version kept in the part.
//! - An entry in the way, recorded by `prepare` and unchanged since (a file
//!   or a dangling symlink where the torrent has a directory, a directory,
//!   symlink or special file where it has a file), is moved, not deleted,
//!   to `DIR/.p2pfile-replaced/<YYYYMMDD-HHMMSS>/<its path below DIR>` and
//!   reported in [`Finalized::replaced`]. One that appeared meanwhile is
//!   kept like a local edit. A regular file where the torrent has a file
//!   is the older version of that file and is replaced, as any update does.
//! - Files under the target that the torrent does not have stay where
//!   they are: nothing here knows whether they came from an earlier
//!   download or from the user.
//!
//! - A fresh download of a tree to a target that is still absent (the
//!   common case: nothing was there, and the part was made by this run, so
//!   it holds only this torrent's entries) commits in one rename of the
//!   part's directory, which cannot land over anything (`RENAME_NOREPLACE`);
//!   if the target appeared meanwhile, it commits file by file as above.
//!
//! A file the torrent marks executable (BEP 47 `x`) gets execute
//! permission wherever it may be read, as `chmod +x` gives under the
//! umask. BEP 47 pad files are neither created, checked nor committed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::bitfield::Bitfield;
use crate::metainfo::Info;
use crate::storage::{PieceSource, Storage};
use crate::utc::utc_stamp;

/// The directory under `DIR` that entries in a download's way are moved to.
const REPLACED_DIR: &str = ".p2pfile-replaced";

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

/// What [`Placement::finalize`] did besides moving files into place.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Finalized {
    /// Paths under the target left untouched: a file changed since
    /// `prepare` looked at it (a local edit made while downloading), or an
    /// entry in the way that appeared meanwhile. Our version stays in the
    /// part.
    pub kept_local: Vec<PathBuf>,
    /// Entries that were in the way, moved from the first path to the
    /// second (under `DIR/.p2pfile-replaced/`).
    pub replaced: Vec<(PathBuf, PathBuf)>,
}

/// [`Placement::finalize`] failed; `done` holds what it had done by then,
/// so the entries it moved can still be reported.
#[derive(Debug)]
pub(crate) struct FinalizeError {
    pub source: io::Error,
    pub done: Finalized,
}

/// The files to commit and what their targets looked like at `prepare`.
#[derive(Debug)]
struct Plan {
    files: Vec<FilePlan>,
    empty_dirs: Vec<PathBuf>,
    /// Entries in the way at `prepare`, as they were then: `finalize`
    /// moves one aside only when it is still the same.
    in_the_way: BTreeMap<PathBuf, Stamp>,
    /// Nothing was at the target and the part was made by this `prepare`:
    /// the part holds exactly this torrent's entries, so `finalize` may
    /// move it over the target in one rename (see [`Placement::commit`]).
    whole: bool,
}

#[derive(Debug)]
struct FilePlan {
    part: PathBuf,
    target: PathBuf,
    seen: Option<Stamp>,
    executable: bool,
}

/// Enough of an entry's metadata to tell that it changed: an edit changes
/// the mtime (and usually the size), an editor's save-by-rename the inode.
/// Like rsync and Syncthing we trust it: an edit that keeps the size within
/// one tick of the file system's clock goes unseen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    ino: u64,
    kind: Kind,
}

/// What an entry is, not following a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// A symlink, fifo, socket or device.
    Other,
}

/// The stamp of whatever is at `path` (not following a symlink), or `None`
/// when nothing is, or it cannot be looked at.
fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::symlink_metadata(path).ok()?;
    let kind = if m.is_file() {
        Kind::File
    } else if m.is_dir() {
        Kind::Dir
    } else {
        Kind::Other
    };
    Some(Stamp {
        len: m.len(),
        mtime: m.modified().ok(),
        ino: m.ino(),
        kind,
    })
}

/// Whether `path` is a directory or a symlink to one (files are written
/// through such a link, as before).
fn is_dir(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_dir())
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
        // DIR/.p2pfile-replaced holds what earlier downloads moved aside,
        // and `.<name>.p2pfile-part` is a part: content by those names
        // would overwrite or commit over them.
        if info.name == REPLACED_DIR || info.name.ends_with(".p2pfile-part") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the torrent's name {:?} is reserved by p2pfile", info.name),
            ));
        }
        // Stamp before reading anything, so an edit made while we read is
        // seen as a change at finalize.
        let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
        let target_absent = !exists(&self.target);
        self.record_plan(info, target_absent);
        let mut target_have = None;
        if exists(&self.target) && info.piece_count() > 0 {
            let target = Storage::new(info, &self.target, false);
            let have = target.verify(&info.pieces);
            if have.is_full() && layout_matches(info, &self.target) {
                self.mark_executables(info);
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
        let part_exists = exists(&self.part);
        let mut have = if part_exists {
            storage.verify(&info.pieces)
        } else {
            Bitfield::new(info.piece_count())
        };
        if let Some(plan) = self.plan.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            plan.whole = target_absent && !part_exists && !info.single_file;
        }
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

    /// Complete content that came before p2pfile carried the execute bit
    /// gets it now. Not being allowed to is worth a word, not a failure:
    /// the bytes are all there.
    fn mark_executables(&self, info: &Info) {
        for f in info.files.iter().filter(|f| f.executable() && !f.is_pad()) {
            let mut p = self.target.clone();
            p.extend(&f.path);
            // Only a regular file of ours: a symlink's chmod would change
            // whatever it points at, maybe outside DIR.
            if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                continue;
            }
            if let Err(e) = add_execute(&p) {
                tracing::warn!("cannot make {} executable: {e}", p.display());
            }
        }
    }

    /// Stamps every target entry, or none when `target_absent` (nothing
    /// can be below a target that is not there: 10,000 `lstat`s saved).
    fn record_plan(&self, info: &Info, target_absent: bool) {
        let mut in_the_way = BTreeMap::new();
        let mut dirs_seen = BTreeSet::new();
        let mut files = Vec::new();
        for f in info.files.iter().filter(|f| !f.is_pad()) {
            let (mut part, mut target) = (self.part.clone(), self.target.clone());
            part.extend(&f.path);
            target.extend(&f.path);
            if target_absent {
                files.push(FilePlan {
                    part,
                    target,
                    seen: None,
                    executable: f.executable(),
                });
                continue;
            }
            let seen = stamp(&target);
            if let Some(s) = seen.filter(|s| s.kind != Kind::File) {
                in_the_way.insert(target.clone(), s);
            }
            let parent = target.parent().expect("target has a parent");
            self.note_dirs_in_the_way(parent, &mut dirs_seen, &mut in_the_way);
            files.push(FilePlan {
                part,
                target,
                seen,
                executable: f.executable(),
            });
        }
        let mut empty_dirs = Vec::new();
        for d in &info.empty_dirs {
            let mut p = self.target.clone();
            p.extend(d);
            self.note_dirs_in_the_way(&p, &mut dirs_seen, &mut in_the_way);
            empty_dirs.push(p);
        }
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(Plan {
            files,
            empty_dirs,
            in_the_way,
            whole: false,
        }));
    }

    /// Records each entry at or above `dir`, within the target, that is
    /// there but not a directory, so `finalize` can move it aside.
    fn note_dirs_in_the_way(
        &self,
        dir: &Path,
        seen: &mut BTreeSet<PathBuf>,
        in_the_way: &mut BTreeMap<PathBuf, Stamp>,
    ) {
        for a in dir.ancestors().take_while(|a| a.starts_with(&self.target)) {
            if !seen.insert(a.to_path_buf()) {
                // Checked already, and so was everything above it.
                return;
            }
            if let Some(s) = stamp(a)
                && !is_dir(a)
            {
                in_the_way.insert(a.to_path_buf(), s);
            }
        }
    }

    /// Flushes the part and moves each of its files over its target,
    /// moving aside what is in the way, unless something changed since
    /// [`Placement::prepare`] (see the module doc). The part is removed
    /// when nothing was kept back.
    pub(crate) fn finalize(&self, storage: &Storage) -> Result<Finalized, FinalizeError> {
        let mut done = Finalized::default();
        match self.commit(storage, &mut done) {
            Ok(()) => Ok(done),
            Err(source) => Err(FinalizeError { source, done }),
        }
    }

    /// Moves the part's files into place: the whole part in one rename
    /// when the plan allows it and the target is still absent (10,000 small
    /// files: one `renameat2` instead of 10,000 renames, each after `lstat`s
    /// of the file and its directories), else file by file.
    fn commit(&self, storage: &Storage, done: &mut Finalized) -> io::Result<()> {
        storage.sync_all()?;
        let plan = self
            .plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("bug: finalize before prepare"))?;
        let mut touched = BTreeSet::new();
        if plan.whole {
            for f in plan.files.iter().filter(|f| f.executable) {
                add_execute(&f.part)?;
            }
            // Never over anything: a target that appeared since `prepare`
            // (even an empty directory) sends us file by file, where each
            // entry is judged as a local edit or an entry in the way.
            match rename_noreplace(&self.part, &self.target) {
                Ok(()) => {
                    // A directory's files are neighbours in torrent order:
                    // one set insert (a path copy and compares) per run of
                    // them, not per file.
                    let files = plan.files.iter().map(|f| f.target.as_path());
                    let mut last = None;
                    for parent in files
                        .chain(plan.empty_dirs.iter().map(PathBuf::as_path))
                        .filter_map(Path::parent)
                    {
                        if last != Some(parent) {
                            touched.insert(parent.to_path_buf());
                            last = Some(parent);
                        }
                    }
                    self.sync_dirs(&touched);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let mut aside = Aside::default();
        // Directories made ready (cleared and created) by an earlier file:
        // the next file in the same directory skips the `lstat`s up the
        // chain and the `mkdir`.
        let mut ready: HashSet<PathBuf> = HashSet::new();
        let keep = |done: &mut Finalized, p: PathBuf| {
            if !done.kept_local.contains(&p) {
                done.kept_local.push(p);
            }
        };
        for f in &plan.files {
            let now = stamp(&f.target);
            if now != f.seen {
                keep(done, f.target.clone());
                continue;
            }
            let parent = f.target.parent().expect("target has a parent");
            if !ready.contains(parent) {
                if let Some(b) = self.clear_dirs(parent, &plan, &mut aside, done)? {
                    keep(done, b);
                    continue;
                }
                fs::create_dir_all(parent)?;
                ready.insert(parent.to_path_buf());
            }
            if now.is_some_and(|s| s.kind != Kind::File) {
                // Unchanged since `prepare`, so recorded as in the way.
                self.move_aside(&f.target, &mut aside, done)?;
            }
            if f.executable {
                add_execute(&f.part)?;
            }
            fs::rename(&f.part, &f.target)?;
            touched.insert(parent.to_path_buf());
        }
        for d in &plan.empty_dirs {
            if let Some(b) = self.clear_dirs(d, &plan, &mut aside, done)? {
                keep(done, b);
                continue;
            }
            fs::create_dir_all(d)?;
            touched.extend(d.parent().map(Path::to_path_buf));
        }
        for (_, to) in &done.replaced {
            touched.extend(to.parent().map(Path::to_path_buf));
        }
        if done.kept_local.is_empty() {
            // Only empty directories, or leftovers of other content that
            // was once downloaded here, remain in the part.
            remove_any(&self.part)?;
        } else {
            remove_empty_dirs(&self.part)?;
            for k in &done.kept_local {
                tracing::debug!(
                    "{} changed while downloading: kept it; the new version is in {}",
                    k.display(),
                    self.part.display()
                );
            }
        }
        self.sync_dirs(&touched);
        Ok(())
    }

    /// Makes room for the directory `dir`: from the target down, an entry
    /// that is not a directory is moved aside when `prepare` recorded it as
    /// it is now. Returns the first one that appeared or changed since,
    /// which keeps `dir` from being made.
    fn clear_dirs(
        &self,
        dir: &Path,
        plan: &Plan,
        aside: &mut Aside,
        done: &mut Finalized,
    ) -> io::Result<Option<PathBuf>> {
        let chain: Vec<&Path> = dir
            .ancestors()
            .take_while(|a| a.starts_with(&self.target))
            .collect();
        for a in chain.into_iter().rev() {
            let Some(now) = stamp(a) else {
                // Nothing here, so nothing below: `create_dir_all` makes it.
                return Ok(None);
            };
            if is_dir(a) {
                continue;
            }
            if plan.in_the_way.get(a) != Some(&now) {
                return Ok(Some(a.to_path_buf()));
            }
            self.move_aside(a, aside, done)?;
            return Ok(None);
        }
        Ok(None)
    }

    /// Moves `from` to `DIR/.p2pfile-replaced/<stamp>/<its path below
    /// DIR>`, never over anything already there (a run in the same second
    /// takes `<stamp>-2`, and so on).
    fn move_aside(&self, from: &Path, aside: &mut Aside, done: &mut Finalized) -> io::Result<()> {
        let top = self.target.parent().expect("target has a parent");
        let rel = from
            .strip_prefix(top)
            .expect("bug: moving aside outside DIR");
        let stamp = aside.stamp.get_or_insert_with(|| {
            let secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            utc_stamp(secs)
        });
        for n in 1..=MAX_ASIDE_TRIES {
            let run = if n == 1 {
                stamp.clone()
            } else {
                format!("{stamp}-{n}")
            };
            let to = top.join(REPLACED_DIR).join(run).join(rel);
            fs::create_dir_all(to.parent().expect("a path below DIR"))?;
            match rename_noreplace(from, &to) {
                Ok(()) => {
                    tracing::debug!("moved {} aside to {}", from.display(), to.display());
                    done.replaced.push((from.to_path_buf(), to));
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "cannot move {} aside: {MAX_ASIDE_TRIES} runs this second already did",
                from.display()
            ),
        ))
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

/// How many `<stamp>-N` directories [`Placement::move_aside`] tries.
const MAX_ASIDE_TRIES: u32 = 100;

/// One finalize's moves share one timestamp, taken at the first move.
#[derive(Default)]
struct Aside {
    stamp: Option<String>,
}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`
/// (Linux `renameat2(RENAME_NOREPLACE)`), so moving an entry aside can
/// never overwrite one moved there before.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    // A file system without RENAME_NOREPLACE: check, then rename (a race
    // with another process moving the same path in the same second is
    // left open there).
    if fs::symlink_metadata(to).is_ok() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    fs::rename(from, to)
}

/// Adds execute permission wherever read is allowed. The part was created
/// with 0o666 less the umask, so this gives what `chmod +x` gives under the
/// same umask: 0644 becomes 0755, 0600 becomes 0700.
fn add_execute(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
    let want = mode | (mode & 0o444) >> 2;
    if want != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(want))?;
    }
    Ok(())
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

    /// A tree of `n` small files in nested directories, and an empty one.
    fn many_files(root: &Path, n: usize) {
        fs::create_dir_all(root.join("empty")).unwrap();
        for i in 0..n {
            let dir = root.join(format!("d{}", i % 7)).join(format!("s{}", i % 3));
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join(format!("f{i}")),
                bytes(100 + i * 13 % 900, i as u8),
            )
            .unwrap();
        }
    }

    fn assert_same_tree(a: &Path, b: &Path) {
        let files = |root: &Path| {
            let built = build(root).unwrap();
            let mut v: Vec<(Vec<String>, Vec<u8>)> = built
                .scan
                .files
                .iter()
                .map(|f| (f.path.clone(), fs::read(&f.disk_path).unwrap()))
                .collect();
            v.sort();
            (v, built.scan.empty_dirs)
        };
        assert!(
            files(a) == files(b),
            "{} differs from {}",
            b.display(),
            a.display()
        );
    }

    #[test]
    fn a_fresh_tree_moves_in_whole() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        many_files(&tree, 300);
        let (info, stream) = built(&tree);
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        let part_inode = fs::metadata(&pl.part).unwrap().ino();
        prep.storage.write_at(0, &stream).unwrap();
        assert_eq!(pl.finalize(&prep.storage).unwrap(), Finalized::default());
        assert_same_tree(&tree, &pl.target);
        assert!(!pl.part.exists());
        // One rename of the part's directory, not one per file.
        assert_eq!(fs::metadata(&pl.target).unwrap().ino(), part_inode);
    }

    #[test]
    fn a_tree_that_appears_meanwhile_is_committed_file_by_file() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        many_files(&tree, 50);
        let (info, stream) = built(&tree);
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        prep.storage.write_at(0, &stream).unwrap();
        // Made by someone else while we downloaded: one of our files, and
        // one of theirs.
        let local = pl.target.join("d1/s1/f1");
        fs::create_dir_all(local.parent().unwrap()).unwrap();
        fs::write(&local, b"local").unwrap();
        fs::write(pl.target.join("theirs"), b"theirs").unwrap();
        let done = pl.finalize(&prep.storage).unwrap();
        assert_eq!(done.kept_local, vec![local.clone()]);
        assert_eq!(fs::read(&local).unwrap(), b"local");
        assert_eq!(fs::read(pl.target.join("theirs")).unwrap(), b"theirs");
        assert_eq!(
            fs::read(pl.part.join("d1/s1/f1")).unwrap(),
            fs::read(tree.join("d1/s1/f1")).unwrap()
        );
        assert_eq!(
            fs::read(pl.target.join("d2/s2/f2")).unwrap(),
            fs::read(tree.join("d2/s2/f2")).unwrap()
        );
        assert!(pl.target.join("empty").is_dir());
    }

    /// A resumed part may hold files of other content that had the same
    /// name: they never reach the target.
    #[test]
    fn a_resumed_tree_commits_only_its_files() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        many_files(&tree, 200);
        let (info, stream) = built(&tree);
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        let half = info.piece_length as usize * (info.piece_count() / 2);
        prep.storage.write_at(0, &stream[..half]).unwrap();
        drop(prep);
        fs::write(pl.part.join("stray"), b"of other content").unwrap();

        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        assert_eq!(prep.have.count(), info.piece_count() / 2);
        prep.storage.write_at(half as u64, &stream[half..]).unwrap();
        assert_eq!(pl.finalize(&prep.storage).unwrap(), Finalized::default());
        assert_same_tree(&tree, &pl.target);
        assert!(!pl.part.exists());
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

    /// A tree built from `root` and its content stream.
    fn built(root: &Path) -> (Info, Vec<u8>) {
        let built = build(root).unwrap();
        let mut stream = Vec::new();
        for f in &built.scan.files {
            stream.extend(fs::read(&f.disk_path).unwrap());
        }
        (built.info, stream)
    }

    /// Prepares, writes every byte, finalizes.
    fn download(dir: &Path, info: &Info, stream: &[u8]) -> (Placement, Finalized) {
        let pl = Placement::new(dir, info);
        let prep = pl.prepare(info, &[]).unwrap();
        prep.storage.write_at(0, stream).unwrap();
        let done = pl.finalize(&prep.storage).unwrap();
        (pl, done)
    }

    /// The one run directory under `DIR/.p2pfile-replaced`.
    fn replaced_run(dir: &Path) -> PathBuf {
        let runs: Vec<_> = fs::read_dir(dir.join(REPLACED_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(runs.len(), 1, "{runs:?}");
        let name = runs[0].file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.len() == 15 && name.as_bytes()[8] == b'-',
            "YYYYMMDD-HHMMSS: {name}"
        );
        runs[0].clone()
    }

    #[test]
    fn a_file_where_the_tree_goes_is_moved_aside() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("a"), b"a").unwrap();
        fs::write(tree.join("b"), b"b").unwrap();
        let (info, stream) = built(&tree);
        fs::write(dst.path().join("tree"), b"a file, not a tree").unwrap();
        let (pl, done) = download(dst.path(), &info, &stream);
        let moved = replaced_run(dst.path()).join("tree");
        assert_eq!(done.replaced, vec![(pl.target.clone(), moved.clone())]);
        assert!(done.kept_local.is_empty());
        assert_eq!(fs::read(&moved).unwrap(), b"a file, not a tree");
        assert_eq!(fs::read(pl.target.join("b")).unwrap(), b"b");
        assert!(!pl.part.exists());
    }

    #[test]
    fn a_tree_where_the_file_goes_is_moved_aside() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let info = seed(src.path(), &bytes(50_000, 9));
        let mine = dst.path().join("f.bin");
        fs::create_dir_all(mine.join("deep")).unwrap();
        fs::write(mine.join("deep/notes.txt"), b"mine").unwrap();
        let (pl, done) = download(dst.path(), &info, &bytes(50_000, 9));
        let moved = replaced_run(dst.path()).join("f.bin");
        assert_eq!(done.replaced, vec![(mine.clone(), moved.clone())]);
        assert_eq!(fs::read(moved.join("deep/notes.txt")).unwrap(), b"mine");
        assert_eq!(fs::read(&pl.target).unwrap(), bytes(50_000, 9));
        assert!(!pl.part.exists());
    }

    /// Inside an existing tree: a directory where a file goes, a file where
    /// a directory goes, a symlink where a file goes and a file where an
    /// empty directory goes all move aside, into one run directory with
    /// their paths below DIR; a file the torrent lacks stays untouched.
    #[test]
    fn conflicts_inside_a_tree_move_aside_and_extra_files_stay() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(tree.join("d")).unwrap();
        fs::create_dir_all(tree.join("e/empty")).unwrap();
        fs::write(tree.join("x"), bytes(1_000, 1)).unwrap();
        fs::write(tree.join("d/y"), bytes(2_000, 2)).unwrap();
        fs::write(tree.join("link"), bytes(3_000, 3)).unwrap();
        fs::write(tree.join("same"), bytes(4_000, 4)).unwrap();
        let (info, stream) = built(&tree);

        let target = dst.path().join("tree");
        fs::create_dir_all(target.join("x/inner")).unwrap();
        fs::write(target.join("x/inner/keep.txt"), b"in a dir where x goes").unwrap();
        fs::write(target.join("d"), b"a file where d/ goes").unwrap();
        std::os::unix::fs::symlink("/nonexistent", target.join("link")).unwrap();
        fs::create_dir_all(target.join("e")).unwrap();
        fs::write(target.join("e/empty"), b"a file where e/empty/ goes").unwrap();
        fs::write(target.join("same"), b"old version").unwrap();
        fs::write(target.join("extra.txt"), b"not in the torrent").unwrap();
        let extra_mtime = fs::metadata(target.join("extra.txt"))
            .unwrap()
            .modified()
            .unwrap();

        let (pl, done) = download(dst.path(), &info, &stream);
        assert!(done.kept_local.is_empty(), "{:?}", done.kept_local);
        let run = replaced_run(dst.path());
        let mut moved: Vec<_> = done
            .replaced
            .iter()
            .map(|(from, to)| {
                let rel = from.strip_prefix(dst.path()).unwrap();
                assert_eq!(to, &run.join(rel));
                rel.to_str().unwrap().to_string()
            })
            .collect();
        moved.sort();
        assert_eq!(moved, ["tree/d", "tree/e/empty", "tree/link", "tree/x"]);
        assert_eq!(
            fs::read(run.join("tree/x/inner/keep.txt")).unwrap(),
            b"in a dir where x goes"
        );
        assert_eq!(
            fs::read(run.join("tree/d")).unwrap(),
            b"a file where d/ goes"
        );
        assert_eq!(
            fs::read_link(run.join("tree/link")).unwrap(),
            Path::new("/nonexistent")
        );
        assert_eq!(
            fs::read(run.join("tree/e/empty")).unwrap(),
            b"a file where e/empty/ goes"
        );
        // The old version of a file the torrent has is replaced, as any
        // update does; nothing else of it is kept.
        assert!(!run.join("tree/same").exists());
        assert_eq!(fs::read(target.join("same")).unwrap(), bytes(4_000, 4));
        assert_eq!(
            fs::read(target.join("extra.txt")).unwrap(),
            b"not in the torrent"
        );
        let after = fs::metadata(target.join("extra.txt")).unwrap();
        assert_eq!(after.modified().unwrap(), extra_mtime);
        for (p, want) in [("x", 1), ("d/y", 2), ("link", 3)] {
            let n = [1_000, 2_000, 3_000][want - 1];
            assert_eq!(fs::read(target.join(p)).unwrap(), bytes(n, want as u8));
        }
        assert!(target.join("e/empty").is_dir());
        assert!(!pl.part.exists());
        assert!(pl.prepare(&info, &[]).unwrap().already_complete);
    }

    /// Only what `prepare` saw moves: an entry in the way that appeared or
    /// changed during the download is kept like a local edit.
    #[test]
    fn an_entry_in_the_way_that_changed_meanwhile_is_kept() {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(tree.join("d")).unwrap();
        fs::write(tree.join("d/y"), b"y").unwrap();
        let (info, stream) = built(&tree);

        // Appeared meanwhile.
        let dst = tempfile::tempdir().unwrap();
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        prep.storage.write_at(0, &stream).unwrap();
        fs::write(&pl.target, b"made while downloading").unwrap();
        let done = pl.finalize(&prep.storage).unwrap();
        assert_eq!(done.kept_local, vec![pl.target.clone()]);
        assert!(done.replaced.is_empty());
        assert_eq!(fs::read(&pl.target).unwrap(), b"made while downloading");
        assert_eq!(fs::read(pl.part.join("d/y")).unwrap(), b"y");
        assert!(!dst.path().join(REPLACED_DIR).exists());

        // In the way at prepare, then replaced by another file meanwhile.
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir_all(dst.path().join("tree")).unwrap();
        fs::write(dst.path().join("tree/d"), b"first").unwrap();
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        prep.storage.write_at(0, &stream).unwrap();
        fs::remove_file(dst.path().join("tree/d")).unwrap();
        fs::write(dst.path().join("tree/d"), b"second, longer").unwrap();
        let done = pl.finalize(&prep.storage).unwrap();
        assert_eq!(done.kept_local, vec![dst.path().join("tree/d")]);
        assert!(done.replaced.is_empty());
        assert_eq!(
            fs::read(dst.path().join("tree/d")).unwrap(),
            b"second, longer"
        );
    }

    /// Content named like the folder of moved-aside entries, or like a
    /// part, is refused before anything is written.
    #[test]
    fn names_p2pfile_uses_are_refused() {
        let dst = tempfile::tempdir().unwrap();
        for name in [REPLACED_DIR, ".x.p2pfile-part"] {
            let (info, _) = aligned(name, &[("f", b"data")]);
            let err = Placement::new(dst.path(), &info)
                .prepare(&info, &[])
                .err()
                .expect("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name}");
        }
        assert_eq!(
            fs::read_dir(dst.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }

    /// A second run in the same second takes `<stamp>-2`; nothing moved
    /// aside before is ever overwritten.
    #[test]
    fn moving_aside_never_overwrites() {
        let dst = tempfile::tempdir().unwrap();
        let info = seed(&dst.path().join("src"), b"new");
        let pl = Placement::new(dst.path(), &info);
        let earlier = dst.path().join(REPLACED_DIR).join("20260101-000000/f.bin");
        fs::create_dir_all(&earlier).unwrap();
        fs::create_dir_all(&pl.target).unwrap();
        let mut aside = Aside {
            stamp: Some("20260101-000000".into()),
        };
        let mut done = Finalized::default();
        pl.move_aside(&pl.target, &mut aside, &mut done).unwrap();
        let second = dst
            .path()
            .join(REPLACED_DIR)
            .join("20260101-000000-2/f.bin");
        assert_eq!(done.replaced, vec![(pl.target.clone(), second.clone())]);
        assert!(earlier.is_dir() && second.is_dir() && !pl.target.exists());

        let (a, b) = (dst.path().join("a"), dst.path().join("b"));
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"b");
        rename_noreplace(&a, &dst.path().join("c")).unwrap();
        assert!(!a.exists());
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn add_execute_follows_read_bits() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"").unwrap();
        for (before, after) in [
            (0o644, 0o755),
            (0o600, 0o700),
            (0o640, 0o750),
            (0o664, 0o775),
            (0o755, 0o755),
            (0o200, 0o200),
        ] {
            set_mode(&f, before);
            add_execute(&f).unwrap();
            assert_eq!(mode(&f), after, "{before:o}");
        }
    }

    /// BEP 47 `x` sets execute bits on the committed file, and on complete
    /// content already in place; files without it get none.
    #[test]
    fn executable_files_arrive_executable() {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::write(tree.join("data"), b"plain").unwrap();
        set_mode(&tree.join("run.sh"), 0o755);
        set_mode(&tree.join("data"), 0o644);
        let (info, stream) = built(&tree);
        assert!(info.files.iter().any(|f| f.executable()));

        let dst = tempfile::tempdir().unwrap();
        let pl = Placement::new(dst.path(), &info);
        let prep = pl.prepare(&info, &[]).unwrap();
        prep.storage.write_at(0, &stream).unwrap();
        // As a umask of 027 would have created them.
        set_mode(&pl.part.join("run.sh"), 0o640);
        set_mode(&pl.part.join("data"), 0o640);
        pl.finalize(&prep.storage).unwrap();
        assert_eq!(mode(&pl.target.join("run.sh")), 0o750);
        assert_eq!(mode(&pl.target.join("data")), 0o640);

        // Complete content from before the bit was carried gets it on the
        // next run, without a transfer.
        set_mode(&pl.target.join("run.sh"), 0o644);
        assert!(pl.prepare(&info, &[]).unwrap().already_complete);
        assert_eq!(mode(&pl.target.join("run.sh")), 0o755);
        assert_eq!(mode(&pl.target.join("data")), 0o640);
    }

    /// Complete content whose executable is a symlink to a file elsewhere
    /// leaves that file's mode alone.
    #[test]
    fn an_executable_that_is_a_symlink_is_not_followed() {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        set_mode(&tree.join("run.sh"), 0o755);
        let (info, _) = built(&tree);
        let dst = tempfile::tempdir().unwrap();
        let outside = src.path().join("outside.sh");
        fs::write(&outside, b"#!/bin/sh\necho hi\n").unwrap();
        set_mode(&outside, 0o644);
        let pl = Placement::new(dst.path(), &info);
        fs::create_dir_all(&pl.target).unwrap();
        std::os::unix::fs::symlink(&outside, pl.target.join("run.sh")).unwrap();
        let _ = pl.prepare(&info, &[]).unwrap();
        assert_eq!(mode(&outside), 0o644);
    }
}
