//! `p2pfile status`: what the state database knows.

use std::path::Path;

use serde_json::json;

use crate::error::Failure;
use crate::output::{Output, round3};
use crate::state::State;

pub fn run(path: &Path, json: bool) -> Result<(), Failure> {
    if !path.exists() {
        return Err(Failure::usage(
            anyhow::anyhow!("no state database at {}", path.display()),
            "run status in the directory where serve or download ran, or pass --state",
        ));
    }
    let state = State::open(path).map_err(|e| super::state_failure(path, e))?;
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
                "ratio": ratio(d.uploaded, d.total), "seeding_seconds": round3(d.seeding_secs),
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
        let mut rows = vec![row([
            "KIND",
            "INFO-HASH",
            "BYTES",
            "DONE",
            "RATIO",
            "WHERE",
        ])];
        for s in &served {
            let size = content_size(&s.info);
            rows.push(vec![
                "served".into(),
                s.info_hash.clone(),
                size.to_string(),
                "100%".into(),
                format!("{:.2}", ratio(s.uploaded, size)),
                format!("{} ({}:{})", s.path, s.ip, s.port),
            ]);
        }
        for d in &downloads {
            let pct = if d.total > 0 {
                d.have as f64 * 100.0 / d.total as f64
            } else {
                0.0
            };
            rows.push(vec![
                d.state.clone(),
                d.info_hash.clone(),
                d.total.to_string(),
                format!("{pct:.0}%"),
                format!("{:.2}", ratio(d.uploaded, d.total)),
                match d.reason.as_str() {
                    "" => Path::new(&d.dir).join(&d.name).display().to_string(),
                    // Last column, so a long reason widens nothing.
                    reason => format!("{}: {reason}", Path::new(&d.dir).join(&d.name).display()),
                },
            ]);
        }
        print_table(&out, &rows, &[false, false, true, true, true, false]);
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
    let mut table = vec![row([
        "KIND",
        "FOLDER",
        "MODE",
        "FILES",
        "CONFLICTS",
        "WHERE (PEERS)",
    ])];
    for f in folders {
        table.push(vec![
            "sync".into(),
            f.folder_id.clone(),
            f.mode.clone(),
            f.files.to_string(),
            f.conflicts.to_string(),
            format!(
                "{} ({})",
                f.path,
                if f.peers.is_empty() {
                    "no peer yet".to_string()
                } else {
                    f.peers.join(", ")
                }
            ),
        ]);
    }
    print_table(out, &table, &[false, false, false, true, true, false]);
    if rows.is_empty() {
        return;
    }
    out.line("");
    let mut table = vec![row(["FOLDER", "PEER", "STATE", "UPDATED", "PATH"])];
    for r in rows {
        let detail = if r.detail.is_empty() {
            String::new()
        } else {
            format!("  ({})", r.detail)
        };
        table.push(vec![
            r.folder_id.clone(),
            if r.peer.is_empty() { "-" } else { &r.peer }.to_string(),
            r.state.clone(),
            crate::sync::merge::utc_time(r.updated_at),
            format!("{}{detail}", r.path),
        ]);
    }
    print_table(out, &table, &[false; 5]);
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Prints rows with each column as wide as its widest cell (two spaces
/// apart), numbers right-aligned; the last column, which holds the paths,
/// is not padded, so a long path never pushes the other columns apart.
fn print_table(out: &Output, rows: &[Vec<String>], right: &[bool]) {
    for line in layout(rows, right) {
        out.line(&line);
    }
}

fn layout(rows: &[Vec<String>], right: &[bool]) -> Vec<String> {
    let columns = rows.first().map_or(0, Vec::len);
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns).map(width).collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == columns {
                    line.push_str(cell);
                } else if right.get(c) == Some(&true) {
                    line.push_str(&format!("{cell:>w$}  ", w = widths[c]));
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

fn ratio(uploaded: u64, size: u64) -> f64 {
    if size == 0 {
        0.0
    } else {
        round3(uploaded as f64 / size as f64)
    }
}

/// Content size from a recorded info dictionary.
fn content_size(raw: &[u8]) -> u64 {
    p2pfile_engine::metainfo::Info::from_bytes(raw).map_or(0, |i| i.total_length())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell() {
        let rows = vec![
            row(["KIND", "PEER", "BYTES", "WHERE"]),
            row([
                "complete",
                "127.0.0.10:42070",
                "5",
                "/a/very/long/path/name.bin",
            ]),
            row(["served", "-", "123456789012", "/b"]),
        ];
        let lines = layout(&rows, &[false, false, true, false]);
        assert_eq!(
            lines,
            [
                "KIND      PEER                     BYTES  WHERE",
                "complete  127.0.0.10:42070             5  /a/very/long/path/name.bin",
                "served    -                 123456789012  /b",
            ]
        );
    }

    #[test]
    fn ratios_have_three_decimals() {
        assert_eq!(ratio(1, 3), 0.333);
        assert_eq!(ratio(2, 3).to_string(), "0.667");
        assert_eq!(ratio(5, 0), 0.0);
    }
}
