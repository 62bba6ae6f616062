//! Piece ↔ file mapping and positioned disk I/O.
//!
//! A torrent's content is one byte stream cut into pieces; files are
//! consecutive ranges of that stream. Every read and write here is a
//! positioned call (`pread`/`pwrite`) on a file handle opened once, so the
//! same `Storage` is shared by many tasks without a lock around the I/O.
//! Writes happen a whole verified piece at a time, never per 16 KiB block.
//!
//! BEP 47 pad files are part of the stream but never of the disk: reading
//! their range gives zeros, writing it is dropped (the piece hash, checked
//! before any write, already proved those bytes zero), and [`Storage::prepare`]
//! creates no file for them.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha1::{Digest, Sha1};

use crate::bitfield::Bitfield;
use crate::metainfo::Info;

/// Up to this many written files are flushed one by one; more with one
/// `syncfs` per file system (see [`Storage::sync_all`]).
const SYNC_EACH_UP_TO: usize = 16;

/// [`Storage::prepare`] creates files on more than one thread only when
/// each gets at least this many.
const CREATE_PER_THREAD: usize = 256;

/// One file's place in the content stream.
#[derive(Debug)]
struct Span {
    path: PathBuf,
    offset: u64,
    length: u64,
    /// A BEP 47 pad file: zeros, never on disk.
    pad: bool,
    /// The modification time (ns since the epoch) the file had when it was
    /// hashed, for a seed that must not serve content changed since; see
    /// [`Storage::expect_unchanged`].
    hashed_mtime_ns: Option<i128>,
    handle: OnceLock<File>,
    /// Created by [`Storage::prepare`] (`O_CREAT|O_EXCL`, so a regular
    /// file, never a symlink): on its directory's file system.
    created: AtomicBool,
}

/// A seed's file no longer has the length or modification time it had when
/// it was hashed (or is gone): its bytes may not match the piece hashes any
/// more. Carried inside the `io::Error` of a read (see
/// [`source_changed`]).
#[derive(Debug, thiserror::Error)]
#[error("{} changed since it was hashed", path.display())]
pub struct SourceChanged {
    /// The file.
    pub path: PathBuf,
}

/// Piece hashes and which pieces already matched them on a read for a peer.
#[derive(Debug)]
struct ServeCheck {
    hashes: Vec<[u8; 20]>,
    matched: Vec<AtomicBool>,
}

/// The file named by a [`SourceChanged`] read error, if `e` is one.
pub fn source_changed(e: &io::Error) -> Option<&Path> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<SourceChanged>())
        .map(|c| c.path.as_path())
}

/// A file's modification time in ns since the epoch (0 if unknown).
pub(crate) fn mtime_ns(meta: &fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Where piece `piece` of a torrent may already lie on this machine: at
/// `offset` in `path`. Only a hint: the bytes are used when they hash to
/// the piece's hash, and a hint that is missing, short or wrong is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceSource {
    /// Index of the piece in the torrent.
    pub piece: u32,
    /// A file that may hold the piece's bytes.
    pub path: PathBuf,
    /// Where in that file they would start.
    pub offset: u64,
}

/// The files of one torrent on disk.
#[derive(Debug)]
pub struct Storage {
    spans: Vec<Span>,
    empty_dirs: Vec<PathBuf>,
    piece_length: u64,
    total: u64,
    /// Pieces that end in padding, with the length of the data before it,
    /// by piece; empty without pad files. See [`Storage::padded_pieces`].
    padded: Vec<(u32, u32)>,
    writable: bool,
    /// A seed's piece hashes, each piece checked the first time a peer
    /// asks for a block of it; see [`Storage::verify_before_serving`].
    serve_check: Option<ServeCheck>,
    /// Serialises writes. Pieces are hashed on all cores, but concurrent
    /// `pwrite`s to one file only contend for its inode lock in the kernel
    /// (measured: ~6 % of a downloader's CPU spinning there). Guards no data.
    write_turn: std::sync::Mutex<()>,
}

impl Storage {
    /// The layout of `info` with its content at `root`: the file itself for
    /// a single-file torrent, else the top directory.
    pub fn new(info: &Info, root: &Path, writable: bool) -> Self {
        let paths = info.files.iter().filter(|f| !f.is_pad()).map(|f| {
            let mut p = root.to_path_buf();
            p.extend(&f.path);
            p
        });
        let mut s = Self::from_info(info, paths, writable).expect("one path per file");
        s.empty_dirs = info
            .empty_dirs
            .iter()
            .map(|d| {
                let mut p = root.to_path_buf();
                p.extend(d);
                p
            })
            .collect();
        s
    }

    /// The layout of `info` with each of its files at the path `files`
    /// gives: one path per entry that is not a pad file, in info order,
    /// anywhere on disk (seeding files that are not under one root). Pad
    /// entries stay zeros. `None` when `files` has another count. Empty
    /// directories of the info are not part of this layout.
    pub fn with_paths(info: &Info, files: &[PathBuf], writable: bool) -> Option<Self> {
        Self::from_info(info, files.iter().cloned(), writable)
    }

