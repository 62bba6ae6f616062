//! Metadata poisoning (issue #10): a magnet download whose peers include one
//! hostile peer, beside an honest seed, must complete byte-identical every
//! time. The hostile peer is a small scripted peer on
//! `p2pfile_engine::wire`, bound to 127.N.0.200+ (N = `P2PFILE_TEST_NET`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p2pfile_engine::builder::build;
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::metainfo::Info;
use p2pfile_engine::wire;
use p2pfile_engine::{Event, Session, Source, Target};

mod common;
use common::peer::{MetadataLie as Lie, Script, scripted_peer};
use common::{assert_same_tree, hostile_ip, loopback};

/// Downloads per case.
const RUNS: usize = 10;
/// One download's limit: the honest seed is on loopback, so a download that
/// has not finished by then is stuck behind the hostile peer.
const RUN_LIMIT: Duration = Duration::from_secs(15);

/// A tree whose info dictionary spans several 16 KiB metadata pieces, so the
/// downloader can spread requests over peers.
fn make_tree(root: &Path) {
    // Long names make a large info dictionary from few files.
    let long = "a-long-file-name-that-makes-the-info-dictionary-large".repeat(3);
    for d in 0..5 {
        let dir = root.join(format!("directory-{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            let body: Vec<u8> = (0..(100 + f * 7)).map(|i| (i * 31 + d + f) as u8).collect();
            std::fs::write(dir.join(format!("{long}-{f:03}.bin")), body).unwrap();
        }
    }
}

/// One magnet download with the hostile peer listed first: whether it
/// completed within [`RUN_LIMIT`] with the seed's bytes. The honest seed
/// (the magnet's last peer) must never be banned.
async fn download_once(magnet: &Magnet, root: &Path) -> bool {
    let honest = *magnet.peers.last().expect("the seed");
    let dir = tempfile::tempdir().unwrap();
    let s = Session::start(loopback()).await.unwrap();
    let mut events = s.events().unwrap();
    let id = s
        .add(
            Source::Magnet(magnet.clone()),
            Target::download(dir.path().to_path_buf()),
            vec![],
        )
        .unwrap();
    let done = tokio::time::timeout(RUN_LIMIT, async {
        while let Some(ev) = events.recv().await {
            if ev.info_hash != id {
                continue;
            }
            match ev.event {
                Event::Completed => return true,
                Event::PeerBanned { addr, reason } => {
                    assert_ne!(addr.ip(), honest.ip(), "honest seed banned for {reason}");
                }
                Event::Failed { error } => {
                    eprintln!("failed: {error}");
                    return false;
                }
                _ => {}
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    s.shutdown().await;
    if done {
        assert_same_tree(root, &dir.path().join("tree"));
    }
    done
}

/// Runs [`RUNS`] magnet downloads beside one hostile peer and one honest
/// seed, and asserts that every one completed byte-identical.
async fn every_download_completes_beside(lie: Lie, host: u8) {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("tree");
    make_tree(&root);
    let built = build(&root).unwrap();
    let info: Arc<Info> = Arc::new(built.info);
    assert!(
        info.as_bytes().len() > 2 * wire::METADATA_PIECE_SIZE,
        "info of {} bytes spans several metadata pieces",
        info.as_bytes().len()
    );
    let seed = Session::start(loopback()).await.unwrap();
    seed.add(
        Source::Info(info.clone()),
        Target::Seed { root: built.root },
        vec![],
    )
    .unwrap();
    let hostile = scripted_peer(hostile_ip(host), Script::metadata_liar(&info, lie))
        .await
        .addr;
    let magnet = Magnet {
        info_hash: info.info_hash(),
        name: Some(info.name.clone()),
        peers: vec![hostile, seed.local_addr()],
    };
    let mut completed = 0;
    let started = std::time::Instant::now();
    for _ in 0..RUNS {
        if download_once(&magnet, &root).await {
            completed += 1;
        }
    }
    seed.shutdown().await;
    eprintln!(
        "{lie:?}: {completed} of {RUNS} downloads completed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(completed, RUNS, "{lie:?}: downloads that completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_that_does_not_match_the_info_hash() {
    every_download_completes_beside(Lie::WrongBytes, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_metadata_size_with_junk() {
    every_download_completes_beside(Lie::AbsurdSize, 201).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plausible_but_wrong_metadata_size() {
    every_download_completes_beside(Lie::WrongSize, 202).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_metadata_requests() {
    every_download_completes_beside(Lie::Silent, 203).await;
}

/// A peer whose metadata does not hash to the info-hash, alone in the
/// swarm, is named and banned (`bad-metadata`): the ban that the download's
/// exit-3 message and `peer_banned` event report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_alone_with_bad_metadata_is_banned_for_it() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("tree");
    make_tree(&root);
    let info = build(&root).unwrap().info;
    let liar = scripted_peer(
        hostile_ip(204),
        Script::metadata_liar(&info, Lie::WrongBytes),
    )
    .await
    .addr;
    let magnet = Magnet {
        info_hash: info.info_hash(),
        name: Some(info.name.clone()),
        peers: vec![liar],
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Session::start(loopback()).await.unwrap();
    let mut events = s.events().unwrap();
    let id = s
        .add(
            Source::Magnet(magnet),
            Target::download(dir.path().to_path_buf()),
            vec![],
        )
        .unwrap();
    let banned = tokio::time::timeout(RUN_LIMIT, async {
        while let Some(ev) = events.recv().await {
            if ev.info_hash != id {
                continue;
            }
            if let Event::PeerBanned { addr, reason } = ev.event {
                return Some((addr, reason.to_string()));
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    s.shutdown().await;
    let (addr, reason) = banned.expect("the liar was banned");
    assert_eq!(addr.ip(), liar.ip());
    assert_eq!(reason, "bad-metadata");
}
