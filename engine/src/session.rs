//! The public face of the engine: one listening port (TCP for peers, UDP
//! for the DHT, same number), the private DHT node, the rate limits, and
//! the torrents added to it.
//!
//! The routing table from info-hash to coordinator is the one shared,
//! locked structure: the accept loop reads it, `add` and `remove` write
//! it; no other lock is ever taken while it is held.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dht::Dht;
use crate::error::Error;
use crate::event::{Event, Stats};
use crate::magnet::Magnet;
use crate::metainfo::{Info, InfoHash};
use crate::peer;
use crate::rate::Limit;
use crate::torrent::{self, Target, TorrentCmd};

/// Which port to listen on.
#[derive(Clone, Debug)]
pub enum PortChoice {
    /// Exactly this one.
    Exact(u16),
    /// A random free one from the range (tried in random order).
    Range(RangeInclusive<u16>),
    /// This one if free (the port used last time), else as `Range`.
    Preferred(u16, RangeInclusive<u16>),
}

/// How to start a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Address for the peer wire and the DHT (IPv4: the DHT is IPv4 only).
    pub ip: Ipv4Addr,
    /// The port (TCP and UDP).
    pub port: PortChoice,
    /// DHT nodes to bootstrap from; empty makes this the first node.
    pub bootstrap: Vec<SocketAddr>,
    /// Whether to run the DHT at all.
    pub dht: bool,
    /// Upload limit in bytes per second for the whole session (0: none).
    pub upload_limit: u64,
    /// Download limit in bytes per second for the whole session (0: none).
    pub download_limit: u64,
}

/// What torrents share.
pub(crate) struct Shared {
    pub peer_id: [u8; 20],
    pub local_ip: IpAddr,
    pub listen_port: u16,
    pub upload: Limit,
    pub download: Limit,
    pub dht: Option<Dht>,
}

type Routes = Arc<Mutex<HashMap<InfoHash, mpsc::Sender<TorrentCmd>>>>;

/// A running engine.
pub struct Session {
    shared: Arc<Shared>,
    routes: Routes,
    accept: tokio::task::JoinHandle<()>,
}

/// What to add to a session.
#[derive(Clone, Debug)]
pub enum Source {
    /// Known metainfo (a served path, or a `.torrent` file).
    Info(Arc<Info>),
    /// A magnet: the info dictionary comes from peers.
    Magnet(Magnet),
}

/// A torrent running in a session.
pub struct TorrentHandle {
    info_hash: InfoHash,
    cmd: mpsc::Sender<TorrentCmd>,
    events: mpsc::UnboundedReceiver<Event>,
    stats: watch::Receiver<Stats>,
    routes: Routes,
}

impl Session {
    /// Binds the port (TCP and UDP) and starts the DHT and the accept loop.
    pub async fn start(config: SessionConfig) -> Result<Session, Error> {
        let upload = Limit::new(config.upload_limit).map_err(Error::InvalidLimit)?;
        let download = Limit::new(config.download_limit).map_err(Error::InvalidLimit)?;
        let (listener, dht) = bind(&config).await?;
        let port = listener.local_addr().expect("bound").port();
        let mut peer_id = *b"-PF0100-000000000000";
        rand::rng().fill(&mut peer_id[8..]);
        let shared = Arc::new(Shared {
            peer_id,
            local_ip: IpAddr::V4(config.ip),
            listen_port: port,
            upload,
            download,
            dht,
        });
        let routes: Routes = Arc::default();
        let accept = tokio::spawn(accept_loop(listener, routes.clone()));
        Ok(Session {
            shared,
            routes,
            accept,
        })
    }

