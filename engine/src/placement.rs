//! Where a download's files live, before and after completion.
//!
//! A download is written to `DIR/.<name>.p2pfile-part` and renamed to
//! `DIR/<name>` only after every piece is verified and flushed, so a script
//! never finds a truncated file under the final name. An interrupted
//! download resumes from the verified pieces of its part file. A new
//! version of content that is already at `DIR/<name>` reuses every piece of
//! the old version that still matches at the same path (delta), and any
//! piece the caller knows to lie elsewhere on this machine ([`PieceSource`]
//! hints, checked by hash), then replaces it. BEP 47 pad files are neither
//! created nor checked.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::bitfield::Bitfield;
use crate::metainfo::Info;
use crate::storage::{PieceSource, Storage};

/// The final and temporary paths of one download.
#[derive(Clone, Debug)]
pub(crate) struct Placement {
    /// `DIR/<name>`.
    pub target: PathBuf,
    /// `DIR/.<name>.p2pfile-part`.
    pub part: PathBuf,
    old: PathBuf,
}

/// Storage ready for downloading (or seeding, when already complete).
pub(crate) struct Prepared {
    pub storage: Storage,
    pub have: Bitfield,
    /// The target already held exactly this content.
    pub already_complete: bool,
}

impl Placement {
    pub(crate) fn new(dir: &Path, info: &Info) -> Self {
        Self {
            target: dir.join(&info.name),
            part: dir.join(format!(".{}.p2pfile-part", info.name)),
            old: dir.join(format!(".{}.p2pfile-old", info.name)),
        }
    }

    /// Checks what is already on disk and opens the part for writing.
    ///
    /// Pieces come, in this order, from the part (resume), from the same
    /// piece of the target (an older version), and from `hints` (bytes
    /// the caller believes are the piece, used when they hash right).
    pub(crate) fn prepare(&self, info: &Info, hints: &[PieceSource]) -> io::Result<Prepared> {
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

    /// Flushes the part and moves it to the target, replacing an older
    /// version there.
    pub(crate) fn finalize(&self, storage: &Storage) -> io::Result<()> {
        storage.sync_all()?;
        if fs::symlink_metadata(&self.target).is_ok() {
            if fs::symlink_metadata(&self.old).is_ok() {
                remove_any(&self.old)?;
            }
            fs::rename(&self.target, &self.old)?;
            fs::rename(&self.part, &self.target)?;
            remove_any(&self.old)?;
        } else {
            fs::rename(&self.part, &self.target)?;
        }
        if let Some(dir) = self.target.parent() {
            // Make the rename itself durable.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
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
        pl.finalize(&prep.storage).unwrap();
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
        pl.finalize(&prep.storage).unwrap();
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
        pl.finalize(&prep.storage).unwrap();
        assert_eq!(fs::read(pl.target.join("renamed.bin")).unwrap(), c);
        assert_eq!(fs::read(pl.target.join("other.bin")).unwrap(), d);

        // Only bad hints: nothing is reused, nothing fails.
        let other = tempfile::tempdir().unwrap();
        let pl = Placement::new(other.path(), &info);
        let prep = pl.prepare(&info, &hints[..3]).unwrap();
        assert_eq!(prep.have.count(), 0);
    }
}
