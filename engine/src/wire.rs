//! The peer wire codec: BEP 3 messages, BEP 6 fast extension messages,
//! BEP 10 extension messages and the handshake, plus the BEP 9 (ut_metadata)
//! and BEP 11 (ut_pex) payloads carried inside extension messages.
//!
//! Everything here is bytes in, bytes out; connection tasks own the I/O.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::bencode::{self, BencodeError, Value};

/// The block size every request uses; peers may refuse anything larger.
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// Length of the handshake: pstrlen, pstr, reserved, info-hash, peer id.
pub const HANDSHAKE_LEN: usize = 68;

/// Largest message body (excluding the 4-byte length prefix) we accept.
///
/// A piece message needs only 16 KiB plus a header, but a bitfield needs one
/// bit per piece, so 1 MiB covers torrents of up to 8 Mi pieces. Anything
/// larger is hostile and is rejected before any buffer grows for it.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// Size of one ut_metadata piece; only the last piece may be shorter.
pub const METADATA_PIECE_SIZE: usize = 16 * 1024;

const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Why bytes from a peer are not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum WireError {
    /// The handshake is not a BitTorrent v1 handshake.
    #[error("bad handshake: {0}")]
    BadHandshake(&'static str),
    /// A length prefix above [`MAX_MESSAGE_LEN`].
    #[error("message length {0} exceeds the limit")]
    MessageTooLong(usize),
    /// A message id this codec does not know.
    #[error("unknown message id {0}")]
    UnknownMessage(u8),
    /// A payload length that does not fit the message id.
    #[error("message id {id} with bad length {len}")]
    BadLength {
        /// The message id.
        id: u8,
        /// The length from the prefix, including the id byte.
        len: usize,
    },
    /// An extension payload that is not valid bencode.
    #[error("bad bencode in extension message: {0}")]
    Bencode(#[from] BencodeError),
    /// An extension payload that is bencode but not the expected shape.
    #[error("bad extension message: {0}")]
    BadExtension(&'static str),
}

/// The 68-byte handshake that opens every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// Feature bits; see [`Handshake::supports_extensions`] and
    /// [`Handshake::supports_fast`].
    pub reserved: [u8; 8],
    /// The torrent this connection is for.
    pub info_hash: [u8; 20],
    /// The sender's peer id.
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// A handshake advertising the extension protocol (BEP 10) and the fast
    /// extension (BEP 6), both of which this engine speaks.
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20]) -> Self {
        let mut reserved = [0; 8];
        reserved[5] |= 0x10;
        reserved[7] |= 0x04;
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// Whether the sender speaks the extension protocol (BEP 10).
    pub fn supports_extensions(&self) -> bool {
        self.reserved[5] & 0x10 != 0
    }

    /// Whether the sender speaks the fast extension (BEP 6).
    pub fn supports_fast(&self) -> bool {
        self.reserved[7] & 0x04 != 0
    }

    /// The handshake as sent on the wire.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0; HANDSHAKE_LEN];
        out[0] = PROTOCOL.len() as u8;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Parse a handshake, checking the protocol string.
    pub fn decode(buf: &[u8; HANDSHAKE_LEN]) -> Result<Handshake, WireError> {
        if usize::from(buf[0]) != PROTOCOL.len() {
            return Err(WireError::BadHandshake("protocol string length is not 19"));
        }
        if &buf[1..20] != PROTOCOL {
            return Err(WireError::BadHandshake("protocol is not BitTorrent"));
        }
        let mut hs = Handshake {
            reserved: [0; 8],
            info_hash: [0; 20],
            peer_id: [0; 20],
        };
        hs.reserved.copy_from_slice(&buf[20..28]);
        hs.info_hash.copy_from_slice(&buf[28..48]);
        hs.peer_id.copy_from_slice(&buf[48..68]);
        Ok(hs)
    }
}

/// One block of a piece, as named by request, cancel and reject messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRequest {
    /// Piece index.
    pub index: u32,
    /// Byte offset within the piece.
    pub begin: u32,
    /// Block length in bytes.
    pub length: u32,
}

