//! The messages sync peers exchange over the engine's registered BEP 10
//! extension [`EXTENSION`], on the folder's rendezvous swarm.
//!
//! A connection starts with a [`Message::Hello`] each way that proves
//! knowledge of the folder key (the rendezvous swarm's info-hash is derived
//! from the key already, so a process without it cannot even connect; the
//! proof keeps a peer that learned the hash some other way out too). Then
//! each side sends its whole index in [`Message::Index`] batches, the last
//! marked `complete`, and later batches with every change. A peer that
//! lacks content asks for it with [`Message::Want`]; whoever holds it seeds
//! it in the content's keyed swarm.
//!
//! Bytes in, bytes out: nothing here touches a socket. Every field from a
//! peer is checked, and decoding never panics.

use p2pfile_engine::bencode::{self, Value};

use super::index::{FileRecord, IndexError, MAX_BATCH, decode_batch, encode_batch};
use super::key::FolderKey;
use super::version::DeviceId;

/// The extension's name in the BEP 10 handshake.
pub const EXTENSION: &str = "p2pfile_sync";

/// Largest encoded batch we send: half of the engine's 1 MiB message limit,
/// leaving room for the envelope.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Most content ids in one `want`, over all its packs.
pub const MAX_WANTS: usize = 10_000;

/// Tag in front of the bytes a hello proof covers.
const HELLO_TAG: &[u8] = b"p2pfile hello v1";

/// One message between sync peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Who we are and where we listen, with proof that we hold the key.
    Hello {
        /// The sender's device id.
        device: DeviceId,
        /// The sender's TCP port (its engine listens there), so the
        /// receiver can dial it for content swarms.
        port: u16,
        /// The sender holds the read-write key (it may send changes).
        can_write: bool,
        /// `key.proof(tag || folder id || device || port || can_write)`.
        proof: [u8; 32],
    },
    /// Records of the sender's index.
    Index {
        /// The records (at most [`MAX_BATCH`]).
        records: Vec<FileRecord>,
        /// The last batch of the full index sent after a hello; every later
        /// batch is complete too (it carries changes).
        complete: bool,
    },
    /// Packs the sender fetches and asks the receiver to seed (when it
    /// holds every content of one), each given by its content ids in pack
    /// order (see `super::pack`).
    Want {
        /// The packs, as content ids.
        packs: Vec<Vec<[u8; 20]>>,
    },
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ProtocolError {
    /// Not a bencode dictionary.
    #[error("not a sync message")]
    NotAMessage,
    /// The `t` field names no message we know.
    #[error("unknown sync message type {0:?}")]
    UnknownType(String),
    /// A field is missing or has the wrong type or size.
    #[error("sync message field {0:?} is missing or malformed")]
    Field(&'static str),
    /// The records are malformed.
    #[error("index batch refused")]
    Index(#[source] IndexError),
}

/// The bytes a hello proof covers.
fn hello_context(key: &FolderKey, device: DeviceId, port: u16, can_write: bool) -> Vec<u8> {
    let mut c = Vec::with_capacity(HELLO_TAG.len() + 16 + 8 + 2 + 1);
    c.extend_from_slice(HELLO_TAG);
    c.extend_from_slice(&key.folder_id().0);
    c.extend_from_slice(&device.to_bytes());
    c.extend_from_slice(&port.to_be_bytes());
    c.push(can_write as u8);
    c
}

impl Message {
    /// Our hello for `key`.
    pub fn hello(key: &FolderKey, device: DeviceId, port: u16) -> Message {
        let can_write = key.can_write();
        Message::Hello {
            device,
            port,
            can_write,
            proof: key.proof(&hello_context(key, device, port, can_write)),
        }
    }

    /// Whether a received hello proves knowledge of `key`.
    pub fn verify_hello(&self, key: &FolderKey) -> bool {
        match self {
            Message::Hello {
                device,
                port,
                can_write,
                proof,
            } => key.verify_proof(&hello_context(key, *device, *port, *can_write), proof),
            _ => false,
        }
    }

    /// The message as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let value = match self {
            Message::Hello {
                device,
                port,
                can_write,
                proof,
            } => Value::dict([
                ("t", Value::Bytes(b"hello".to_vec())),
                ("d", Value::Bytes(device.to_bytes().to_vec())),
                ("p", Value::Int(i64::from(*port))),
                ("w", Value::Int(i64::from(*can_write))),
                ("m", Value::Bytes(proof.to_vec())),
            ]),
            Message::Index { records, complete } => Value::dict([
                ("t", Value::Bytes(b"index".to_vec())),
                (
                    "r",
                    // `batches` never makes more than MAX_BATCH records.
                    Value::Bytes(
                        encode_batch(records).expect("bug: an index batch over MAX_BATCH"),
                    ),
                ),
                ("c", Value::Int(i64::from(*complete))),
            ]),
            Message::Want { packs } => Value::dict([
                ("t", Value::Bytes(b"want".to_vec())),
                (
                    "p",
                    Value::List(packs.iter().map(|p| Value::Bytes(p.concat())).collect()),
                ),
            ]),
        };
        bencode::encode(&value)
    }

    /// Reads a message from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
        let value = bencode::decode(bytes).map_err(|_| ProtocolError::NotAMessage)?;
        if value.as_dict().is_none() {
            return Err(ProtocolError::NotAMessage);
        }
        let kind = value
            .get(b"t")
            .and_then(Value::as_bytes)
            .ok_or(ProtocolError::Field("t"))?;
        match kind {
            b"hello" => {
                let device = value
                    .get(b"d")
                    .and_then(Value::as_bytes)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .ok_or(ProtocolError::Field("d"))?;
                let port = value
                    .get(b"p")
                    .and_then(Value::as_int)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                    .ok_or(ProtocolError::Field("p"))?;
                let can_write = match value.get(b"w").and_then(Value::as_int) {
                    Some(0) => false,
                    Some(1) => true,
                    _ => return Err(ProtocolError::Field("w")),
                };
                let proof = value
                    .get(b"m")
                    .and_then(Value::as_bytes)
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(ProtocolError::Field("m"))?;
                Ok(Message::Hello {
                    device: DeviceId(u64::from_be_bytes(device)),
                    port,
                    can_write,
                    proof,
                })
            }
            b"index" => {
                let bytes = value
                    .get(b"r")
                    .and_then(Value::as_bytes)
                    .ok_or(ProtocolError::Field("r"))?;
                let records = decode_batch(bytes).map_err(ProtocolError::Index)?;
                let complete = match value.get(b"c").and_then(Value::as_int) {
                    Some(0) => false,
                    Some(1) => true,
                    _ => return Err(ProtocolError::Field("c")),
                };
                Ok(Message::Index { records, complete })
            }
            b"want" => {
                let list = value
                    .get(b"p")
                    .and_then(Value::as_list)
                    .ok_or(ProtocolError::Field("p"))?;
                let mut packs = Vec::with_capacity(list.len());
                let mut total = 0;
                for item in list {
                    let bytes = item
                        .as_bytes()
                        .filter(|b| !b.is_empty() && b.len() % 20 == 0)
                        .ok_or(ProtocolError::Field("p"))?;
                    total += bytes.len() / 20;
                    if total > MAX_WANTS {
                        return Err(ProtocolError::Field("p"));
                    }
                    packs.push(
                        bytes
                            .chunks_exact(20)
                            .map(|c| c.try_into().expect("20 bytes"))
                            .collect(),
                    );
                }
                Ok(Message::Want { packs })
            }
            other => Err(ProtocolError::UnknownType(
                String::from_utf8_lossy(other).into_owned(),
            )),
        }
    }
}

