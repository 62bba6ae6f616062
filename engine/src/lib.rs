//! p2pfile's BitTorrent swarm engine.
//!
//! The engine never prints, never touches the terminal and never persists
//! anything itself: it reports through [`Event`]s and returns typed errors.
//! The binary decides what to show and what to store.
//!
//! Layout (leaf modules first):
//! - [`bencode`], [`metainfo`], [`magnet`]: pure parsing and building.
//! - [`wire`]: the peer wire codec (BEP 3, 6, 10), bytes in and bytes out.
//! - `bitfield`, `picker`, `choker`: pure piece and upload decisions.
//! - `storage`: piece ↔ file mapping, positioned I/O, hash checks.
//! - `peer`: one connection's tasks; `torrent`: the coordinator that owns
//!   picker, choker, peers and storage; `session`: listener, DHT, limits.

pub mod bencode;
pub mod magnet;
pub mod metainfo;
pub mod wire;
