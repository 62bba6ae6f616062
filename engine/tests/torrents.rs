//! Many torrents between the same two hosts in one session: a downloader
//! that starts twenty at once from one seed (a rollout of twenty
//! artifacts) gets every connection admitted at its first dial, instead of
//! having some closed at accept and retried after a backoff.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use p2pfile_engine::{Event, Session, Source, Target};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

mod common;
use common::{assert_same_tree, config, test_net};

/// Counts the engine's "incoming refused" debug events.
struct Refusals(Arc<AtomicUsize>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Refusals {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        if m.0.starts_with("incoming refused") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_torrents_from_one_seed_are_admitted_at_the_first_dial() {
    let refused = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::set_global_default(Registry::default().with(Refusals(refused.clone())))
        .unwrap();

    let net = test_net();
    let src = tempfile::tempdir().unwrap();
    let seed = Session::start(config([127, net, 0, 60], false, vec![]))
        .await
        .unwrap();
    let mut infos = Vec::new();
    for i in 0..20u32 {
        let path = src.path().join(format!("artifact{i:02}.bin"));
        let content: Vec<u8> = (0..300_000u32).map(|j| (j * 7 + i * 31) as u8).collect();
        std::fs::write(&path, content).unwrap();
        infos.push(common::seed(&seed, &path));
    }

    let dst = tempfile::tempdir().unwrap();
    let down = Session::start(config([127, net, 0, 61], false, vec![]))
        .await
        .unwrap();
    let mut events = down.events().unwrap();
    let ids: Vec<_> = infos
        .iter()
        .map(|info| {
            down.add(
                Source::Info(info.clone()),
                Target::download(dst.path().to_path_buf()),
                vec![seed.local_addr()],
            )
            .unwrap()
        })
        .collect();
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut left: HashSet<_> = ids.into_iter().collect();
        while !left.is_empty() {
            let ev = events.recv().await.expect("session runs");
            match ev.event {
                Event::Completed => {
                    left.remove(&ev.info_hash);
                }
                Event::Failed { error } => panic!("failed: {error}"),
                _ => {}
            }
        }
    })
    .await
    .expect("all twenty complete within 60 s");
    assert_same_tree(src.path(), dst.path());
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "the seed closed connections at accept: the downloader dialed more \
         at once than the seed lets one address hold before its handshake"
    );
}
