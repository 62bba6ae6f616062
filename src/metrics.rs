//! `--metrics IP:PORT`: a Prometheus endpoint for a long-running seed.
//! `GET /metrics` answers in the Prometheus text format (0.0.4) and
//! `GET /health` with a small JSON body. Counters are read from the
//! engine's stats watches at each scrape, so this module keeps none of its
//! own and a scrape never shows older numbers than the engine has.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use p2pfile_engine::metainfo::InfoHash;
use p2pfile_engine::{Phase, Session, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Picked;
use crate::error::{Code, Failure};

/// A client that sends no complete request head within this time is
/// dropped, so idle or stalled connections cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One torrent as the endpoint reports it.
struct Tracked {
    info_hash: String,
    name: String,
    stats: watch::Receiver<Stats>,
}

// By hand: a stats receiver has nothing worth printing.
impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("info_hash", &self.info_hash)
            .finish_non_exhaustive()
    }
}

type Torrents = Arc<Mutex<Vec<Tracked>>>;

/// The endpoint's handle: commands hand it each torrent they add. Without
/// `--metrics` every call is a no-op, so commands need no `if`.
pub struct Metrics {
    torrents: Option<Torrents>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Metrics {
    /// Parses the `--metrics` value (flag, `P2PFILE_METRICS` or config key)
    /// and binds it at once, so a bad or taken address fails the command
    /// before any hashing, network or state work. `None`: no endpoint.
    pub async fn start(value: Option<Picked>) -> Result<Self, Failure> {
        let Some(value) = value else {
            return Ok(Self {
                torrents: None,
                server: None,
            });
        };
        let addr = parse_addr(&value)?;
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            let taken = e.kind() == std::io::ErrorKind::AddrInUse;
            let error = anyhow!(e).context(format!("cannot listen for --metrics on {addr}"));
            if taken {
                Failure::new(Code::PortUnavailable, error)
                    .hint("choose another --metrics port, or stop the process that listens on it")
            } else {
                Failure::usage(error, "--metrics must name an address of this host")
            }
        })?;
        let torrents = Torrents::default();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collect {
            torrents: torrents.clone(),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        }));
        let server = tokio::spawn(serve(listener, Arc::new(registry), torrents.clone()));
        Ok(Self {
            torrents: Some(torrents),
            server: Some(server),
        })
    }

    /// Reports on a torrent of the session from now on, and keeps its last
    /// counters after the torrent is removed (counters never go back).
    /// `name` may be empty (a magnet without one).
    pub fn track(&self, session: &Session, id: InfoHash, name: &str) {
        let (Some(torrents), Some(stats)) = (&self.torrents, session.watch_stats(id)) else {
            return;
        };
        torrents.lock().expect("metrics lock").push(Tracked {
            info_hash: id.to_string(),
            name: name.to_string(),
            stats,
        });
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// `IP:PORT` with a port other than 0 (IPv4 or `[IPv6]:PORT`).
fn parse_addr(value: &Picked) -> Result<SocketAddr, Failure> {
    value
        .trim()
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)
        .ok_or_else(|| {
            Failure::usage(
                anyhow!("{} is not IP:PORT", value.subject("--metrics")),
                "write it like 127.0.0.1:9920, or 0.0.0.0:9920 for every interface",
            )
        })
}

async fn serve(listener: TcpListener, registry: Arc<Registry>, torrents: Torrents) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin.
                tracing::debug!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let torrents = torrents.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &registry, &torrents);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    registry: &Registry,
    torrents: &Torrents,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/health") {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics or /health\n".into(),
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("valid header"));
        return r;
    }
    if path == "/health" {
        let (status, body) = health(torrents);
        return reply(status, "application/json", body);
    }
    let mut text = String::new();
    match prometheus_text::encode(&mut text, registry) {
        Ok(()) => reply(StatusCode::OK, prometheus_text::CONTENT_TYPE, text),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "cannot encode metrics\n".into(),
        ),
    }
}

