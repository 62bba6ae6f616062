//! Payloads of BEP 10 extension messages: the extension handshake, BEP 9
//! ut_metadata and BEP 11 ut_pex. Bytes in, bytes out.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use bytes::Bytes;

use super::{METADATA_PIECE_SIZE, WireError};

/// Largest extension handshake or ut_pex payload, and largest ut_metadata
/// dict, that is decoded at all. Real ones are a few hundred bytes (a
/// handshake with a dozen extensions, a pex message of 50 peers). The
/// 1 MiB message limit alone let one message cost 113 MiB: bencode decodes
/// to up to 114 times its size (a list of one-entry dicts, `d0:lee`, each
/// a B-tree node of about 680 bytes; measured by
/// `payloads_are_capped_before_decoding`), so 64 KiB holds at most ~7 MiB.
pub const MAX_EXT_PAYLOAD: usize = 64 * 1024;

/// Refuses a payload over [`MAX_EXT_PAYLOAD`] before it is decoded.
fn capped<'a>(payload: &'a [u8], what: &'static str) -> Result<&'a [u8], WireError> {
    if payload.len() > MAX_EXT_PAYLOAD {
        return Err(WireError::BadExtension(what));
    }
    Ok(payload)
}
use crate::bencode::{self, Value};

/// BEP 10 extension handshake (extended message id 0), a bencoded dict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// Extension name -> the id the sender wants to receive it under
    /// (0 = disabled), e.g. "ut_metadata" -> 1, "ut_pex" -> 2.
    pub m: BTreeMap<String, u8>,
    /// Size of the info dict in bytes, from peers that have it (BEP 9).
    pub metadata_size: Option<u32>,
    /// The sender's listening port (key "p").
    pub listen_port: Option<u16>,
    /// The sender's client name and version (key "v").
    pub client: Option<String>,
    /// How many outstanding requests the sender will queue.
    pub reqq: Option<u32>,
    /// The sender is a seed that will not download (BEP 21).
    pub upload_only: bool,
    /// The sender's zone (key [`crate::zone::HANDSHAKE_KEY`], p2pfile
    /// only); a value that is not a valid zone name is read as none.
    pub zone: Option<String>,
}

impl ExtHandshake {
    /// The id the sender wants `name` messages sent under, if enabled.
    pub fn ext_id(&self, name: &str) -> Option<u8> {
        self.m.get(name).copied().filter(|&id| id != 0)
    }

    /// The bencoded dict, ready to send as extended message 0.
    pub fn encode(&self) -> Vec<u8> {
        let m = self
            .m
            .iter()
            .map(|(name, &id)| (name.as_str(), Value::from(i64::from(id))));
        let mut d = vec![("m", Value::dict(m))];
        if let Some(size) = self.metadata_size {
            d.push(("metadata_size", Value::from(i64::from(size))));
        }
        if let Some(port) = self.listen_port {
            d.push(("p", Value::from(i64::from(port))));
        }
        if let Some(client) = &self.client {
            d.push(("v", Value::from(client.as_str())));
        }
        if let Some(reqq) = self.reqq {
            d.push(("reqq", Value::from(i64::from(reqq))));
        }
        if self.upload_only {
            d.push(("upload_only", Value::from(1)));
        }
        if let Some(zone) = &self.zone {
            d.push((crate::zone::HANDSHAKE_KEY, Value::from(zone.as_str())));
        }
        bencode::encode(&Value::dict(d))
    }

