//! The pure core of `p2pfile sync DIR`: two-way folder sync between peers.
//!
//! Design in brief:
//!
//! - A folder is named by a key ([`key`]). The read-write key signs index
//!   records; the read-only key can join, fetch and check signatures. The
//!   swarm's info-hashes are mixed with the key's read secret, so the public
//!   content hash of a file does not open the folder's swarm.
//! - Each device keeps an index: one [`index::FileRecord`] per path with the
//!   file's own BitTorrent v1 piece hashes and a [`version::VersionVector`].
//!   The pieces depend only on the bytes, so the same content has the same
//!   identity on every peer and under any name (renames, copies and
//!   pre-filled folders move no data).
//! - A [`scan`] compares the disk with the previous index: size and mtime
//!   decide what to re-hash; a changed file gets its version bumped, a
//!   vanished one becomes a tombstone. `.p2pignore` files exclude paths.
//! - Peers exchange index batches; [`merge::decide`] compares each remote
//!   record with the local one: fast-forward, identical content (no
//!   conflict), a delete against a modification (the modification wins) or
//!   a real conflict (both kept, the loser under a `.sync-conflict-` name).
//! - [`plan`] turns those decisions into ordered disk actions: directories
//!   before their files, reuse of local bytes by content id (a rename moves
//!   no data), deletes to the trash after their contents, and nothing
//!   written through a symlink.
//!
//! Nothing here opens a socket or spawns a task; `commands/sync.rs` wires it
//! to the engine, the state database and the output.
//!
//! Submodules, pure: [`key`] folder keys, [`version`] version vectors,
//! [`index`] records and their encoding, [`scan`] the local scan, [`merge`]
//! the decision rules, [`plan`] the ordered actions, [`pack`] the torrents
//! contents travel in, [`protocol`] the
//! messages between peers, [`folder`] one folder's model (our index, the
//! peers', who is behind). With I/O: [`apply`] every change sync makes on
//! disk (the trash, commits that never clobber an edit), [`discovery`] LAN
//! announcements by broadcast and multicast.

pub mod apply;
#[cfg(test)]
mod arb;
pub mod discovery;
pub mod folder;
pub mod index;
pub mod key;
pub mod merge;
pub mod pack;
pub mod plan;
pub mod protocol;
pub mod scan;
pub mod version;
