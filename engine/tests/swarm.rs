//! Swarm tests: seeds and downloaders in one process on loopback, with the
//! DHT off (peers given directly) or through a local DHT, under an overall
//! timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use p2pfile_engine::builder::build;
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::metainfo::{FileEntry, Info, InfoHash, pad_to_pieces};
use p2pfile_engine::{
    AddTorrent, Error, Event, Session, SessionConfig, Source, Target, TorrentEvent, TorrentOptions,
};
use sha1::{Digest, Sha1};
use tokio::sync::mpsc::UnboundedReceiver;

mod common;
use common::peer::{Script, scripted_peer};
use common::{assert_same_tree, config, dial, loopback, next_message, wait_completed};

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
async fn start_seed(path: &Path, dht: bool) -> (Session, Arc<p2pfile_engine::metainfo::Info>) {
    let seed = Session::start(config([127, 0, 0, 1], dht, vec![]))
        .await
        .unwrap();
    let info = common::seed(&seed, path);
    (seed, info)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_three_downloaders_by_magnet() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let root = src.path().join("tree");
        make_tree(&root);
        let (seed, info) = start_seed(&root, false).await;
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
                let s = Session::start(loopback()).await.unwrap();
                let mut events = s.events().unwrap();
                let id = s
                    .add(
                        Source::Magnet(magnet),
                        Target::download(dir.path().to_path_buf()),
                        vec![],
                    )
                    .unwrap();
                wait_completed(&mut events, id).await;
                (dir, s, id)
            }));
        }
        for t in tasks {
            let (dir, s, id) = t.await.unwrap();
            assert_same_tree(&root, &dir.path().join("tree"));
            assert!(dir.path().join("tree/empty_dir").is_dir());
            s.remove(id).await.unwrap();
            assert!(s.torrents().is_empty());
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
        let (seed, info) = start_seed(&src.path().join("f.bin"), true).await;
        let dir = tempfile::tempdir().unwrap();
        let s = Session::start(config([127, 0, 0, 1], true, vec![seed.local_addr()]))
            .await
            .unwrap();
        let magnet = Magnet {
            info_hash: info.info_hash(),
            name: None,
            peers: vec![],
        };
        let mut events = s.events().unwrap();
        let id = s
            .add(
                Source::Magnet(magnet),
                Target::download(dir.path().to_path_buf()),
                vec![],
            )
            .unwrap();
        wait_completed(&mut events, id).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_owns_its_torrents_and_tags_events() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("one"), vec![1u8; 300_000]).unwrap();
        std::fs::write(src.path().join("two"), vec![2u8; 200_000]).unwrap();
        let seed = Session::start(loopback()).await.unwrap();
        let mut infos = Vec::new();
        for name in ["one", "two"] {
            let built = build(&src.path().join(name)).unwrap();
            let info = Arc::new(built.info);
            let id = seed
                .add(
                    Source::Info(info.clone()),
                    Target::Seed { root: built.root },
                    vec![],
                )
                .unwrap();
            assert_eq!(id, info.info_hash());
            infos.push(info);
        }
        let again = seed.add(
            Source::Info(infos[0].clone()),
            Target::Seed {
                root: src.path().join("one"),
            },
            vec![],
        );
        assert!(matches!(again, Err(Error::Duplicate(_))));
        let mut listed = seed.torrents();
        listed.sort_by_key(|h| h.0);
        let mut want: Vec<_> = infos.iter().map(|i| i.info_hash()).collect();
        want.sort_by_key(|h| h.0);
        assert_eq!(listed, want);

        let dir = tempfile::tempdir().unwrap();
        let s = Session::start(loopback()).await.unwrap();
        let mut events = s.events().unwrap();
        assert!(s.events().is_none(), "the event stream is handed out once");
        let ids: Vec<_> = infos
            .iter()
            .map(|info| {
                s.add(
                    Source::Magnet(Magnet {
                        info_hash: info.info_hash(),
                        name: None,
                        peers: vec![seed.local_addr()],
                    }),
                    Target::download(dir.path().to_path_buf()),
                    vec![],
                )
                .unwrap()
            })
            .collect();
        let mut done = std::collections::HashSet::new();
        while done.len() < 2 {
            let ev = events.recv().await.unwrap();
            assert!(ids.contains(&ev.info_hash), "event for {}", ev.info_hash);
            if ev.event == Event::Completed {
                done.insert(ev.info_hash);
            }
        }
        assert_eq!(
            std::fs::read(dir.path().join("two")).unwrap(),
            vec![2u8; 200_000]
        );
        assert_eq!(s.stats(ids[0]).unwrap().have, 300_000);

        s.remove(ids[0]).await.unwrap();
        assert!(matches!(
            s.remove(ids[0]).await,
            Err(Error::UnknownTorrent(_))
        ));
        assert!(s.stats(ids[0]).is_none());
        assert_eq!(s.torrents(), vec![ids[1]]);
        loop {
            let ev = events.recv().await.unwrap();
            if ev.info_hash == ids[0] && ev.event == Event::Removed {
                break;
            }
        }
        s.shutdown().await;
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// The address of the first peer that offers the registered extension.
async fn extension_ready(events: &mut UnboundedReceiver<TorrentEvent>) -> std::net::SocketAddr {
    loop {
        let ev = events.recv().await.unwrap();
        if let Event::ExtensionsReady { addr, names } = ev.event {
            assert_eq!(names, vec!["p2pfile_test".to_string()]);
            return addr;
        }
    }
}

