//! Helpers shared by the engine's integration tests (`swarm.rs`,
//! `admission.rs`).

use std::net::Ipv4Addr;

use p2pfile_engine::metainfo::InfoHash;
use p2pfile_engine::{Event, PortChoice, SessionConfig, TorrentEvent};
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
