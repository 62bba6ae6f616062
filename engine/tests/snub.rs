//! Peers that never answer some requests (issue #10, "snubbing"): a
//! scripted peer claims every piece and leaves every third one unanswered.
//! The downloader must still get everything that peer does serve, and,
//! beside an honest seed, complete byte-identical.
//!
//! Hostile peers bind 127.N.0.200+ (N = `P2PFILE_TEST_NET`, default 0).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peer::{AtFirstRequest, Script, scripted_peer};
use common::{hostile_ip, loopback};
use p2pfile_engine::builder::build;
use p2pfile_engine::metainfo::{Info, InfoHash};
use p2pfile_engine::{Event, Session, Source, Target, TorrentEvent};
use tokio::sync::mpsc::UnboundedReceiver;

/// Size of the test file: 1024 pieces of 256 KiB. The unanswered third
/// must exceed what the downloader keeps started (twice its 32 MiB
/// assembly budget), or the old code never ran out of pieces to start.
const SIZE: usize = 256 << 20;

/// Writes `size` bytes that are never zero and differ from piece to piece:
/// a 1 MiB pattern, rotated a little further for each MiB.
fn write_content(path: &std::path::Path, size: usize) {
    use std::io::Write;
    let base: Vec<u8> = (0..1usize << 20)
        .map(|i| ((i * 31 + i / 4099) % 251) as u8 + 1)
        .collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for mib in 0..size >> 20 {
        let at = (mib * 7919) % base.len();
        f.write_all(&base[at..]).unwrap();
        f.write_all(&base[..at]).unwrap();
    }
    f.flush().unwrap();
}

/// Every third piece is never answered.
fn all_but_every_third(index: u32) -> bool {
    index % 3 != 0
}

/// The test file in a new directory, and its torrent.
fn torrent(size: usize) -> (tempfile::TempDir, Arc<Info>) {
    let src = tempfile::tempdir().unwrap();
    write_content(&src.path().join("data.bin"), size);
    let info = Arc::new(build(&src.path().join("data.bin")).unwrap().info);
    (src, info)
}

/// A seed of the file in `src` that answers as `answers` says.
fn script(info: &Info, src: &std::path::Path, answers: fn(u32) -> bool) -> Script {
    Script {
        answers,
        ..Script::seed(info, src.join("data.bin"))
    }
}

/// A downloading session, started with `peers`.
struct Downloader {
    s: Session,
    events: UnboundedReceiver<TorrentEvent>,
    dir: tempfile::TempDir,
    id: InfoHash,
    started: Instant,
}

async fn downloader(info: &Arc<Info>, peers: Vec<SocketAddr>) -> Downloader {
    let s = Session::start(loopback()).await.unwrap();
    let events = s.events().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let id = s
        .add(
            Source::Info(info.clone()),
            Target::download(dir.path().to_path_buf()),
            peers,
        )
        .unwrap();
    Downloader {
        s,
        events,
        dir,
        id,
        started,
    }
}

impl Downloader {
    /// Waits up to `secs` for completion: false on timeout. Panics when
    /// the torrent fails, or (`no_drops`) when a peer is disconnected.
    async fn completed(&mut self, secs: u64, no_drops: bool) -> bool {
        let (events, id) = (&mut self.events, self.id);
        tokio::time::timeout(Duration::from_secs(secs), async {
            while let Some(ev) = events.recv().await {
                match ev.event {
                    Event::Completed if ev.info_hash == id => return,
                    Event::Failed { error } => panic!("failed: {error}"),
                    Event::PeerDisconnected { reason, .. } if no_drops => {
                        panic!("peer dropped: {reason}")
                    }
                    _ => {}
                }
            }
            panic!("session stopped before completion");
        })
        .await
        .is_ok()
    }

    /// Whether the download is byte-identical to the file in `src`.
    fn same_as(&self, src: &std::path::Path) -> bool {
        std::fs::read(self.dir.path().join("data.bin")).unwrap()
            == std::fs::read(src.join("data.bin")).unwrap()
    }
}