/// Two sessions that register an extension exchange messages on it over a
/// torrent's connection; a keyed swarm hides its metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_extension_messages_flow_both_ways() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let ext = |ip| SessionConfig {
            extensions: vec!["p2pfile_test".into()],
            ..config(ip, false, vec![])
        };
        let a = Session::start(ext([127, 0, 0, 1])).await.unwrap();
        let b = Session::start(ext([127, 0, 0, 1])).await.unwrap();
        let mut a_events = a.events().unwrap();
        let mut b_events = b.events().unwrap();
        // A rendezvous swarm: no content, no metadata, found by its hash alone.
        let swarm = InfoHash([7u8; 20]);
        let rendezvous = |peers| AddTorrent {
            source: Source::Magnet(Magnet {
                info_hash: swarm,
                name: None,
                peers,
            }),
            target: Target::download(std::env::temp_dir()),
            peers: vec![],
            options: TorrentOptions {
                swarm_hash: None,
                metadata: false,
                dht: false,
            },
        };
        a.add_torrent(rendezvous(vec![])).unwrap();
        b.add_torrent(rendezvous(vec![a.local_addr()])).unwrap();
        let b_seen_by_a = extension_ready(&mut a_events).await;
        let a_seen_by_b = extension_ready(&mut b_events).await;
        a.send_extension(
            swarm,
            b_seen_by_a,
            "p2pfile_test",
            Bytes::from_static(b"hello"),
        )
        .await
        .unwrap();
        let got = loop {
            let ev = b_events.recv().await.unwrap();
            if let Event::ExtensionMessage { name, payload, .. } = ev.event {
                assert_eq!(name, "p2pfile_test");
                break payload;
            }
        };
        assert_eq!(&got[..], b"hello");
        b.send_extension(
            swarm,
            a_seen_by_b,
            "p2pfile_test",
            Bytes::from_static(b"back"),
        )
        .await
        .unwrap();
        let got = loop {
            let ev = a_events.recv().await.unwrap();
            if let Event::ExtensionMessage { payload, .. } = ev.event {
                break payload;
            }
        };
        assert_eq!(&got[..], b"back");
        assert!(matches!(
            a.send_extension(swarm, b_seen_by_a, "nope", Bytes::new())
                .await,
            Err(Error::UnknownExtension(_))
        ));
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// Content added under a swarm hash is reachable by that hash only: a
/// magnet for the content's own info-hash finds nothing, a download into
/// the same keyed swarm (given the info) completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_swarm_is_closed_to_the_plain_info_hash() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("secret"), vec![9u8; 100_000]).unwrap();
        let built = build(&src.path().join("secret")).unwrap();
        let info = Arc::new(built.info);
        let swarm = InfoHash([3u8; 20]);
        let keyed = TorrentOptions {
            swarm_hash: Some(swarm),
            metadata: false,
            dht: false,
        };
        let seed = Session::start(loopback()).await.unwrap();
        let id = seed
            .add_torrent(AddTorrent {
                options: keyed.clone(),
                ..AddTorrent::new(
                    Source::Info(info.clone()),
                    Target::Seed { root: built.root },
                    vec![],
                )
            })
            .unwrap();
        assert_eq!(id, swarm);

        // An outsider with the content's public info-hash.
        let outsider = Session::start(loopback()).await.unwrap();
        let mut out_events = outsider.events().unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let plain = outsider
            .add(
                Source::Magnet(Magnet {
                    info_hash: info.info_hash(),
                    name: None,
                    peers: vec![seed.local_addr()],
                }),
                Target::download(out_dir.path().to_path_buf()),
                vec![],
            )
            .unwrap();
        // An insider that knows the swarm and the info.
        let insider = Session::start(loopback()).await.unwrap();
        let mut in_events = insider.events().unwrap();
        let in_dir = tempfile::tempdir().unwrap();
        let id = insider
            .add_torrent(AddTorrent {
                options: keyed,
                ..AddTorrent::new(
                    Source::Info(info.clone()),
                    Target::download(in_dir.path().to_path_buf()),
                    vec![seed.local_addr()],
                )
            })
            .unwrap();
        wait_completed(&mut in_events, id).await;
        assert_eq!(
            std::fs::read(in_dir.path().join("secret")).unwrap(),
            vec![9u8; 100_000]
        );
        // The outsider never connected, so it learned nothing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = outsider.stats(plain).unwrap();
        assert_eq!((s.peers, s.total), (0, 0));
        while let Ok(ev) = out_events.try_recv() {
            assert!(
                !matches!(
                    ev.event,
                    Event::PeerConnected { .. } | Event::Metadata { .. }
                ),
                "outsider got {:?}",
                ev.event
            );
        }
        assert!(!out_dir.path().join("secret").exists());
        outsider.shutdown().await;
        insider.shutdown().await;
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// A download told where the content already lies on this machine (under
/// another name) takes every piece from there and moves no byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_reuse_local_content_without_transfer() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(src.path().join("f.bin"), &content).unwrap();
        let (seed, info) = start_seed(&src.path().join("f.bin"), false).await;
        let local = tempfile::tempdir().unwrap();
        // The same bytes under another name, and one wrong hint.
        std::fs::write(local.path().join("renamed.bin"), &content).unwrap();
        std::fs::write(local.path().join("wrong.bin"), vec![0u8; 700_000]).unwrap();
        let piece = info.piece_length as u64;
        let mut hints = Vec::new();
        for i in 0..info.piece_count() as u32 {
            for name in ["wrong.bin", "renamed.bin"] {
                hints.push(p2pfile_engine::PieceSource {
                    piece: i,
                    path: local.path().join(name),
                    offset: i as u64 * piece,
                });
            }
        }
        let s = Session::start(loopback()).await.unwrap();
        let mut events = s.events().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let id = s
            .add(
                Source::Info(info.clone()),
                Target::Download {
                    dir: dir.path().to_path_buf(),
                    hints,
                },
                vec![seed.local_addr()],
            )
            .unwrap();
        let mut checked = None;
        while let Some(ev) = events.recv().await {
            match ev.event {
                Event::Checked { valid_pieces, .. } => checked = Some(valid_pieces),
                Event::Completed => break,
                Event::Failed { error } => panic!("failed: {error}"),
                _ => {}
            }
        }
        assert_eq!(checked, Some(info.piece_count()));
        assert_eq!(s.stats(id).unwrap().downloaded, 0);
        assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), content);
        s.shutdown().await;
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

