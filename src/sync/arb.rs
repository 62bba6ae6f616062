//! Strategies the sync property tests share (issue #10): index records and
//! sync messages. Bencode values, edits and the case count come from the
//! engine's `p2pfile_engine::arb`.

use proptest::prelude::*;

use super::index::{Content, FileRecord, Kind, Mtime, RelPath};
use super::protocol::Message;
use super::version::{DeviceId, VersionVector};

/// A path a peer may name: one to three components of a few characters.
pub(crate) fn rel_path() -> impl Strategy<Value = RelPath> {
    prop::collection::vec("[a-zA-Z0-9 _.~-]{1,10}", 1..4)
        .prop_filter_map("not a path a peer may name", |c| {
            RelPath::new(&c.join("/")).ok()
        })
}

/// A version vector of one to three devices.
fn version() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((0u64..8, any::<u64>()), 1..4).prop_map(|updates| {
        updates
            .into_iter()
            .fold(VersionVector::new(), |v, (d, now)| {
                v.update(DeviceId(d), now)
            })
    })
}

/// Any valid record: a live file with content up to 4 GiB (its piece
/// hashes made up), a directory, a symlink, or a tombstone of any of them.
pub(crate) fn record() -> impl Strategy<Value = FileRecord> {
    let kind = prop_oneof![
        Just(Kind::File),
        Just(Kind::Dir),
        "[^\u{0}]{1,40}".prop_map(|target| Kind::Symlink { target }),
    ];
    (
        (rel_path(), kind, any::<bool>(), 0u32..=0o777),
        (any::<i64>(), 0u32..1_000_000_000),
        (prop_oneof![0u64..100_000, 0u64..1 << 32], any::<u8>()),
        (
            version(),
            any::<u64>(),
            any::<Option<[u8; 32]>>(),
            any::<[u8; 32]>(),
        ),
    )
        .prop_map(
            |(
                (path, kind, deleted, mode),
                (secs, nanos),
                (size, seed),
                (version, by, sig, sig2),
            )| {
                let size = if deleted || kind != Kind::File {
                    0
                } else {
                    size
                };
                let pieces = (0..Content::piece_count(size))
                    .map(|i| [seed.wrapping_add(i as u8); 20])
                    .collect();
                FileRecord {
                    path,
                    kind,
                    deleted,
                    mode,
                    mtime: Mtime { secs, nanos },
                    content: Content::from_parts(size, pieces).expect("piece_count pieces"),
                    version,
                    modified_by: DeviceId(by),
                    signature: sig.map(|a| {
                        let mut s = [0u8; 64];
                        s[..32].copy_from_slice(&a);
                        s[32..].copy_from_slice(&sig2);
                        s
                    }),
                }
            },
        )
}

/// Up to `max` records with distinct paths, as a batch must have.
pub(crate) fn batch(max: usize) -> impl Strategy<Value = Vec<FileRecord>> {
    prop::collection::vec(record(), 0..=max).prop_map(|mut records| {
        let mut seen = std::collections::BTreeSet::new();
        records.retain(|r| seen.insert(r.path.clone()));
        records
    })
}

/// Any sync message.
pub(crate) fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), 1..=u16::MAX, any::<bool>(), any::<[u8; 32]>()).prop_map(
            |(device, port, can_write, proof)| Message::Hello {
                device: DeviceId(device),
                port,
                can_write,
                proof,
            }
        ),
        (batch(4), any::<bool>())
            .prop_map(|(records, complete)| Message::Index { records, complete }),
        prop::collection::vec(prop::collection::vec(any::<[u8; 20]>(), 1..4), 0..4)
            .prop_map(|packs| Message::Want { packs }),
    ]
}
