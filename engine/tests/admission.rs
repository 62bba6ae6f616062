//! Admission against hostile connections: peers that take a slot and say
//! nothing, many of them from one address, cannot keep an honest
//! downloader from a seed. Hostile peers connect from 127.N.0.200 and up
//! (N = `P2PFILE_TEST_NET`), the seed and the honest downloader use
//! 127.0.0.1, so the two sides are different addresses.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use p2pfile_engine::metainfo::{Info, InfoHash};
use p2pfile_engine::wire::{Handshake, Message};
use p2pfile_engine::{Session, Source, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{connect_from, hostile_ip, loopback};

/// A 2 MB file seeded from a new session on 127.0.0.1.
async fn seed(dir: &Path) -> (Session, Arc<Info>, Vec<u8>) {
    let path = dir.join("data.bin");
    let content: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i * 13 + i / 509) as u8)
        .collect();
    std::fs::write(&path, &content).unwrap();
    let s = Session::start(loopback()).await.unwrap();
    let info = common::seed(&s, &path);
    (s, info, content)
}

/// How a hostile connection behaves after connecting.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Sends nothing at all.
    Silent,
    /// A valid handshake for the torrent, then nothing.
    Handshake,
    /// A valid handshake and HAVE-NONE: announced, but of no use.
    HaveNone,
    /// Bytes that are not a handshake.
    Garbage,
}

/// Runs one hostile connection until the seed closes it or `hold` ends;
/// returns whether the seed sent its handshake (the connection got a slot).
async fn hostile(
    from: IpAddr,
    to: SocketAddr,
    info_hash: InfoHash,
    how: Hostile,
    hold: Duration,
) -> bool {
    let Ok(mut s) = connect_from(from, to).await else {
        return false;
    };
    let mut id = *b"-XX0000-hostile00000";
    rand_fill(&mut id[14..]);
    let hs = Handshake::new(info_hash.0, id);
    let mut out = BytesMut::new();
    match how {
        Hostile::Silent => {}
        Hostile::Handshake => out.extend_from_slice(&hs.encode()),
        Hostile::HaveNone => {
            out.extend_from_slice(&hs.encode());
            Message::HaveNone.encode(&mut out);
        }
        Hostile::Garbage => out.extend_from_slice(&[0xAB; 200]),
    }
    if s.write_all(&out).await.is_err() {
        return false;
    }
    let mut got = 0usize;
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(hold, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    got >= 68
}

fn rand_fill(b: &mut [u8]) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    for (i, x) in b.iter_mut().enumerate() {
        *x = b'0' + ((n >> (i * 3)) & 7) as u8;
    }
}

/// An honest downloader on 127.0.0.1 fetches from `seed_addr`; returns the
/// bytes it wrote, or `None` when it did not complete within `limit`.
async fn honest_download(
    info: &Arc<Info>,
    seed_addr: SocketAddr,
    limit: Duration,
) -> Option<Vec<u8>> {
    let s = Session::start(loopback()).await.unwrap();
    let mut events = s.events().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = s
        .add(
            Source::Info(info.clone()),
            Target::download(dir.path().to_path_buf()),
            vec![seed_addr],
        )
        .unwrap();
    let done = tokio::time::timeout(limit, common::wait_completed(&mut events, id)).await;
    s.shutdown().await;
    done.ok()?;
    Some(std::fs::read(dir.path().join(&info.name)).unwrap())
}

/// Issue 10, finding 1: a few dozen connections from one address that send
/// a handshake for the served torrent and then nothing used to fill every
/// slot of the seed (60), and an honest downloader got no peer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_handshakes_from_one_address_do_not_lock_out_an_honest_downloader() {
    let src = tempfile::tempdir().unwrap();
    let (seed, info, content) = seed(src.path()).await;
    let seed_addr = seed.local_addr();
    let id = info.info_hash();
    let from = hostile_ip(200);
    let mut hostiles = Vec::new();
    for _ in 0..70 {
        hostiles.push(tokio::spawn(hostile(
            from,
            seed_addr,
            id,
            Hostile::Handshake,
            Duration::from_secs(40),
        )));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = honest_download(&info, seed_addr, Duration::from_secs(30)).await;
    let peers = seed.stats(id).unwrap().peers;
    assert!(
        got.is_some(),
        "the honest downloader did not complete (seed has {peers} peers)"
    );
    assert!(got.unwrap() == content, "downloaded bytes differ");
    seed.shutdown().await;
    for h in hostiles {
        h.abort();
    }
}

