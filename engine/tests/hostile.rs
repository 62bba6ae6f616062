//! Hostile peers against the engine (issue #10): each misbehaves beside an
//! honest seed, and the download still completes byte-identical. Hostile
//! peers bind 127.<P2PFILE_TEST_NET>.0.200+; everything is bounded in
//! count and time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::peer::{Script, scripted_peer};
use common::{config, connect_from, dial, hostile_ip, loopback, next_message, test_net};
use p2pfile_engine::metainfo::Info;
use p2pfile_engine::wire::{BLOCK_SIZE, BlockRequest, Message};
use p2pfile_engine::{BanReason, Event, Session, Source, Target, TorrentEvent};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedReceiver;

fn content(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7 + i / 977) % 251) as u8 + 1)
        .collect()
}

/// A file of `len` bytes (`dir`/data.bin), its torrent, and an honest seed
/// of it.
async fn honest_seed(dir: &Path, len: usize) -> (Session, Arc<Info>, Arc<Vec<u8>>) {
    let path = dir.join("data.bin");
    let data = content(len, 3);
    std::fs::write(&path, &data).unwrap();
    let seed = Session::start(loopback()).await.unwrap();
    let info = common::seed(&seed, &path);
    (seed, info, Arc::new(data))
}

/// The ban in `ev`, if it is one.
fn ban(ev: &Event) -> Option<(SocketAddr, BanReason)> {
    match ev {
        Event::PeerBanned { addr, reason } => Some((*addr, *reason)),
        _ => None,
    }
}

/// Events until `Completed`, failing the test on `Failed`.
async fn until_completed(events: &mut UnboundedReceiver<TorrentEvent>) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Some(ev) = events.recv().await {
        match ev.event {
            Event::Completed => return seen,
            Event::Failed { error } => panic!("failed: {error}"),
            other => seen.push(other),
        }
    }
    panic!("session stopped before the torrent completed");
}

