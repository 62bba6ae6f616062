//! One peer connection: handshake, then a reader task and a writer task.
//!
//! The reader decodes messages and forwards them to the torrent's
//! coordinator over a bounded channel (so a slow coordinator pushes back
//! into TCP instead of buffering). The writer owns the socket's write half:
//! it batches everything queued since its last write into one buffer,
//! reads requested blocks from disk in one blocking call per batch, and
//! sends it all with one `write_all`; on a slow link batches are small and
//! our own messages go ahead of the blocks still queued (see [`SendPace`]).
//! Neither task decides anything about pieces or choking; the coordinator
//! does.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::rate::Limit;
use crate::storage::Storage;
use crate::wire::{self, BlockRequest, HANDSHAKE_LEN, Handshake, Message, WireError};

/// How long a connect or handshake may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer silent this long is gone (it should send keep-alives every 2 min).
const IDLE_TIMEOUT: Duration = Duration::from_secs(150);
/// We send a keep-alive after this much silence.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// How often the reader refreshes the round-trip time (one syscall).
const RTT_REFRESH: Duration = Duration::from_millis(500);
/// Most block bytes one write batch reads from disk.
const BATCH_BYTES: usize = 1 << 20;
/// How long, at the connection's own sending rate, one write batch lasts
/// (see [`SendPace`]). Batches of 100 ms and at least 64 KiB lost the
/// mixed-rate gain (26.4 s against 23.1–23.7 s for the old writer).
const SEND_QUEUE: Duration = Duration::from_millis(20);
/// How long, at that rate, the bytes handed to the kernel and not yet sent
/// may last: long enough that a writer woken late on a loaded host (a
/// 2-core machine at load 10–20 in the lab) does not leave the link idle,
/// which a seed, the swarm's bottleneck, cannot afford (40 ms made one
/// uniform lab run 3.7 s slower, its seed's link underused).
const UNSENT_QUEUE: Duration = Duration::from_millis(100);
/// The least the kernel may hold unsent: two blocks, so a slow link never
/// waits on a wake-up between blocks.
const MIN_SEND_QUEUE: usize = 32 * 1024;
/// [`UNSENT_QUEUE`] and [`MIN_SEND_QUEUE`] on a connection we also
/// download on. Our requests wait behind every unsent byte, and the blocks
/// we get on it come one such wait after we ask: a 25 Mbit/s lab host's
/// requests waited 0–210 ms behind its own uploads, and it got 5–7 MB/s
/// where the others got 12 (mixed-rate lab, with the endgame rule of
/// `crate::picker::Arrivals`: median of 6 interleaved runs 24.22 s before,
/// 22.98 s after). A seed never requests, so its links keep the longer
/// queue they need.
const REQUESTING_UNSENT_QUEUE: Duration = Duration::from_millis(20);
const MIN_REQUESTING_QUEUE: usize = 16 * 1024;
/// How long after our last request a connection counts as one we
/// download on.
const REQUESTING_FOR: Duration = Duration::from_secs(1);
/// Most the kernel may hold unsent; a link this fast never needs the limit.
const MAX_SEND_QUEUE: usize = 4 << 20;
/// How often the sending rate is measured.
const PACE_WINDOW: Duration = Duration::from_millis(250);
/// Most uploads queued for one peer; further requests are dropped (or
/// rejected with the fast extension), which bounds memory per peer.
pub(crate) const MAX_QUEUED_UPLOADS: usize = 512;