const PIECE: u32 = 16 * 1024;

/// A torrent named `name` of `files` (path below its root, content), each
/// padded to a piece end with BEP 47 pad files as sync builds them; and
/// its content stream, padding included.
fn aligned(name: &str, files: &[(Vec<String>, Vec<u8>)]) -> (Arc<Info>, Vec<u8>) {
    let entries = pad_to_pieces(
        files
            .iter()
            .map(|(p, c)| FileEntry::new(p.clone(), c.len() as u64)),
        PIECE,
    );
    let mut stream = Vec::new();
    for (_, c) in files {
        stream.extend_from_slice(c);
        stream.resize(stream.len().next_multiple_of(PIECE as usize), 0);
    }
    let pieces = stream
        .chunks(PIECE as usize)
        .map(|c| Sha1::digest(c).into())
        .collect();
    let info = Info::new(name, PIECE, pieces, entries, vec![]).unwrap();
    (Arc::new(info), stream)
}

/// Content that is never zero, so a zero where data belongs shows.
fn content(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8 + 1)
        .collect()
}

/// Every file below `dir`, as paths relative to it.
fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Downloads `info` from `seed` into a new directory; returns it and the
/// downloader's byte count off the wire.
async fn download_from(seed: &Session, info: &Arc<Info>) -> (tempfile::TempDir, u64) {
    let s = Session::start(loopback()).await.unwrap();
    let mut events = s.events().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = s
        .add(
            Source::Info(info.clone()),
            Target::download(dir.path().to_path_buf()),
            vec![seed.local_addr()],
        )
        .unwrap();
    wait_completed(&mut events, id).await;
    let downloaded = s.stats(id).unwrap().downloaded;
    s.shutdown().await;
    (dir, downloaded)
}

