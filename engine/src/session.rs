//! The public face of the engine: one listening port (TCP for peers, UDP
//! for the DHT, same number), the private DHT node, the rate limits, and
//! the torrents added to it.
//!
//! The session owns its torrents: callers add and remove them by
//! info-hash, read their counters, and get one event stream for all of
//! them. The routing table from info-hash to coordinator is the one
//! shared, locked structure: the accept loop reads it, `add` and `remove`
//! write it; no other lock is ever taken while it is held, and it is never
//! held across an `await`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::admission::Pending;
use crate::dht::{Dht, DhtNodes};
use crate::error::Error;
use crate::event::{Stats, TorrentEvent};
use crate::magnet::Magnet;
use crate::metainfo::{Info, InfoHash};
use crate::peer;
use crate::rate::Limit;
use crate::shared::{FIRST_EXTENSION_ID, Shared};
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
    /// Extension messages (BEP 10) this session speaks beyond `ut_metadata`
    /// and `ut_pex`, by name (for example p2pfile's own index exchange).
    /// Every torrent offers them in its extension handshake; a peer that
    /// offers one too is reported by [`crate::Event::ExtensionsReady`], its
    /// messages arrive as [`crate::Event::ExtensionMessage`], and
    /// [`Session::send_extension`] answers. At most 250 names.
    pub extensions: Vec<String>,
    /// The zone this host is in (see [`crate::zone`]): peers of the same
    /// zone are preferred, and pieces cross to another zone about once.
    /// `None` (the default) leaves picking and choking as without zones.
    /// Must pass [`crate::zone::is_valid`].
    pub zone: Option<String>,
}

type Routes = Arc<Mutex<HashMap<InfoHash, Entry>>>;

/// A torrent as the session keeps it.
struct Entry {
    cmd: mpsc::Sender<TorrentCmd>,
    stats: watch::Receiver<Stats>,
}