    /// Makes this a seed's storage that serves only what was hashed: each
    /// file that is not a pad file, in order, must keep its length and the
    /// modification time given here (ns since the epoch, as
    /// [`crate::builder::ScannedFile::mtime_ns`]). A read that touches a
    /// file that lost them fails with a [`SourceChanged`] error, checked
    /// after the bytes are read: a write begins by updating the file's
    /// mtime, so bytes read before an unchanged mtime are the hashed ones.
    /// `None` when `mtimes_ns` has another count than the files.
    pub fn expect_unchanged(mut self, mtimes_ns: &[i128]) -> Option<Self> {
        let mut mtimes = mtimes_ns.iter();
        for span in self.spans.iter_mut().filter(|s| !s.pad) {
            span.hashed_mtime_ns = Some(*mtimes.next()?);
        }
        mtimes.next().is_none().then_some(self)
    }

    /// Makes [`Storage::read_block`] check each piece against `hashes`
    /// the first time a block of it is read, and refuse the piece (a
    /// [`SourceChanged`] error naming its first file) when it does not
    /// match: a file replaced by one of the same length and modification
    /// time is caught here, the mtime check of
    /// [`Storage::expect_unchanged`] covers writes after the check. Costs
    /// one extra read and hash of each piece per run (about 0.5 core-s per
    /// GiB), so it is for content whose hash was not made from these files
    /// in this run.
    pub fn verify_before_serving(mut self, hashes: Vec<[u8; 20]>) -> Self {
        let matched = hashes.iter().map(|_| Default::default()).collect();
        self.serve_check = Some(ServeCheck { hashes, matched });
        self
    }

