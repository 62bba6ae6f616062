//! Everything the user sees on stdout and the progress bars on stderr.
//! stdout carries results only: magnets, final paths, or JSON lines.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2pfile_engine::Stats;
use serde_json::{Value, json};

/// Where results and progress go.
pub struct Output {
    json: bool,
    /// The progress bars: only for a person watching (stderr is a terminal,
    /// no `--json`).
    bars: Option<Bars>,
    /// stdout was closed by its reader (`| head -1`): results are no longer
    /// written, and the command goes on to its normal end.
    closed: AtomicBool,
}

/// One bar per source, drawn together on stderr.
struct Bars {
    multi: MultiProgress,
    by_key: Mutex<HashMap<String, ProgressBar>>,
}

/// Longest name shown before a bar; longer names are cut in the middle.
const NAME_WIDTH: usize = 20;

impl Output {
    pub fn new(json: bool) -> Self {
        let bars = (!json && std::io::stderr().is_terminal()).then(|| Bars {
            multi: shared_bars().clone(),
            by_key: Mutex::new(HashMap::new()),
        });
        Self {
            json,
            bars,
            closed: AtomicBool::new(false),
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A result line on stdout, flushed at once (scripts read it live).
    /// Progress bars are lifted off the screen while it is written, so the
    /// line stands on its own.
    ///
    /// A closed stdout (`| head -1`) is not an error worth reporting: the
    /// lines after it are dropped and the command ends as it would have,
    /// with its state saved and its usual exit code.
    pub fn line(&self, text: &str) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let write = || {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").and_then(|()| out.flush())
        };
        let written = match &self.bars {
            Some(b) => b.multi.suspend(write),
            None => write(),
        };
        if let Err(e) = written {
            self.closed.store(true, Ordering::Relaxed);
            tracing::debug!("stdout is closed ({e}); further results are not printed");
        }
    }

    /// A JSON event line, when `--json` is on.
    pub fn event(&self, event: &str, mut fields: Value) {
        if !self.json {
            return;
        }
        if let Value::Object(map) = &mut fields {
            map.insert("event".into(), json!(event));
        }
        self.line(&fields.to_string());
    }

    /// Draws `key`'s bar (one per source): `name [====>   ] 42% 4.2 MiB/10.0
    /// MiB 1.2 MiB/s ETA 5s 3 peers`; a spinner until the size is known.
    pub fn progress(&self, key: &str, name: &str, s: &Stats) {
        let Some(b) = &self.bars else { return };
        let mut by_key = b.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let bar = by_key.entry(key.to_string()).or_insert_with(|| {
            let bar = b.multi.add(ProgressBar::new_spinner());
            bar.set_style(spinner_style());
            bar
        });
        bar.set_prefix(short_name(name));
        bar.set_message(peers_text(s.peers));
        if s.total > 0 && bar.length().is_none() {
            // Counted from here: bytes already on disk are not part of the rate.
            bar.set_style(bar_style());
            bar.set_length(s.total);
            bar.set_position(s.have);
            bar.reset_eta();
        } else if s.total > 0 {
            bar.set_position(s.have);
        } else {
            bar.tick();
        }
    }

    /// Shows `key`'s bar full, then takes it off the screen: the source is
    /// complete and its path is about to be printed.
    pub fn progress_done(&self, key: &str) {
        let Some(b) = &self.bars else { return };
        let bar = b
            .by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(bar) = bar {
            if let Some(len) = bar.length() {
                bar.set_position(len);
            }
            bar.finish_and_clear();
            b.multi.remove(&bar);
        }
    }

    /// Takes every bar off the screen, so later output starts on a clean line.
    pub fn end_progress(&self) {
        let Some(b) = &self.bars else { return };
        for (_, bar) in b.by_key.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            bar.finish_and_clear();
        }
        let _ = b.multi.clear();
    }

    /// A one-line report on stderr that is not an error (`--json` carries
    /// the same in its events, so nothing is printed then).
    pub fn note(&self, text: &str) {
        if self.json {
            return;
        }
        match &self.bars {
            // Above the bars, which are drawn again below it.
            Some(b) => b.multi.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }
}

/// The process's one set of bars, shared with the log writer so a log
/// line is printed above the bars instead of into them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn shared_bars() -> &'static MultiProgress {
    // 4 redraws a second: enough for a rate that reads steadily.
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)))
}

/// The `tracing` writer: stderr, one event at a time, with the progress
/// bars (if any) lifted off the screen while the event is written.
pub struct LogWriter;

/// One log event, buffered and written whole when dropped.
pub struct LogLine(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match BARS.get() {
            Some(multi) => multi.suspend(write),
            None => write(),
        }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:20} [{wide_bar}] {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:28} {spinner} finding peers and metadata, {msg}")
        .expect("a valid template")
}

fn peers_text(n: usize) -> String {
    if n == 1 {
        "1 peer".into()
    } else {
        format!("{n} peers")
    }
}

/// `name` in at most `NAME_WIDTH` characters: the start and the end, which
/// tell files apart better than either alone.
pub fn short_name(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= NAME_WIDTH {
        return name.to_string();
    }
    let tail = (NAME_WIDTH - 1) / 2;
    let head = NAME_WIDTH - 1 - tail;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// A number of seconds or a ratio for JSON: three decimals are enough,
/// and shorter than the 17 digits an f64 prints with.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A `peer_banned` event for `--json` (`download`, `serve`, `sync`), and
/// a debug log line: a ban is the engine doing its job, not a warning.
pub fn peer_banned(
    out: &Output,
    info_hash: &str,
    addr: std::net::SocketAddr,
    reason: p2pfile_engine::BanReason,
) {
    tracing::debug!(%addr, %reason, info_hash, "peer banned");
    out.event(
        "peer_banned",
        json!({"peer": addr.to_string(), "reason": reason.as_str(), "info_hash": info_hash}),
    );
}

/// Progress fields shared by `progress` events and `status`.
/// With a zone, `downloaded_other_zone` is added (see [`with_zone`]).
pub fn stats_json(s: &Stats) -> Value {
    json!({
        "info_hash": s.info_hash.to_string(),
        "bytes": s.have,
        "total": s.total,
        "downloaded": s.downloaded,
        "uploaded": s.uploaded,
        "download_rate": s.download_rate.round(),
        "upload_rate": s.upload_rate.round(),
        "peers": s.peers,
    })
}

/// Adds `downloaded_other_zone` (bytes from peers outside this host's
/// zone) to a JSON object of a host that has a zone; leaves it alone
/// otherwise, so runs without zones print what they always did.
pub fn with_zone(mut fields: Value, zone: Option<&str>, s: &Stats) -> Value {
    if zone.is_some() {
        fields["downloaded_other_zone"] = json!(s.downloaded_other_zone);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_keep_both_ends() {
        assert_eq!(short_name("file.bin"), "file.bin");
        let long = "a-very-long-release-name-2026-11-27-final.tar.gz";
        let s = short_name(long);
        assert_eq!(s.chars().count(), NAME_WIDTH);
        assert!(s.starts_with("a-very-lon"), "{s}");
        assert!(s.ends_with("al.tar.gz"), "{s}");
        assert!(s.contains('…'));
    }
}