/// A running engine and the torrents in it.
pub struct Session {
    shared: Arc<Shared>,
    routes: Routes,
    events: Mutex<Option<mpsc::UnboundedReceiver<TorrentEvent>>>,
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

/// How a torrent behaves beyond what its source and target say. The
/// default is plain BitTorrent: the content's info-hash on the wire, the
/// info dictionary served to peers that ask (BEP 9), announced on the DHT.
#[derive(Clone, Debug)]
pub struct TorrentOptions {
    /// The info-hash used on the wire (handshakes, DHT) and as the
    /// torrent's id in the session, instead of the content's own. A swarm
    /// keyed by a secret this way is open only to those who can compute
    /// the key; a plain torrent of the same content does not reach it.
    pub swarm_hash: Option<InfoHash>,
    /// Answer BEP 9 metadata requests (and fetch metadata for a magnet).
    pub metadata: bool,
    /// Announce and look up the torrent on the DHT.
    pub dht: bool,
}

impl Default for TorrentOptions {
    fn default() -> Self {
        Self {
            swarm_hash: None,
            metadata: true,
            dht: true,
        }
    }
}

/// Everything needed to add a torrent.
#[derive(Clone, Debug)]
pub struct AddTorrent {
    /// The content, or a magnet for it.
    pub source: Source,
    /// Seed from or download to.
    pub target: Target,
    /// Addresses to try beside the magnet's hints and the DHT.
    pub peers: Vec<SocketAddr>,
    /// Anything beyond plain BitTorrent.
    pub options: TorrentOptions,
}

impl AddTorrent {
    /// A plain torrent with default options.
    pub fn new(source: Source, target: Target, peers: Vec<SocketAddr>) -> Self {
        Self {
            source,
            target,
            peers,
            options: TorrentOptions::default(),
        }
    }
}

impl Session {
    /// Binds the port (TCP and UDP) and starts the DHT and the accept loop.
    pub async fn start(config: SessionConfig) -> Result<Session, Error> {
        let upload = Limit::new(config.upload_limit).map_err(Error::InvalidLimit)?;
        let download = Limit::new(config.download_limit).map_err(Error::InvalidLimit)?;
        if config.extensions.len() > (u8::MAX - FIRST_EXTENSION_ID) as usize {
            return Err(Error::UnknownExtension(format!(
                "{} extensions (at most 250)",
                config.extensions.len()
            )));
        }
        if let Some(zone) = config.zone.as_deref().filter(|z| !crate::zone::is_valid(z)) {
            return Err(Error::InvalidZone(zone.to_string()));
        }
        let (listener, dht) = bind(&config).await?;
        let port = listener.local_addr().expect("bound").port();
        let mut peer_id = *b"-PF0100-000000000000";
        rand::rng().fill(&mut peer_id[8..]);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            peer_id,
            local_ip: IpAddr::V4(config.ip),
            listen_port: port,
            upload,
            download,
            dht,
            extensions: config.extensions.clone(),
            zone: config.zone.clone(),
            events: events_tx,
            bans: Mutex::default(),
            dials: Arc::default(),
            first_copies: Mutex::default(),
            hosts: Arc::default(),
        });
        let routes: Routes = Arc::default();
        let accept = tokio::spawn(accept_loop(listener, routes.clone(), shared.clone()));
        Ok(Session {
            shared,
            routes,
            events: Mutex::new(Some(events_rx)),
            accept,
        })
    }

    /// The address peers reach us at (TCP and UDP).
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(self.shared.local_ip, self.shared.listen_port)
    }

    /// DHT nodes worth bootstrapping from next time.
    pub async fn dht_nodes(&self) -> DhtNodes {
        match &self.shared.dht {
            Some(d) => d.nodes().await,
            None => DhtNodes::default(),
        }
    }

    /// The stream of every torrent's events, tagged by info-hash. There is
    /// one stream per session: the first call takes it, later calls get
    /// `None`. Events sent before it is taken wait in it.
    pub fn events(&self) -> Option<mpsc::UnboundedReceiver<TorrentEvent>> {
        self.events.lock().expect("events lock").take()
    }

    /// Adds a plain torrent to seed or download, with extra peer addresses
    /// to try; returns its id in the session.
    pub fn add(
        &self,
        source: Source,
        target: Target,
        peers: Vec<SocketAddr>,
    ) -> Result<InfoHash, Error> {
        self.add_torrent(AddTorrent::new(source, target, peers))
    }

    /// Adds a torrent with options; returns its id in the session (the
    /// swarm hash when one is given, else the content's info-hash).
    pub fn add_torrent(&self, add: AddTorrent) -> Result<InfoHash, Error> {
        let AddTorrent {
            source,
            target,
            mut peers,
            options,
        } = add;
        let (content_hash, info) = match source {
            Source::Info(info) => (info.info_hash(), Some(info)),
            Source::Magnet(m) => {
                let mut all = m.peers.clone();
                all.append(&mut peers);
                peers = all;
                (m.info_hash, None)
            }
        };
        target.check(info.as_deref())?;
        let id = options.swarm_hash.unwrap_or(content_hash);
        let mut routes = self.routes.lock().expect("routes lock");
        if routes.contains_key(&id) {
            return Err(Error::Duplicate(id));
        }
        let spawned = torrent::spawn(
            self.shared.clone(),
            torrent::Params {
                id,
                content_hash,
                info,
                target,
                peers,
                metadata: options.metadata,
                dht: options.dht,
            },
        );
        routes.insert(
            id,
            Entry {
                cmd: spawned.cmd,
                stats: spawned.stats,
            },
        );
        Ok(id)
    }

    /// The torrents in the session.
    pub fn torrents(&self) -> Vec<InfoHash> {
        self.routes
            .lock()
            .expect("routes lock")
            .keys()
            .copied()
            .collect()
    }

    /// A torrent's latest counters.
    pub fn stats(&self, id: InfoHash) -> Option<Stats> {
        let routes = self.routes.lock().expect("routes lock");
        routes.get(&id).map(|e| e.stats.borrow().clone())
    }

    /// A receiver that sees every counter update of a torrent; it keeps the
    /// last counters after the torrent is removed.
    pub fn watch_stats(&self, id: InfoHash) -> Option<watch::Receiver<Stats>> {
        let routes = self.routes.lock().expect("routes lock");
        routes.get(&id).map(|e| e.stats.clone())
    }

    fn cmd(&self, id: InfoHash) -> Result<mpsc::Sender<TorrentCmd>, Error> {
        let routes = self.routes.lock().expect("routes lock");
        routes
            .get(&id)
            .map(|e| e.cmd.clone())
            .ok_or(Error::UnknownTorrent(id))
    }

    /// More addresses for a torrent to try.
    pub async fn add_peers(&self, id: InfoHash, peers: Vec<SocketAddr>) -> Result<(), Error> {
        let cmd = self.cmd(id)?;
        cmd.send(TorrentCmd::AddPeers(peers))
            .await
            .map_err(|_| Error::UnknownTorrent(id))
    }

    /// Sends a message on a registered extension to a connected peer of a
    /// torrent. A peer that is gone, or that does not speak the extension,
    /// is skipped quietly: the caller learns of peers through
    /// [`crate::Event::ExtensionsReady`] and `PeerDisconnected`.
    pub async fn send_extension(
        &self,
        id: InfoHash,
        addr: SocketAddr,
        name: &str,
        payload: Bytes,
    ) -> Result<(), Error> {
        if self.shared.extension_id(name).is_none() {
            return Err(Error::UnknownExtension(name.to_string()));
        }
        let cmd = self.cmd(id)?;
        cmd.send(TorrentCmd::SendExtension {
            addr,
            name: name.to_string(),
            payload,
        })
        .await
        .map_err(|_| Error::UnknownTorrent(id))
    }

    /// Closes the connection of a torrent to the peer at `addr`, for a
    /// reason the caller found (a sync peer that cannot prove the folder
    /// key, say): the engine cannot judge a registered extension's
    /// messages, so it counts them as use until the caller says otherwise.
    /// A peer that is gone is skipped quietly.
    pub async fn close_peer(
        &self,
        id: InfoHash,
        addr: SocketAddr,
        reason: &str,
    ) -> Result<(), Error> {
        let cmd = self.cmd(id)?;
        cmd.send(TorrentCmd::ClosePeer {
            addr,
            reason: reason.to_string(),
        })
        .await
        .map_err(|_| Error::UnknownTorrent(id))
    }

    /// Stops a torrent, closing its connections, and waits for it. Its
    /// last event is [`crate::Event::Removed`].
    pub async fn remove(&self, id: InfoHash) -> Result<(), Error> {
        let entry = self
            .routes
            .lock()
            .expect("routes lock")
            .remove(&id)
            .ok_or(Error::UnknownTorrent(id))?;
        stop(entry.cmd).await;
        Ok(())
    }

    /// Stops accepting connections and stops every torrent.
    pub async fn shutdown(&self) {
        self.accept.abort();
        let cmds: Vec<_> = self
            .routes
            .lock()
            .expect("routes lock")
            .drain()
            .map(|(_, e)| e.cmd)
            .collect();
        for cmd in cmds {
            stop(cmd).await;
        }
    }
}

