//! Packs: the torrents file contents travel in.
//!
//! A pack is a list of contents, sorted by content id, laid out as one v1
//! torrent with every file padded to a piece boundary (BEP 47). A content's
//! pieces are hashed the same way in the index ([`Content::from_reader`]),
//! so a pack's piece hashes are its contents' hashes end to end: any peer
//! computes the same torrent, and so the same info-hash, from the records
//! alone. Each pack runs in its own keyed swarm, where every peer that
//! holds the contents seeds and every peer that fetches them trades.
//!
//! Small files share packs, so thousands of them cost one torrent and one
//! connection per peer, not one each. Which files share a pack must come
//! out the same on every peer that fetches them at once (so they join one
//! swarm): [`group`] sorts by content id and cuts at fixed limits, per
//! device that made the change.

use std::collections::BTreeMap;

use p2pfile_engine::metainfo::{FileEntry, Info, MetainfoError, pad_to_pieces};
use sha1::{Digest, Sha1};

use super::index::{Content, FileRecord};
use super::version::DeviceId;

/// Files up to this size share packs; larger ones travel alone.
pub const SMALL_FILE: u64 = 1 << 20;
/// Most contents in one pack.
pub const MAX_PACK_FILES: usize = 1000;
/// Most bytes in one pack of small files.
pub const MAX_PACK_BYTES: u64 = 64 << 20;

/// Tag in front of the bytes hashed into a pack id.
const PACK_TAG: &[u8] = b"p2pfile pack v1";

/// Contents that travel in one torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pack {
    contents: Vec<Content>,
}

impl Pack {
    /// A pack of these contents (sorted and deduplicated here; empty files
    /// are left out: they need no transfer).
    pub fn new(contents: impl IntoIterator<Item = Content>) -> Pack {
        let mut by_id: BTreeMap<[u8; 20], Content> = BTreeMap::new();
        for c in contents {
            if c.size > 0 {
                by_id.entry(c.id()).or_insert(c);
            }
        }
        Pack {
            contents: by_id.into_values().collect(),
        }
    }

    /// The contents, by id.
    pub fn contents(&self) -> &[Content] {
        &self.contents
    }

    /// The content ids, in pack order.
    pub fn ids(&self) -> Vec<[u8; 20]> {
        self.contents.iter().map(Content::id).collect()
    }

    /// The pack's id: a hash of its content ids.
    pub fn id(&self) -> [u8; 20] {
        let mut h = Sha1::new();
        h.update(PACK_TAG);
        for c in &self.contents {
            h.update(c.id());
        }
        h.finalize().into()
    }

    /// The torrent: named by the pack id, one file per content named by
    /// its content id, each padded to a piece boundary. Fails if the
    /// contents do not share a piece length (a bug in the grouping).
    pub fn info(&self) -> Result<Info, MetainfoError> {
        let piece_length = self.contents.first().map_or(16 * 1024, |c| c.piece_length);
        debug_assert!(
            self.contents.iter().all(|c| c.piece_length == piece_length),
            "bug: a pack mixes piece lengths"
        );
        let files = pad_to_pieces(
            self.contents
                .iter()
                .map(|c| FileEntry::new(vec![hex(&c.id())], c.size)),
            piece_length,
        );
        let pieces = self
            .contents
            .iter()
            .flat_map(|c| c.pieces.iter().copied())
            .collect();
        Info::new(&hex(&self.id()), piece_length, pieces, files, Vec::new())
    }

    /// Where each content's pieces start in the torrent.
    pub fn first_pieces(&self) -> Vec<u32> {
        let mut at = 0u32;
        self.contents
            .iter()
            .map(|c| {
                let first = at;
                at += c.pieces.len() as u32;
                first
            })
            .collect()
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Cuts the records to fetch into packs: a large file alone; small files
/// together, per device that made the change (so peers fetching one
/// device's changes at once make the same packs), in content-id order, at
/// most [`MAX_PACK_FILES`] files and [`MAX_PACK_BYTES`] bytes a pack.
pub fn group<'a>(records: impl IntoIterator<Item = &'a FileRecord>) -> Vec<Pack> {
    let mut packs = Vec::new();
    let mut small: BTreeMap<DeviceId, BTreeMap<[u8; 20], Content>> = BTreeMap::new();
    for r in records {
        if r.size() == 0 {
            continue;
        }
        if r.size() > SMALL_FILE {
            packs.push(Pack::new([r.content.clone()]));
        } else {
            small
                .entry(r.modified_by)
                .or_default()
                .insert(r.content.id(), r.content.clone());
        }
    }
    for contents in small.into_values() {
        let mut current = Vec::new();
        let mut bytes = 0;
        for c in contents.into_values() {
            if !current.is_empty()
                && (current.len() == MAX_PACK_FILES || bytes + c.size > MAX_PACK_BYTES)
            {
                packs.push(Pack::new(std::mem::take(&mut current)));
                bytes = 0;
            }
            bytes += c.size;
            current.push(c);
        }
        if !current.is_empty() {
            packs.push(Pack::new(current));
        }
    }
    packs.dedup_by_key(|p| p.id());
    packs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::index::tests::file;

    fn record(path: &str, bytes: &[u8], by: u64) -> FileRecord {
        file(path, bytes, by, 1)
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_pack_torrent_carries_its_contents_pieces() {
        let a = Content::from_reader(&bytes(5000, 1)[..], 5000).unwrap();
        let b = Content::from_reader(&bytes(40_000, 2)[..], 40_000).unwrap();
        let pack = Pack::new([b.clone(), a.clone(), a.clone()]);
        assert_eq!(pack.contents().len(), 2, "deduplicated");
        let info = pack.info().unwrap();
        let mut want = pack.contents()[0].pieces.clone();
        want.extend(&pack.contents()[1].pieces);
        assert_eq!(info.pieces, want);
        assert_eq!(info.piece_count(), a.pieces.len() + b.pieces.len());
        let firsts = pack.first_pieces();
        assert_eq!(firsts[0], 0);
        assert_eq!(firsts[1] as usize, pack.contents()[0].pieces.len());
        // Order of construction does not matter: same torrent.
        assert_eq!(
            Pack::new([a, b]).info().unwrap().info_hash(),
            info.info_hash()
        );
    }

    #[test]
    fn grouping_is_deterministic_and_bounded() {
        let mut records = Vec::new();
        for i in 0..2500 {
            records.push(record(&format!("s{i}"), &bytes(100 + i % 50, i as u8), 1));
        }
        records.push(record("big", &bytes(2 << 20, 9), 1));
        records.push(record("empty", b"", 1));
        records.push(record("other", &bytes(300, 3), 2));
        let packs = group(&records);
        // 2500 small of device 1 → 3 packs, 1 large, 1 of device 2.
        assert_eq!(packs.len(), 5);
        assert!(packs.iter().all(|p| p.contents().len() <= MAX_PACK_FILES));
        let mut reversed = records.clone();
        reversed.reverse();
        let again = group(&reversed);
        let ids = |ps: &[Pack]| {
            let mut v: Vec<_> = ps.iter().map(Pack::id).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&packs), ids(&again), "same packs whatever the order");
    }
}
