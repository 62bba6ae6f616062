//! The private DHT: a `mainline` node in server mode bound to our address,
//! bootstrapped only from addresses the user gave (or learned from peers),
//! never from the public routers.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Dht as MainlineDht, Id};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::bencode::{self, Value};

use crate::metainfo::InfoHash;

/// DHT nodes worth keeping for the next start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhtNodes {
    /// `IP:PORT` of each node in the routing table.
    pub nodes: Vec<String>,
    /// Bootstrap nodes that did not answer: not in the table after a lookup
    /// round finished. Every bootstrap node is asked at start, and a node
    /// enters the table by answering. Empty until a round has finished.
    pub unanswered: Vec<String>,
}

/// A running DHT node.
#[derive(Clone, Debug)]
pub(crate) struct Dht {
    node: AsyncDht,
    addr: SocketAddrV4,
    bootstrap: Vec<String>,
    /// The routing table's nodes as last read by a lookup round. Asking the
    /// node directly waits for its actor thread, which polls its socket
    /// with a 50 ms timeout: that wait was most of a short download's exit
    /// time (39 ms after a 1 GiB loopback transfer of ~1 s).
    nodes: Arc<Mutex<Option<Vec<String>>>>,
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
        Ok(Self {
            node,
            addr: SocketAddrV4::new(ip, port),
            bootstrap: boot,
            nodes: Arc::default(),
        })
    }

    /// Makes our own node list us as a peer for `info_hash`.
    ///
    /// mainline stores announces only from other nodes, so the first node
    /// of a network (a lone seed) would answer `get_peers` for its own
    /// torrent with nothing, and a client that enters the DHT through it
    /// (aria2's `--dht-entry-point`) would never find it. Two KRPC queries
    /// from a throwaway socket on our address fix that: `get_peers` for a
    /// token, then `announce_peer` with our port. Both are marked read-only
    /// (BEP 43) so the throwaway socket never enters a routing table.
    async fn announce_to_self(&self, info_hash: InfoHash, port: u16) -> std::io::Result<()> {
        let sock = UdpSocket::bind(SocketAddrV4::new(*self.addr.ip(), 0)).await?;
        sock.connect(self.addr).await?;
        let id: [u8; 20] = rand::random();
        let query = |t: &str, q: &str, args: Vec<(&str, Value)>| {
            let mut a: Vec<(&str, Value)> = vec![("id", Value::from(id.to_vec()))];
            a.extend(args);
            bencode::encode(&Value::dict([
                ("a", Value::dict(a)),
                ("q", Value::from(q)),
                ("ro", Value::from(1)),
                ("t", Value::from(t)),
                ("y", Value::from("q")),
            ]))
        };
        let timeout = |e| std::io::Error::new(std::io::ErrorKind::TimedOut, e);
        let mut buf = vec![0u8; 2048];
        sock.send(&query(
            "pfg1",
            "get_peers",
            vec![("info_hash", Value::from(info_hash.0.to_vec()))],
        ))
        .await?;
        let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .map_err(|_| timeout("no get_peers answer from our own node"))??;
        let token = reply_token(&buf[..n])
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no token"))?;
        sock.send(&query(
            "pfa1",
            "announce_peer",
            vec![
                ("implied_port", Value::from(0)),
                ("info_hash", Value::from(info_hash.0.to_vec())),
                ("port", Value::from(i64::from(port))),
                ("token", Value::from(token)),
            ],
        ))
        .await?;
        tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .map_err(|_| timeout("no announce_peer answer from our own node"))??;
        Ok(())
    }

    /// Nodes worth bootstrapping from next time: what the last lookup round
    /// saw, or the node's table when no round has finished yet.
    pub(crate) async fn nodes(&self) -> DhtNodes {
        let cached = self.nodes.lock().expect("nodes lock").clone();
        match cached {
            Some(nodes) => DhtNodes {
                unanswered: (self.bootstrap.iter())
                    .filter(|b| !nodes.contains(b))
                    .cloned()
                    .collect(),
                nodes,
            },
            None => DhtNodes {
                nodes: self.node.to_bootstrap().await,
                unanswered: Vec::new(),
            },
        }
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
            if let Err(e) = self.announce_to_self(info_hash, port).await {
                tracing::debug!("dht self-announce of {info_hash}: {e}");
            }
            if let Err(e) = self.node.announce_peer(id, Some(port)).await {
                tracing::debug!("dht announce of {info_hash}: {e}");
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(lookup, announce)
        })
        .await;
        let nodes = self.node.to_bootstrap().await;
        *self.nodes.lock().expect("nodes lock") = Some(nodes);
    }
}

/// The token of a KRPC `get_peers` reply (`r.token`), the one DHT message
/// p2pfile reads itself; mainline parses the rest.
fn reply_token(reply: &[u8]) -> Option<Vec<u8>> {
    let v = bencode::decode(reply).ok()?;
    v.get(b"r")?.get(b"token")?.as_bytes().map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arb;
    use proptest::prelude::*;

    /// A `get_peers` reply as mainline sends it, with `token`.
    fn reply(token: &[u8]) -> Vec<u8> {
        bencode::encode(&Value::dict([
            (
                "r",
                Value::dict([
                    ("id", Value::from(vec![1u8; 20])),
                    ("nodes", Value::from(vec![2u8; 26])),
                    ("token", Value::from(token)),
                ]),
            ),
            ("t", Value::from("pfg1")),
            ("y", Value::from("r")),
        ]))
    }

    #[test]
    fn reads_the_token_of_a_reply() {
        assert_eq!(reply_token(&reply(b"tok")), Some(b"tok".to_vec()));
        assert_eq!(reply_token(b"d1:rd5:tokeni1eee"), None);
        assert_eq!(reply_token(b"d1:eli201e5:erroree"), None);
    }

    proptest! {
        #![proptest_config(arb::config(1024))]

        #[test]
        fn every_token_round_trips(token in arb::bytes(40)) {
            prop_assert_eq!(reply_token(&reply(&token)), Some(token));
        }

        #[test]
        fn any_datagram_reads_or_not(bytes in arb::bytes(200), token in arb::bytes(8), edits in arb::edits()) {
            let _ = reply_token(&bytes);
            let _ = reply_token(&arb::apply(&reply(&token), &edits));
        }
    }
}