/// (a) Alone, the peer that leaves every third piece unanswered still
/// gives the downloader every piece it does answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_ignores_some_requests_still_serves_the_rest() {
    let (src, info) = torrent(SIZE);
    let pieces = info.piece_count();
    let served = (0..pieces as u32)
        .filter(|i| all_but_every_third(*i))
        .count() as u64;
    let peer = scripted_peer(
        hostile_ip(200),
        script(&info, src.path(), all_but_every_third),
    )
    .await;
    let d = downloader(&info, vec![peer.addr]).await;
    let mut stats = d.s.watch_stats(d.id).unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        stats.wait_for(|st| st.pieces_verified >= served),
    )
    .await
    .is_ok();
    let last = stats.borrow().clone();
    eprintln!(
        "ignoring peer alone: {} of {served} served pieces ({} of {pieces}), {} bytes, after {:.1} s; \
         peer saw {} requests, {} cancels",
        last.pieces_verified,
        last.pieces_verified,
        last.have,
        d.started.elapsed().as_secs_f64(),
        peer.requests(),
        peer.cancels(),
    );
    assert!(
        got,
        "only {} of the {served} pieces the peer serves arrived within 60 s",
        last.pieces_verified
    );
    assert_eq!(
        last.pieces_verified, served,
        "the ignored pieces cannot arrive"
    );
    d.s.shutdown().await;
}

/// (b) Beside an honest seed, the download completes byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_ignores_some_requests_does_not_hold_back_a_seed() {
    let (src, info) = torrent(SIZE);
    let seed = Session::start(loopback()).await.unwrap();
    seed.add(
        Source::Info(info.clone()),
        Target::Seed {
            root: src.path().join("data.bin"),
        },
        vec![],
    )
    .unwrap();
    let peer = scripted_peer(
        hostile_ip(201),
        script(&info, src.path(), all_but_every_third),
    )
    .await;
    let mut d = downloader(&info, vec![peer.addr, seed.local_addr()]).await;
    let done = d.completed(90, false).await;
    eprintln!(
        "ignoring peer beside a seed: {} after {:.1} s; peer saw {} requests, sent {} blocks, {} cancels",
        if done { "completed" } else { "timed out" },
        d.started.elapsed().as_secs_f64(),
        peer.requests(),
        peer.blocks_sent(),
        peer.cancels(),
    );
    assert!(done, "download did not complete within 90 s");
    assert!(d.same_as(src.path()), "byte-identical");
    d.s.shutdown().await;
    seed.shutdown().await;
}

/// A slow but honest peer (in order, 350 ms a block: ~46 KiB/s, like an
/// `--upload-limit`) is never taken for a snubbing one: no request to it
/// is cancelled, it stays connected, and the download completes. Its queue
/// of 16 requests takes 5.6 s: a fixed timeout of a few seconds would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_that_answers_everything_is_not_snubbed() {
    let (src, info) = torrent(1 << 20);
    let slow = Script {
        delay: Duration::from_millis(350),
        ..script(&info, src.path(), |_| true)
    };
    let peer = scripted_peer(hostile_ip(202), slow).await;
    let mut d = downloader(&info, vec![peer.addr]).await;
    assert!(
        d.completed(120, true).await,
        "the slow peer's download completed within 120 s"
    );
    eprintln!(
        "slow honest peer: completed after {:.1} s; {} requests, {} cancels, {} connections",
        d.started.elapsed().as_secs_f64(),
        peer.requests(),
        peer.cancels(),
        peer.connections(),
    );
    assert_eq!(peer.cancels(), 0, "no request timed out");
    assert_eq!(peer.connections(), 1);
    assert!(d.same_as(src.path()), "byte-identical");
    d.s.shutdown().await;
}

/// A peer that claims every piece and answers no request at all is closed
/// once it has served nothing for `SERVES_NOTHING` (30 s), its requests
/// having been handed back at each stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_serves_nothing_is_closed() {
    let (src, info) = torrent(1 << 20);
    let mute = script(&info, src.path(), |_| false);
    let peer = scripted_peer(hostile_ip(203), mute).await;
    let mut d = downloader(&info, vec![peer.addr]).await;
    let reason = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(ev) = d.events.recv().await {
            if let Event::PeerDisconnected { reason, .. } = ev.event {
                return reason;
            }
        }
        panic!("session stopped");
    })
    .await
    .expect("the mute peer was closed within 90 s");
    eprintln!(
        "mute peer: closed after {:.1} s ({reason}); {} requests, {} cancels",
        d.started.elapsed().as_secs_f64(),
        peer.requests(),
        peer.cancels(),
    );
    assert!(reason.contains("sent no block"), "{reason}");
    assert!(peer.cancels() > 0, "its requests were handed back first");
    d.s.shutdown().await;
}