/// Folder sync's many small files, each padded to its piece end: the pad
/// bytes never cross the wire (with them: 3,276,800 bytes for 898,086 of
/// data, 3.6 times), and never reach the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_padded_files_move_no_padding() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let files: Vec<(Vec<String>, Vec<u8>)> = (0..200)
            .map(|i| {
                let path = vec![format!("d{}", i % 7), format!("f{i}.bin")];
                (path, content(1024 + i * 37 % 7169, i))
            })
            .collect();
        let data: u64 = files.iter().map(|(_, c)| c.len() as u64).sum();
        let (info, _) = aligned("small", &files);
        assert_eq!(info.piece_count(), 200);
        let src = tempfile::tempdir().unwrap();
        let root = src.path().join("small");
        for (path, c) in &files {
            let p = root.join(path.join("/"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
        let seed = Session::start(loopback()).await.unwrap();
        seed.add(Source::Info(info.clone()), Target::Seed { root }, vec![])
            .unwrap();
        let (dir, downloaded) = download_from(&seed, &info).await;
        let got = dir.path().join("small");
        for (path, c) in &files {
            assert_eq!(&std::fs::read(got.join(path.join("/"))).unwrap(), c);
        }
        assert_eq!(files_below(&got).len(), files.len(), "no pad file on disk");
        assert!(
            (data..=data + data / 10).contains(&downloaded),
            "{downloaded} bytes over the wire for {data} bytes of data"
        );
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// A bundle seeded from files scattered under other names, one of them
/// empty and one longer than a piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_files_from_anywhere() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let names = [
            (vec!["docs", "a.txt"], 5000, "one/alpha"),
            (vec!["b.bin"], 40_000, "two/deep/beta.dat"),
            (vec!["e"], 0, "gamma"),
            (vec!["x", "y", "c"], PIECE as usize, "three/delta"),
            (vec!["d"], 123, "four/eps"),
        ];
        let src = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut paths = Vec::new();
        for (i, (path, len, at)) in names.iter().enumerate() {
            let c = content(*len, i);
            let at = src.path().join(at);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(&at, &c).unwrap();
            paths.push(at);
            files.push((path.iter().map(|s| s.to_string()).collect(), c));
        }
        let (info, _) = aligned("bundle", &files);
        let seed = Session::start(loopback()).await.unwrap();
        let short = seed.add(
            Source::Info(info.clone()),
            Target::SeedFiles {
                files: paths[1..].to_vec(),
            },
            vec![],
        );
        assert!(
            matches!(
                short,
                Err(Error::SeedFilesCount {
                    expected: 5,
                    given: 4
                })
            ),
            "{short:?}"
        );
        let magnet = Magnet {
            info_hash: info.info_hash(),
            name: None,
            peers: vec![],
        };
        let by_magnet = seed.add(
            Source::Magnet(magnet),
            Target::SeedFiles {
                files: paths.clone(),
            },
            vec![],
        );
        assert!(matches!(by_magnet, Err(Error::SeedFilesNeedInfo)));
        assert!(seed.torrents().is_empty());
        seed.add(
            Source::Info(info.clone()),
            Target::SeedFiles { files: paths },
            vec![],
        )
        .unwrap();
        let (dir, _) = download_from(&seed, &info).await;
        for (path, c) in &files {
            let got = dir.path().join("bundle").join(path.join("/"));
            assert_eq!(&std::fs::read(got).unwrap(), c);
        }
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// A peer that asks for padding (libtorrent does) gets zeros, within a
/// block that starts in data and in a block of padding only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padding_is_served_to_peers_that_ask() {
    use bytes::BytesMut;
    use p2pfile_engine::wire::{BlockRequest, Message};
    use tokio::io::AsyncWriteExt;

    tokio::time::timeout(Duration::from_secs(30), async {
        let files = vec![(vec!["a".to_string()], content(5000, 1))];
        let (info, stream) = aligned("one", &files);
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("one")).unwrap();
        std::fs::write(src.path().join("one/a"), &files[0].1).unwrap();
        let seed = Session::start(loopback()).await.unwrap();
        seed.add(
            Source::Info(info.clone()),
            Target::Seed {
                root: src.path().join("one"),
            },
            vec![],
        )
        .unwrap();
        let from = std::net::IpAddr::from([127, 0, 0, 1]);
        let (mut conn, mut buf) = dial(from, seed.local_addr(), info.info_hash().0).await;
        // Ask once the seed says what it has: before it is live (checking)
        // it refuses requests. A connection that came while it was checking
        // hears HAVE-NONE, then one HAVE per piece when it goes live.
        loop {
            match next_message(&mut conn, &mut buf).await {
                Some(Message::HaveAll | Message::Bitfield(_) | Message::Have(_)) => break,
                Some(_) => {}
                None => panic!("closed"),
            }
        }
        // Interested, then ask once unchoked (requests sent while choked
        // may be dropped, which is not what this test is about).
        let mut out = BytesMut::new();
        Message::Interested.encode(&mut out);
        conn.write_all(&out).await.unwrap();
        loop {
            match next_message(&mut conn, &mut buf).await {
                Some(Message::Unchoke) => break,
                Some(_) => {}
                None => panic!("closed"),
            }
        }
        let mut out = BytesMut::new();
        let asks = [(4096, PIECE - 4096), (8192, 8192)];
        for (begin, length) in asks {
            let req = BlockRequest {
                index: 0,
                begin,
                length,
            };
            Message::Request(req).encode(&mut out);
        }
        conn.write_all(&out).await.unwrap();
        let mut answered = Vec::new();
        while answered.len() < asks.len() {
            match next_message(&mut conn, &mut buf).await {
                Some(Message::Piece { index, begin, data }) => {
                    answered.push((index, begin, data));
                }
                Some(Message::RejectRequest(r)) => panic!("rejected {r:?}"),
                Some(_) => {}
                None => panic!("closed"),
            }
        }
        for (index, begin, data) in answered {
            assert_eq!(index, 0);
            let begin = begin as usize;
            assert_eq!(&data[..], &stream[begin..begin + data.len()]);
        }
        assert!(stream[5000..PIECE as usize].iter().all(|&b| b == 0));
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// A torrent from elsewhere: a piece of padding only is verified without
/// a request, and padding followed by a file within a piece is requested
/// (only padding at a piece's end is left out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padding_only_pieces_and_inner_padding() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let p = PIECE as u64;
        let (a, b, c) = (content(5000, 1), content(3000, 2), content(200, 3));
        let entries = vec![
            FileEntry::new(vec!["a".into()], 5000),
            FileEntry::pad(p - 5000 + p),
            FileEntry::new(vec!["b".into()], 3000),
            FileEntry::pad(100),
            FileEntry::new(vec!["c".into()], 200),
            FileEntry::pad(p - 3300),
        ];
        let mut stream = a.clone();
        stream.resize(2 * PIECE as usize, 0);
        stream.extend(&b);
        stream.resize(stream.len() + 100, 0);
        stream.extend(&c);
        stream.resize(3 * PIECE as usize, 0);
        let pieces = stream
            .chunks(PIECE as usize)
            .map(|c| Sha1::digest(c).into())
            .collect();
        let info = Arc::new(Info::new("odd", PIECE, pieces, entries, vec![]).unwrap());
        let src = tempfile::tempdir().unwrap();
        let paths: Vec<_> = ["a", "b", "c"].map(|n| src.path().join(n)).into();
        for (path, bytes) in paths.iter().zip([&a, &b, &c]) {
            std::fs::write(path, bytes).unwrap();
        }
        let seed = Session::start(loopback()).await.unwrap();
        seed.add(
            Source::Info(info.clone()),
            Target::SeedFiles { files: paths },
            vec![],
        )
        .unwrap();
        let (dir, downloaded) = download_from(&seed, &info).await;
        for (name, bytes) in [("a", &a), ("b", &b), ("c", &c)] {
            assert_eq!(
                &std::fs::read(dir.path().join("odd").join(name)).unwrap(),
                bytes
            );
        }
        assert_eq!(downloaded, 5000 + 3300, "the inner pad, not the others");
        seed.shutdown().await;
    })
    .await
    .expect("finished in time");
}

