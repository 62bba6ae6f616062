//! p2pfile's BitTorrent swarm engine.
//!
//! The engine never prints, never touches the terminal and never persists
//! anything itself: it reports through [`Event`]s and returns typed errors.
//! The binary decides what to show and what to store.
//!
//! Layout (leaf modules first):
//! - [`bencode`], [`metainfo`], [`magnet`]: pure parsing and building;
//!   [`builder`] makes a torrent from files on disk.
//! - [`wire`]: the peer wire codec (BEP 3, 6, 9, 10, 11), bytes in and out.
//! - [`bitfield`], [`picker`], [`choker`]: pure piece and upload decisions.
//! - [`storage`]: piece ↔ file mapping, positioned I/O, hash checks;
//!   [`utc`]: timestamps for names people read.
//! - `peer`: one connection's tasks; `torrent`: the coordinator that owns
//!   picker, choker, peers and storage; `dht`: the private DHT;
//!   [`session`]: listener, DHT, rate limits, and the public handle;
//!   `snub`: when a peer's requests count as unanswered (pure timers).
//!   `bans`: the session's ban list with expiry (pure, clock passed in);
//!   [`zone`]: which pieces to fetch across a slow link between zones (pure).

pub mod bencode;
pub mod bitfield;
pub mod builder;
pub mod choker;
pub mod magnet;
pub mod metainfo;
pub mod picker;
pub mod storage;
pub mod utc;
pub mod wire;
pub mod zone;

mod admission;
/// Property-test strategies (issue #10); not a public interface.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod arb;
mod bans;

mod dht;
mod dial;
mod error;
mod event;
mod hosts;
mod peer;
mod placement;
pub mod rate;
pub mod session;
mod shared;
mod snub;
mod torrent;

pub use bans::BanReason;
pub use dht::DhtNodes;
pub use error::{Error, TorrentError};
pub use event::{Event, Phase, Stats, TorrentEvent};
pub use placement::{TargetCheck, bytes_to_write, verify_target};
pub use session::{AddTorrent, PortChoice, Session, SessionConfig, Source, TorrentOptions};
pub use storage::PieceSource;
pub use torrent::Target;