/// Key of a connection within its torrent.
pub(crate) type PeerKey = u64;

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("connect failed")]
    Connect(#[source] std::io::Error),
    #[error("handshake timed out")]
    Timeout,
    #[error("bad handshake")]
    Wire(#[from] WireError),
    #[error("peer is serving another torrent")]
    WrongTorrent,
}

/// What the coordinator tells a connection's writer.
#[derive(Debug)]
pub(crate) enum PeerCmd {
    /// Send a message. A `Choke` also drops every queued upload.
    Send(Message),
    /// Serve a block the peer requested.
    Upload(BlockRequest, Arc<Storage>),
    /// The peer cancelled a request.
    CancelUpload(BlockRequest),
}

/// What a connection tells its coordinator.
#[derive(Debug)]
pub(crate) enum PeerEvent {
    /// A decoded message.
    Message(Message),
    /// Payload bytes of blocks written to the socket.
    Uploaded(u64),
    /// A block could not be served: its file changed since it was hashed
    /// (see [`crate::storage::SourceChanged`]). Nothing of it was sent.
    SourceChanged(std::path::PathBuf),
    /// The connection ended.
    Closed(String),
    /// The peer sent bytes that do not decode (an oversized message, an
    /// unknown id, a bad length); the connection ended.
    Violation(String),
}

/// Dials `addr` from `local_ip`, exchanges handshakes, and returns the
/// stream with the peer's handshake.
pub(crate) async fn connect(
    addr: SocketAddr,
    local_ip: IpAddr,
    ours: Handshake,
) -> Result<(TcpStream, Handshake), PeerError> {
    let attempt = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(PeerError::Connect)?;
        // Bind the source address so the peer (and its PEX) sees our --ip.
        if local_ip.is_ipv4() == addr.is_ipv4() {
            socket
                .bind(SocketAddr::new(local_ip, 0))
                .map_err(PeerError::Connect)?;
        }
        let mut stream = socket.connect(addr).await.map_err(PeerError::Connect)?;
        stream.set_nodelay(true).map_err(PeerError::Connect)?;
        stream
            .write_all(&ours.encode())
            .await
            .map_err(PeerError::Connect)?;
        let theirs = read_handshake(&mut stream).await?;
        if theirs.info_hash != ours.info_hash {
            return Err(PeerError::WrongTorrent);
        }
        Ok((stream, theirs))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .map_err(|_| PeerError::Timeout)?
}

/// Reads the 68-byte handshake.
pub(crate) async fn read_handshake(stream: &mut TcpStream) -> Result<Handshake, PeerError> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(PeerError::Connect)?;
    Ok(Handshake::decode(&buf)?)
}

/// Starts the reader and writer of an established connection. `greeting`
/// is written first (our handshake, for an incoming connection). Returns
/// the writer's command channel and the connection's round-trip time in
/// µs (0 until known), which the reader refreshes.
pub(crate) fn spawn(
    key: PeerKey,
    stream: TcpStream,
    greeting: Option<Handshake>,
    fast: bool,
    events: mpsc::Sender<(PeerKey, PeerEvent)>,
    upload: Limit,
    download: Limit,
) -> (mpsc::UnboundedSender<PeerCmd>, Arc<AtomicU32>) {
    let rtt_us = Arc::new(AtomicU32::new(tcp_rtt_us(&stream).unwrap_or(0)));
    let reader_rtt = Arc::clone(&rtt_us);
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let writer_events = events.clone();
    tokio::spawn(async move {
        let result = write_loop(key, write, rx, greeting, fast, &writer_events, upload).await;
        if let Err(e) = result {
            if let Some(path) = crate::storage::source_changed(&e) {
                let changed = PeerEvent::SourceChanged(path.to_path_buf());
                let _ = writer_events.send((key, changed)).await;
            }
            let _ = writer_events
                .send((key, PeerEvent::Closed(format!("write: {e}"))))
                .await;
        }
    });
    tokio::spawn(async move {
        let end = match read_loop(key, read, &events, download, &reader_rtt).await {
            Ok(()) => PeerEvent::Closed("closed by peer".to_string()),
            Err(end) => end,
        };
        let _ = events.send((key, end)).await;
    });
    (tx, rtt_us)
}

/// The kernel's smoothed round-trip time of a TCP connection, in µs.
#[cfg(target_os = "linux")]
fn tcp_rtt_us(stream: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: `info` is a plain C struct the kernel fills up to `len`
    // bytes; the descriptor stays open for the call (we borrow its owner).
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_rtt)
    }
}

#[cfg(not(target_os = "linux"))]
fn tcp_rtt_us(_stream: &TcpStream) -> Option<u32> {
    None
}