/// 200 `{"status":"ok","torrents":N}`; 503 with `"status":"failed"` and the
/// failed torrents when one stopped for good (its files vanished, its disk
/// is full), so a load balancer or monitor sees a seed that serves less.
fn health(torrents: &Torrents) -> (StatusCode, String) {
    let torrents = torrents.lock().expect("metrics lock");
    let failed: Vec<_> = torrents
        .iter()
        .filter(|t| t.stats.borrow().phase == Phase::Failed)
        .map(|t| json!({"info_hash": t.info_hash, "name": t.name}))
        .collect();
    let (status, text) = if failed.is_empty() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "failed")
    };
    let mut body = json!({"status": text, "torrents": torrents.len()});
    if !failed.is_empty() {
        body["failed"] = json!(failed);
    }
    (status, format!("{body}\n"))
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        content_type.parse().expect("valid content type"),
    );
    r
}

/// A per-torrent metric: name (counters get `_total` appended), help, type
/// and how to read it from the stats.
struct PerTorrent {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    value: fn(&Stats) -> u64,
}

/// Every per-torrent metric; the README's Metrics section lists the same.
const PER_TORRENT: &[PerTorrent] = &[
    counter(
        "p2pfile_uploaded_bytes",
        "Payload bytes sent to peers by this process",
        |s| s.uploaded,
    ),
    counter(
        "p2pfile_downloaded_bytes",
        "Payload bytes received from peers by this process, including discarded ones",
        |s| s.downloaded,
    ),
    counter(
        "p2pfile_downloaded_other_zone_bytes",
        "Payload bytes received from peers of another zone (0 without --zone)",
        |s| s.downloaded_other_zone,
    ),
    counter(
        "p2pfile_discarded_bytes",
        "Of the payload bytes received, those thrown away: late after a cancel or choke, sent first by another peer, or never asked for",
        |s| s.discarded,
    ),
    gauge(
        "p2pfile_size_bytes",
        "Content length (0 until the metadata is known)",
        |s| s.total,
    ),
    gauge("p2pfile_have_bytes", "Verified bytes held", |s| s.have),
    gauge("p2pfile_peers", "Connected peers", |s| s.peers as u64),
    gauge(
        "p2pfile_seeds",
        "Connected peers that hold every piece",
        |s| s.seeds as u64,
    ),
    counter(
        "p2pfile_completed_peers",
        "Distinct peers seen to finish the torrent (first seen incomplete, later holding every piece)",
        |s| s.completed_peers as u64,
    ),
    counter(
        "p2pfile_pieces_verified",
        "Downloaded pieces that passed their hash check",
        |s| s.pieces_verified,
    ),
    counter(
        "p2pfile_hash_failures",
        "Downloaded pieces whose hash did not match (fetched again)",
        |s| s.hash_failures,
    ),
];

const fn counter(name: &'static str, help: &'static str, value: fn(&Stats) -> u64) -> PerTorrent {
    PerTorrent {
        name,
        help,
        kind: MetricType::Counter,
        value,
    }
}

const fn gauge(name: &'static str, help: &'static str, value: fn(&Stats) -> u64) -> PerTorrent {
    PerTorrent {
        name,
        help,
        kind: MetricType::Gauge,
        value,
    }
}

/// Reads the tracked torrents' stats at each scrape.
#[derive(Debug)]
struct Collect {
    torrents: Torrents,
    /// Unix time the endpoint started, in seconds.
    started: f64,
}