/// Slots full of peers that announced nothing useful (HAVE-NONE to a seed,
/// never interested), from many addresses each within the per-address cap:
/// an honest downloader displaces one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn useless_peers_from_many_addresses_are_displaced_by_an_honest_one() {
    let src = tempfile::tempdir().unwrap();
    let (seed, info, content) = seed(src.path()).await;
    let seed_addr = seed.local_addr();
    let id = info.info_hash();
    let mut hostiles = Vec::new();
    for host in 200..216u8 {
        for _ in 0..5 {
            hostiles.push(tokio::spawn(hostile(
                hostile_ip(host),
                seed_addr,
                id,
                Hostile::HaveNone,
                Duration::from_secs(40),
            )));
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let full = seed.stats(id).unwrap().peers;
    let got = honest_download(&info, seed_addr, Duration::from_secs(30)).await;
    assert!(
        got.is_some(),
        "the honest downloader did not complete (seed had {full} peers)"
    );
    assert!(got.unwrap() == content, "downloaded bytes differ");
    seed.shutdown().await;
    for h in hostiles {
        h.abort();
    }
}

/// Thousands of hostile connections from one address (3,000 connects over
/// at most 30 s: silent, handshake-then-silent, HAVE-NONE, garbage) while an
/// honest downloader fetches: it completes byte-identical, and the seed's
/// peer count stays bounded throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_leaves_the_seed_serving() {
    const CONNECTS: usize = 3000;
    const FLOOD_TIME: Duration = Duration::from_secs(30);
    /// Hostile connections open at once (each holds a descriptor here).
    const CONCURRENT: usize = 300;
    let src = tempfile::tempdir().unwrap();
    let (seed, info, content) = seed(src.path()).await;
    let seed_addr = seed.local_addr();
    let id = info.info_hash();
    let from = hostile_ip(200);
    let max_peers = Arc::new(AtomicUsize::new(0));
    let mut watch = seed.watch_stats(id).unwrap();
    let seen = max_peers.clone();
    let watcher = tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            let p = watch.borrow().peers;
            seen.fetch_max(p, Ordering::Relaxed);
        }
    });
    let flood = tokio::spawn(async move {
        let start = Instant::now();
        let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
        let admitted = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        let mut n = 0;
        while n < CONNECTS && start.elapsed() < FLOOD_TIME {
            let permit = gate.clone().acquire_owned().await.unwrap();
            let how = [
                Hostile::Silent,
                Hostile::Handshake,
                Hostile::HaveNone,
                Hostile::Garbage,
            ][n % 4];
            let admitted = admitted.clone();
            tasks.push(tokio::spawn(async move {
                if hostile(from, seed_addr, id, how, Duration::from_secs(8)).await {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            }));
            n += 1;
            // Spread over ~15 s, so the flood lasts the whole download.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = start.elapsed();
        for t in tasks {
            let _ = t.await;
        }
        (n, admitted.load(Ordering::Relaxed), took)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = honest_download(&info, seed_addr, Duration::from_secs(40)).await;
    let during = flood.is_finished();
    let peers_during = max_peers.load(Ordering::Relaxed);
    let (sent, admitted, took) = flood.await.unwrap();
    eprintln!(
        "flood: {sent} connects in {took:?}, {admitted} got the seed's handshake; \
         seed peers at most {peers_during}"
    );
    assert!(got.is_some(), "the honest downloader did not complete");
    assert!(!during, "the flood ended before the download did");
    assert!(got.unwrap() == content, "downloaded bytes differ");
    assert!(sent >= 1000, "the flood made only {sent} connects");
    assert!(
        peers_during <= 12,
        "one address held {peers_during} of the seed's peer slots"
    );
    watcher.abort();
    seed.shutdown().await;
}
