//! BEP 9: fetching the info dictionary from peers for a magnet, and
//! serving ours to peers that fetch it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::metainfo::{InfoHash, MAX_INFO_LEN};
use crate::peer::PeerKey;
use crate::wire::{METADATA_PIECE_SIZE, MetadataMsg};

/// A metadata request not answered in this time goes to another peer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Progress of a BEP 9 fetch.
#[derive(Debug, Default)]
pub(crate) struct MetadataFetch {
    size: Option<usize>,
    pieces: Vec<Option<Bytes>>,
    requested: HashMap<u32, (PeerKey, Instant)>,
}

/// Result of feeding a message to the fetch.
pub(crate) enum Fetched {
    /// Nothing complete yet.
    Pending,
    /// All pieces arrived and hash to the info-hash.
    Complete(Vec<u8>),
    /// All pieces arrived but the hash is wrong: start over.
    Corrupt,
}

impl MetadataFetch {
    /// A peer told us the size in its extension handshake.
    pub(crate) fn offer_size(&mut self, size: u32) {
        let size = size as usize;
        if self.size.is_some() || size == 0 || size > MAX_INFO_LEN {
            return;
        }
        self.size = Some(size);
        self.pieces = vec![None; size.div_ceil(METADATA_PIECE_SIZE)];
    }

    /// Pieces to request now from the peers that offer metadata
    /// (`offering`), one outstanding request per piece.
    pub(crate) fn requests(&mut self, offering: &[PeerKey], now: Instant) -> Vec<(PeerKey, u32)> {
        let mut out = Vec::new();
        if offering.is_empty() {
            return out;
        }
        self.requested
            .retain(|_, (k, at)| now.duration_since(*at) < REQUEST_TIMEOUT && offering.contains(k));
        let mut turn = 0;
        for (i, piece) in self.pieces.iter().enumerate() {
            let i = i as u32;
            if piece.is_some() || self.requested.contains_key(&i) {
                continue;
            }
            let key = offering[turn % offering.len()];
            turn += 1;
            self.requested.insert(i, (key, now));
            out.push((key, i));
        }
        out
    }

    /// A peer answered.
    pub(crate) fn on_message(
        &mut self,
        from: PeerKey,
        msg: MetadataMsg,
        info_hash: InfoHash,
    ) -> Fetched {
        let Some(size) = self.size else {
            return Fetched::Pending;
        };
        match msg {
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => {
                let i = piece as usize;
                let expected =
                    (size - (i * METADATA_PIECE_SIZE).min(size)).min(METADATA_PIECE_SIZE);
                if total_size as usize != size || i >= self.pieces.len() || data.len() != expected {
                    return Fetched::Pending;
                }
                self.requested.remove(&piece);
                self.pieces[i] = Some(data);
                if self.pieces.iter().all(Option::is_some) {
                    let raw: Vec<u8> = self
                        .pieces
                        .iter()
                        .flatten()
                        .flat_map(|b| b.iter().copied())
                        .collect();
                    if Sha1::digest(&raw).as_slice() == info_hash.0 {
                        return Fetched::Complete(raw);
                    }
                    self.pieces.iter_mut().for_each(|p| *p = None);
                    return Fetched::Corrupt;
                }
            }
            MetadataMsg::Reject { piece } => {
                if self.requested.get(&piece).is_some_and(|(k, _)| *k == from) {
                    self.requested.remove(&piece);
                }
            }
            MetadataMsg::Request { .. } => {}
        }
        Fetched::Pending
    }

    /// A peer left: its requests go to others.
    pub(crate) fn peer_gone(&mut self, key: PeerKey) {
        self.requested.retain(|_, (k, _)| *k != key);
    }
}

/// Our answer to a peer's metadata request.
pub(crate) fn serve(raw: Option<&[u8]>, piece: u32) -> MetadataMsg {
    let Some(raw) = raw else {
        return MetadataMsg::Reject { piece };
    };
    let start = piece as usize * METADATA_PIECE_SIZE;
    if start >= raw.len() {
        return MetadataMsg::Reject { piece };
    }
    let end = (start + METADATA_PIECE_SIZE).min(raw.len());
    MetadataMsg::Data {
        piece,
        total_size: raw.len() as u32,
        data: Bytes::copy_from_slice(&raw[start..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_from_two_peers_and_verify() {
        let raw: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let hash = InfoHash(Sha1::digest(&raw).into());
        let mut f = MetadataFetch::default();
        assert!(f.requests(&[1, 2], Instant::now()).is_empty());
        f.offer_size(raw.len() as u32);
        let reqs = f.requests(&[1, 2], Instant::now());
        assert_eq!(reqs, vec![(1, 0), (2, 1), (1, 2)]);
        assert!(f.requests(&[1, 2], Instant::now()).is_empty());
        for (k, p) in reqs {
            match f.on_message(k, serve(Some(&raw), p), hash) {
                Fetched::Complete(got) => assert_eq!(got, raw),
                Fetched::Pending => assert!(p < 2),
                Fetched::Corrupt => panic!("corrupt"),
            }
        }
    }

    #[test]
    fn wrong_hash_starts_over_and_rejects_reassign() {
        let raw = vec![9u8; 100];
        let mut f = MetadataFetch::default();
        f.offer_size(100);
        let reqs = f.requests(&[7], Instant::now());
        assert!(matches!(
            f.on_message(7, serve(Some(&raw), 0), InfoHash([0; 20])),
            Fetched::Corrupt
        ));
        f.requests(&[7], Instant::now());
        f.on_message(
            7,
            MetadataMsg::Reject { piece: reqs[0].1 },
            InfoHash([0; 20]),
        );
        assert_eq!(f.requests(&[8], Instant::now()), vec![(8, 0)]);
        assert!(matches!(serve(None, 0), MetadataMsg::Reject { piece: 0 }));
        assert!(matches!(
            serve(Some(&raw), 1),
            MetadataMsg::Reject { piece: 1 }
        ));
    }
}