    /// Parse a peer's extension handshake.
    ///
    /// Clients disagree on the optional fields, so unknown keys, optional
    /// fields of the wrong type or range, and `m` entries that are not a
    /// UTF-8 name with an id in 0..=255 are ignored rather than fatal.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let v = bencode::decode(capped(payload, "extension handshake over 64 KiB")?)?;
        if v.as_dict().is_none() {
            return Err(WireError::BadExtension("extension handshake is not a dict"));
        }
        let int = |key: &[u8]| v.get(key).and_then(Value::as_int);
        let m = v
            .get(b"m")
            .and_then(Value::as_dict)
            .into_iter()
            .flatten()
            .filter_map(|(name, id)| {
                let name = String::from_utf8(name.clone()).ok()?;
                let id = u8::try_from(id.as_int()?).ok()?;
                Some((name, id))
            })
            .collect();
        Ok(ExtHandshake {
            m,
            metadata_size: int(b"metadata_size").and_then(|n| u32::try_from(n).ok()),
            listen_port: int(b"p").and_then(|n| u16::try_from(n).ok()),
            client: v
                .get(b"v")
                .and_then(Value::as_bytes)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            reqq: int(b"reqq").and_then(|n| u32::try_from(n).ok()),
            upload_only: int(b"upload_only").is_some_and(|n| n != 0),
            zone: v
                .get(crate::zone::HANDSHAKE_KEY.as_bytes())
                .and_then(Value::as_bytes)
                .and_then(|b| std::str::from_utf8(b).ok())
                .filter(|z| crate::zone::is_valid(z))
                .map(str::to_string),
        })
    }
}

/// BEP 9 ut_metadata message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataMsg {
    /// Ask for one piece of the info dict.
    Request {
        /// Metadata piece index.
        piece: u32,
    },
    /// One piece of the info dict.
    Data {
        /// Metadata piece index.
        piece: u32,
        /// Size of the whole info dict in bytes.
        total_size: u32,
        /// The piece's bytes, at most [`METADATA_PIECE_SIZE`].
        data: Bytes,
    },
    /// The sender will not send this piece.
    Reject {
        /// Metadata piece index.
        piece: u32,
    },
}

impl MetadataMsg {
    /// The payload of the extended message: a bencoded dict, followed by
    /// the raw piece bytes for [`MetadataMsg::Data`].
    pub fn encode(&self) -> Vec<u8> {
        let (msg_type, piece) = match self {
            MetadataMsg::Request { piece } => (0, piece),
            MetadataMsg::Data { piece, .. } => (1, piece),
            MetadataMsg::Reject { piece } => (2, piece),
        };
        let mut d = vec![
            ("msg_type", Value::from(msg_type)),
            ("piece", Value::from(i64::from(*piece))),
        ];
        if let MetadataMsg::Data { total_size, .. } = self {
            d.push(("total_size", Value::from(i64::from(*total_size))));
        }
        let mut out = bencode::encode(&Value::dict(d));
        if let MetadataMsg::Data { data, .. } = self {
            out.extend_from_slice(data);
        }
        out
    }

    /// Parse a ut_metadata payload; piece data is sliced out of `payload`
    /// without copying. Bytes after the dict of a request or reject carry
    /// no meaning and are ignored.
    pub fn decode(payload: &Bytes) -> Result<Self, WireError> {
        // The dict ends within the cap, or it is refused: only raw piece
        // data (at most 16 KiB, checked below) may follow it.
        let head = &payload[..payload.len().min(MAX_EXT_PAYLOAD)];
        let (v, used) = bencode::decode_prefix(head).map_err(|e| match e {
            bencode::BencodeError::UnexpectedEnd | bencode::BencodeError::TooLong { .. }
                if head.len() < payload.len() =>
            {
                WireError::BadExtension("ut_metadata dict over 64 KiB")
            }
            e => WireError::Bencode(e),
        })?;
        let int = |key: &[u8]| {
            v.get(key)
                .and_then(Value::as_int)
                .and_then(|n| u32::try_from(n).ok())
        };
        let piece = int(b"piece").ok_or(WireError::BadExtension("ut_metadata without piece"))?;
        match v.get(b"msg_type").and_then(Value::as_int) {
            Some(0) => Ok(MetadataMsg::Request { piece }),
            Some(1) => {
                let total_size = int(b"total_size").ok_or(WireError::BadExtension(
                    "ut_metadata data without total_size",
                ))?;
                let data = payload.slice(used..);
                if data.len() > METADATA_PIECE_SIZE {
                    return Err(WireError::BadExtension("ut_metadata piece over 16 KiB"));
                }
                Ok(MetadataMsg::Data {
                    piece,
                    total_size,
                    data,
                })
            }
            Some(2) => Ok(MetadataMsg::Reject { piece }),
            _ => Err(WireError::BadExtension("unknown ut_metadata msg_type")),
        }
    }
}

