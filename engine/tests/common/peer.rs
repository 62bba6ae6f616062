//! The scripted peer for hostile-peer tests: it speaks just enough of the
//! wire protocol (`p2pfile_engine::wire`) to claim pieces, answer requests
//! and offer the metadata the way a test's [`Script`] says, the same on
//! every connection, and counts what it saw. Every loop is bounded in count.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use p2pfile_engine::metainfo::Info;
use p2pfile_engine::wire::{self, BlockRequest, ExtHandshake, Handshake, Message, MetadataMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Most connections a scripted peer accepts, and reads it makes on each:
/// every hostile loop is bounded.
const MAX_CONNECTIONS: usize = 200;
const MAX_READS: usize = 100_000;

/// How a scripted peer lies about the metadata.
#[derive(Clone, Copy, Debug)]
pub enum MetadataLie {
    /// The right size, but bytes that do not hash to the info-hash.
    WrongBytes,
    /// An absurd size (about 4 GiB), and junk for every piece asked.
    AbsurdSize,
    /// A plausible but wrong size, and junk of that size.
    WrongSize,
    /// The right size, and no answer to any request.
    Silent,
}

/// What a scripted peer does at the first request it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtFirstRequest {
    /// Nothing more than answering it.
    Serve,
    /// A choke and an unchoke, then it answers that request and the later
    /// ones as usual: with the fast extension a choke cancels nothing the
    /// peer does not reject, the race a peer that chokes on "not
    /// interested" runs with one interested again.
    ChokeAndUnchoke,
    /// A choke, and then nothing: it neither serves nor rejects what it
    /// was asked, as BEP 6 says a peer with the fast extension must.
    ChokeAndHold,
}

/// What a scripted peer holds and how it answers.
#[derive(Clone)]
pub struct Script {
    /// The content, piece after piece, in one file (read per block, so
    /// large torrents cost no memory); `None` for a peer with no piece.
    pub content: Option<Arc<PathBuf>>,
    pub piece_length: usize,
    /// Pieces it claims (all of them, in a bitfield, then an unchoke).
    pub pieces: usize,
    /// Whether a request for this piece is answered; one that is not is
    /// never answered at all: no block, no reject.
    pub answers: fn(u32) -> bool,
    /// Whether this piece's blocks are sent as zeros.
    pub corrupt: fn(u32) -> bool,
    /// Pause before each block sent (a slow but honest peer). Requests are
    /// answered one at a time in the order they came, like a real
    /// client's upload queue.
    pub delay: Duration,
    /// A protocol violation: right after the handshake, a message longer
    /// than the wire allows; then nothing more.
    pub oversized: bool,
    /// The metadata (the info dictionary's bytes) it offers over
    /// `ut_metadata`, and how it lies about it.
    pub metadata: Option<(MetadataLie, Arc<Vec<u8>>)>,
    /// It says it supports the fast extension (BEP 6).
    pub fast: bool,
    /// What it does at the first request it gets.
    pub at_first_request: AtFirstRequest,
}

impl Script {
    /// An honest seed of `info`, whose content is the file `content`: it
    /// claims every piece and answers every request at once.
    pub fn seed(info: &Info, content: impl Into<PathBuf>) -> Script {
        Script {
            content: Some(Arc::new(content.into())),
            piece_length: info.piece_length as usize,
            pieces: info.piece_count(),
            answers: |_| true,
            corrupt: |_| false,
            delay: Duration::ZERO,
            oversized: false,
            metadata: None,
            fast: false,
            at_first_request: AtFirstRequest::Serve,
        }
    }

    /// A peer that claims no piece and offers `info`'s metadata, lying
    /// about it as `lie` says.
    pub fn metadata_liar(info: &Info, lie: MetadataLie) -> Script {
        Script {
            content: None,
            piece_length: info.piece_length as usize,
            pieces: 0,
            answers: |_| false,
            corrupt: |_| false,
            delay: Duration::ZERO,
            oversized: false,
            metadata: Some((lie, Arc::new(info.as_bytes().to_vec()))),
            fast: false,
            at_first_request: AtFirstRequest::Serve,
        }
    }
}

/// What a scripted peer saw, across all its connections.
#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    /// Where each connection came from.
    sources: Mutex<Vec<IpAddr>>,
    requests: AtomicU64,
    blocks_sent: AtomicU64,
    cancels: AtomicU64,
}

