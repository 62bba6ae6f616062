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
    /// The session has shut down.
    #[error("bug: session is closed")]
    Closed,
}