    /// The address peers reach us at (TCP and UDP).
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(self.shared.local_ip, self.shared.listen_port)
    }

    /// DHT nodes worth bootstrapping from next time.
    pub async fn dht_nodes(&self) -> Vec<String> {
        match &self.shared.dht {
            Some(d) => d.nodes().await,
            None => Vec::new(),
        }
    }

    /// Adds a torrent to seed or download, with extra peer addresses to try.
    pub fn add(
        &self,
        source: Source,
        target: Target,
        peers: Vec<SocketAddr>,
    ) -> Result<TorrentHandle, Error> {
        let (info_hash, info, peers) = match source {
            Source::Info(info) => (info.info_hash(), Some(info), peers),
            Source::Magnet(m) => {
                let mut all = m.peers.clone();
                all.extend(peers);
                (m.info_hash, None, all)
            }
        };
        let mut routes = self.routes.lock().expect("routes lock");
        if routes.contains_key(&info_hash) {
            return Err(Error::Duplicate(info_hash));
        }
        let spawned = torrent::spawn(self.shared.clone(), info_hash, info, target, peers);
        routes.insert(info_hash, spawned.cmd.clone());
        Ok(TorrentHandle {
            info_hash,
            cmd: spawned.cmd,
            events: spawned.events,
            stats: spawned.stats,
            routes: self.routes.clone(),
        })
    }

    /// Stops accepting connections and stops every torrent.
    pub async fn shutdown(self) {
        self.accept.abort();
        let cmds: Vec<_> = self
            .routes
            .lock()
            .expect("routes lock")
            .drain()
            .map(|(_, c)| c)
            .collect();
        for cmd in cmds {
            let (tx, rx) = oneshot::channel();
            if cmd.send(TorrentCmd::Stop(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }
}

impl TorrentHandle {
    /// The torrent's info-hash.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// The next event; `None` once the torrent has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The latest counters.
    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }

    /// A receiver that sees every counter update.
    pub fn watch_stats(&self) -> watch::Receiver<Stats> {
        self.stats.clone()
    }

    /// More addresses to try.
    pub async fn add_peers(&self, peers: Vec<SocketAddr>) {
        let _ = self.cmd.send(TorrentCmd::AddPeers(peers)).await;
    }

    /// Stops the torrent, closing its connections, and waits for it.
    pub async fn stop(self) {
        self.routes
            .lock()
            .expect("routes lock")
            .remove(&self.info_hash);
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(TorrentCmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn bind(config: &SessionConfig) -> Result<(TcpListener, Option<Dht>), Error> {
    let ip = IpAddr::V4(config.ip);
    let ports: Vec<u16> = match &config.port {
        PortChoice::Exact(p) => vec![*p],
        PortChoice::Range(r) | PortChoice::Preferred(_, r) => {
            let mut all: Vec<u16> = r.clone().collect();
            rand::seq::SliceRandom::shuffle(&mut all[..], &mut rand::rng());
            if let PortChoice::Preferred(p, _) = &config.port {
                all.retain(|x| x != p);
                all.insert(0, *p);
            }
            all
        }
    };
    let exact = matches!(config.port, PortChoice::Exact(_));
    for port in ports {
        let listener = match TcpListener::bind(SocketAddr::new(ip, port)).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if exact {
                    return Err(Error::PortTaken {
                        ip,
                        port,
                        source: e,
                    });
                }
                continue;
            }
            Err(source) => {
                return Err(Error::Bind {
                    addr: SocketAddr::new(ip, port),
                    source,
                });
            }
        };
        let port = listener.local_addr().expect("bound").port();
        if !config.dht {
            return Ok((listener, None));
        }
        match Dht::start(config.ip, port, &config.bootstrap) {
            Ok(dht) => return Ok((listener, Some(dht))),
            Err(e) if exact || e.kind() != std::io::ErrorKind::AddrInUse => {
                return Err(Error::PortTaken {
                    ip,
                    port,
                    source: e,
                });
            }
            Err(_) => continue,
        }
    }
    let (first, last) = match &config.port {
        PortChoice::Range(r) | PortChoice::Preferred(_, r) => (*r.start(), *r.end()),
        PortChoice::Exact(p) => (*p, *p),
    };
    Err(Error::NoFreePort { ip, first, last })
}

async fn accept_loop(listener: TcpListener, routes: Routes) {
    loop {
        let (mut stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let hs = match tokio::time::timeout(
                peer::HANDSHAKE_TIMEOUT,
                peer::read_handshake(&mut stream),
            )
            .await
            {
                Ok(Ok(hs)) => hs,
                Ok(Err(e)) => return tracing::debug!(%addr, "incoming handshake: {e}"),
                Err(_) => return tracing::debug!(%addr, "incoming handshake timed out"),
            };
            let route = routes
                .lock()
                .expect("routes lock")
                .get(&InfoHash(hs.info_hash))
                .cloned();
            match route {
                Some(cmd) => {
                    let _ = cmd.send(TorrentCmd::Incoming(stream, hs)).await;
                }
                None => {
                    tracing::debug!(%addr, "incoming for unknown torrent {}", InfoHash(hs.info_hash))
                }
            }
        });
    }
}