/// A scripted peer listening on `addr`, and its counters.
pub struct ScriptedPeer {
    pub addr: SocketAddr,
    seen: Arc<Seen>,
}

impl ScriptedPeer {
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// Connections accepted from `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        let sources = self.seen.sources.lock().unwrap();
        sources.iter().filter(|s| **s == ip).count()
    }

    /// Requests received, answered or not.
    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::SeqCst)
    }

    pub fn blocks_sent(&self) -> u64 {
        self.seen.blocks_sent.load(Ordering::SeqCst)
    }

    pub fn cancels(&self) -> u64 {
        self.seen.cancels.load(Ordering::SeqCst)
    }
}

/// Starts a peer on `ip` (port chosen by the kernel) that runs `script` on
/// each of at most [`MAX_CONNECTIONS`] connections.
pub async fn scripted_peer(ip: IpAddr, script: Script) -> ScriptedPeer {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((stream, from)) = listener.accept().await else {
                return;
            };
            counters.sources.lock().unwrap().push(from.ip());
            counters.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, script.clone(), counters.clone()));
        }
    });
    ScriptedPeer { addr, seen }
}

/// The peer id of the scripted peer listening on `addr`: one per peer, so
/// a downloader with two of them does not close one as a second connection
/// to the other (it did, and a test's peer was never asked).
fn peer_id(addr: SocketAddr) -> [u8; 20] {
    let tail = match addr.ip() {
        IpAddr::V4(ip) => format!(
            "{:03}{:03}{:06}",
            ip.octets()[1],
            ip.octets()[3],
            addr.port()
        ),
        IpAddr::V6(ip) => format!("{:06}{:06}", ip.segments()[7], addr.port()),
    };
    let mut id = *b"-XX0000-000000000000";
    id[8..].copy_from_slice(tail.as_bytes());
    id
}

