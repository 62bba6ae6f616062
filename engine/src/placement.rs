//! Where a download's files live, before and after completion.
//!
//! A download is written to `DIR/.<name>.p2pfile-part` and renamed to
//! `DIR/<name>` only after every piece is verified and flushed, so a script
//! never finds a truncated file under the final name. An interrupted
//! download resumes from the verified pieces of its part file. A new
//! version of content that is already at `DIR/<name>` reuses every piece of
//! the old version that still matches (delta), then replaces it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::bitfield::Bitfield;
use crate::metainfo::Info;
use crate::storage::Storage;

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
    pub(crate) fn prepare(&self, info: &Info) -> io::Result<Prepared> {
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
/// stray extra bytes at the end of a file, right shape).
fn layout_matches(info: &Info, target: &Path) -> bool {
    info.files.iter().all(|f| {
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
    use super::*;
    use crate::builder::build;

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
        let prep = pl.prepare(&info).unwrap();
        assert_eq!(prep.have.count(), 0);
        assert!(pl.part.exists() && !pl.target.exists());
        prep.storage.write_at(0, &vec![5u8; 100_000]).unwrap();
        pl.finalize(&prep.storage).unwrap();
        assert!(!pl.part.exists());
        assert_eq!(fs::read(&pl.target).unwrap(), vec![5u8; 100_000]);
        let again = pl.prepare(&info).unwrap();
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
        let prep = pl.prepare(&info).unwrap();
        assert!(!prep.already_complete);
        assert_eq!(prep.have.count(), info.piece_count() - 1);
    }
}
