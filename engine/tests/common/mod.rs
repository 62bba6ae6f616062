//! Helpers shared by the engine's integration tests (`mod common;`): session
//! configs, waiting for completion, comparing trees, hostile addresses and
//! raw connections; and, in [`peer`], the scripted hostile peer.
// Each test binary uses some of these, so the others would read as dead.
#![allow(dead_code)]

pub mod peer;

use bytes::BytesMut;
use p2pfile_engine::builder::build;
use p2pfile_engine::metainfo::{Info, InfoHash};
use p2pfile_engine::wire::{self, Handshake, Message};
use p2pfile_engine::{Event, PortChoice, Session, SessionConfig, Source, Target, TorrentEvent};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

/// A session on `ip` with a random port, no rate limits, no extensions.
pub fn config(ip: [u8; 4], dht: bool, bootstrap: Vec<SocketAddr>) -> SessionConfig {
    SessionConfig {
        ip: Ipv4Addr::from(ip),
        port: PortChoice::Range(20000..=40000),
        bootstrap,
        dht,
        upload_limit: 0,
        download_limit: 0,
        extensions: Vec::new(),
        zone: None,
    }
}

/// [`config`] on 127.0.0.1, without the DHT.
pub fn loopback() -> SessionConfig {
    config([127, 0, 0, 1], false, vec![])
}

/// Builds a torrent of `path` (a file or directory) and seeds it in `s`.
pub fn seed(s: &Session, path: &Path) -> Arc<Info> {
    let built = build(path).unwrap();
    let info = Arc::new(built.info);
    s.add(
        Source::Info(info.clone()),
        Target::Seed { root: built.root },
        vec![],
    )
    .unwrap();
    info
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

/// Fails the test unless the trees `a` and `b` are byte-identical.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let out = std::process::Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trees differ: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `P2PFILE_TEST_NET` (0 when unset): tests that run at once use their
/// own 127.<N>.0.0/16.
pub fn test_net() -> u8 {
    std::env::var("P2PFILE_TEST_NET")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The IPv4 address 127.<P2PFILE_TEST_NET>.0.<host>, for hostile peers
/// (host numbers >= 200 so they do not clash with the CLI tests' hosts).
pub fn hostile_ip(host: u8) -> IpAddr {
    IpAddr::from([127, test_net(), 0, host])
}

/// Connects from `from` (port chosen by the kernel) to `to`.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Dials `to` from `from` and exchanges handshakes for `info_hash`;
/// returns the stream and the read buffer.
pub async fn dial(from: IpAddr, to: SocketAddr, info_hash: [u8; 20]) -> (TcpStream, BytesMut) {
    let mut stream = connect_from(from, to).await.unwrap();
    let ours = Handshake {
        reserved: [0; 8],
        info_hash,
        peer_id: *b"-XX0000-hostile-leec",
    };
    stream.write_all(&ours.encode()).await.unwrap();
    let mut hs = [0u8; wire::HANDSHAKE_LEN];
    stream.read_exact(&mut hs).await.unwrap();
    (stream, BytesMut::new())
}

/// The next message on `stream`, `None` when it closed.
pub async fn next_message(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Message> {
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
