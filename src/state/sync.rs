//! What `sync` keeps in the state database: this machine's device id, each
//! folder's local index (one signed record per path, tombstones included),
//! the peers it found, and the sync table `status` shows (peer, path,
//! state, updated).
//!
//! The folder key itself is not here: it lives in `DIR/.p2pfile/key`, so a
//! folder keeps its identity whatever state database a run uses. An index
//! lost with a database is rebuilt by the next scan; its new versions meet
//! the peers' as concurrent versions of the same content, which merge
//! without a conflict or a transfer.

use rusqlite::{OptionalExtension, params};

use super::{State, now};

/// A sync folder as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncFolder {
    /// The folder id (hex), from the key.
    pub folder_id: String,
    /// Where the folder is on this machine.
    pub path: String,
    /// `send-receive`, `send-only`, `receive-only` or `read-only`.
    pub mode: String,
    /// Records in the local index (tombstones included).
    pub files: u64,
    /// Conflict copies kept (`.sync-conflict-` names in the index).
    pub conflicts: u64,
    /// Peers found (listening addresses).
    pub peers: Vec<String>,
}

/// One row of the sync table: how one path stands with one peer.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncRow {
    /// The folder id (hex).
    pub folder_id: String,
    /// The peer's short device id.
    pub peer: String,
    /// The path inside the folder.
    pub path: String,
    /// `pending`, `syncing`, `done`, `failed` or `behind`.
    pub state: String,
    /// Why it failed, or what it is waiting for.
    pub detail: String,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

