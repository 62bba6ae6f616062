//! The peer wire codec: BEP 3 messages, BEP 6 fast extension messages,
//! BEP 10 extension messages and the handshake. The payloads carried inside
//! extension messages (BEP 10 handshake, BEP 9 ut_metadata, BEP 11 ut_pex)
//! are in `ext.rs`.
//!
//! Everything here is bytes in, bytes out; connection tasks own the I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::bencode::BencodeError;

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

mod ext;

pub use ext::{
    ExtHandshake, MAX_EXT_PAYLOAD, MetadataMsg, PEX_REACHABLE, PexMsg, decode_compact_peers,
    encode_compact_peers,
};

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

    mod properties {
        use super::*;
        use crate::arb::{self, memory};
        use proptest::prelude::*;

        /// Feeds `input` in chunks of the given sizes, decoding after each,
        /// as a connection's reader does. Checks what every call promises
        /// and returns the messages and whether the stream was refused.
        fn feed(input: &[u8], chunks: &[usize]) -> (Vec<Message>, bool) {
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut rest = input;
            let mut chunks = chunks.iter().cycle();
            while !rest.is_empty() {
                let n = (*chunks.next().expect("cycle")).clamp(1, rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                loop {
                    let before = buf.clone();
                    let (result, held) = memory::peak(|| decode(&mut buf));
                    // Growing for a declared length stops at the limit.
                    assert!(held <= 4 + MAX_MESSAGE_LEN + 64, "{held}");
                    match result {
                        Ok(Some(msg)) => {
                            // Decoding is exact: the message re-encodes to
                            // the bytes it was decoded from.
                            let used = before.len() - buf.len();
                            let mut again = BytesMut::new();
                            msg.encode(&mut again);
                            assert_eq!(&again[..], &before[..used]);
                            out.push(msg);
                        }
                        Ok(None) => {
                            assert_eq!(buf, before, "partial input must not be consumed");
                            break;
                        }
                        Err(_) => {
                            assert_eq!(buf, before, "an error leaves the buffer");
                            return (out, true);
                        }
                    }
                }
            }
            (out, false)
        }

        fn chunks() -> impl Strategy<Value = Vec<usize>> {
            prop::collection::vec(1usize..80, 1..8)
        }

        proptest! {
            #![proptest_config(arb::config(1024))]

            #[test]
            fn arbitrary_streams_decode_or_error(input in arb::bytes(300), chunks in chunks()) {
                feed(&input, &chunks);
            }

            #[test]
            fn every_message_round_trips_in_any_chunking(
                msgs in prop::collection::vec(arb::message(), 0..8),
                chunks in chunks(),
            ) {
                let mut bytes = BytesMut::new();
                for m in &msgs {
                    m.encode(&mut bytes);
                }
                prop_assert_eq!(bytes.len(), msgs.iter().map(Message::encoded_len).sum::<usize>());
                prop_assert_eq!(feed(&bytes, &chunks), (msgs, false));
            }

            #[test]
            fn edited_streams_decode_or_error(
                msgs in prop::collection::vec(arb::message(), 1..4),
                edits in arb::edits(),
                chunks in chunks(),
            ) {
                let mut bytes = BytesMut::new();
                for m in &msgs {
                    m.encode(&mut bytes);
                }
                feed(&arb::apply(&bytes, &edits), &chunks);
            }

            /// A length prefix over the limit errors from its first four
            /// bytes, before any buffer grows for it.
            #[test]
            fn oversized_lengths_error_before_reserving(
                len in MAX_MESSAGE_LEN as u32 + 1..=u32::MAX,
                tail in arb::bytes(16),
            ) {
                let mut buf = BytesMut::with_capacity(32);
                buf.put_u32(len);
                buf.extend_from_slice(&tail);
                let cap = buf.capacity();
                let (result, held) = memory::peak(|| decode(&mut buf));
                prop_assert_eq!(result, Err(WireError::MessageTooLong(len as usize)));
                prop_assert_eq!(buf.capacity(), cap);
                prop_assert_eq!(held, 0);
            }

            #[test]
            fn any_handshake_decodes_or_errors(
                mut hs in prop::array::uniform::<_, HANDSHAKE_LEN>(any::<u8>()),
                valid in any::<bool>(),
            ) {
                if valid {
                    hs[0] = 19;
                    hs[1..20].copy_from_slice(PROTOCOL);
                }
                match Handshake::decode(&hs) {
                    Ok(parsed) => prop_assert_eq!(parsed.encode(), hs),
                    Err(_) => prop_assert!(!valid),
                }
            }

            #[test]
            fn every_handshake_round_trips(
                reserved in prop::array::uniform8(any::<u8>()),
                info_hash in prop::array::uniform20(any::<u8>()),
                peer_id in prop::array::uniform20(any::<u8>()),
            ) {
                let hs = Handshake { reserved, info_hash, peer_id };
                prop_assert_eq!(Handshake::decode(&hs.encode()), Ok(hs));
            }
        }
    }
}
