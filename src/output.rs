//! Everything the user sees on stdout and the progress line on stderr.
//! stdout carries results only: magnets, final paths, or JSON lines.

use std::io::{IsTerminal, Write};

use p2pfile_engine::Stats;
use serde_json::{Value, json};

/// Where results and progress go.
pub struct Output {
    json: bool,
    progress: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            progress: !json && std::io::stderr().is_terminal(),
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A result line on stdout, flushed at once (scripts read it live).
    pub fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            // A closed pipe (`| head`) is not an error worth reporting.
            std::process::exit(0);
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

    /// A progress line on stderr, redrawn in place on a terminal.
    pub fn progress(&self, lines: &[String]) {
        if !self.progress {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{}", lines.join(" | "));
        let _ = err.flush();
    }

    /// Ends the progress line so later output starts on a fresh line.
    pub fn end_progress(&self) {
        if self.progress {
            eprintln!();
        }
    }

    /// A one-line report on stderr that is not an error (`--json` carries
    /// the same in its events, so nothing is printed then).
    pub fn note(&self, text: &str) {
        if self.json {
            return;
        }
        if self.progress {
            // Over the progress line, which the next redraw puts back.
            eprint!("\r\x1b[K");
        }
        eprintln!("{text}");
    }
}

/// `name 42% 12.3 MiB/s 3 peers`.
pub fn progress_text(name: &str, s: &Stats) -> String {
    let pct = if s.total > 0 {
        s.have as f64 * 100.0 / s.total as f64
    } else {
        0.0
    };
    format!(
        "{name} {pct:.0}% {:.1} MiB/s {} peers",
        s.download_rate / 1048576.0,
        s.peers
    )
}

/// Progress fields shared by `progress` events and `status`.
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