async fn serve(mut stream: TcpStream, script: Script, seen: Arc<Seen>) -> std::io::Result<()> {
    let mut hs = [0u8; wire::HANDSHAKE_LEN];
    stream.read_exact(&mut hs).await?;
    let theirs = Handshake::decode(&hs).expect("handshake");
    let mut reserved = [0u8; 8];
    if script.metadata.is_some() {
        reserved[5] |= 0x10;
    }
    if script.fast {
        reserved[7] |= 0x04;
    }
    let ours = Handshake {
        reserved,
        info_hash: theirs.info_hash,
        peer_id: peer_id(stream.local_addr()?),
    };
    let mut out = BytesMut::new();
    out.extend_from_slice(&ours.encode());
    if script.oversized {
        // A length prefix far above the wire's limit.
        out.extend_from_slice(&(64u32 << 20).to_be_bytes());
        out.extend_from_slice(&[7; 64]);
        stream.write_all(&out).await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        return Ok(());
    }
    if let Some((lie, real)) = &script.metadata {
        let ext = ExtHandshake {
            m: [("ut_metadata".to_string(), 3)].into(),
            metadata_size: Some(metadata_size(*lie, real) as u32),
            ..Default::default()
        };
        Message::Extended {
            id: 0,
            payload: ext.encode().into(),
        }
        .encode(&mut out);
    }
    if script.pieces > 0 {
        let mut bits = vec![0u8; script.pieces.div_ceil(8)];
        for i in 0..script.pieces {
            bits[i / 8] |= 0x80 >> (i % 8);
        }
        Message::Bitfield(Bytes::from(bits)).encode(&mut out);
        Message::Unchoke.encode(&mut out);
    }
    stream.write_all(&out).await?;
    let file = match &script.content {
        Some(content) => Some(std::fs::File::open(&**content)?),
        None => None,
    };
    // Requests to answer, in the order they came, and when the first is
    // due: the peer goes on reading (and counting cancels) meanwhile.
    let mut queue: VecDeque<BlockRequest> = VecDeque::new();
    let mut due = Instant::now();
    let mut their_metadata_id = None;
    let mut buf = BytesMut::new();
    let mut reads = 0;
    let mut first_request = true;
    let mut holding = false;
    loop {
        tokio::select! {
            // Everything due is sent before the next read.
            biased;
            _ = ready_at(due), if !queue.is_empty() && !holding => {
                let r = queue.pop_front().expect("queued");
                let file = file.as_ref().expect("a peer with content");
                let start = r.index as u64 * script.piece_length as u64 + r.begin as u64;
                let mut data = vec![0u8; r.length as usize];
                std::os::unix::fs::FileExt::read_exact_at(file, &mut data, start)?;
                if (script.corrupt)(r.index) {
                    data.fill(0);
                }
                let piece = Message::Piece {
                    index: r.index,
                    begin: r.begin,
                    data: Bytes::from(data),
                };
                send(&mut stream, piece).await?;
                seen.blocks_sent.fetch_add(1, Ordering::SeqCst);
                due = Instant::now() + script.delay;
            }
            read = stream.read_buf(&mut buf), if reads < MAX_READS => {
                reads += 1;
                if read.unwrap_or(0) == 0 {
                    return Ok(());
                }
                while let Some(msg) = wire::decode(&mut buf).expect("valid message") {
                    match msg {
                        Message::Request(r) => {
                            seen.requests.fetch_add(1, Ordering::SeqCst);
                            if first_request && script.at_first_request != AtFirstRequest::Serve {
                                send(&mut stream, Message::Choke).await?;
                                match script.at_first_request {
                                    AtFirstRequest::ChokeAndUnchoke => {
                                        send(&mut stream, Message::Unchoke).await?;
                                    }
                                    _ => holding = true,
                                }
                            }
                            first_request = false;
                            if (script.answers)(r.index) {
                                if queue.is_empty() {
                                    due = Instant::now() + script.delay;
                                }
                                queue.push_back(r);
                            }
                        }
                        Message::Cancel(_) => {
                            seen.cancels.fetch_add(1, Ordering::SeqCst);
                        }
                        Message::Extended { id: 0, payload } => {
                            their_metadata_id = ExtHandshake::decode(&payload)
                                .ok()
                                .and_then(|e| e.ext_id("ut_metadata"));
                        }
                        Message::Extended { payload, .. } => {
                            if let (Some((lie, real)), Some(id)) = (&script.metadata, their_metadata_id)
                                && let Some(reply) = metadata_reply(*lie, real, id, &payload)
                            {
                                send(&mut stream, reply).await?;
                            }
                        }
                        _ => {}
                    }
                }
            }
            else => return Ok(()),
        }
    }
}

/// Waits until `due`; at once when it is past (a timer would still wait
/// for its next tick, about 1 ms: a block a millisecond, a slowed peer).
async fn ready_at(due: Instant) {
    if due > Instant::now() {
        tokio::time::sleep_until(due).await;
    }
}

async fn send(stream: &mut TcpStream, msg: Message) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    msg.encode(&mut out);
    stream.write_all(&out).await
}

/// The metadata size announced under `lie`.
fn metadata_size(lie: MetadataLie, real: &[u8]) -> usize {
    match lie {
        MetadataLie::WrongBytes | MetadataLie::Silent => real.len(),
        MetadataLie::AbsurdSize => 0xFFFF_0000,
        MetadataLie::WrongSize => real.len() + 5000,
    }
}

/// The answer under `lie` to the metadata message `payload`, sent to the
/// other side's extension id `their_id`; `None` when it gets none.
fn metadata_reply(lie: MetadataLie, real: &[u8], their_id: u8, payload: &Bytes) -> Option<Message> {
    let Ok(MetadataMsg::Request { piece }) = MetadataMsg::decode(payload) else {
        return None;
    };
    let size = metadata_size(lie, real);
    let start = piece as usize * wire::METADATA_PIECE_SIZE;
    let len = size.saturating_sub(start).min(wire::METADATA_PIECE_SIZE);
    let data = match lie {
        MetadataLie::Silent => return None,
        MetadataLie::WrongBytes => {
            let mut d = real[start..start + len].to_vec();
            d.iter_mut().for_each(|b| *b ^= 0x55);
            d
        }
        MetadataLie::AbsurdSize | MetadataLie::WrongSize => vec![0xAA; len],
    };
    let payload = MetadataMsg::Data {
        piece,
        total_size: size as u32,
        data: Bytes::from(data),
    };
    Some(Message::Extended {
        id: their_id,
        payload: payload.encode().into(),
    })
}