/// BEP 11 ut_pex message: compact IPv4 peers in "added" (6 bytes each:
/// 4 ip + 2 port big-endian), and "dropped". We always send "added.f", one
/// flag byte per added peer ([`PEX_REACHABLE`]): libtorrent ignores every
/// added peer without it. On receipt the flags and IPv6 keys are tolerated
/// but ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMsg {
    /// Peers the sender connected to since its last message.
    pub added: Vec<SocketAddrV4>,
    /// Peers the sender disconnected from since its last message.
    pub dropped: Vec<SocketAddrV4>,
}

/// BEP 11 flag: the peer accepts incoming connections (we know its listen
/// address because we dialed it or it told us its port).
pub const PEX_REACHABLE: u8 = 0x10;

impl PexMsg {
    /// The bencoded payload of the extended message.
    pub fn encode(&self) -> Vec<u8> {
        bencode::encode(&Value::dict([
            ("added", Value::from(encode_compact_peers(&self.added))),
            (
                "added.f",
                Value::from(vec![PEX_REACHABLE; self.added.len()]),
            ),
            ("dropped", Value::from(encode_compact_peers(&self.dropped))),
        ]))
    }

    /// Parse a ut_pex payload; missing or mistyped lists count as empty.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let v = bencode::decode(capped(payload, "ut_pex message over 64 KiB")?)?;
        if v.as_dict().is_none() {
            return Err(WireError::BadExtension("ut_pex message is not a dict"));
        }
        let peers = |key: &[u8]| {
            v.get(key)
                .and_then(Value::as_bytes)
                .map(decode_compact_peers)
                .unwrap_or_default()
        };
        Ok(PexMsg {
            added: peers(b"added"),
            dropped: peers(b"dropped"),
        })
    }
}