async fn read_loop(
    key: PeerKey,
    mut read: OwnedReadHalf,
    events: &mpsc::Sender<(PeerKey, PeerEvent)>,
    download: Limit,
    rtt_us: &AtomicU32,
) -> Result<(), PeerEvent> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut rtt_read = Instant::now();
    loop {
        if rtt_read.elapsed() >= RTT_REFRESH {
            rtt_read = Instant::now();
            if let Some(rtt) = tcp_rtt_us(read.as_ref()) {
                rtt_us.store(rtt, Ordering::Relaxed);
            }
        }
        loop {
            match wire::decode(&mut buf) {
                Ok(Some(msg)) => {
                    if let Message::Piece { data, .. } = &msg {
                        download.take(data.len()).await;
                    }
                    if events.send((key, PeerEvent::Message(msg))).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(PeerEvent::Violation(format!("protocol error: {e}"))),
            }
        }
        if buf.capacity() - buf.len() < 32 * 1024 {
            buf.reserve(64 * 1024);
        }
        match tokio::time::timeout(IDLE_TIMEOUT, read.read_buf(&mut buf)).await {
            Err(_) => return Err(PeerEvent::Closed("idle timeout".into())),
            Ok(Err(e)) => return Err(PeerEvent::Closed(format!("read: {e}"))),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

async fn write_loop(
    key: PeerKey,
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<PeerCmd>,
    greeting: Option<Handshake>,
    fast: bool,
    events: &mpsc::Sender<(PeerKey, PeerEvent)>,
    upload: Limit,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(64 * 1024);
    if let Some(hs) = greeting {
        out.extend_from_slice(&hs.encode());
    }
    let mut queued: VecDeque<(BlockRequest, Arc<Storage>)> = VecDeque::new();
    let mut pace = SendPace::new();
    loop {
        if out.is_empty() && queued.is_empty() {
            match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
                Err(_) => Message::KeepAlive.encode(&mut out),
                Ok(None) => return Ok(()),
                Ok(Some(cmd)) => apply(cmd, &mut out, &mut queued, &mut pace, fast),
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => apply(cmd, &mut out, &mut queued, &mut pace, fast),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if queued.is_empty() {
                        write.write_all(&out).await?;
                        return Ok(());
                    }
                    break;
                }
            }
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        let most = pace.batch_bytes();
        while let Some(front) = queued.front() {
            if bytes > 0 && bytes + front.0.length as usize > most {
                break;
            }
            bytes += front.0.length as usize;
            batch.push(queued.pop_front().expect("front exists"));
        }
        if !batch.is_empty() {
            upload.take(bytes).await;
            let buf = std::mem::take(&mut out);
            out = tokio::task::spawn_blocking(move || read_blocks(buf, &batch))
                .await
                .expect("disk reader panicked")?;
        }
        if !out.is_empty() {
            write.write_all(&out).await?;
            if let Some(unsent) = pace.sent(out.len(), Instant::now()) {
                set_notsent_lowat(write.as_ref(), unsent);
            }
            out.clear();
            if bytes > 0
                && events
                    .send((key, PeerEvent::Uploaded(bytes as u64)))
                    .await
                    .is_err()
            {
                return Ok(());
            }
        }
    }
}

/// Keeps what we send on one connection from queueing for long.
///
/// Our requests, haves and cancels share the connection with the blocks we
/// upload on it, and go out behind every byte written before them. A host
/// on a slow uplink serving several peers sends each a few hundred KiB/s,
/// while each keeps a pipeline of requests to it (16 blocks, 256 KiB, at
/// the least): the kernel held 50–255 KiB unsent per connection on a
/// 25 Mbit/s lab host, so each of its requests waited up to half a second
/// and its downloads, paced by those requests, fell behind (mixed-rate
/// lab: such hosts missed 140–250 pieces when the seed had sent every
/// piece and finished a second or more after the rest).
///
/// So the write batch is bounded by [`SEND_QUEUE`] of the connection's
/// measured sending rate, and what the kernel may hold unsent
/// (`TCP_NOTSENT_LOWAT`) by [`UNSENT_QUEUE`] of it, within
/// [`MIN_SEND_QUEUE`]..=[`MAX_SEND_QUEUE`], or by
/// [`REQUESTING_UNSENT_QUEUE`] while we also send requests on it:
/// the blocks wait in our queue instead, and messages are always put ahead
/// of queued blocks. A fast link is not limited: its bound grows with its
/// rate, and until a rate is measured nothing is bounded. Pure: time is
/// passed in.
#[derive(Debug)]
struct SendPace {
    /// Since the first write of the window (the connection's idle start,
    /// handshake and metadata, must not count as a slow link).
    window_start: Option<Instant>,
    window_bytes: usize,
    /// Bytes per second sent in the last window; None before the first.
    rate: Option<f64>,
    /// The kernel's unsent limit last set.
    unsent: Option<usize>,
    /// When we last wrote a request on the connection.
    last_request: Option<Instant>,
}

impl SendPace {
    fn new() -> Self {
        Self {
            window_start: None,
            window_bytes: 0,
            rate: None,
            unsent: None,
            last_request: None,
        }
    }

    /// We write a request at `now`.
    fn requested(&mut self, now: Instant) {
        self.last_request = Some(now);
    }

    /// Bytes the rate sends in `time`.
    fn allowance(&self, time: Duration) -> usize {
        match self.rate {
            None => MAX_SEND_QUEUE,
            Some(rate) => (rate * time.as_secs_f64()) as usize,
        }
    }

    /// Most block bytes to read for the next write (one block at least is
    /// always taken).
    fn batch_bytes(&self) -> usize {
        self.allowance(SEND_QUEUE).min(BATCH_BYTES)
    }

    /// `bytes` were written at `now`. Returns a new limit for the
    /// kernel's unsent bytes when it changes by half or more. The rate is
    /// measured over wall time, idle gaps included: it is what the peer
    /// takes, and the limit of [`UNSENT_QUEUE`] of it, many wake-ups' worth,
    /// does not hold a link back; after an idle spell the rate comes down
    /// by half a window at most.
    fn sent(&mut self, bytes: usize, now: Instant) -> Option<usize> {
        self.window_bytes += bytes;
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.duration_since(start);
        if elapsed < PACE_WINDOW {
            return None;
        }
        let measured = self.window_bytes as f64 / elapsed.as_secs_f64();
        let rate = match self.rate {
            Some(old) => measured.max(old / 2.0),
            None => measured,
        };
        self.rate = Some(rate);
        self.window_start = Some(now);
        self.window_bytes = 0;
        let requesting = self
            .last_request
            .is_some_and(|at| now.duration_since(at) < REQUESTING_FOR);
        let unsent = if requesting {
            self.allowance(REQUESTING_UNSENT_QUEUE)
                .clamp(MIN_REQUESTING_QUEUE, MAX_SEND_QUEUE)
        } else {
            self.allowance(UNSENT_QUEUE)
                .clamp(MIN_SEND_QUEUE, MAX_SEND_QUEUE)
        };
        match self.unsent {
            Some(old) if unsent * 2 > old && unsent < old * 3 / 2 => None,
            _ => {
                self.unsent = Some(unsent);
                Some(unsent)
            }
        }
    }
}

/// Caps the bytes the kernel holds unsent on `stream` (the socket is
/// writable again below it); best effort.
#[cfg(target_os = "linux")]
fn set_notsent_lowat(stream: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: a valid socket and a c_int option value of the stated size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_notsent_lowat(_stream: &TcpStream, _bytes: usize) {}

fn apply(
    cmd: PeerCmd,
    out: &mut BytesMut,
    queued: &mut VecDeque<(BlockRequest, Arc<Storage>)>,
    pace: &mut SendPace,
    fast: bool,
) {
    match cmd {
        PeerCmd::Send(msg) => {
            if let Message::Request(_) = msg {
                pace.requested(Instant::now());
            }
            if msg == Message::Choke {
                for (req, _) in queued.drain(..) {
                    if fast {
                        Message::RejectRequest(req).encode(out);
                    }
                }
            }
            msg.encode(out);
        }
        PeerCmd::Upload(req, storage) => {
            if queued.len() < MAX_QUEUED_UPLOADS {
                queued.push_back((req, storage));
            } else if fast {
                Message::RejectRequest(req).encode(out);
            }
        }
        PeerCmd::CancelUpload(req) => {
            queued.retain(|(r, _)| *r != req);
        }
    }
}

/// Appends each block as a Piece message, reading its bytes straight into
/// the output buffer.
fn read_blocks(
    mut out: BytesMut,
    batch: &[(BlockRequest, Arc<Storage>)],
) -> std::io::Result<BytesMut> {
    for (req, storage) in batch {
        wire::encode_piece_header(req.index, req.begin, req.length, &mut out);
        let start = out.len();
        out.resize(start + req.length as usize, 0);
        storage.read_block(req.index, req.begin, &mut out[start..])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A writer whose first write was at `t0`.
    fn started(t0: Instant) -> SendPace {
        let mut p = SendPace::new();
        assert_eq!(p.sent(0, t0), None);
        p
    }

    #[test]
    fn nothing_is_bounded_before_a_rate_is_measured() {
        let t0 = Instant::now();
        let mut p = started(t0);
        assert_eq!(p.batch_bytes(), BATCH_BYTES);
        assert_eq!(p.sent(1 << 20, t0 + 100 * MS), None, "within the window");
        assert_eq!(p.batch_bytes(), BATCH_BYTES);
    }

    #[test]
    fn a_link_we_download_on_queues_a_fifth_as_long() {
        let t0 = Instant::now();
        // 2 MiB/s, as in the test below: 100 ms unsent while we only
        // upload on it, 20 ms while we also send requests on it.
        let mut p = started(t0);
        p.requested(t0 + 10 * MS);
        let got = p.sent(2 << 18, t0 + PACE_WINDOW).unwrap();
        assert_eq!(got, ((2 << 20) as f64 * 0.02) as usize);
        // A slow link: one block, not two.
        let mut slow = started(t0);
        slow.requested(t0);
        assert_eq!(
            slow.sent(50 * 1024, t0 + PACE_WINDOW),
            Some(MIN_REQUESTING_QUEUE)
        );
        // A second after the last request it is an upload-only link again
        // (the rate measured over that second falls to 1 MiB/s at most).
        let later = t0 + PACE_WINDOW + REQUESTING_FOR;
        let got = p.sent(2 << 18, later).unwrap();
        assert_eq!(got, ((1 << 20) as f64 * 0.1) as usize);
    }

    #[test]
    fn a_slow_link_queues_little_a_fast_one_is_not_held_back() {
        let t0 = Instant::now();
        // 200 KiB/s (a 25 Mbit/s uplink shared by a dozen peers).
        let mut slow = started(t0);
        assert_eq!(slow.sent(50 * 1024, t0 + PACE_WINDOW), Some(MIN_SEND_QUEUE));
        assert_eq!(slow.batch_bytes(), 4096, "one block per write");
        // 1 GiB/s (loopback): the kernel may hold 100 ms of it, up to the cap.
        let mut fast = started(t0);
        assert_eq!(fast.sent(256 << 20, t0 + PACE_WINDOW), Some(MAX_SEND_QUEUE));
        assert_eq!(fast.batch_bytes(), BATCH_BYTES);
        // 2 MiB/s (a 100 Mbit/s seed serving seven): 100 ms of it unsent,
        // batches of 20 ms.
        let mut mid = started(t0);
        let got = mid.sent(2 << 18, t0 + PACE_WINDOW).unwrap();
        assert_eq!(got, ((2 << 20) as f64 * 0.1) as usize);
        assert_eq!(mid.batch_bytes(), got / 5);
        // The connection's idle start does not count: the window opens at
        // the first write.
        let mut late = SendPace::new();
        assert_eq!(late.sent(0, t0 + 10 * PACE_WINDOW), None);
        assert_eq!(
            late.sent(256 << 20, t0 + 11 * PACE_WINDOW),
            Some(MAX_SEND_QUEUE)
        );
    }

    #[test]
    fn the_limit_changes_only_by_half_or_more_and_falls_slowly() {
        let t0 = Instant::now();
        let mut p = started(t0);
        let rate = 10usize << 20; // 10 MiB/s
        let window = |k: u32| t0 + PACE_WINDOW * k;
        let first = p.sent(rate / 4, window(1)).unwrap();
        assert_eq!(p.sent(rate / 4, window(2)), None, "the same");
        // Idle: the rate halves each window, not at once.
        let near = |got: Option<usize>, want: usize| got.is_some_and(|g| g.abs_diff(want) <= 1);
        assert!(near(p.sent(0, window(3)), first / 2));
        assert!(near(p.sent(0, window(4)), first / 4));
        assert!(near(p.sent(0, window(5)), first / 8));
        // Busy again: back up within a window.
        assert_eq!(p.sent(rate / 4, window(6)), Some(first));
        assert_eq!(p.sent(rate / 4 + rate / 40, window(7)), None, "10 % more");
    }
}