/// A peer wire message after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Zero-length message that keeps an idle connection open.
    KeepAlive,
    /// The sender will not serve our requests.
    Choke,
    /// The sender will serve our requests.
    Unchoke,
    /// The sender wants pieces we have.
    Interested,
    /// The sender wants nothing we have.
    NotInterested,
    /// The sender now has this piece.
    Have(u32),
    /// The sender's pieces, high bit of the first byte is piece 0.
    Bitfield(Bytes),
    /// Ask for a block.
    Request(BlockRequest),
    /// A block of data.
    Piece {
        /// Piece index.
        index: u32,
        /// Byte offset within the piece.
        begin: u32,
        /// The block bytes.
        data: Bytes,
    },
    /// Withdraw an earlier request.
    Cancel(BlockRequest),
    /// The sender's DHT port (BEP 5).
    Port(u16),
    /// BEP 6: the sender suggests downloading this piece.
    SuggestPiece(u32),
    /// BEP 6: the sender has every piece.
    HaveAll,
    /// BEP 6: the sender has no pieces.
    HaveNone,
    /// BEP 6: the sender will not serve this request.
    RejectRequest(BlockRequest),
    /// BEP 6: we may request this piece even while choked.
    AllowedFast(u32),
    /// BEP 10: an extension message; id 0 is the extension handshake.
    Extended {
        /// The extended message id.
        id: u8,
        /// The extension's payload.
        payload: Bytes,
    },
}

const CHOKE: u8 = 0;
const UNCHOKE: u8 = 1;
const INTERESTED: u8 = 2;
const NOT_INTERESTED: u8 = 3;
const HAVE: u8 = 4;
const BITFIELD: u8 = 5;
const REQUEST: u8 = 6;
const PIECE: u8 = 7;
const CANCEL: u8 = 8;
const PORT: u8 = 9;
const SUGGEST_PIECE: u8 = 0x0D;
const HAVE_ALL: u8 = 0x0E;
const HAVE_NONE: u8 = 0x0F;
const REJECT_REQUEST: u8 = 0x10;
const ALLOWED_FAST: u8 = 0x11;
const EXTENDED: u8 = 20;

impl Message {
    /// Append the length-prefixed encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        let Some(id) = self.id() else {
            out.put_u32(0);
            return;
        };
        out.put_u32(prefix(self.encoded_len() - 4));
        out.put_u8(id);
        match self {
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => {}
            Message::Have(i) | Message::SuggestPiece(i) | Message::AllowedFast(i) => {
                out.put_u32(*i)
            }
            Message::Bitfield(bits) => out.put_slice(bits),
            Message::Request(r) | Message::Cancel(r) | Message::RejectRequest(r) => {
                out.put_u32(r.index);
                out.put_u32(r.begin);
                out.put_u32(r.length);
            }
            Message::Piece { index, begin, data } => {
                out.put_u32(*index);
                out.put_u32(*begin);
                out.put_slice(data);
            }
            Message::Port(port) => out.put_u16(*port),
            Message::Extended { id, payload } => {
                out.put_u8(*id);
                out.put_slice(payload);
            }
        }
    }

    /// Encoded length including the 4-byte prefix (lets writers reserve once).
    pub fn encoded_len(&self) -> usize {
        let payload = match self {
            Message::KeepAlive => return 4,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 0,
            Message::Have(_) | Message::SuggestPiece(_) | Message::AllowedFast(_) => 4,
            Message::Bitfield(bits) => bits.len(),
            Message::Request(_) | Message::Cancel(_) | Message::RejectRequest(_) => 12,
            Message::Piece { data, .. } => 8 + data.len(),
            Message::Port(_) => 2,
            Message::Extended { payload, .. } => 1 + payload.len(),
        };
        4 + 1 + payload
    }

    fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => CHOKE,
            Message::Unchoke => UNCHOKE,
            Message::Interested => INTERESTED,
            Message::NotInterested => NOT_INTERESTED,
            Message::Have(_) => HAVE,
            Message::Bitfield(_) => BITFIELD,
            Message::Request(_) => REQUEST,
            Message::Piece { .. } => PIECE,
            Message::Cancel(_) => CANCEL,
            Message::Port(_) => PORT,
            Message::SuggestPiece(_) => SUGGEST_PIECE,
            Message::HaveAll => HAVE_ALL,
            Message::HaveNone => HAVE_NONE,
            Message::RejectRequest(_) => REJECT_REQUEST,
            Message::AllowedFast(_) => ALLOWED_FAST,
            Message::Extended { .. } => EXTENDED,
        })
    }
}

/// Panics only for a body over 4 GiB, which no caller can build from a
/// 16 KiB block or a bitfield.
fn prefix(body_len: usize) -> u32 {
    u32::try_from(body_len).expect("message body fits a u32 length prefix")
}

/// Write only the 13-byte header of a Piece message (length prefix, id 7,
/// index, begin) for a block of `len` bytes, so a sender can append block
/// bytes read straight from disk into the same buffer without an extra copy.
pub fn encode_piece_header(index: u32, begin: u32, len: u32, out: &mut BytesMut) {
    out.reserve(13);
    out.put_u32(prefix(9 + len as usize));
    out.put_u8(PIECE);
    out.put_u32(index);
    out.put_u32(begin);
}