    /// Reads `buf.len()` bytes at `begin` in piece `index`, for a peer: as
    /// [`Storage::read_at`], after checking the piece's hash once when
    /// [`Storage::verify_before_serving`] asks for it.
    pub fn read_block(&self, index: u32, begin: u32, buf: &mut [u8]) -> io::Result<()> {
        if let Some(check) = &self.serve_check {
            let i = index as usize;
            if !check.matched[i].load(Ordering::Acquire) {
                let mut scratch = Vec::new();
                if self.hash_piece(index, &mut scratch)? != check.hashes[i] {
                    let path = self.piece_file(index);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        SourceChanged { path },
                    ));
                }
                check.matched[i].store(true, Ordering::Release);
            }
        }
        self.read_at(self.piece_offset(index) + begin as u64, buf)
    }

    /// The first file (not a pad file) holding bytes of piece `index`.
    fn piece_file(&self, index: u32) -> PathBuf {
        let (start, end) = (
            self.piece_offset(index),
            self.piece_offset(index) + self.piece_size(index) as u64,
        );
        self.spans
            .iter()
            .find(|s| !s.pad && s.offset < end && s.offset + s.length > start)
            .map_or_else(PathBuf::new, |s| s.path.clone())
    }

    /// The first file (see [`Storage::expect_unchanged`]) whose length or
    /// modification time on disk is no longer the hashed one, or that is
    /// gone; `None` when all are as hashed (or none is checked).
    pub fn changed_file(&self) -> Option<PathBuf> {
        self.spans
            .iter()
            .filter(|s| s.hashed_mtime_ns.is_some())
            .find(|s| {
                !fs::metadata(&s.path)
                    .is_ok_and(|m| m.len() == s.length && Some(mtime_ns(&m)) == s.hashed_mtime_ns)
            })
            .map(|s| s.path.clone())
    }

    /// `info`'s files, the non-pad ones at `paths` in order; `None` unless
    /// there is exactly one path for each.
    fn from_info(
        info: &Info,
        mut paths: impl Iterator<Item = PathBuf>,
        writable: bool,
    ) -> Option<Self> {
        let mut spans = Vec::with_capacity(info.files.len());
        for f in &info.files {
            let path = if f.is_pad() {
                PathBuf::new()
            } else {
                paths.next()?
            };
            spans.push((path, f.length, f.is_pad()));
        }
        if paths.next().is_some() {
            return None;
        }
        Some(Self::from_spans(spans, info.piece_length, writable))
    }

    /// A layout over explicit files, in stream order (used to hash content
    /// before its info dictionary exists).
    pub fn from_files(
        files: impl IntoIterator<Item = (PathBuf, u64)>,
        piece_length: u32,
        writable: bool,
    ) -> Self {
        let files = files.into_iter().map(|(p, len)| (p, len, false));
        Self::from_spans(files, piece_length, writable)
    }

    /// Files as `(path, length, is_pad)`, in stream order.
    fn from_spans(
        files: impl IntoIterator<Item = (PathBuf, u64, bool)>,
        piece_length: u32,
        writable: bool,
    ) -> Self {
        let mut offset = 0;
        let spans: Vec<Span> = files
            .into_iter()
            .map(|(path, length, pad)| {
                let span = Span {
                    path,
                    offset,
                    length,
                    pad,
                    hashed_mtime_ns: None,
                    handle: OnceLock::new(),
                    created: AtomicBool::new(false),
                };
                offset += length;
                span
            })
            .collect();
        let padded = padded_pieces(&spans, piece_length as u64, offset);
        Self {
            spans,
            empty_dirs: Vec::new(),
            piece_length: piece_length as u64,
            total: offset,
            padded,
            writable,
            serve_check: None,
            write_turn: std::sync::Mutex::new(()),
        }
    }

    /// Total content length.
    pub fn total_length(&self) -> u64 {
        self.total
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> usize {
        self.total.div_ceil(self.piece_length) as usize
    }

    /// Length of piece `index`.
    pub fn piece_size(&self, index: u32) -> usize {
        let start = index as u64 * self.piece_length;
        (self.total.saturating_sub(start)).min(self.piece_length) as usize
    }

    /// Creates directories and files, and the empty directories. Existing
    /// files keep their bytes and get their full (sparse) length; new ones
    /// stay empty until written (see `create_file`). Pad files get neither
    /// a file nor a directory.
    ///
    /// Many files are created on all cores: creating a file costs the
    /// kernel more than writing a few KiB into it, and nothing else runs
    /// while a download waits for this (10,000 files on tmpfs: 0.17-0.20 s
    /// on one core; see bench/files.sh).
    pub fn prepare(&self) -> io::Result<()> {
        let files: Vec<&Span> = self.spans.iter().filter(|s| !s.pad).collect();
        // Each directory once, not once per file (a `mkdir` and a `stat`
        // each: 20,000 calls saved for 10,000 files in 100 directories).
        let mut made: std::collections::HashSet<&Path> = std::collections::HashSet::new();
        for span in &files {
            if let Some(parent) = span.path.parent()
                && made.insert(parent)
            {
                fs::create_dir_all(parent)?;
            }
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(files.len() / CREATE_PER_THREAD)
            .max(1);
        if threads == 1 {
            files.iter().try_for_each(|s| create_file(s))?;
        } else {
            // Contiguous shares: a directory's files stay with one thread,
            // so the threads rarely wait on the same directory's lock.
            let share = files.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let workers: Vec<_> = files
                    .chunks(share)
                    .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|s| create_file(s))))
                    .collect();
                workers
                    .into_iter()
                    .try_for_each(|w| w.join().expect("create worker panicked"))
            })?;
        }
        for d in &self.empty_dirs {
            fs::create_dir_all(d)?;
        }
        Ok(())
    }

    fn handle<'s>(&self, span: &'s Span) -> io::Result<&'s File> {
        debug_assert!(!span.pad, "bug: opening a pad file");
        if let Some(f) = span.handle.get() {
            return Ok(f);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(self.writable)
            .open(&span.path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", span.path.display())))?;
        Ok(span.handle.get_or_init(|| f))
    }

    /// Calls `f(span, offset_in_file, range_in_buf)` for each file a stream
    /// range touches.
    fn for_each_span(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&Span, u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        if offset + len as u64 > self.total {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bug: range beyond end of torrent",
            ));
        }
        let first = self
            .spans
            .partition_point(|s| s.offset + s.length <= offset);
        let mut done = 0usize;
        for span in &self.spans[first..] {
            if done == len {
                break;
            }
            if span.length == 0 {
                continue;
            }
            let pos = offset + done as u64;
            let in_file = pos - span.offset;
            let n = ((span.length - in_file) as usize).min(len - done);
            f(span, in_file, done..done + n)?;
            done += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at stream `offset` (zeros where pad files are).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = buf.len();
        self.for_each_span(offset, len, |span, at, range| {
            if span.pad {
                buf[range].fill(0);
                return Ok(());
            }
            let Some(hashed) = span.hashed_mtime_ns else {
                return self.handle(span)?.read_exact_at(&mut buf[range], at);
            };
            let changed = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    SourceChanged {
                        path: span.path.clone(),
                    },
                )
            };
            let file = match self.handle(span) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(changed()),
                Err(e) => return Err(e),
            };
            let read = file.read_exact_at(&mut buf[range], at);
            let meta = file.metadata()?;
            if meta.len() != span.length || mtime_ns(&meta) != hashed {
                return Err(changed());
            }
            read
        })
    }

    /// Writes `data` at stream `offset`, and starts writing it back to disk
    /// (see [`Storage::write_blocks_at`]).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_blocks_at(offset, &[data])
    }

    /// Writes `blocks`, back to back, at stream `offset` (their
    /// concatenation, without making it): one vectored write per file the
    /// range touches, then a start of writeback for it. Bytes that fall in
    /// a pad file are dropped.
    ///
    /// Write-behind: without it every byte of a download is still dirty in
    /// the page cache when it completes, and the `fsync` before the final
    /// rename flushes it all at once (measured: about 0.6 s for 256 MiB on
    /// each of 7 hosts sharing one disk, after the last piece arrived).
    /// Asking for writeback of each piece as it lands spreads that work over
    /// the transfer, so the final flush has only the last pieces left.
    pub fn write_blocks_at<B: AsRef<[u8]>>(&self, offset: u64, blocks: &[B]) -> io::Result<()> {
        let len: usize = blocks.iter().map(|b| b.as_ref().len()).sum();
        let _turn = self.write_turn.lock().unwrap_or_else(|e| e.into_inner());
        // `range` is a byte range of the concatenation; walk the blocks
        // along with it.
        let mut block = 0;
        let mut skip = 0;
        self.for_each_span(offset, len, |span, at, range| {
            let mut parts = Vec::new();
            let mut want = range.len();
            while want > 0 {
                let b = &blocks[block].as_ref()[skip..];
                let n = b.len().min(want);
                parts.push(&b[..n]);
                want -= n;
                if n == b.len() {
                    block += 1;
                    skip = 0;
                } else {
                    skip += n;
                }
            }
            if span.pad {
                return Ok(());
            }
            let file = self.handle(span)?;
            write_all_vectored_at(file, &mut parts, at)?;
            start_writeback(file, at, range.len());
            Ok(())
        })
    }

    /// Flushes every written file to disk, so a rename after it publishes
    /// complete data even across a crash.
    ///
    /// Many files (a pack of small files) are flushed with one `syncfs` per
    /// file system instead of one `fdatasync` each: 1,000 files of 4 KiB on
    /// this machine's ext4 took 0.19–0.22 s one by one and 0.01–0.06 s with
    /// one `syncfs`.
    pub fn sync_all(&self) -> io::Result<()> {
        let open: Vec<&File> = self.spans.iter().filter_map(|s| s.handle.get()).collect();
        if open.len() <= SYNC_EACH_UP_TO {
            for f in open {
                f.sync_data()?;
            }
            return Ok(());
        }
        // The file system of each file: a file we created lies on its
        // directory's, looked up once per run of neighbouring files (10,000
        // files: 10,000 `fstat`s, about 10 ms, became about 100 `stat`s).
        let mut devices = std::collections::HashSet::new();
        let mut last_dir: Option<(&Path, u64)> = None;
        for span in &self.spans {
            let Some(f) = span.handle.get() else { continue };
            let dir = span
                .path
                .parent()
                .filter(|_| span.created.load(Ordering::Relaxed));
            let dev = match (dir, last_dir) {
                (Some(d), Some((last, dev))) if d == last => dev,
                (Some(d), _) => {
                    let dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(d)?);
                    last_dir = Some((d, dev));
                    dev
                }
                (None, _) => std::os::unix::fs::MetadataExt::dev(&f.metadata()?),
            };
            if devices.insert(dev) {
                // SAFETY: a valid, open file descriptor.
                if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(f)) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// Stream offset of piece `index`.
    pub fn piece_offset(&self, index: u32) -> u64 {
        index as u64 * self.piece_length
    }

    /// SHA-1 of piece `index` as it is on disk.
    pub fn hash_piece(&self, index: u32, scratch: &mut Vec<u8>) -> io::Result<[u8; 20]> {
        scratch.resize(self.piece_size(index), 0);
        self.read_at(self.piece_offset(index), scratch)?;
        Ok(Sha1::digest(&scratch[..]).into())
    }

    /// Hashes every piece on all cores, reading each byte once. Workers take
    /// pieces in order from a shared counter so the disk sees a near
    /// sequential read.
    pub fn hash_all(&self) -> io::Result<Vec<[u8; 20]>> {
        let n = self.piece_count();
        let results = self.par_pieces(n, |s, i, scratch| s.hash_piece(i, scratch))?;
        Ok(results)
    }

    /// Copies into this storage every piece named by `hints` that `have`
    /// lacks and whose bytes at the hint hash to its entry in `hashes`,
    /// trying a piece's hints in order until one matches, and marks it in
    /// `have`. A hint that cannot be opened, is short or does not match is
    /// skipped (logged at debug); only a failed write here is an error.
    ///
    /// Bytes of a piece that fall in a pad file at its end are not read
    /// from the hint: they are zeros, and the file a hint points into ends
    /// where the pad begins (a piece-aligned file's last piece is its tail
    /// plus zeros).
    pub fn copy_from_hints(
        &self,
        hints: &[PieceSource],
        hashes: &[[u8; 20]],
        have: &mut Bitfield,
    ) -> io::Result<()> {
        let mut files: HashMap<&Path, Option<File>> = HashMap::new();
        let mut buf = Vec::new();
        for hint in hints {
            let i = hint.piece as usize;
            if i >= hashes.len() || i >= self.piece_count() {
                tracing::debug!(?hint, "piece hint beyond the torrent, skipped");
                continue;
            }
            if have.get(i) {
                continue;
            }
            let Some(file) = files
                .entry(&hint.path)
                .or_insert_with(|| open_hint(&hint.path))
            else {
                continue;
            };
            let size = self.piece_size(hint.piece);
            let real = self.data_size(hint.piece);
            buf.clear();
            buf.resize(size, 0);
            if let Err(e) = file.read_exact_at(&mut buf[..real], hint.offset) {
                tracing::debug!(?hint, "piece hint unreadable, skipped: {e}");
                continue;
            }
            if <[u8; 20]>::from(Sha1::digest(&buf)) != hashes[i] {
                tracing::debug!(?hint, "piece hint does not match, skipped");
                continue;
            }
            self.write_at(self.piece_offset(hint.piece), &buf)?;
            have.set(i);
        }
        Ok(())
    }

    /// Pieces whose end lies in padding, each with its data length: the
    /// bytes before the run of pad files that reaches the piece's end (0
    /// for a piece of padding only). Sorted by piece, and empty for a
    /// torrent without pad files. Padding followed by a file within the
    /// same piece does not count: only a trailing run can be left out of a
    /// transfer without knowing where the next file starts.
    pub fn padded_pieces(&self) -> &[(u32, u32)] {
        &self.padded
    }

    /// Length of piece `index` without the padding at its end.
    pub fn data_size(&self, index: u32) -> usize {
        match self.padded.binary_search_by_key(&index, |&(p, _)| p) {
            Ok(i) => self.padded[i].1 as usize,
            Err(_) => self.piece_size(index),
        }
    }

    /// Which pieces on disk match `hashes`. Missing or short files make
    /// their pieces absent rather than failing.
    pub fn verify(&self, hashes: &[[u8; 20]]) -> Bitfield {
        let mut have = Bitfield::new(hashes.len());
        let ok = self
            .par_pieces(hashes.len(), |s, i, scratch| {
                Ok(s.hash_piece(i, scratch).ok() == Some(hashes[i as usize]))
            })
            .unwrap_or_default();
        for (i, good) in ok.into_iter().enumerate() {
            if good {
                have.set(i);
            }
        }
        have
    }

    fn par_pieces<T: Send + Default + Clone>(
        &self,
        n: usize,
        job: impl Fn(&Self, u32, &mut Vec<u8>) -> io::Result<T> + Sync,
    ) -> io::Result<Vec<T>> {
        let threads = std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
            .min(n.max(1));
        let next = AtomicUsize::new(0);
        let parts: Vec<io::Result<Vec<(usize, T)>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut scratch = Vec::new();
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                return Ok(out);
                            }
                            out.push((i, job(self, i as u32, &mut scratch)?));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("hash worker panicked"))
                .collect()
        });
        let mut results = vec![T::default(); n];
        for part in parts {
            for (i, v) in part? {
                results[i] = v;
            }
        }
        Ok(results)
    }
}

