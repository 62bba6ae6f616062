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
    let folders = state.sync_folders()?;
    let rows = state.sync_status(SYNC_ROWS)?;
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
                "reason": (!d.reason.is_empty()).then_some(&d.reason),
            }),
        );
    }
    for f in &folders {
        out.event(
            "sync_folder",
            json!({"folder": f.folder_id, "path": f.path, "mode": f.mode, "files": f.files,
                   "conflicts": f.conflicts, "peers": f.peers}),
        );
    }
    for r in &rows {
        out.event(
            "sync_file",
            json!({"folder": r.folder_id, "peer": r.peer, "path": r.path, "state": r.state,
                   "detail": r.detail, "updated": r.updated_at}),
        );
    }
    if !json && served.is_empty() && downloads.is_empty() && !folders.is_empty() {
        sync_table(&out, &folders, &rows);
        return Ok(());
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
            if !d.reason.is_empty() {
                // On its own line: a reason is often longer than the table.
                out.line(&format!("{:<10} {}", "", d.reason));
            }
        }
    }
    if !json && !folders.is_empty() {
        out.line("");
        sync_table(&out, &folders, &rows);
    }
    Ok(())
}

/// Most rows of the sync table shown per folder (newest first).
const SYNC_ROWS: usize = 50;

/// The sync folders, then the sync table: peer, path, state, updated.
fn sync_table(out: &Output, folders: &[crate::state::SyncFolder], rows: &[crate::state::SyncRow]) {
    out.line(&format!(
        "{:<6} {:<32} {:<13} {:>7} {:>9}  {}",
        "KIND", "FOLDER", "MODE", "FILES", "CONFLICTS", "WHERE (PEERS)"
    ));
    for f in folders {
        out.line(&format!(
            "{:<6} {:<32} {:<13} {:>7} {:>9}  {} ({})",
            "sync",
            f.folder_id,
            f.mode,
            f.files,
            f.conflicts,
            f.path,
            if f.peers.is_empty() {
                "no peer yet".to_string()
            } else {
                f.peers.join(", ")
            }
        ));
    }
    if rows.is_empty() {
        return;
    }
    out.line("");
    out.line(&format!(
        "{:<32} {:<8} {:<8} {:<20}  {}",
        "FOLDER", "PEER", "STATE", "UPDATED", "PATH"
    ));
    for r in rows {
        let detail = if r.detail.is_empty() {
            String::new()
        } else {
            format!("  ({})", r.detail)
        };
        out.line(&format!(
            "{:<32} {:<8} {:<8} {:<20}  {}{detail}",
            r.folder_id,
            if r.peer.is_empty() { "-" } else { &r.peer },
            r.state,
            crate::sync::merge::utc_time(r.updated_at),
            r.path
        ));
    }
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