/// Check a message body length (id byte included) against its id, so a
/// bad message fails as soon as its first five bytes arrive instead of
/// after we have buffered all of it.
fn check_len(id: u8, len: usize) -> Result<(), WireError> {
    let ok = match id {
        CHOKE | UNCHOKE | INTERESTED | NOT_INTERESTED | HAVE_ALL | HAVE_NONE => len == 1,
        HAVE | SUGGEST_PIECE | ALLOWED_FAST => len == 5,
        BITFIELD => true,
        REQUEST | CANCEL | REJECT_REQUEST => len == 13,
        PIECE => len >= 9,
        PORT => len == 3,
        EXTENDED => len >= 2,
        _ => return Err(WireError::UnknownMessage(id)),
    };
    if ok {
        Ok(())
    } else {
        Err(WireError::BadLength { id, len })
    }
}

/// Try to decode one message from the front of `buf`, consuming it.
///
/// Returns `Ok(None)` when more bytes are needed. Once the length prefix is
/// known and acceptable, `buf` is grown to hold the whole message so the
/// reader fills it without repeated reallocation; a prefix above
/// [`MAX_MESSAGE_LEN`] errors before anything is reserved. Piece, bitfield
/// and extension payloads are split off `buf` without copying. On error the
/// buffer is left as it was; the connection should be dropped.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(WireError::MessageTooLong(len));
    }
    if len == 0 {
        buf.advance(4);
        return Ok(Some(Message::KeepAlive));
    }
    if buf.len() > 4 {
        check_len(buf[4], len)?;
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let id = buf.get_u8();
    let body = len - 1;
    let block = |buf: &mut BytesMut| BlockRequest {
        index: buf.get_u32(),
        begin: buf.get_u32(),
        length: buf.get_u32(),
    };
    let msg = match id {
        CHOKE => Message::Choke,
        UNCHOKE => Message::Unchoke,
        INTERESTED => Message::Interested,
        NOT_INTERESTED => Message::NotInterested,
        HAVE => Message::Have(buf.get_u32()),
        BITFIELD => Message::Bitfield(buf.split_to(body).freeze()),
        REQUEST => Message::Request(block(buf)),
        PIECE => Message::Piece {
            index: buf.get_u32(),
            begin: buf.get_u32(),
            data: buf.split_to(body - 8).freeze(),
        },
        CANCEL => Message::Cancel(block(buf)),
        PORT => Message::Port(buf.get_u16()),
        SUGGEST_PIECE => Message::SuggestPiece(buf.get_u32()),
        HAVE_ALL => Message::HaveAll,
        HAVE_NONE => Message::HaveNone,
        REJECT_REQUEST => Message::RejectRequest(block(buf)),
        ALLOWED_FAST => Message::AllowedFast(buf.get_u32()),
        EXTENDED => Message::Extended {
            id: buf.get_u8(),
            payload: buf.split_to(body - 1).freeze(),
        },
        _ => unreachable!("check_len rejects unknown ids"),
    };
    Ok(Some(msg))
}

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
        bencode::encode(&Value::dict(d))
    }

    /// Parse a peer's extension handshake.
    ///
    /// Clients disagree on the optional fields, so unknown keys, optional
    /// fields of the wrong type or range, and `m` entries that are not a
    /// UTF-8 name with an id in 0..=255 are ignored rather than fatal.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let v = bencode::decode(payload)?;
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
        let (v, used) = bencode::decode_prefix(payload)?;
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
        let v = bencode::decode(payload)?;
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

    fn req(index: u32, begin: u32, length: u32) -> BlockRequest {
        BlockRequest {
            index,
            begin,
            length,
        }
    }

    fn all_messages() -> Vec<Message> {
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(7),
            Message::Bitfield(Bytes::from_static(&[0xff, 0x80])),
            Message::Bitfield(Bytes::new()),
            Message::Request(req(1, 16384, BLOCK_SIZE)),
            Message::Piece {
                index: 3,
                begin: 0,
                data: Bytes::from(vec![9; 100]),
            },
            Message::Piece {
                index: 3,
                begin: 0,
                data: Bytes::new(),
            },
            Message::Cancel(req(1, 0, 5)),
            Message::Port(6881),
            Message::SuggestPiece(u32::MAX),
            Message::HaveAll,
            Message::HaveNone,
            Message::RejectRequest(req(2, 3, 4)),
            Message::AllowedFast(11),
            Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"de"),
            },
        ]
    }

    fn encoded(msg: &Message) -> BytesMut {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        buf
    }

    #[test]
    fn every_message_round_trips() {
        for msg in all_messages() {
            let mut buf = encoded(&msg);
            assert_eq!(buf.len(), msg.encoded_len(), "{msg:?}");
            buf.extend_from_slice(b"next");
            assert_eq!(decode(&mut buf).unwrap(), Some(msg.clone()));
            assert_eq!(&buf[..], b"next", "{msg:?} consumed the wrong amount");
        }
    }

    #[test]
    fn back_to_back_messages_decode_in_order() {
        let mut buf = BytesMut::new();
        for msg in all_messages() {
            msg.encode(&mut buf);
        }
        for msg in all_messages() {
            assert_eq!(decode(&mut buf).unwrap(), Some(msg));
        }
        assert_eq!(decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn every_prefix_needs_more_bytes() {
        for msg in all_messages() {
            let full = encoded(&msg);
            for cut in 0..full.len() {
                let mut buf = BytesMut::from(&full[..cut]);
                assert_eq!(decode(&mut buf).unwrap(), None, "{msg:?} at {cut}");
                assert_eq!(buf.len(), cut, "partial input must not be consumed");
            }
        }
    }

    #[test]
    fn oversized_length_errors_without_allocating() {
        for len in [MAX_MESSAGE_LEN as u32 + 1, u32::MAX] {
            let mut buf = BytesMut::with_capacity(8);
            buf.put_u32(len);
            buf.put_u8(PIECE);
            let cap = buf.capacity();
            assert_eq!(
                decode(&mut buf),
                Err(WireError::MessageTooLong(len as usize))
            );
            assert_eq!(buf.capacity(), cap);
        }
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_MESSAGE_LEN as u32);
        buf.put_u8(BITFIELD);
        assert_eq!(decode(&mut buf), Ok(None));
    }

    #[test]
    fn wrong_fixed_lengths_error() {
        for (id, len) in [
            (CHOKE, 2),
            (HAVE, 4),
            (HAVE, 6),
            (REQUEST, 12),
            (CANCEL, 14),
            (REJECT_REQUEST, 1),
            (PORT, 5),
            (PIECE, 8),
            (EXTENDED, 1),
            (HAVE_ALL, 5),
        ] {
            let mut buf = BytesMut::new();
            buf.put_u32(len as u32);
            buf.put_u8(id);
            // Caught from the header alone, before the body arrives.
            assert_eq!(decode(&mut buf), Err(WireError::BadLength { id, len }));
            buf.put_bytes(0, len - 1);
            assert_eq!(decode(&mut buf), Err(WireError::BadLength { id, len }));
        }
    }

    #[test]
    fn unknown_id_errors() {
        for id in [10, 12, 0x12, 19, 21, 255] {
            let mut buf = BytesMut::from(&[0, 0, 0, 1, id][..]);
            assert_eq!(decode(&mut buf), Err(WireError::UnknownMessage(id)));
        }
    }

    #[test]
    fn piece_header_plus_data_decodes_as_piece() {
        let data = vec![0xab; BLOCK_SIZE as usize];
        let mut buf = BytesMut::new();
        encode_piece_header(5, 32768, BLOCK_SIZE, &mut buf);
        assert_eq!(buf.len(), 13);
        buf.extend_from_slice(&data);
        let expected = Message::Piece {
            index: 5,
            begin: 32768,
            data: Bytes::from(data),
        };
        assert_eq!(buf, encoded(&expected));
        assert_eq!(decode(&mut buf).unwrap(), Some(expected));
        assert!(buf.is_empty());
    }

    #[test]
    fn handshake_round_trips() {
        let hs = Handshake::new([1; 20], [2; 20]);
        assert!(hs.supports_extensions());
        assert!(hs.supports_fast());
        let bytes = hs.encode();
        assert_eq!(bytes[0], 19);
        assert_eq!(&bytes[1..20], b"BitTorrent protocol");
        assert_eq!(Handshake::decode(&bytes), Ok(hs));

        let plain = Handshake {
            reserved: [0; 8],
            ..hs
        };
        let plain = Handshake::decode(&plain.encode()).unwrap();
        assert!(!plain.supports_extensions());
        assert!(!plain.supports_fast());
    }

    #[test]
    fn handshake_rejects_bad_pstr() {
        let mut bytes = Handshake::new([1; 20], [2; 20]).encode();
        bytes[0] = 18;
        assert!(matches!(
            Handshake::decode(&bytes),
            Err(WireError::BadHandshake(_))
        ));
        bytes[0] = 19;
        bytes[1] = b'b';
        assert!(matches!(
            Handshake::decode(&bytes),
            Err(WireError::BadHandshake(_))
        ));
    }

    #[test]
    fn ext_handshake_round_trips() {
        let hs = ExtHandshake {
            m: [("ut_metadata".to_string(), 1), ("ut_pex".to_string(), 2)].into(),
            metadata_size: Some(31_337),
            listen_port: Some(6881),
            client: Some("p2pfile 0.1.0".to_string()),
            reqq: Some(250),
            upload_only: true,
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
}