async fn stop(cmd: mpsc::Sender<TorrentCmd>) {
    let (tx, rx) = oneshot::channel();
    if cmd.send(TorrentCmd::Stop(tx)).await.is_ok() {
        let _ = rx.await;
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

async fn accept_loop(listener: TcpListener, routes: Routes, shared: Arc<Shared>) {
    // Connections before their handshake names a torrent count too: one
    // address may hold only a few of them (see `admission`).
    let pending: Arc<Mutex<Pending>> = Arc::default();
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
        if shared.is_banned(addr.ip()) {
            // Closed before its handshake is read: a banned host costs one
            // accept and one close.
            tracing::debug!(%addr, "refused: banned");
            continue;
        }
        if !pending.lock().expect("pending lock").enter(addr.ip()) {
            tracing::debug!(%addr, "incoming refused: too many connections awaiting a handshake");
            continue;
        }
        let place = PendingPlace {
            pending: pending.clone(),
            ip: addr.ip(),
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
            drop(place);
            let route = routes
                .lock()
                .expect("routes lock")
                .get(&InfoHash(hs.info_hash))
                .map(|e| e.cmd.clone());
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

/// A connection's place among those awaiting a handshake, given back when
/// dropped (handshake read, failed or timed out).
struct PendingPlace {
    pending: Arc<Mutex<Pending>>,
    ip: IpAddr,
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        self.pending.lock().expect("pending lock").leave(self.ip);
    }
}