impl State {
    /// This machine's sync device id, made on first use.
    pub fn device_id(&self) -> anyhow::Result<u64> {
        let existing: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'device_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = existing.and_then(|v| v.parse().ok()) {
            return Ok(id);
        }
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("cannot make a device id: no randomness: {e}"))?;
        let id = u64::from_be_bytes(bytes);
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('device_id', ?1)
             ON CONFLICT(key) DO NOTHING",
            [id.to_string()],
        )?;
        // Another process may have won the race: read what stands.
        let stored: String =
            self.conn
                .query_row("SELECT value FROM meta WHERE key = 'device_id'", [], |r| {
                    r.get(0)
                })?;
        Ok(stored.parse()?)
    }

    /// Records (or updates) a folder.
    pub fn save_sync_folder(&self, folder_id: &str, path: &str, mode: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO sync_folders (folder_id, path, mode, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(folder_id) DO UPDATE SET path = ?2, mode = ?3, updated_at = ?4",
            params![folder_id, path, mode, now()],
        )?;
        Ok(())
    }

    /// Every folder, with its record count.
    pub fn sync_folders(&self) -> anyhow::Result<Vec<SyncFolder>> {
        let mut q = self.conn.prepare(
            "SELECT f.folder_id, f.path, f.mode,
                    (SELECT COUNT(*) FROM sync_files s WHERE s.folder_id = f.folder_id),
                    (SELECT COUNT(*) FROM sync_files s WHERE s.folder_id = f.folder_id
                        AND s.path LIKE '%.sync-conflict-%')
             FROM sync_folders f ORDER BY f.path",
        )?;
        let mut rows: Vec<SyncFolder> = q
            .query_map([], |r| {
                Ok(SyncFolder {
                    folder_id: r.get(0)?,
                    path: r.get(1)?,
                    mode: r.get(2)?,
                    files: r.get::<_, i64>(3)? as u64,
                    conflicts: r.get::<_, i64>(4)? as u64,
                    peers: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        for f in &mut rows {
            f.peers = self.sync_peers(&f.folder_id)?;
        }
        Ok(rows)
    }

    /// The stored records of a folder's index, as encoded bytes.
    pub fn sync_records(&self, folder_id: &str) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut q = self
            .conn
            .prepare("SELECT record FROM sync_files WHERE folder_id = ?1 ORDER BY path")?;
        let rows = q
            .query_map([folder_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Stores records (path, encoded record) in one transaction, so a batch
    /// from a scan costs one commit, not one per file.
    pub fn save_sync_records(
        &self,
        folder_id: &str,
        records: &[(String, Vec<u8>)],
    ) -> anyhow::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut q = tx.prepare(
                "INSERT INTO sync_files (folder_id, path, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT(folder_id, path) DO UPDATE SET record = ?3",
            )?;
            for (path, record) in records {
                q.execute(params![folder_id, path, record])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Peers found for a folder, newest first.
    pub fn sync_peers(&self, folder_id: &str) -> anyhow::Result<Vec<String>> {
        let mut q = self.conn.prepare(
            "SELECT addr FROM sync_peers WHERE folder_id = ?1 ORDER BY seen_at DESC LIMIT 64",
        )?;
        let rows = q
            .query_map([folder_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Remembers a peer's listening address for the next start.
    pub fn save_sync_peer(&self, folder_id: &str, addr: &str, device: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO sync_peers (folder_id, addr, device, seen_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(folder_id, addr) DO UPDATE SET device = ?3, seen_at = ?4",
            params![folder_id, addr, device, now()],
        )?;
        Ok(())
    }

    /// Sets one row of the sync table.
    pub fn set_sync_status(
        &self,
        folder_id: &str,
        peer: &str,
        path: &str,
        state: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        let row = (peer.into(), path.into(), state.into(), detail.into());
        self.set_sync_statuses(folder_id, &[row])
    }

    /// Sets rows of the sync table (peer, path, state, detail) in one
    /// transaction.
    pub fn set_sync_statuses(
        &self,
        folder_id: &str,
        rows: &[(String, String, String, String)],
    ) -> anyhow::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut q = tx.prepare(
                "INSERT INTO sync_status (folder_id, peer, path, state, detail, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(folder_id, peer, path) DO UPDATE SET state = ?4, detail = ?5, updated_at = ?6",
            )?;
            let t = now();
            for (peer, path, state, detail) in rows {
                q.execute(params![folder_id, peer, path, state, detail, t])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The sync table of every folder, newest first (at most `limit` rows
    /// per folder).
    pub fn sync_status(&self, limit: usize) -> anyhow::Result<Vec<SyncRow>> {
        let mut q = self.conn.prepare(
            "SELECT folder_id, peer, path, state, detail, updated_at FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY folder_id ORDER BY updated_at DESC, path)
                    AS n FROM sync_status)
             WHERE n <= ?1 ORDER BY folder_id, updated_at DESC, path",
        )?;
        let rows = q
            .query_map([limit as i64], |r| {
                Ok(SyncRow {
                    folder_id: r.get(0)?,
                    peer: r.get(1)?,
                    path: r.get(2)?,
                    state: r.get(3)?,
                    detail: r.get(4)?,
                    updated_at: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("db")).unwrap();
        let a = s.device_id().unwrap();
        assert_eq!(s.device_id().unwrap(), a);
        let again = State::open(&dir.path().join("db")).unwrap();
        assert_eq!(again.device_id().unwrap(), a);
    }

    #[test]
    fn folders_records_peers_and_status_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("db")).unwrap();
        s.save_sync_folder("f1", "/srv/a", "send-receive").unwrap();
        s.save_sync_records(
            "f1",
            &[("a".into(), b"ra".to_vec()), ("b".into(), b"rb".to_vec())],
        )
        .unwrap();
        s.save_sync_records("f1", &[("a".into(), b"ra2".to_vec())])
            .unwrap();
        assert_eq!(
            s.sync_records("f1").unwrap(),
            vec![b"ra2".to_vec(), b"rb".to_vec()]
        );
        let folders = s.sync_folders().unwrap();
        assert_eq!(folders.len(), 1);
        assert_eq!((folders[0].files, folders[0].conflicts), (2, 0));
        s.save_sync_peer("f1", "10.0.0.1:42070", "ABCDEFG").unwrap();
        assert_eq!(
            s.sync_peers("f1").unwrap(),
            vec!["10.0.0.1:42070".to_string()]
        );
        s.set_sync_status("f1", "ABCDEFG", "a", "syncing", "")
            .unwrap();
        s.set_sync_status("f1", "ABCDEFG", "a", "done", "").unwrap();
        let rows = s.sync_status(10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, "done");
    }
}
