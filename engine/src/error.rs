//! The engine's error type, collected from its modules.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::builder::BuildError;
use crate::metainfo::{InfoHash, MetainfoError};

/// Errors the engine returns to its caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested port (TCP for peers or UDP for the DHT) is taken.
    #[error("port {port} on {ip} is taken")]
    PortTaken {
        /// Address asked for.
        ip: std::net::IpAddr,
        /// Port asked for.
        port: u16,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// Every port of the range is taken.
    #[error("every port in {first}-{last} on {ip} is taken")]
    NoFreePort {
        /// Address asked for.
        ip: std::net::IpAddr,
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
    },
    /// The address cannot be bound at all (not an address of this host).
    #[error("cannot listen on {addr}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// Making a torrent from disk failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Bad metainfo.
    #[error(transparent)]
    Metainfo(#[from] MetainfoError),
    /// Disk I/O on a torrent's files failed.
    #[error("cannot use {path}")]
    Storage {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A rate limit the engine cannot honour (below one block a second).
    #[error("{0}")]
    InvalidLimit(String),
    /// The torrent is already in this session.
    #[error("torrent {0} was given twice")]
    Duplicate(InfoHash),
    /// No torrent with this info-hash is in the session.
    #[error("torrent {0} is not in this session")]
    UnknownTorrent(InfoHash),
    /// A zone name that [`crate::zone::is_valid`] refuses.
    #[error("zone {0:?} is not 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")]
    InvalidZone(String),
    /// An extension message for a name the session did not register.
    #[error("extension {0:?} is not registered in this session")]
    UnknownExtension(String),
    /// [`crate::Target::SeedFiles`] with another number of paths than the
    /// torrent has files.
    #[error("{given} paths given to seed a torrent of {expected} files (pad files not counted)")]
    SeedFilesCount {
        /// Files in the torrent that are not pad files.
        expected: usize,
        /// Paths given.
        given: usize,
    },
    /// [`crate::Target::SeedFiles`] with a magnet: which path is which
    /// file is known only from the info.
    #[error("seeding files at given paths needs the torrent's info, not a magnet")]
    SeedFilesNeedInfo,
    /// The session has shut down.
    #[error("bug: session is closed")]
    Closed,
}

/// Why a torrent stopped for good. Carried by [`crate::Event::Failed`], so
/// the caller can tell a full disk (free space, run again) from other I/O
/// trouble without reading message strings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TorrentError {
    /// The file system holding the content has no space left.
    #[error("no space left on the device holding {path}")]
    NoSpace {
        /// The file or directory being written.
        path: PathBuf,
    },
    /// Checked before the first write: the file system holding the
    /// download has less space free than the bytes still to be written.
    #[error("not enough space for {path}: needs {need} bytes, {free} bytes free")]
    NotEnoughSpace {
        /// The download's part (`DIR/.<name>.p2pfile-part`).
        path: PathBuf,
        /// Bytes still to be written.
        need: u64,
        /// Bytes free on its file system.
        free: u64,
    },
    /// Reading, writing or moving the content failed for another reason.
    #[error("cannot {action} {path}: {message}")]
    Io {
        /// What was being done: "prepare", "write", "move", "read".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The kind of the underlying error (permission denied, say).
        kind: io::ErrorKind,
        /// The underlying error's text.
        message: String,
    },
    /// The info dictionary that peers sent, though it matched the
    /// info-hash, is not a torrent we can use.
    #[error("metadata from peers is not a valid torrent: {0}")]
    BadMetadata(String),
}

impl TorrentError {
    /// Classifies an I/O error met while doing `action` on `path`.
    pub(crate) fn io(action: &'static str, path: &std::path::Path, e: &io::Error) -> Self {
        if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC) {
            return TorrentError::NoSpace {
                path: path.to_path_buf(),
            };
        }
        TorrentError::Io {
            action,
            path: path.to_path_buf(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_is_its_own_kind() {
        let e = io::Error::from_raw_os_error(libc::ENOSPC);
        let t = TorrentError::io("write", std::path::Path::new("/x/y"), &e);
        assert_eq!(
            t,
            TorrentError::NoSpace {
                path: "/x/y".into()
            }
        );
        assert_eq!(t.to_string(), "no space left on the device holding /x/y");
        let e = io::Error::from_raw_os_error(libc::EACCES);
        let t = TorrentError::io("write", std::path::Path::new("/x/y"), &e);
        assert!(matches!(
            t,
            TorrentError::Io {
                kind: io::ErrorKind::PermissionDenied,
                ..
            }
        ));
        assert!(t.to_string().starts_with("cannot write /x/y: "), "{t}");
    }
}