/// A peer that alone sent a piece failing its hash is banned at once, is
/// not dialled again, and the download completes from the honest seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_alone_behind_a_corrupt_piece_is_banned_at_once() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let (seed, info, data) = honest_seed(src.path(), 2_000_000).await;
        let liar = Script {
            corrupt: |_| true,
            ..Script::seed(&info, src.path().join("data.bin"))
        };
        let liar = scripted_peer(hostile_ip(201), liar).await;
        let s = Session::start(loopback()).await.unwrap();
        let mut events = s.events().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The liar alone first, so its first piece is its alone.
        let id = s
            .add(
                Source::Info(info.clone()),
                Target::download(dir.path()),
                vec![liar.addr],
            )
            .unwrap();
        let mut seen = Vec::new();
        loop {
            let ev = events.recv().await.unwrap().event;
            let failed = matches!(ev, Event::HashFailed { .. });
            seen.push(ev);
            if failed {
                break;
            }
        }
        s.add_peers(id, vec![seed.local_addr()]).await.unwrap();
        seen.extend(until_completed(&mut events).await);
        let got = std::fs::read(dir.path().join("data.bin")).unwrap();
        assert!(got == *data, "byte-identical");
        let stats = s.stats(id).unwrap();
        let bans: Vec<_> = seen.iter().filter_map(ban).collect();
        // Failed pieces until the liar was cut off (banned, or dropped).
        let until_cut = seen
            .iter()
            .take_while(|e| match e {
                Event::PeerBanned { .. } => false,
                Event::PeerDisconnected { reason, .. } => !reason.contains("corrupt"),
                _ => true,
            })
            .filter(|e| matches!(e, Event::HashFailed { .. }))
            .count();
        eprintln!(
            "FIGURE corrupt-alone: failed pieces until cut off {until_cut}, hash failures {}, liar connections {}, bans {bans:?}",
            stats.hash_failures,
            liar.connections()
        );
        assert_eq!(bans, [(liar.addr, BanReason::CorruptPiece)]);
        // The ban follows the first failed piece at once.
        let first_fail = seen
            .iter()
            .position(|e| matches!(e, Event::HashFailed { .. }))
            .unwrap();
        assert!(
            matches!(seen[first_fail + 1], Event::PeerBanned { .. }),
            "{:?}",
            &seen[first_fail..]
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(liar.connections(), 1, "a banned peer is not redialled");
        s.shutdown().await;
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// A peer that breaks the protocol (an oversized message) on every
/// connection is dialled again once, then banned: in a six-second window
/// it sees two connections, not one a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_violates_the_protocol_twice_is_banned_and_not_redialled() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let (seed, info, data) = honest_seed(src.path(), 500_000).await;
        let bad = Script {
            oversized: true,
            ..Script::seed(&info, src.path().join("data.bin"))
        };
        let bad = scripted_peer(hostile_ip(202), bad).await;
        // On its own address: the seed learns the bad peer by PEX and
        // dials it too (and bans it in its own session).
        let own = config([127, test_net(), 0, 210], false, vec![]);
        let s = Session::start(own).await.unwrap();
        let mut events = s.events().unwrap();
        let dir = tempfile::tempdir().unwrap();
        s.add(
            Source::Info(info.clone()),
            Target::download(dir.path()),
            vec![bad.addr, seed.local_addr()],
        )
        .unwrap();
        let mut seen = until_completed(&mut events).await;
        assert!(std::fs::read(dir.path().join("data.bin")).unwrap() == *data);
        // The window: six seconds after the start, ticks of one second.
        tokio::time::sleep(Duration::from_secs(6)).await;
        while let Ok(ev) = events.try_recv() {
            seen.push(ev.event);
        }
        let bans: Vec<_> = seen.iter().filter_map(ban).collect();
        let dialled = bad.connections_from(s.local_addr().ip());
        eprintln!("FIGURE violation: connections in the window {dialled}, bans {bans:?}");
        assert_eq!(dialled, 2);
        assert_eq!(bans, [(bad.addr, BanReason::ProtocolViolation)]);
        s.shutdown().await;
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// A peer that asks a seed for one block a thousand times is served it
/// three times, then banned; an honest downloader is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_for_one_block_is_refused_and_banned() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let (seed, info, data) = honest_seed(src.path(), 500_000).await;
        let mut seed_events = seed.events().unwrap();
        let (mut stream, mut buf) =
            dial(hostile_ip(203), seed.local_addr(), info.info_hash().0).await;
        send_times(&mut stream, Message::Interested, 1).await;
        loop {
            match next_message(&mut stream, &mut buf).await {
                Some(Message::Unchoke) => break,
                Some(_) => {}
                None => panic!("closed before unchoking"),
            }
        }
        send_times(&mut stream, Message::Request(FIRST_BLOCK), 1000).await;
        // Count the copies served until the seed closes, or 5 s pass.
        let mut served = 0;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(msg) = next_message(&mut stream, &mut buf).await {
                if matches!(msg, Message::Piece { .. }) {
                    served += 1;
                }
            }
        })
        .await;
        // What the seed wrote (its counters refresh every second): the
        // copies read above may be cut short when the banned connection
        // is reset with requests still unread.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let uploaded = seed.stats(info.info_hash()).unwrap().uploaded;
        let mut bans = Vec::new();
        while let Ok(ev) = seed_events.try_recv() {
            bans.extend(ban(&ev.event));
        }
        eprintln!(
            "FIGURE flood: sent {} copies of 1000 asked, {served} read, bans {bans:?}",
            uploaded / BLOCK_SIZE as u64
        );
        // At most 3 copies: fewer when the 16th request bans and drops the
        // connection before its queued uploads went out (seen 1 in 20 runs).
        assert!(
            uploaded <= 3 * BLOCK_SIZE as u64,
            "{} copies sent",
            uploaded / BLOCK_SIZE as u64
        );
        assert!(served <= 3);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].0.ip(), hostile_ip(203));
        assert_eq!(bans[0].1, BanReason::RequestFlood);

        // The seed goes on serving honest peers.
        let s = Session::start(loopback()).await.unwrap();
        let mut events = s.events().unwrap();
        let dir = tempfile::tempdir().unwrap();
        s.add(
            Source::Info(info.clone()),
            Target::download(dir.path()),
            vec![seed.local_addr()],
        )
        .unwrap();
        until_completed(&mut events).await;
        assert!(std::fs::read(dir.path().join("data.bin")).unwrap() == *data);
        // And refuses the flooder's address at once.
        let mut again = connect_from(hostile_ip(203), seed.local_addr())
            .await
            .unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut again, &mut byte),
        )
        .await
        .expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        s.shutdown().await;
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// The first block of piece 0.
const FIRST_BLOCK: BlockRequest = BlockRequest {
    index: 0,
    begin: 0,
    length: BLOCK_SIZE,
};

/// Writes `msg` to `stream` `times` times, in one write.
async fn send_times(stream: &mut tokio::net::TcpStream, msg: Message, times: usize) {
    let mut out = bytes::BytesMut::new();
    for _ in 0..times {
        msg.clone().encode(&mut out);
    }
    stream.write_all(&out).await.unwrap();
}