/// A peer that claims every piece and answers requests with the true data,
/// except piece 0, which it sends as zeros: the downloader's counters show
/// each verified piece and each hash failure (until the peer is banned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_verified_pieces_and_hash_failures() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let path = src.path().join("data.bin");
        std::fs::write(&path, content(300_000, 7)).unwrap();
        let info = Arc::new(build(&path).unwrap().info);
        let pieces = info.piece_count();
        assert!(pieces > 2, "{pieces} pieces");
        let liar = Script {
            corrupt: |index| index == 0,
            ..Script::seed(&info, &path)
        };
        let liar = scripted_peer(std::net::IpAddr::from([127, 0, 0, 1]), liar).await;
        let liar_addr = liar.addr;
        let s = Session::start(loopback()).await.unwrap();
        let mut events = s.events().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let id = s
            .add(
                Source::Info(info.clone()),
                Target::download(dir.path().to_path_buf()),
                vec![liar_addr],
            )
            .unwrap();
        // The liar alone sent piece 0, so it is banned on its first hash
        // failure; pieces already being hashed then still land.
        let (mut verified, mut failed) = (0u64, 0u64);
        let mut count = |ev: &Event| match ev {
            Event::PieceVerified { .. } => verified += 1,
            Event::HashFailed { .. } => failed += 1,
            _ => {}
        };
        loop {
            let ev = events.recv().await.unwrap().event;
            count(&ev);
            if matches!(ev, Event::PeerBanned { .. }) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Ok(ev) = events.try_recv() {
            count(&ev.event);
        }
        let last = s.stats(id).unwrap();
        assert!(failed >= 1);
        assert_eq!(
            (last.pieces_verified, last.hash_failures),
            (verified, failed)
        );
        assert!(last.have < info.total_length(), "piece 0 is never verified");
        s.shutdown().await;
    })
    .await
    .expect("the lying peer's pieces were counted in time");
}

