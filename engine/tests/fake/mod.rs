//! Scripted peers for engine tests: a fake seed that answers with the
//! true data or with a chosen misbehaviour, counting what it saw. Shared
//! by the test files that need one (`mod fake;`), so each hostile case
//! is a few lines of script, not a third copy of a peer.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use p2pfile_engine::wire::{self, ExtHandshake, Handshake, Message, MetadataMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most connections a fake peer accepts, and messages it reads on each:
/// every hostile loop is bounded.
const MAX_CONNECTIONS: usize = 200;
const MAX_MESSAGES: usize = 100_000;

/// What a fake seed does after the handshake.
#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// Serves every piece, zeros in place of the pieces `corrupt` names.
    Corrupt(fn(u32) -> bool),
    /// Sends a message longer than the wire allows, then waits.
    Oversized,
}

/// A fake seed listening on `addr`.
pub struct FakeSeed {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Where each came from.
    pub sources: Arc<Mutex<Vec<IpAddr>>>,
}

impl FakeSeed {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections accepted from `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        let sources = self.sources.lock().unwrap();
        sources.iter().filter(|s| **s == ip).count()
    }
}

/// The IPv4 address 127.<P2PFILE_TEST_NET>.0.<host>, for hostile peers
/// (host numbers >= 200 so they do not clash with the CLI tests' hosts).
pub fn hostile_ip(host: u8) -> IpAddr {
    IpAddr::from([127, test_net(), 0, host])
}

/// `P2PFILE_TEST_NET` (0 when unset): tests that run at once use their
/// own 127.<N>.0.0/16.
pub fn test_net() -> u8 {
    std::env::var("P2PFILE_TEST_NET")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Starts a fake seed of `content` (cut in `piece_length` pieces) on `ip`.
pub async fn fake_seed(
    ip: IpAddr,
    content: Arc<Vec<u8>>,
    piece_length: usize,
    how: Misbehaviour,
) -> FakeSeed {
    listen(ip, move |stream| {
        serve(stream, content.clone(), piece_length, how)
    })
    .await
}

/// Listens on `ip` and runs `conn` on each of at most [`MAX_CONNECTIONS`]
/// connections, counting them.
async fn listen<F, Fut>(ip: IpAddr, conn: F) -> FakeSeed
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let sources = Arc::new(Mutex::new(Vec::new()));
    let count = connections.clone();
    let from = sources.clone();
    tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            from.lock().unwrap().push(peer.ip());
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(conn(stream));
        }
    });
    FakeSeed {
        addr,
        connections,
        sources,
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    content: Arc<Vec<u8>>,
    piece_length: usize,
    how: Misbehaviour,
) -> std::io::Result<()> {
    let pieces = content.len().div_ceil(piece_length);
    let mut hs = [0u8; 68];
    stream.read_exact(&mut hs).await?;
    let theirs = Handshake::decode(&hs).expect("handshake");
    let ours = Handshake {
        reserved: [0; 8],
        info_hash: theirs.info_hash,
        peer_id: *b"-XX0000-hostile-peer",
    };
    let mut out = BytesMut::new();
    out.extend_from_slice(&ours.encode());
    if matches!(how, Misbehaviour::Oversized) {
        // A length prefix far above the wire's limit.
        out.extend_from_slice(&(64u32 << 20).to_be_bytes());
        out.extend_from_slice(&[7; 64]);
        stream.write_all(&out).await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        return Ok(());
    }
    let mut bits = vec![0u8; pieces.div_ceil(8)];
    for i in 0..pieces {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    Message::Bitfield(Bytes::from(bits)).encode(&mut out);
    Message::Unchoke.encode(&mut out);
    stream.write_all(&out).await?;
    let Misbehaviour::Corrupt(corrupt) = how else {
        unreachable!()
    };
    let mut buf = BytesMut::new();
    for _ in 0..MAX_MESSAGES {
        while let Some(msg) = wire::decode(&mut buf).expect("valid message") {
            let Message::Request(r) = msg else { continue };
            let start = r.index as usize * piece_length + r.begin as usize;
            let mut data = content[start..start + r.length as usize].to_vec();
            if corrupt(r.index) {
                data.fill(0);
            }
            let mut out = BytesMut::new();
            Message::Piece {
                index: r.index,
                begin: r.begin,
                data: Bytes::from(data),
            }
            .encode(&mut out);
            stream.write_all(&out).await?;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
    Ok(())
}

/// Dials `to` from `from` (port chosen by the kernel) and exchanges
/// handshakes for `info_hash`; returns the stream and the read buffer.
pub async fn dial(
    from: IpAddr,
    to: SocketAddr,
    info_hash: [u8; 20],
) -> (tokio::net::TcpStream, BytesMut) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let ours = Handshake {
        reserved: [0; 8],
        info_hash,
        peer_id: *b"-XX0000-hostile-leec",
    };
    stream.write_all(&ours.encode()).await.unwrap();
    let mut hs = [0u8; 68];
    stream.read_exact(&mut hs).await.unwrap();
    (stream, BytesMut::new())
}

/// The next message on `stream`, `None` when it closed.
pub async fn next_message(
    stream: &mut tokio::net::TcpStream,
    buf: &mut BytesMut,
) -> Option<Message> {
    loop {
        if let Some(msg) = wire::decode(buf).expect("valid message") {
            return Some(msg);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// How the hostile peer lies about the metadata.
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

/// Starts a peer on `ip` that offers the metadata `real` (the info
/// dictionary's bytes) and lies about it as `lie` says, on every
/// connection alike. It announces no pieces.
pub async fn fake_metadata_peer(ip: IpAddr, lie: MetadataLie, real: Arc<Vec<u8>>) -> FakeSeed {
    listen(ip, move |stream| {
        lie_about_metadata(stream, lie, real.clone())
    })
    .await
}

async fn lie_about_metadata(
    mut s: tokio::net::TcpStream,
    lie: MetadataLie,
    real: Arc<Vec<u8>>,
) -> std::io::Result<()> {
    let mut hs = [0u8; 68];
    s.read_exact(&mut hs).await?;
    let theirs = Handshake::decode(&hs).expect("handshake");
    let mut reserved = [0u8; 8];
    reserved[5] |= 0x10;
    let ours = Handshake {
        reserved,
        info_hash: theirs.info_hash,
        peer_id: *b"-XX0000-metadatalies",
    };
    let size = match lie {
        MetadataLie::WrongBytes | MetadataLie::Silent => real.len(),
        MetadataLie::AbsurdSize => 0xFFFF_0000,
        MetadataLie::WrongSize => real.len() + 5000,
    };
    let ext = ExtHandshake {
        m: [("ut_metadata".to_string(), 3)].into(),
        metadata_size: Some(size as u32),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    out.extend_from_slice(&ours.encode());
    Message::Extended {
        id: 0,
        payload: ext.encode().into(),
    }
    .encode(&mut out);
    s.write_all(&out).await?;
    let mut their_id = None;
    let mut buf = BytesMut::new();
    for _ in 0..MAX_MESSAGES {
        while let Some(msg) = wire::decode(&mut buf).expect("valid message") {
            let Message::Extended { id, payload } = msg else {
                continue;
            };
            if id == 0 {
                their_id = ExtHandshake::decode(&payload)
                    .ok()
                    .and_then(|e| e.ext_id("ut_metadata"));
                continue;
            }
            let (Some(their_id), Ok(MetadataMsg::Request { piece })) =
                (their_id, MetadataMsg::decode(&payload))
            else {
                continue;
            };
            let start = piece as usize * wire::METADATA_PIECE_SIZE;
            let len = size.saturating_sub(start).min(wire::METADATA_PIECE_SIZE);
            let data = match lie {
                MetadataLie::Silent => continue,
                MetadataLie::WrongBytes => {
                    let mut d = real[start..start + len].to_vec();
                    d.iter_mut().for_each(|b| *b ^= 0x55);
                    d
                }
                MetadataLie::AbsurdSize | MetadataLie::WrongSize => vec![0xAA; len],
            };
            let mut out = BytesMut::new();
            Message::Extended {
                id: their_id,
                payload: MetadataMsg::Data {
                    piece,
                    total_size: size as u32,
                    data: Bytes::from(data),
                }
                .encode()
                .into(),
            }
            .encode(&mut out);
            s.write_all(&out).await?;
        }
        if s.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(())
}