/// Compact peer list (6 bytes per IPv4 peer), shared with the DHT/pex code.
pub fn encode_compact_peers(peers: &[SocketAddrV4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(peers.len() * 6);
    for peer in peers {
        out.extend_from_slice(&peer.ip().octets());
        out.extend_from_slice(&peer.port().to_be_bytes());
    }
    out
}

/// Parse a compact peer list; a trailing partial entry is ignored, since
/// one malformed peer should not cost the others.
pub fn decode_compact_peers(bytes: &[u8]) -> Vec<SocketAddrV4> {
    bytes
        .chunks_exact(6)
        .map(|c| {
            SocketAddrV4::new(
                Ipv4Addr::new(c[0], c[1], c[2], c[3]),
                u16::from_be_bytes([c[4], c[5]]),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_handshake_round_trips() {
        let hs = ExtHandshake {
            m: [("ut_metadata".to_string(), 1), ("ut_pex".to_string(), 2)].into(),
            metadata_size: Some(31_337),
            listen_port: Some(6881),
            client: Some("p2pfile 0.1.0".to_string()),
            reqq: Some(250),
            upload_only: true,
            zone: Some("dc-1".to_string()),
        };
        assert_eq!(ExtHandshake::decode(&hs.encode()), Ok(hs));
        let empty = ExtHandshake::default();
        assert_eq!(empty.encode(), b"d1:mdee");
        assert_eq!(ExtHandshake::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn ext_handshake_decodes_libtorrent_dict() {
        let payload = bencode::encode(&Value::dict([
            (
                "m",
                Value::dict([
                    ("ut_metadata", Value::from(2)),
                    ("ut_pex", Value::from(1)),
                    ("lt_donthave", Value::from(7)),
                    ("ut_holepunch", Value::from(0)),
                    ("too_big", Value::from(300)),
                    ("negative", Value::from(-1)),
                    ("not_int", Value::from("x")),
                ]),
            ),
            ("metadata_size", Value::from(1234)),
            ("p", Value::from(6881)),
            ("v", Value::from("libtorrent 2.0")),
            ("reqq", Value::from("not an int")),
            ("yourip", Value::from(vec![127u8, 0, 0, 1])),
            ("complete_ago", Value::from(-1)),
        ]));
        let hs = ExtHandshake::decode(&payload).unwrap();
        assert_eq!(hs.ext_id("ut_metadata"), Some(2));
        assert_eq!(hs.ext_id("ut_pex"), Some(1));
        assert_eq!(hs.ext_id("ut_holepunch"), None);
        assert_eq!(hs.ext_id("missing"), None);
        assert_eq!(hs.m.len(), 4);
        assert_eq!(hs.metadata_size, Some(1234));
        assert_eq!(hs.listen_port, Some(6881));
        assert_eq!(hs.client.as_deref(), Some("libtorrent 2.0"));
        assert_eq!(hs.reqq, None);
        assert!(!hs.upload_only);
    }

    #[test]
    fn a_zone_that_is_no_zone_name_reads_as_none() {
        let with = |zone: Value| {
            let payload = bencode::encode(&Value::dict([
                ("m", Value::dict(Vec::<(&str, Value)>::new())),
                ("p2pfile_zone", zone),
            ]));
            ExtHandshake::decode(&payload).unwrap().zone
        };
        assert_eq!(with(Value::from("rack-2")), Some("rack-2".to_string()));
        assert_eq!(with(Value::from("a".repeat(65).as_str())), None);
        assert_eq!(with(Value::from("")), None);
        assert_eq!(with(Value::from("two words")), None);
        assert_eq!(with(Value::from(vec![0xffu8, 0xfe])), None);
        assert_eq!(with(Value::from(7)), None);
    }

    #[test]
    fn ext_handshake_rejects_non_dict() {
        assert!(matches!(
            ExtHandshake::decode(b"li1ee"),
            Err(WireError::BadExtension(_))
        ));
        assert!(matches!(
            ExtHandshake::decode(b"d1:m"),
            Err(WireError::Bencode(_))
        ));
    }

    #[test]
    fn metadata_messages_round_trip() {
        for msg in [
            MetadataMsg::Request { piece: 0 },
            MetadataMsg::Reject { piece: 3 },
            MetadataMsg::Data {
                piece: 1,
                total_size: 20_000,
                data: Bytes::from(vec![7; 20_000 - METADATA_PIECE_SIZE]),
            },
            MetadataMsg::Data {
                piece: 0,
                total_size: 20_000,
                data: Bytes::from(vec![7; METADATA_PIECE_SIZE]),
            },
        ] {
            let payload = Bytes::from(msg.encode());
            assert_eq!(MetadataMsg::decode(&payload), Ok(msg));
        }
    }

    #[test]
    fn metadata_data_follows_the_dict() {
        let payload = Bytes::from_static(b"d8:msg_typei1e5:piecei0e10:total_sizei8eed6:lengthe");
        let MetadataMsg::Data { data, .. } = MetadataMsg::decode(&payload).unwrap() else {
            panic!("not data");
        };
        assert_eq!(&data[..], b"d6:lengthe");
    }

    #[test]
    fn metadata_rejects_bad_messages() {
        let big = MetadataMsg::Data {
            piece: 0,
            total_size: 100_000,
            data: Bytes::from(vec![0; METADATA_PIECE_SIZE + 1]),
        };
        for payload in [
            big.encode(),
            b"d8:msg_typei1e5:piecei0ee".to_vec(),
            b"d8:msg_typei9e5:piecei0ee".to_vec(),
            b"d8:msg_typei0ee".to_vec(),
            b"d8:msg_typei0e5:piecei-1ee".to_vec(),
            b"le".to_vec(),
        ] {
            assert!(matches!(
                MetadataMsg::decode(&Bytes::from(payload)),
                Err(WireError::BadExtension(_))
            ));
        }
        assert!(matches!(
            MetadataMsg::decode(&Bytes::from_static(b"d8:msg_type")),
            Err(WireError::Bencode(_))
        ));
    }

    #[test]
    fn pex_round_trips() {
        let msg = PexMsg {
            added: vec![
                "10.0.0.1:6881".parse().unwrap(),
                "192.168.1.20:51413".parse().unwrap(),
            ],
            dropped: vec!["8.8.8.8:1".parse().unwrap()],
        };
        assert_eq!(PexMsg::decode(&msg.encode()), Ok(msg.clone()));
        // One flag byte per added peer, as libtorrent requires.
        let encoded = bencode::decode(&msg.encode()).unwrap();
        assert_eq!(
            encoded
                .get(b"added.f")
                .and_then(Value::as_bytes)
                .map(<[u8]>::len),
            Some(msg.added.len())
        );
        assert_eq!(
            PexMsg::decode(&PexMsg::default().encode()),
            Ok(PexMsg::default())
        );
    }

    #[test]
    fn pex_tolerates_flags_and_ipv6() {
        let payload = bencode::encode(&Value::dict([
            ("added", Value::from(vec![10u8, 0, 0, 1, 0x1a, 0xe1])),
            ("added.f", Value::from(vec![0x10u8])),
            ("added6", Value::from(vec![0u8; 18])),
            ("dropped", Value::from(7)),
        ]));
        let msg = PexMsg::decode(&payload).unwrap();
        assert_eq!(msg.added, vec!["10.0.0.1:6881".parse().unwrap()]);
        assert!(msg.dropped.is_empty());
        assert!(PexMsg::decode(b"i1e").is_err());
    }

    #[test]
    fn compact_peers_ignore_partial_entry() {
        let peers: Vec<SocketAddrV4> = vec!["1.2.3.4:5".parse().unwrap()];
        let mut bytes = encode_compact_peers(&peers);
        assert_eq!(bytes, [1, 2, 3, 4, 0, 5]);
        bytes.extend_from_slice(&[9, 9, 9]);
        assert_eq!(decode_compact_peers(&bytes), peers);
    }

    /// A payload of the 1 MiB message limit made of one-entry dicts: each
    /// 6 bytes (`d0:lee`) decode to a B-tree node of about 680 bytes.
    fn amplifying_payload() -> Vec<u8> {
        let n = (super::super::MAX_MESSAGE_LEN - 16) / 6;
        [&b"d1:ml"[..], &b"d0:lee".repeat(n), b"ee"].concat()
    }

    /// Before the cap, this payload was accepted as an extension handshake
    /// and as a pex message, and its decoding held 113 MiB.
    #[test]
    fn payloads_are_capped_before_decoding() {
        use crate::arb::memory;
        let payload = amplifying_payload();
        let bytes = Bytes::from(payload.clone());
        let (results, held) = memory::peak(|| {
            (
                ExtHandshake::decode(&payload).is_err(),
                MetadataMsg::decode(&bytes).is_err(),
                PexMsg::decode(&payload).is_err(),
            )
        });
        assert_eq!(results, (true, true, true));
        // 7.4 MB measured (ut_metadata decodes the first 64 KiB), from
        // 118.8 MB before the cap.
        assert!(held <= memory::bound(MAX_EXT_PAYLOAD), "{held} bytes held");
    }

    mod properties {
        use super::*;
        use crate::arb::{self, memory};
        use proptest::prelude::*;

        fn ext_handshake() -> impl Strategy<Value = ExtHandshake> {
            (
                prop::collection::btree_map("\\PC{0,12}", any::<u8>(), 0..5),
                any::<Option<u32>>(),
                any::<Option<u16>>(),
                proptest::option::of("\\PC{0,20}"),
                any::<Option<u32>>(),
                any::<bool>(),
                proptest::option::of("[A-Za-z0-9._-]{1,64}"),
            )
                .prop_map(
                    |(m, metadata_size, listen_port, client, reqq, upload_only, zone)| {
                        ExtHandshake {
                            m,
                            metadata_size,
                            listen_port,
                            client,
                            reqq,
                            upload_only,
                            zone,
                        }
                    },
                )
        }

        fn metadata_msg() -> impl Strategy<Value = MetadataMsg> {
            prop_oneof![
                any::<u32>().prop_map(|piece| MetadataMsg::Request { piece }),
                any::<u32>().prop_map(|piece| MetadataMsg::Reject { piece }),
                (
                    any::<u32>(),
                    any::<u32>(),
                    prop_oneof![arb::bytes(64), Just(vec![7; METADATA_PIECE_SIZE]),]
                )
                    .prop_map(|(piece, total_size, data)| MetadataMsg::Data {
                        piece,
                        total_size,
                        data: Bytes::from(data),
                    }),
            ]
        }

        fn v4() -> impl Strategy<Value = SocketAddrV4> {
            (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(ip.into(), port))
        }

        fn pex() -> impl Strategy<Value = PexMsg> {
            (
                prop::collection::vec(v4(), 0..8),
                prop::collection::vec(v4(), 0..8),
            )
                .prop_map(|(added, dropped)| PexMsg { added, dropped })
        }

        /// Dicts shaped like the three payloads, with fields of any type
        /// and value, and data after the dict as ut_metadata carries.
        fn near_valid() -> impl Strategy<Value = Vec<u8>> {
            let field = prop_oneof![
                3 => arb::edge_int().prop_map(Value::Int),
                1 => arb::value(),
            ];
            let key = prop::sample::select(vec![
                &b"m"[..],
                b"metadata_size",
                b"p",
                b"v",
                b"reqq",
                b"upload_only",
                b"p2pfile_zone",
                b"msg_type",
                b"piece",
                b"total_size",
                b"added",
                b"added.f",
                b"dropped",
            ]);
            (
                prop::collection::btree_map(key.prop_map(<[u8]>::to_vec), field, 0..6),
                prop::collection::btree_map("\\PC{0,8}", arb::edge_int(), 0..4),
                arb::bytes(40),
            )
                .prop_map(|(mut d, m, tail)| {
                    if d.contains_key(&b"m"[..]) {
                        let m = m.into_iter().map(|(k, v)| (k, Value::Int(v)));
                        d.insert(b"m".to_vec(), Value::dict(m));
                    }
                    [bencode::encode(&Value::Dict(d)), tail].concat()
                })
        }

        /// Every decoder on `payload`; none may hold more than the payload
        /// justifies, and what decodes re-encodes to the same meaning.
        fn decode_all(payload: &[u8]) {
            let bytes = Bytes::copy_from_slice(payload);
            let ((hs, meta, pex), held) = memory::peak(|| {
                (
                    ExtHandshake::decode(payload),
                    MetadataMsg::decode(&bytes),
                    PexMsg::decode(payload),
                )
            });
            assert!(
                held <= memory::bound(payload.len()),
                "{held} for {}",
                payload.len()
            );
            if let Ok(hs) = hs {
                assert_eq!(ExtHandshake::decode(&hs.encode()), Ok(hs));
            }
            if let Ok(meta) = meta {
                assert_eq!(MetadataMsg::decode(&Bytes::from(meta.encode())), Ok(meta));
            }
            if let Ok(pex) = pex {
                assert_eq!(PexMsg::decode(&pex.encode()), Ok(pex));
            }
        }

        proptest! {
            #![proptest_config(arb::config(1024))]

            #[test]
            fn arbitrary_payloads_decode_or_error(payload in arb::bytes(200)) {
                decode_all(&payload);
                let peers = decode_compact_peers(&payload);
                prop_assert_eq!(peers.len(), payload.len() / 6);
                prop_assert_eq!(encode_compact_peers(&peers), &payload[..peers.len() * 6]);
            }

            #[test]
            fn near_valid_payloads_decode_or_error(payload in near_valid(), edits in arb::edits()) {
                decode_all(&payload);
                decode_all(&arb::apply(&payload, &edits));
            }

            #[test]
            fn extension_handshakes_round_trip(hs in ext_handshake()) {
                prop_assert_eq!(ExtHandshake::decode(&hs.encode()), Ok(hs));
            }

            #[test]
            fn metadata_messages_round_trip(msg in metadata_msg(), edits in arb::edits()) {
                let payload = Bytes::from(msg.encode());
                prop_assert_eq!(MetadataMsg::decode(&payload), Ok(msg));
                decode_all(&arb::apply(&payload, &edits));
            }

            #[test]
            fn pex_messages_round_trip(msg in pex(), edits in arb::edits()) {
                let payload = msg.encode();
                prop_assert_eq!(PexMsg::decode(&payload), Ok(msg));
                decode_all(&arb::apply(&payload, &edits));
            }
        }
    }
}
