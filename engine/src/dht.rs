//! The private DHT: a `mainline` node in server mode bound to our address,
//! bootstrapped only from addresses the user gave (or learned from peers),
//! never from the public routers.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use futures_lite::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Dht as MainlineDht, Id};
use tokio::sync::mpsc;

use crate::metainfo::InfoHash;

/// A running DHT node.
#[derive(Clone, Debug)]
pub(crate) struct Dht {
    node: AsyncDht,
}

impl Dht {
    /// Starts a server-mode node on `ip:port` (UDP). With no bootstrap
    /// addresses it is the first node of the network. mainline's default
    /// bootstrap list (public routers) is always replaced.
    pub(crate) fn start(
        ip: Ipv4Addr,
        port: u16,
        bootstrap: &[SocketAddr],
    ) -> std::io::Result<Self> {
        let mut builder = MainlineDht::builder();
        builder.server_mode().port(port).bind_address(ip);
        let boot: Vec<String> = bootstrap
            .iter()
            .filter(|a| a.is_ipv4())
            .map(|a| a.to_string())
            .collect();
        if boot.is_empty() {
            builder.no_bootstrap();
        } else {
            builder.bootstrap(&boot);
        }
        let node = builder.build()?.as_async();
        Ok(Self { node })
    }

    /// Bootstrap nodes worth keeping for the next start.
    pub(crate) async fn nodes(&self) -> Vec<String> {
        self.node.to_bootstrap().await
    }

    /// Announces us for `info_hash` and streams the peers the DHT knows into
    /// `found`, once. Callers repeat it on their own schedule.
    pub(crate) async fn announce_and_lookup(
        &self,
        info_hash: InfoHash,
        port: u16,
        found: &mpsc::Sender<Vec<SocketAddr>>,
    ) {
        let id = Id::from_bytes(info_hash.0).expect("20 bytes");
        let lookup = async {
            let mut stream = self.node.get_peers(id);
            while let Some(batch) = stream.next().await {
                let addrs = batch
                    .into_iter()
                    .map(|a: SocketAddrV4| SocketAddr::V4(a))
                    .collect();
                if found.send(addrs).await.is_err() {
                    return;
                }
            }
        };
        let announce = async {
            if let Err(e) = self.node.announce_peer(id, Some(port)).await {
                tracing::debug!("dht announce of {info_hash}: {e}");
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(lookup, announce)
        })
        .await;
    }
}