/// A peer with the fast extension that chokes us and unchokes us again
/// right after our first requests, then serves them (BEP 6: its choke
/// cancelled nothing it did not reject). Each block is asked exactly once:
/// the requests owed across the choke are still owed, not asked again
/// while their blocks are on the way and thrown away when they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_peers_choke_keeps_our_requests() {
    let (info, peer, d) = download_from_a_flapping_peer(true, 204).await;
    let blocks = info.total_length().div_ceil(16 * 1024);
    assert_eq!(peer.requests(), blocks, "each block asked once");
    assert_eq!(peer.blocks_sent(), blocks, "each block sent once");
    d.s.shutdown().await;
}

/// A 1 MiB download from one peer (on `hostile_ip(ip)`, with the fast
/// extension or not) that chokes and unchokes us at our first requests and
/// then serves everything it is asked; checked complete and byte-identical.
async fn download_from_a_flapping_peer(
    fast: bool,
    ip: u8,
) -> (Arc<Info>, common::peer::ScriptedPeer, Downloader) {
    let (src, info) = torrent(1 << 20);
    let flapping = Script {
        fast,
        at_first_request: AtFirstRequest::ChokeAndUnchoke,
        ..script(&info, src.path(), |_| true)
    };
    let peer = scripted_peer(hostile_ip(ip), flapping).await;
    let mut d = downloader(&info, vec![peer.addr]).await;
    assert!(
        d.completed(60, true).await,
        "the download completed within 60 s"
    );
    assert!(d.same_as(src.path()), "byte-identical");
    (info, peer, d)
}

/// A peer without the fast extension that chokes us and unchokes us again
/// right after our first requests, then serves everything it was asked.
/// Its choke cancelled our requests (BEP 3), so we asked for those blocks
/// again, and it sent them twice: the copies we no longer expected are
/// thrown away, and counted as discarded, to the byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_after_a_choke_without_the_fast_extension_count_as_discarded() {
    let (info, peer, d) = download_from_a_flapping_peer(false, 207).await;
    let size = info.total_length();
    let block = 16 * 1024;
    let blocks = size.div_ceil(block);
    // The last copies may come after the completion; wait (bounded) until
    // the counters hold every block the peer sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = d.s.stats(d.id).unwrap();
        if stats.downloaded == peer.blocks_sent() * block || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(peer.blocks_sent() > blocks, "some blocks were sent twice");
    assert_eq!(stats.downloaded, peer.blocks_sent() * block, "{stats:?}");
    assert_eq!(
        stats.discarded,
        (peer.blocks_sent() - blocks) * block,
        "one copy of each block sent twice: {stats:?}"
    );
    d.s.shutdown().await;
}

/// A peer with the fast extension that chokes us at our first requests
/// and then neither serves nor rejects them (BEP 6 says it must reject
/// what it will not serve) cannot hold the download: beside an honest
/// seed, the blocks it holds are asked of the seed too (in the endgame,
/// or once they stall, `crate::snub`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_peer_that_chokes_and_holds_our_requests_cannot_stop_the_download() {
    let (src, info) = torrent(1 << 20);
    let holder = Script {
        fast: true,
        at_first_request: AtFirstRequest::ChokeAndHold,
        ..script(&info, src.path(), |_| true)
    };
    let holder = scripted_peer(hostile_ip(205), holder).await;
    // A seed that takes a while (10 ms a block, 0.64 s in all), so the
    // download cannot be over before the holder is asked.
    let seed = Script {
        delay: Duration::from_millis(10),
        ..script(&info, src.path(), |_| true)
    };
    let seed = scripted_peer(hostile_ip(206), seed).await;
    let mut d = downloader(&info, vec![holder.addr, seed.addr]).await;
    assert!(
        d.completed(60, false).await,
        "the download completed within 60 s"
    );
    assert!(holder.requests() > 0, "the holder was asked for something");
    assert_eq!(holder.blocks_sent(), 0, "and sent nothing");
    assert!(d.same_as(src.path()), "byte-identical");
    d.s.shutdown().await;
}