/// A seed of scanned files reports the downloader that completed (by its
/// listen address), and stops serving, sending nothing, once a file changed
/// since it was hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanned_seed_reports_completions_and_stops_on_a_changed_file() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let src = tempfile::tempdir().unwrap();
        let root = src.path().join("tree");
        make_tree(&root);
        let built = build(&root).unwrap();
        let info = Arc::new(built.info);
        let seed = Session::start(loopback()).await.unwrap();
        let mut seed_events = seed.events().unwrap();
        let files = built.scan.files.clone();
        let id = seed
            .add(
                Source::Info(info.clone()),
                Target::SeedScanned {
                    files,
                    check_pieces: false,
                },
                vec![],
            )
            .unwrap();
        let fetch = |dir: std::path::PathBuf| {
            let magnet = Magnet {
                info_hash: info.info_hash(),
                name: Some(info.name.clone()),
                peers: vec![seed.local_addr()],
            };
            async move {
                let s = Session::start(loopback()).await.unwrap();
                let events = s.events().unwrap();
                let did = s
                    .add(Source::Magnet(magnet), Target::download(dir), vec![])
                    .unwrap();
                (s, events, did)
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let (d, mut events, did) = fetch(dir.path().to_path_buf()).await;
        wait_completed(&mut events, did).await;
        let completed = loop {
            let ev = seed_events.recv().await.unwrap();
            if let Event::PeerCompleted { addr, .. } = ev.event {
                break addr;
            }
        };
        assert_eq!(completed, d.local_addr(), "the peer's listen address");
        d.shutdown().await;

        // Same length, new bytes, a later mtime.
        let big = root.join("big.bin");
        std::fs::write(&big, vec![1u8; 3_000_000]).unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&big)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (d, mut events, _) = fetch(dir.path().to_path_buf()).await;
        let changed = loop {
            let ev = seed_events.recv().await.unwrap();
            assert_ne!(ev.event, Event::Removed);
            if let Event::SourceChanged { path } = ev.event {
                break path;
            }
        };
        assert_eq!(changed, big);
        assert_eq!(seed.stats(id).unwrap().phase, p2pfile_engine::Phase::Failed);
        // Nothing of it reaches the downloader.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Ok(ev) = events.try_recv() {
            assert!(
                !matches!(
                    ev.event,
                    Event::PieceVerified { .. } | Event::HashFailed { .. }
                ),
                "{ev:?}"
            );
        }
        d.shutdown().await;
        seed.shutdown().await;
    })
    .await
    .expect("swarm finished in time");
}