/// Requests the seed refuses for reasons of its own (here: the peer is
/// choked) are not a flood, however often they come: aria2 and libtorrent
/// ask again after every reject while a seed holds a piece back for the
/// peer it first sent it to. The peer is served once it may be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_the_seed_are_not_a_flood() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let (seed, info, data) = honest_seed(src.path(), 500_000).await;
        let mut seed_events = seed.events().unwrap();
        let (mut stream, mut buf) =
            dial(hostile_ip(204), seed.local_addr(), info.info_hash().0).await;
        // Not interested, so choked: every request is refused.
        send_times(&mut stream, Message::Request(FIRST_BLOCK), 40).await;
        // The seed's coordinator handles them in order, so once the
        // interest after them is answered, all 40 were seen.
        send_times(&mut stream, Message::Interested, 1).await;
        loop {
            match next_message(&mut stream, &mut buf).await {
                Some(Message::Unchoke) => break,
                Some(Message::Piece { .. }) => panic!("served while choked"),
                Some(_) => {}
                None => panic!("closed: the refused requests were taken for a flood"),
            }
        }
        send_times(&mut stream, Message::Request(FIRST_BLOCK), 1).await;
        let block = loop {
            match next_message(&mut stream, &mut buf).await {
                Some(Message::Piece { data, .. }) => break data,
                Some(_) => {}
                None => panic!("closed before serving the block"),
            }
        };
        assert_eq!(&block[..], &data[..BLOCK_SIZE as usize]);
        while let Ok(ev) = seed_events.try_recv() {
            assert_eq!(ban(&ev.event), None, "banned");
        }
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// A peer that corrupts every block, connected together with an honest
/// seed, with pieces of 16 blocks that both contribute to: the download
/// completes byte-identical, the liar is banned and the honest seed is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_sharing_pieces_with_an_honest_seed_cannot_stop_the_download() {
    liar_sharing_pieces(Duration::ZERO, 207, 211).await;
}

/// The same with the liar slowed to a block a millisecond, so that most
/// failed pieces hold blocks of both peers. Counting strikes against every
/// sender banned the honest seed too here (about 1 run in 4) and the
/// download hung; the smart ban judges each block once the piece verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_liar_sharing_pieces_cannot_get_the_honest_seed_banned() {
    liar_sharing_pieces(Duration::from_millis(1), 208, 212).await;
}

async fn liar_sharing_pieces(delay: Duration, liar_host: u8, own_host: u8) {
    use p2pfile_engine::metainfo::FileEntry;
    use sha1::{Digest, Sha1};
    const PIECE: u32 = 256 * 1024;
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let data = Arc::new(content(16 * PIECE as usize, 5));
        let path = src.path().join("big.bin");
        std::fs::write(&path, &*data).unwrap();
        let pieces = data
            .chunks(PIECE as usize)
            .map(|c| Sha1::digest(c).into())
            .collect();
        let entries = vec![FileEntry::new(vec![], data.len() as u64)];
        let info = Arc::new(Info::new("big.bin", PIECE, pieces, entries, vec![]).unwrap());
        let seed = Session::start(loopback()).await.unwrap();
        let liar = Script {
            corrupt: |_| true,
            delay,
            ..Script::seed(&info, &path)
        };
        seed.add(
            Source::Info(info.clone()),
            Target::Seed { root: path },
            vec![],
        )
        .unwrap();
        let liar = scripted_peer(hostile_ip(liar_host), liar).await;
        let own = config([127, test_net(), 0, own_host], false, vec![]);
        let s = Session::start(own).await.unwrap();
        let mut events = s.events().unwrap();
        let dir = tempfile::tempdir().unwrap();
        s.add(
            Source::Info(info.clone()),
            Target::download(dir.path()),
            vec![liar.addr, seed.local_addr()],
        )
        .unwrap();
        let seen = until_completed(&mut events).await;
        assert!(std::fs::read(dir.path().join("big.bin")).unwrap() == *data);
        let bans: Vec<_> = seen.iter().filter_map(ban).collect();
        let failed = seen
            .iter()
            .filter(|e| matches!(e, Event::HashFailed { .. }))
            .count();
        eprintln!("FIGURE mixed: failed pieces {failed}, bans {bans:?}");
        assert!(
            bans.iter().all(|(a, _)| a.ip() == hostile_ip(liar_host)),
            "{bans:?}"
        );
        assert!(
            bans.iter().any(|(a, _)| a.ip() == hostile_ip(liar_host)),
            "the liar was banned: {bans:?}"
        );
        s.shutdown().await;
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}