/// Creates (or opens) a span's file and keeps it open. A new file is left
/// empty: its pieces' writes give it its length (a short file's missing
/// tail reads as missing pieces on a resume, as a sparse one's zeros fail
/// their hash), and extending each of 10,000 new files first cost a third
/// of creating them on tmpfs. An existing file is cut or extended to its
/// length, so no stray bytes of other content stay at its end.
fn create_file(span: &Span) -> io::Result<()> {
    let mut open = OpenOptions::new();
    open.read(true).write(true);
    let f = match open.clone().create_new(true).open(&span.path) {
        Ok(f) => {
            span.created.store(true, Ordering::Relaxed);
            f
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let f = open.open(&span.path)?;
            if f.metadata()?.len() != span.length {
                f.set_len(span.length)?;
            }
            f
        }
        Err(e) => return Err(e),
    };
    let _ = span.handle.set(f);
    Ok(())
}

/// Bytes free for an unprivileged writer on the file system of `path`
/// (`None` when it cannot be asked, e.g. the path does not exist).
pub fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

/// The table of [`Storage::padded_pieces`] for `spans` (`total` bytes in
/// pieces of `piece_length`): one pass over the runs of pad files, each
/// giving an entry to every piece that ends inside it.
fn padded_pieces(spans: &[Span], piece_length: u64, total: u64) -> Vec<(u32, u32)> {
    // Runs of consecutive pad bytes, as stream ranges.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for span in spans.iter().filter(|s| s.pad && s.length > 0) {
        match runs.last_mut() {
            Some(run) if run.1 == span.offset => run.1 += span.length,
            _ => runs.push((span.offset, span.offset + span.length)),
        }
    }
    let mut out = Vec::new();
    for (start, stop) in runs {
        let mut piece_start = start - start % piece_length;
        while piece_start < total {
            let piece_end = (piece_start + piece_length).min(total);
            if piece_end > stop {
                break;
            }
            let data = start.max(piece_start) - piece_start;
            out.push(((piece_start / piece_length) as u32, data as u32));
            piece_start += piece_length;
        }
    }
    out
}

