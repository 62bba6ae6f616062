//! Making a torrent from files on disk.
//!
//! The walk is sorted by name bytes and the piece size is a fixed function
//! of the total size, so the same content under the same name gives the
//! same info-hash on any machine.
//!
//! A file with any execute bit set gets BEP 47 `attr` `x` (as libtorrent's
//! `create_torrent` does), so the downloader can set it again. A file
//! without one gets no `attr` key: its info-hash is the same as before
//! p2pfile carried the bit.
//!
//! Symlinks: a link to a regular file is served as that file's content; a
//! link to a directory, a dangling link and anything that is neither a file
//! nor a directory (socket, fifo, device) is skipped and reported in
//! [`Built::skipped`], so walks never loop and never block on a fifo.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::metainfo::{FileEntry, Info, MetainfoError, piece_length_for};
use crate::storage::Storage;

/// Errors while making a torrent.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading the tree failed.
    #[error("cannot read {path}")]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A name that cannot go into a torrent (not UTF-8, or unsafe).
    #[error("cannot serve {0}: its name is not valid UTF-8")]
    BadName(PathBuf),
    /// The info dictionary could not be built.
    #[error("cannot build torrent")]
    Metainfo(#[source] MetainfoError),
}

/// A torrent made from disk, with what the walk left out.
#[derive(Debug)]
pub struct Built {
    /// The info dictionary.
    pub info: Info,
    /// Where the content lives (the file, or the top directory).
    pub root: PathBuf,
    /// Paths skipped by the symlink and special-file rule.
    pub skipped: Vec<PathBuf>,
    /// The scan the torrent was built from.
    pub scan: Scan,
}

/// One file found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedFile {
    /// Path components below the root (empty for a single file).
    pub path: Vec<String>,
    /// Where it is on disk.
    pub disk_path: PathBuf,
    /// Length in bytes.
    pub length: u64,
    /// Modification time, nanoseconds since the epoch (0 if unknown).
    pub mtime_ns: i128,
    /// Any execute bit is set (of the file a symlink points to).
    pub executable: bool,
}

/// What a path holds, before hashing: enough to tell whether content
/// changed since an earlier build (same files, sizes and mtimes).
#[derive(Clone, Debug)]
pub struct Scan {
    /// The canonical path.
    pub root: PathBuf,
    /// The torrent name (last component of the path).
    pub name: String,
    /// Whether the path is one file.
    pub single_file: bool,
    /// Files in torrent order.
    pub files: Vec<ScannedFile>,
    /// Empty directories below the root.
    pub empty_dirs: Vec<Vec<String>>,
    /// Paths skipped by the symlink and special-file rule.
    pub skipped: Vec<PathBuf>,
}

/// Walks `path` without reading file contents.
pub fn scan(path: &Path) -> Result<Scan, BuildError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    let root = fs::canonicalize(path).map_err(io_err(path))?;
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BuildError::BadName(root.clone()))?
        .to_string();
    let meta = fs::metadata(&root).map_err(io_err(&root))?;
    let mut scan = Scan {
        root: root.clone(),
        name,
        single_file: meta.is_file(),
        files: Vec::new(),
        empty_dirs: Vec::new(),
        skipped: Vec::new(),
    };
    if scan.single_file {
        scan.files.push(scanned(vec![], root, &meta));
    } else {
        walk_dir(&root, &mut Vec::new(), &mut scan)?;
    }
    Ok(scan)
}

/// Hashes a scan's content on all cores, reading it once, and builds the torrent.
pub fn hash(scan: Scan) -> Result<Built, BuildError> {
    if !scan.single_file && scan.files.is_empty() {
        // Real clients reject a v1 torrent with an empty file list.
        return Err(BuildError::Metainfo(MetainfoError::Invalid(
            "directory holds no files".into(),
        )));
    }
    let total: u64 = scan.files.iter().map(|f| f.length).sum();
    let piece_length = piece_length_for(total);
    let storage = Storage::from_files(
        scan.files.iter().map(|f| (f.disk_path.clone(), f.length)),
        piece_length,
        false,
    );
    let pieces = storage.hash_all().map_err(|source| BuildError::Io {
        path: scan.root.clone(),
        source,
    })?;
    let files = scan
        .files
        .iter()
        .map(|f| {
            let mut entry = FileEntry::new(f.path.clone(), f.length);
            entry.attr.executable = f.executable;
            entry
        })
        .collect();
    let info = Info::new(
        &scan.name,
        piece_length,
        pieces,
        files,
        scan.empty_dirs.clone(),
    )
    .map_err(BuildError::Metainfo)?;
    Ok(Built {
        info,
        root: scan.root.clone(),
        skipped: scan.skipped.clone(),
        scan,
    })
}

/// Walks `path`, hashes its content on all cores and builds the torrent.
pub fn build(path: &Path) -> Result<Built, BuildError> {
    hash(scan(path)?)
}

