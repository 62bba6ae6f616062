//! `p2pfile status`: what the state database knows.

use std::path::Path;

use serde_json::json;

use crate::error::Failure;
use crate::output::Output;
use crate::state::State;

pub fn run(path: &Path, json: bool) -> Result<(), Failure> {
    if !path.exists() {
        return Err(Failure::usage(
            anyhow::anyhow!("no state database at {}", path.display()),
            "run status in the directory where serve or download ran, or pass --state",
        ));
    }
    let state = State::open(path).map_err(|e| Failure::new(crate::error::Code::Runtime, e))?;
    let (served, downloads) = state.all()?;
    let out = Output::new(json);
    for s in &served {
        let size: u64 = content_size(&s.info);
        out.event(
            "served",
            json!({
                "info_hash": s.info_hash, "name": s.name, "path": s.path, "ip": s.ip, "port": s.port,
                "bytes": size, "uploaded": s.uploaded, "ratio": ratio(s.uploaded, size),
            }),
        );
    }
    for d in &downloads {
        out.event(
            "download",
            json!({
                "info_hash": d.info_hash, "name": d.name, "dir": d.dir, "state": d.state,
                "bytes": d.have, "total": d.total, "downloaded": d.downloaded, "uploaded": d.uploaded,
                "ratio": ratio(d.uploaded, d.total), "seeding_seconds": d.seeding_secs,
            }),
        );
    }
    if !json {
        out.line(&format!(
            "{:<10} {:<40} {:>12} {:>8} {:>7}  {}",
            "KIND", "INFO-HASH", "BYTES", "DONE", "RATIO", "WHERE"
        ));
        for s in &served {
            let size = content_size(&s.info);
            out.line(&format!(
                "{:<10} {:<40} {:>12} {:>8} {:>7.2}  {} ({}:{})",
                "served",
                s.info_hash,
                size,
                "100%",
                ratio(s.uploaded, size),
                s.path,
                s.ip,
                s.port
            ));
        }
        for d in &downloads {
            let pct = if d.total > 0 {
                d.have as f64 * 100.0 / d.total as f64
            } else {
                0.0
            };
            out.line(&format!(
                "{:<10} {:<40} {:>12} {:>7.0}% {:>7.2}  {}/{}",
                d.state,
                d.info_hash,
                d.total,
                pct,
                ratio(d.uploaded, d.total),
                d.dir,
                d.name
            ));
        }
    }
    Ok(())
}

fn ratio(uploaded: u64, size: u64) -> f64 {
    if size == 0 {
        0.0
    } else {
        (uploaded as f64 / size as f64 * 100.0).round() / 100.0
    }
}

/// Content size from a recorded info dictionary.
fn content_size(raw: &[u8]) -> u64 {
    p2pfile_engine::metainfo::Info::from_bytes(raw).map_or(0, |i| i.total_length())
}