/// Opens a hint's file for reading, or `None` (logged) when it cannot be
/// used. Non-blocking, so a hint that has become a fifo cannot hang us;
/// only regular files are read.
fn open_hint(path: &Path) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| {
            if f.metadata()?.is_file() {
                Ok(f)
            } else {
                Err(io::Error::other("not a regular file"))
            }
        });
    file.map_err(|e| tracing::debug!(path = %path.display(), "piece hint skipped: {e}"))
        .ok()
}

/// `pwritev` until every byte of `parts` is written at `offset`.
fn write_all_vectored_at(file: &File, mut parts: &mut [&[u8]], mut offset: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    while !parts.is_empty() {
        let iov: Vec<libc::iovec> = parts
            .iter()
            .take(IOV_MAX)
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: every iovec points into a slice borrowed for this call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n as usize;
        offset += n as u64;
        // Drop what was written: whole parts, then the head of the next.
        while n > 0 {
            if n >= parts[0].len() {
                n -= parts[0].len();
                parts = &mut parts[1..];
            } else {
                parts[0] = &parts[0][n..];
                n = 0;
            }
        }
        while parts.first().is_some_and(|p| p.is_empty()) {
            parts = &mut parts[1..];
        }
    }
    Ok(())
}

/// Most buffers one `pwritev` takes (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// Starts (does not wait for) writeback of a file range just written.
/// Best effort: a file system without it only loses the head start.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a descriptor `file` keeps open; no memory is
    // passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::FileEntry;

    fn layout(dir: &Path, sizes: &[u64], piece: u32) -> Storage {
        let files = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (dir.join(format!("f{i}")), s));
        Storage::from_files(files, piece, true)
    }

    #[test]
    fn sync_all_flushes_few_files_each_and_many_by_file_system() {
        let dir = tempfile::tempdir().unwrap();
        for count in [3, SYNC_EACH_UP_TO + 5] {
            let sizes = vec![10; count];
            let s = layout(&dir.path().join(count.to_string()), &sizes, 16);
            s.prepare().unwrap();
            s.write_at(0, &vec![7u8; 10 * count]).unwrap();
            s.sync_all().unwrap();
            assert_eq!(s.verify(&s.hash_all().unwrap()).count(), s.piece_count());
        }
    }

    /// Enough files for several creating threads; new files stay empty
    /// until written, an existing one is cut to its length, and a short
    /// file's missing tail is a missing piece.
    #[test]
    fn prepare_creates_many_files_and_keeps_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let count = 4 * CREATE_PER_THREAD + 3;
        let sizes: Vec<u64> = (0..count as u64).map(|i| 1 + i % 50).collect();
        let total: u64 = sizes.iter().sum();
        let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        let hashes = {
            let src = layout(&dir.path().join("src"), &sizes, 64);
            src.prepare().unwrap();
            src.write_at(0, &data).unwrap();
            src.hash_all().unwrap()
        };
        let root = dir.path().join("dst");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("f1"), vec![9u8; 500]).unwrap();
        let s = layout(&root, &sizes, 64);
        s.prepare().unwrap();
        assert_eq!(fs::read_dir(&root).unwrap().count(), count);
        assert_eq!(fs::metadata(root.join("f0")).unwrap().len(), 0);
        assert_eq!(fs::metadata(root.join("f1")).unwrap().len(), sizes[1]);
        assert_eq!(s.verify(&hashes).count(), 0);
        let half = 64 * (s.piece_count() / 2);
        s.write_at(0, &data[..half]).unwrap();
        assert_eq!(s.verify(&hashes).count(), s.piece_count() / 2);
        s.write_at(half as u64, &data[half..]).unwrap();
        assert!(s.verify(&hashes).is_full());
        for (i, &len) in sizes.iter().enumerate() {
            assert_eq!(fs::metadata(root.join(format!("f{i}"))).unwrap().len(), len);
        }
    }

    #[test]
    fn writes_and_reads_across_file_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let s = layout(dir.path(), &[3, 0, 5, 2], 4);
        assert_eq!(s.piece_count(), 3);
        assert_eq!(s.piece_size(2), 2);
        s.prepare().unwrap();
        s.write_at(0, b"abcdefghij").unwrap();
        assert_eq!(fs::read(dir.path().join("f0")).unwrap(), b"abc");
        assert_eq!(fs::read(dir.path().join("f1")).unwrap(), b"");
        assert_eq!(fs::read(dir.path().join("f2")).unwrap(), b"defgh");
        assert_eq!(fs::read(dir.path().join("f3")).unwrap(), b"ij");
        let mut buf = [0u8; 4];
        s.read_at(2, &mut buf).unwrap();
        assert_eq!(&buf, b"cdef");
        assert!(s.read_at(8, &mut buf).is_err());
    }

    #[test]
    fn vectored_write_equals_plain_write() {
        let sizes = [3, 0, 5, 2, 1500];
        let data: Vec<u8> = (0..1510u32).map(|i| (i * 7 % 251) as u8).collect();
        // Blocks that straddle file boundaries, an empty one, and more
        // blocks than one pwritev takes.
        let mut cuts = vec![0, 1, 4, 4, 9];
        cuts.extend(10..1500);
        cuts.push(1510);
        let blocks: Vec<&[u8]> = cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
        assert!(blocks.len() > IOV_MAX);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (sa, sb) = (layout(a.path(), &sizes, 4), layout(b.path(), &sizes, 4));
        sa.prepare().unwrap();
        sb.prepare().unwrap();
        sa.write_at(0, &data).unwrap();
        sb.write_blocks_at(0, &blocks).unwrap();
        let mut back = vec![0u8; data.len()];
        sb.read_at(0, &mut back).unwrap();
        assert_eq!(back, data);
        for i in 0..sizes.len() {
            let f = format!("f{i}");
            assert_eq!(
                fs::read(a.path().join(&f)).unwrap(),
                fs::read(b.path().join(&f)).unwrap(),
                "{f}"
            );
        }
        // At an offset, within one file.
        sb.write_blocks_at(12, &[&b"xy"[..], b"z"]).unwrap();
        let mut buf = [0u8; 3];
        sb.read_at(12, &mut buf).unwrap();
        assert_eq!(&buf, b"xyz");
    }

    #[test]
    fn hash_all_and_verify_agree() {
        let dir = tempfile::tempdir().unwrap();
        let s = layout(dir.path(), &[7, 9, 1], 4);
        s.prepare().unwrap();
        s.write_at(0, b"0123456789abcdefg").unwrap();
        let hashes = s.hash_all().unwrap();
        assert_eq!(hashes.len(), 5);
        let expect: [u8; 20] = Sha1::digest(b"4567").into();
        assert_eq!(hashes[1], expect);
        assert!(s.verify(&hashes).is_full());
        s.write_at(5, b"X").unwrap();
        let have = s.verify(&hashes);
        assert_eq!(have.iter_ones().collect::<Vec<_>>(), vec![0, 2, 3, 4]);
    }

    #[test]
    fn verify_of_missing_files_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::from_files([(dir.path().join("nope"), 10)], 4, false);
        assert_eq!(s.verify(&[[0; 20]; 3]).count(), 0);
    }

    /// a (10 KiB), pad, b (5 KiB), pad, in 16 KiB pieces: the content
    /// stream and the torrent of it.
    fn padded() -> (Vec<u8>, Vec<u8>, Info) {
        let a: Vec<u8> = (0..10 * 1024u32).map(|i| (i % 251) as u8 + 1).collect();
        let b: Vec<u8> = (0..5 * 1024u32).map(|i| (i % 241) as u8 + 1).collect();
        let files = crate::metainfo::pad_to_pieces(
            [
                FileEntry::new(vec!["a".into()], a.len() as u64),
                FileEntry::new(vec!["b".into()], b.len() as u64),
            ],
            16384,
        );
        assert_eq!(files.len(), 4);
        let mut stream = a.clone();
        stream.resize(16384, 0);
        stream.extend(&b);
        stream.resize(32768, 0);
        let pieces = stream
            .chunks(16384)
            .map(|c| Sha1::digest(c).into())
            .collect();
        let info = Info::new("t", 16384, pieces, files, vec![]).unwrap();
        (a, b, info)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn pad_files_are_zeros_never_on_disk() {
        let (a, b, info) = padded();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        let s = Storage::new(&info, &root, true);
        s.prepare().unwrap();
        assert_eq!(names(&root), vec!["a", "b"]);
        assert_eq!(s.verify(&info.pieces).count(), 0);
        // Whole pieces, pad ranges filled with garbage: it is dropped.
        let mut p0 = a.clone();
        p0.resize(16384, 0xee);
        let mut p1 = b.clone();
        p1.resize(16384, 0xee);
        s.write_at(0, &p0).unwrap();
        s.write_blocks_at(16384, &[&p1[..4096], &p1[4096..]])
            .unwrap();
        assert_eq!(names(&root), vec!["a", "b"]);
        assert_eq!(fs::read(root.join("a")).unwrap(), a);
        assert_eq!(fs::read(root.join("b")).unwrap(), b);
        let mut back = vec![1u8; 16384];
        s.read_at(16384, &mut back).unwrap();
        assert_eq!(&back[..b.len()], &b[..]);
        assert!(back[b.len()..].iter().all(|&x| x == 0));
        assert!(s.verify(&info.pieces).is_full());
        // The real files alone, elsewhere, are the whole torrent.
        let copy = dir.path().join("copy");
        fs::create_dir_all(&copy).unwrap();
        fs::write(copy.join("a"), &a).unwrap();
        fs::write(copy.join("b"), &b).unwrap();
        assert!(
            Storage::new(&info, &copy, false)
                .verify(&info.pieces)
                .is_full()
        );
        assert!(!root.join(".pad").exists() && !copy.join(".pad").exists());
    }

    #[test]
    fn hints_copy_matching_pieces_and_skip_the_rest() {
        let (a, b, info) = padded();
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        // b's bytes at offset 100 of another file, which ends with them:
        // piece 1 is b plus pad zeros, read from the file only up to the pad.
        let mut holder = vec![9u8; 100];
        holder.extend(&b);
        fs::write(&elsewhere, &holder).unwrap();
        fs::write(dir.path().join("a-short"), &a[..a.len() - 1]).unwrap();
        let root = dir.path().join("t");
        let s = Storage::new(&info, &root, true);
        s.prepare().unwrap();
        let hint = |piece, path: &str, offset| PieceSource {
            piece,
            path: dir.path().join(path),
            offset,
        };
        let hints = [
            hint(1, "missing", 0),
            hint(1, "elsewhere", 99),
            hint(1, "elsewhere", 100),
            hint(0, "a-short", 0),
            hint(0, "elsewhere", 1 << 20),
            hint(7, "elsewhere", 0),
        ];
        let mut have = Bitfield::new(info.piece_count());
        s.copy_from_hints(&hints, &info.pieces, &mut have).unwrap();
        assert_eq!(have.iter_ones().collect::<Vec<_>>(), vec![1]);
        assert_eq!(fs::read(root.join("b")).unwrap(), b);
        assert_eq!(
            s.verify(&info.pieces).iter_ones().collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn padded_pieces_are_those_ending_in_padding() {
        let (_, _, info) = padded();
        let s = Storage::new(&info, Path::new("/nowhere"), false);
        assert_eq!(s.padded_pieces(), &[(0, 10 * 1024), (1, 5 * 1024)]);
        assert_eq!(s.data_size(1), 5 * 1024);
        // x 3, pad 2, y 3, pad 9, z 1, pad 3 in pieces of 4: piece 1 has
        // padding inside only, 2 and 3 are all padding, 5 is the last.
        let spans = [
            (3, false),
            (2, true),
            (3, false),
            (9, true),
            (1, false),
            (3, true),
        ]
        .map(|(len, pad)| (PathBuf::from("f"), len, pad));
        let s = Storage::from_spans(spans, 4, false);
        assert_eq!(s.padded_pieces(), &[(0, 3), (2, 0), (3, 0), (4, 2), (5, 0)]);
        assert_eq!(s.data_size(1), 4);
        assert_eq!(s.data_size(3), 0);
        let plain = layout(Path::new("/nowhere"), &[3, 0, 5, 2], 4);
        assert!(plain.padded_pieces().is_empty());
        assert_eq!(plain.data_size(2), 2);
    }

    #[test]
    fn files_at_any_paths_make_the_torrent() {
        let (a, b, info) = padded();
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (dir.path().join("x/one"), dir.path().join("y/two"));
        fs::create_dir_all(pa.parent().unwrap()).unwrap();
        fs::create_dir_all(pb.parent().unwrap()).unwrap();
        fs::write(&pa, &a).unwrap();
        fs::write(&pb, &b).unwrap();
        let s = Storage::with_paths(&info, &[pa.clone(), pb], false).unwrap();
        assert!(s.verify(&info.pieces).is_full());
        assert!(Storage::with_paths(&info, std::slice::from_ref(&pa), false).is_none());
        assert!(Storage::with_paths(&info, &[pa.clone(), pa.clone(), pa], false).is_none());
    }

    #[test]
    fn a_seed_reads_nothing_of_a_file_changed_since_it_was_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let s = layout(dir.path(), &[100, 50], 64);
        s.prepare().unwrap();
        s.write_at(0, &[1u8; 150]).unwrap();
        let mtimes: Vec<i128> = (0..2)
            .map(|i| mtime_ns(&fs::metadata(dir.path().join(format!("f{i}"))).unwrap()))
            .collect();
        let files = (0..2).map(|i| (dir.path().join(format!("f{i}")), [100, 50][i]));
        let seed = Storage::from_files(files.clone(), 64, false);
        assert!(
            seed.expect_unchanged(&mtimes[..1]).is_none(),
            "one mtime per file"
        );
        let seed = Storage::from_files(files, 64, false)
            .expect_unchanged(&mtimes)
            .unwrap();
        let mut buf = [0u8; 150];
        seed.read_at(0, &mut buf).unwrap();
        assert_eq!(seed.changed_file(), None);
        // Same length, new bytes, later mtime: what an in-place edit does.
        let f1 = dir.path().join("f1");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        fs::write(&f1, [2u8; 50]).unwrap();
        File::options()
            .write(true)
            .open(&f1)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(seed.changed_file().as_deref(), Some(f1.as_path()));
        let mut first = [0u8; 64];
        seed.read_at(0, &mut first).unwrap();
        let e = seed.read_at(100, &mut [0u8; 50]).unwrap_err();
        assert_eq!(source_changed(&e), Some(f1.as_path()), "{e}");
        // A piece across both files fails too, though f0 is as hashed.
        assert!(seed.read_at(64, &mut [0u8; 64]).is_err());
        fs::remove_file(dir.path().join("f0")).unwrap();
        let fresh = Storage::from_files([(dir.path().join("f0"), 100)], 64, false)
            .expect_unchanged(&mtimes[..1])
            .unwrap();
        let e = fresh.read_at(0, &mut [0u8; 10]).unwrap_err();
        assert!(
            source_changed(&e).is_some(),
            "a removed file has changed: {e}"
        );
    }

    #[test]
    fn a_seed_checks_each_piece_before_serving_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = layout(dir.path(), &[100, 50], 64);
        s.prepare().unwrap();
        s.write_at(0, &[1u8; 150]).unwrap();
        let hashes = s.hash_all().unwrap();
        let f1 = dir.path().join("f1");
        let mtime = fs::metadata(&f1).unwrap().modified().unwrap();
        let files = (0..2).map(|i| (dir.path().join(format!("f{i}")), [100, 50][i]));
        let seed = Storage::from_files(files, 64, false).verify_before_serving(hashes);
        let mut block = [0u8; 16];
        seed.read_block(0, 16, &mut block).unwrap();
        assert_eq!(block, [1u8; 16]);
        // Replaced by a file of the same length and mtime (a copy that
        // keeps times): only the hash tells.
        let tmp = dir.path().join("new");
        fs::write(&tmp, [2u8; 50]).unwrap();
        File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        fs::rename(&tmp, &f1).unwrap();
        let e = seed.read_block(2, 0, &mut block).unwrap_err();
        assert_eq!(
            source_changed(&e),
            Some(dir.path().join("f1").as_path()),
            "{e}"
        );
        // Piece 1 spans both files; its first file is f0.
        let e = seed.read_block(1, 0, &mut block).unwrap_err();
        assert_eq!(
            source_changed(&e),
            Some(dir.path().join("f0").as_path()),
            "{e}"
        );
        // Piece 0 matched before and is served without hashing again.
        seed.read_block(0, 0, &mut block).unwrap();
    }
}