impl Collector for Collect {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Copy the counters out first: the lock is not held while encoding.
        let rows: Vec<([(&str, String); 2], Stats)> = self
            .torrents
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|t| {
                let labels = [("info_hash", t.info_hash.clone()), ("name", t.name.clone())];
                (labels, t.stats.borrow().clone())
            })
            .collect();
        let info = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        info.encode(encoder.encode_descriptor(
            "p2pfile_build",
            "The p2pfile version serving these metrics",
            None,
            info.metric_type(),
        )?)?;
        let started = ConstGauge::new(self.started);
        started.encode(encoder.encode_descriptor(
            "p2pfile_start_time_seconds",
            "Unix time the process started serving metrics",
            None,
            started.metric_type(),
        )?)?;
        let count = ConstGauge::new(rows.len() as u64);
        count.encode(encoder.encode_descriptor(
            "p2pfile_torrents",
            "Torrents this process serves or downloads",
            None,
            count.metric_type(),
        )?)?;
        for m in PER_TORRENT {
            let mut family = encoder.encode_descriptor(m.name, m.help, None, m.kind)?;
            for (labels, stats) in &rows {
                let value = (m.value)(stats);
                let sample = family.encode_family(labels)?;
                match m.kind {
                    MetricType::Counter => ConstCounter::new(value).encode(sample)?,
                    _ => ConstGauge::new(value).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr(&Picked::flag("metrics", "127.0.0.1:9920")).unwrap(),
            "127.0.0.1:9920".parse().unwrap()
        );
        assert!(parse_addr(&Picked::flag("metrics", "[::1]:9920")).is_ok());
        for bad in [
            "9920",
            ":9920",
            "127.0.0.1",
            "127.0.0.1:0",
            "localhost:9920",
            "",
        ] {
            let f = parse_addr(&Picked::flag("metrics", bad)).unwrap_err();
            assert_eq!(f.code, Code::Usage, "{bad}");
            assert!(f.hint.is_some());
        }
    }

    fn tracked(name: &str, phase: Phase) -> (watch::Sender<Stats>, Tracked) {
        let (tx, stats) = watch::channel(Stats::new(InfoHash([0xab; 20]), phase));
        let t = Tracked {
            info_hash: "ab".repeat(20),
            name: name.into(),
            stats,
        };
        (tx, t)
    }

    #[test]
    fn health_fails_once_a_torrent_failed() {
        let torrents = Torrents::default();
        let (_a, t) = tracked("a", Phase::Seeding);
        torrents.lock().unwrap().push(t);
        let (b, t) = tracked("b", Phase::Seeding);
        torrents.lock().unwrap().push(t);
        assert_eq!(
            health(&torrents),
            (
                StatusCode::OK,
                "{\"status\":\"ok\",\"torrents\":2}\n".into()
            )
        );
        b.send_modify(|s| s.phase = Phase::Failed);
        let (status, body) = health(&torrents);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["status"], "failed");
        assert_eq!(body["torrents"], 2);
        assert_eq!(body["failed"][0]["name"], "b");
    }

    #[test]
    fn scrape_names_every_metric_with_labels() {
        let torrents = Torrents::default();
        let (tx, t) = tracked("a \"quoted\" name", Phase::Seeding);
        tx.send_modify(|s| {
            s.uploaded = 1234;
            s.completed_peers = 2;
        });
        torrents.lock().unwrap().push(t);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collect {
            torrents,
            started: 1.5,
        }));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        let labels = format!(
            "{{info_hash=\"{}\",name=\"a \\\"quoted\\\" name\"}}",
            "ab".repeat(20)
        );
        assert!(
            text.contains(&format!("p2pfile_uploaded_bytes_total{labels} 1234\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("p2pfile_completed_peers_total{labels} 2\n")),
            "{text}"
        );
        assert!(text.contains("p2pfile_start_time_seconds 1.5\n"), "{text}");
        assert!(text.contains("p2pfile_torrents 1\n"), "{text}");
        for m in PER_TORRENT {
            let kind = if matches!(m.kind, MetricType::Counter) {
                format!("# TYPE {}_total counter\n", m.name)
            } else {
                format!("# TYPE {} gauge\n", m.name)
            };
            assert!(text.contains(&kind), "{kind} in {text}");
        }
    }
}