fn scanned(path: Vec<String>, disk_path: PathBuf, meta: &fs::Metadata) -> ScannedFile {
    ScannedFile {
        path,
        disk_path,
        length: meta.len(),
        mtime_ns: crate::storage::mtime_ns(meta),
        executable: meta.permissions().mode() & 0o111 != 0,
    }
}

fn walk_dir(dir: &Path, rel: &mut Vec<String>, walk: &mut Scan) -> Result<(), BuildError> {
    let io_err = |source| BuildError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = fs::read_dir(dir)
        .map_err(io_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err)?;
    entries.sort_by_key(|e| e.file_name());
    if entries.is_empty() && !rel.is_empty() {
        walk.empty_dirs.push(rel.clone());
    }
    for entry in entries {
        let path = entry.path();
        let name = entry
            .file_name()
            .to_str()
            .ok_or_else(|| BuildError::BadName(path.clone()))?
            .to_string();
        let link = entry.file_type().map_err(io_err)?.is_symlink();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(_) if link => {
                walk.skipped.push(path);
                continue;
            }
            Err(source) => return Err(BuildError::Io { path, source }),
        };
        rel.push(name);
        if meta.is_file() {
            walk.files.push(scanned(rel.clone(), path, &meta));
        } else if meta.is_dir() && !link {
            walk_dir(&path, rel, walk)?;
        } else {
            walk.skipped.push(path);
        }
        rel.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_in_different_places_same_hash() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for base in [a.path(), b.path()] {
            let t = base.join("tree");
            fs::create_dir_all(t.join("sub/empty")).unwrap();
            fs::write(t.join("z.txt"), b"zzz").unwrap();
            fs::write(t.join("sub/a.txt"), vec![7u8; 40000]).unwrap();
            fs::write(t.join("e"), b"").unwrap();
        }
        let ba = build(&a.path().join("tree")).unwrap();
        let bb = build(&b.path().join("tree")).unwrap();
        assert_eq!(ba.info.info_hash(), bb.info.info_hash());
        let paths: Vec<_> = ba.info.files.iter().map(|f| f.path.join("/")).collect();
        assert_eq!(paths, vec!["e", "sub/a.txt", "z.txt"]);
        assert_eq!(ba.info.empty_dirs, vec![vec!["sub", "empty"]]);
    }

    #[test]
    fn symlink_rule() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(t.join("dir")).unwrap();
        fs::write(t.join("real"), b"data").unwrap();
        std::os::unix::fs::symlink(t.join("real"), t.join("link")).unwrap();
        std::os::unix::fs::symlink(t.join("dir"), t.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(t.join("gone"), t.join("dangling")).unwrap();
        fs::write(t.join("dir/x"), b"x").unwrap();
        let built = build(&t).unwrap();
        let paths: Vec<_> = built.info.files.iter().map(|f| f.path.join("/")).collect();
        assert_eq!(paths, vec!["dir/x", "link", "real"]);
        assert_eq!(built.skipped.len(), 2);
    }

    #[test]
    fn single_file_and_missing_path() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("one.bin"), b"hello").unwrap();
        let built = build(&d.path().join("one.bin")).unwrap();
        assert!(built.info.single_file);
        assert_eq!(built.info.name, "one.bin");
        assert!(matches!(
            build(&d.path().join("missing")),
            Err(BuildError::Io { .. })
        ));
    }

    /// Any execute bit makes `attr` `x`; a file without one encodes as it
    /// always did, so its info-hash does not change.
    #[test]
    fn execute_bit_becomes_attr_x() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(&t).unwrap();
        fs::write(t.join("plain"), b"data").unwrap();
        fs::write(t.join("run.sh"), b"#!/bin/sh\n").unwrap();
        let mode = |p: &Path, m| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        mode(&t.join("plain"), 0o644);
        mode(&t.join("run.sh"), 0o744);
        let built = build(&t).unwrap();
        let exec: Vec<_> = built.info.files.iter().map(|f| f.executable()).collect();
        assert_eq!(exec, vec![false, true]);
        let raw = String::from_utf8_lossy(built.info.as_bytes()).into_owned();
        assert!(raw.contains("d6:lengthi4e4:pathl5:plainee"), "{raw}");
        assert!(
            raw.contains("d4:attr1:x6:lengthi10e4:pathl6:run.shee"),
            "{raw}"
        );

        // Group or other execute alone counts too; so does a single file.
        mode(&t.join("run.sh"), 0o641);
        let single = build(&t.join("run.sh")).unwrap();
        assert!(single.info.files[0].executable());
        mode(&t.join("run.sh"), 0o644);
        let plain = build(&t.join("run.sh")).unwrap();
        assert!(!plain.info.files[0].executable());
        assert_ne!(plain.info.info_hash(), single.info.info_hash());
        assert!(!String::from_utf8_lossy(plain.info.as_bytes()).contains("attr"));
    }
}
