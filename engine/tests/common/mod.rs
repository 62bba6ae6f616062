//! Helpers shared by the engine's integration tests: a session config,
//! waiting for completion, and a scripted peer for hostile-peer tests that
//! speaks just enough of the wire protocol (`p2pfile_engine::wire`) to claim
//! pieces and answer requests the way a test tells it to.
// Each test binary uses some of these, so the others would read as dead.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use p2pfile_engine::metainfo::InfoHash;
use p2pfile_engine::wire::{self, Handshake, Message};
use p2pfile_engine::{Event, PortChoice, SessionConfig, TorrentEvent};
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

/// A session on `ip` with a random port, no rate limits, no extensions.
pub fn config(ip: [u8; 4], dht: bool, bootstrap: Vec<std::net::SocketAddr>) -> SessionConfig {
    SessionConfig {
        ip: Ipv4Addr::from(ip),
        port: PortChoice::Range(20000..=40000),
        bootstrap,
        dht,
        upload_limit: 0,
        download_limit: 0,
        extensions: Vec::new(),
    }
}

/// Waits for `id` to complete, failing the test on `Failed`.
pub async fn wait_completed(events: &mut UnboundedReceiver<TorrentEvent>, id: InfoHash) {
    while let Some(ev) = events.recv().await {
        if ev.info_hash != id {
            continue;
        }
        match ev.event {
            Event::Completed => return,
            Event::Failed { error } => panic!("failed: {error}"),
            _ => {}
        }
    }
    panic!("session stopped before the torrent completed");
}

/// What a scripted peer holds and how it answers.
#[derive(Clone)]
pub struct Script {
    /// The content, piece after piece, in one file (read per block, so
    /// large torrents cost no memory).
    pub content: Arc<std::path::PathBuf>,
    pub piece_length: usize,
    pub pieces: usize,
    /// Whether a request for this piece is answered (with correct data);
    /// one that is not is never answered at all: no block, no reject.
    pub answers: fn(u32) -> bool,
    /// Pause before each block sent (a slow but honest peer).
    pub delay: Duration,
}

/// What a scripted peer saw, across all its connections.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub blocks_sent: AtomicU64,
    pub cancels: AtomicU64,
}

impl Seen {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Listens on `bind`; every connection gets a handshake, a full bitfield
/// and an unchoke, then requests are answered per `script`, one at a time
/// in the order they came (like a real client's upload queue).
pub async fn scripted_peer(bind: SocketAddr, script: Script) -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counters.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve(stream, script.clone(), counters.clone()));
        }
    });
    (addr, seen)
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    script: Script,
    seen: Arc<Seen>,
) -> std::io::Result<()> {
    let mut hs = [0u8; 68];
    stream.read_exact(&mut hs).await?;
    let theirs = Handshake::decode(&hs).expect("handshake");
    let ours = Handshake {
        reserved: [0; 8],
        info_hash: theirs.info_hash,
        peer_id: *b"-XX0000-scriptedpeer",
    };
    let mut bits = vec![0u8; script.pieces.div_ceil(8)];
    for i in 0..script.pieces {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(&ours.encode());
    Message::Bitfield(Bytes::from(bits)).encode(&mut out);
    Message::Unchoke.encode(&mut out);
    stream.write_all(&out).await?;
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<wire::BlockRequest>();
    let reader_seen = seen.clone();
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        loop {
            while let Some(msg) = wire::decode(&mut buf).expect("valid message") {
                match msg {
                    Message::Request(r) => {
                        reader_seen.requests.fetch_add(1, Ordering::Relaxed);
                        if (script.answers)(r.index) {
                            let _ = tx.send(r);
                        }
                    }
                    Message::Cancel(_) => {
                        reader_seen.cancels.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            if read.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        }
    });
    while let Some(r) = rx.recv().await {
        tokio::time::sleep(script.delay).await;
        let start = r.index as u64 * script.piece_length as u64 + r.begin as u64;
        let mut data = vec![0u8; r.length as usize];
        let file = std::fs::File::open(&*script.content)?;
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut data, start)?;
        let mut out = BytesMut::new();
        Message::Piece {
            index: r.index,
            begin: r.begin,
            data: Bytes::from(data),
        }
        .encode(&mut out);
        if write.write_all(&out).await.is_err() {
            break;
        }
        seen.blocks_sent.fetch_add(1, Ordering::Relaxed);
    }
    reader.abort();
    Ok(())
}
