//! Swarm tests: seeds and downloaders in one process on loopback, with the
//! DHT off (peers given directly) or through a local DHT, under an overall
//! timeout.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p2pfile_engine::builder::build;
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::{Event, PortChoice, Session, SessionConfig, Source, Target, TorrentHandle};

fn config(ip: [u8; 4], dht: bool, bootstrap: Vec<std::net::SocketAddr>) -> SessionConfig {
    SessionConfig {
        ip: Ipv4Addr::from(ip),
        port: PortChoice::Range(20000..=40000),
        bootstrap,
        dht,
        upload_limit: 0,
        download_limit: 0,
    }
}

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(root.join("empty_dir")).unwrap();
    for i in 0..20 {
        std::fs::write(root.join(format!("a/f{i}")), vec![i as u8; 1024]).unwrap();
    }
    std::fs::write(root.join("a/b/zero"), b"").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(root.join("big.bin"), big).unwrap();
}

/// Builds a torrent of `path` and seeds it from a new session on 127.0.0.1.
async fn start_seed(
    path: &Path,
    dht: bool,
) -> (Session, Arc<p2pfile_engine::metainfo::Info>, TorrentHandle) {
    let built = build(path).unwrap();
    let seed = Session::start(config([127, 0, 0, 1], dht, vec![]))
        .await
        .unwrap();
    let info = Arc::new(built.info);
    let handle = seed
        .add(
            Source::Info(info.clone()),
            Target::Seed { root: built.root },
            vec![],
        )
        .unwrap();
    (seed, info, handle)
}

async fn wait_completed(h: &mut TorrentHandle) {
    while let Some(ev) = h.next_event().await {
        match ev {
            Event::Completed => return,
            Event::Failed { message } => panic!("failed: {message}"),
            _ => {}
        }
    }
    panic!("torrent stopped before completing");
}

fn assert_same_tree(a: &Path, b: &Path) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_three_downloaders_by_magnet() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let root = src.path().join("tree");
        make_tree(&root);
        let (seed, info, _seeding) = start_seed(&root, false).await;
        let magnet = Magnet {
            info_hash: info.info_hash(),
            name: Some(info.name.clone()),
            peers: vec![seed.local_addr()],
        };
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let magnet = magnet.clone();
            tasks.push(tokio::spawn(async move {
                let dir = tempfile::tempdir().unwrap();
                let s = Session::start(config([127, 0, 0, 1], false, vec![]))
                    .await
                    .unwrap();
                let mut h = s
                    .add(
                        Source::Magnet(magnet),
                        Target::Download {
                            dir: dir.path().to_path_buf(),
                        },
                        vec![],
                    )
                    .unwrap();
                wait_completed(&mut h).await;
                (dir, s, h)
            }));
        }
        for t in tasks {
            let (dir, s, h) = t.await.unwrap();
            assert_same_tree(&root, &dir.path().join("tree"));
            assert!(dir.path().join("tree/empty_dir").is_dir());
            h.stop().await;
            s.shutdown().await;
        }
        seed.shutdown().await;
    })
    .await
    .expect("swarm finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloader_finds_seed_through_dht_only() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f.bin"), vec![42u8; 500_000]).unwrap();
        let (seed, info, _seeding) = start_seed(&src.path().join("f.bin"), true).await;
        let dir = tempfile::tempdir().unwrap();
        let s = Session::start(config([127, 0, 0, 1], true, vec![seed.local_addr()]))
            .await
            .unwrap();
        let magnet = Magnet {
            info_hash: info.info_hash(),
            name: None,
            peers: vec![],
        };
        let mut h = s
            .add(
                Source::Magnet(magnet),
                Target::Download {
                    dir: dir.path().to_path_buf(),
                },
                vec![],
            )
            .unwrap();
        wait_completed(&mut h).await;
        assert_eq!(
            std::fs::read(dir.path().join("f.bin")).unwrap(),
            vec![42u8; 500_000]
        );
        s.shutdown().await;
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}