/// Cuts records into `index` messages that each fit [`MAX_BATCH`] and
/// [`MAX_BATCH_BYTES`]; the last one is marked `complete`. An empty index
/// still gives one (empty, complete) message, so the peer learns we are
/// done.
pub fn batches(records: &[FileRecord]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for r in records {
        let len = r.encode().len();
        if !batch.is_empty() && (batch.len() == MAX_BATCH || bytes + len > MAX_BATCH_BYTES) {
            out.push(Message::Index {
                records: std::mem::take(&mut batch),
                complete: false,
            });
            bytes = 0;
        }
        bytes += len;
        batch.push(r.clone());
    }
    out.push(Message::Index {
        records: batch,
        complete: true,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::index::tests::file;

    fn record(path: &str, n: u64) -> FileRecord {
        file(path, &vec![n as u8; 1000], n, 10)
    }

    #[test]
    fn messages_round_trip() {
        let key = FolderKey::generate().unwrap();
        let hello = Message::hello(&key, DeviceId(42), 42070);
        let index = Message::Index {
            records: vec![record("a", 1), record("b/c", 2)],
            complete: true,
        };
        let want = Message::Want {
            packs: vec![vec![[1; 20], [2; 20]], vec![[3; 20]]],
        };
        for m in [hello, index, want] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn hello_proves_the_key_and_binds_its_fields() {
        let key = FolderKey::generate().unwrap();
        let other = FolderKey::generate().unwrap();
        let hello = Message::hello(&key, DeviceId(7), 1000);
        assert!(hello.verify_hello(&key));
        assert!(
            hello.verify_hello(&key.read_only()),
            "read-only holders verify too"
        );
        assert!(!hello.verify_hello(&other));
        let Message::Hello {
            device,
            can_write,
            proof,
            ..
        } = hello.clone()
        else {
            unreachable!()
        };
        let moved = Message::Hello {
            device,
            port: 1001,
            can_write,
            proof,
        };
        assert!(!moved.verify_hello(&key), "the port is covered");
        let claimed = Message::Hello {
            device,
            port: 1000,
            can_write: !can_write,
            proof,
        };
        assert!(!claimed.verify_hello(&key), "write access is covered");
        let ro = Message::hello(&key.read_only(), DeviceId(8), 1000);
        assert!(matches!(
            ro,
            Message::Hello {
                can_write: false,
                ..
            }
        ));
        assert!(ro.verify_hello(&key));
    }

    #[test]
    fn bad_messages_are_refused_without_panic() {
        assert_eq!(Message::decode(b"garbage"), Err(ProtocolError::NotAMessage));
        assert_eq!(Message::decode(b"li1ee"), Err(ProtocolError::NotAMessage));
        assert_eq!(
            Message::decode(b"d1:t4:nopee"),
            Err(ProtocolError::UnknownType("nope".into()))
        );
        assert_eq!(
            Message::decode(b"d1:pl3:abce1:t4:wante"),
            Err(ProtocolError::Field("p"))
        );
        assert_eq!(
            Message::decode(b"d1:pl0:e1:t4:wante"),
            Err(ProtocolError::Field("p"))
        );
        assert_eq!(
            Message::decode(b"d1:t5:hello1:di1ee"),
            Err(ProtocolError::Field("d"))
        );
        let mut bad = b"d1:ci1e1:r7:l3:xyze1:t5:indexe".to_vec();
        assert!(matches!(
            Message::decode(&bad),
            Err(ProtocolError::Index(_))
        ));
        bad.truncate(10);
        assert!(Message::decode(&bad).is_err());
        let good = Message::Index {
            records: vec![record("a", 1)],
            complete: false,
        }
        .encode();
        for cut in 0..good.len() {
            assert!(Message::decode(&good[..cut]).is_err());
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Message::decode(&bytes);
        }
    }

    #[test]
    fn batches_respect_both_limits_and_end_complete() {
        assert_eq!(
            batches(&[]),
            vec![Message::Index {
                records: vec![],
                complete: true
            }]
        );
        let many: Vec<_> = (0..2500).map(|i| record(&format!("f{i}"), i)).collect();
        let out = batches(&many);
        assert_eq!(out.len(), 3);
        let mut total = 0;
        for (i, m) in out.iter().enumerate() {
            let Message::Index { records, complete } = m else {
                unreachable!()
            };
            assert!(records.len() <= MAX_BATCH);
            assert!(m.encode().len() <= MAX_BATCH_BYTES + 100);
            assert_eq!(*complete, i == out.len() - 1);
            total += records.len();
        }
        assert_eq!(total, 2500);
    }

    mod properties {
        use super::*;
        use crate::sync::arb;
        use p2pfile_engine::arb::{apply, bytes, config, edits};
        use proptest::prelude::*;

        /// What decodes re-encodes to the same message.
        fn decode_checked(bytes: &[u8]) {
            if let Ok(m) = Message::decode(bytes) {
                assert_eq!(Message::decode(&m.encode()), Ok(m));
            }
        }

        proptest! {
            #![proptest_config(config(512))]

            #[test]
            fn every_message_round_trips(m in arb::message()) {
                prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
            }

            #[test]
            fn arbitrary_bytes_decode_or_error(bytes in bytes(300)) {
                decode_checked(&bytes);
            }

            #[test]
            fn edited_messages_decode_or_error(m in arb::message(), edits in edits()) {
                decode_checked(&apply(&m.encode(), &edits));
            }
        }

        proptest! {
            // Each case encodes 200 KiB.
            #![proptest_config(config(16))]

            /// A `want` over the cap is refused, however its ids are split
            /// into packs.
            #[test]
            fn wants_over_the_cap_are_refused(split in 1usize..MAX_WANTS) {
                let ids = vec![[7u8; 20]; MAX_WANTS + 1];
                let packs = vec![ids[..split].to_vec(), ids[split..].to_vec()];
                prop_assert_eq!(
                    Message::decode(&Message::Want { packs }.encode()),
                    Err(ProtocolError::Field("p"))
                );
            }
        }
    }
}
