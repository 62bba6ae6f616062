//! The SQLite state: what restarts and `status` need. One database file
//! (`./.p2pfile.db` unless `--state` says otherwise) shared by every p2pfile
//! process started in that directory.
//!
//! Several processes write to it at once (two `serve`, a `download`), so it
//! runs in WAL mode with a long busy timeout, and every write is one short
//! transaction. The schema is versioned through `PRAGMA user_version`;
//! [`MIGRATIONS`] brings any older database up to date.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod sync;

pub use sync::{SyncFolder, SyncRow};

use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, params};

/// Schema steps; entry `i` takes `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: served torrents and downloads.
    "CREATE TABLE served (
        path TEXT PRIMARY KEY,
        info_hash TEXT NOT NULL,
        name TEXT NOT NULL,
        piece_length INTEGER NOT NULL,
        port INTEGER NOT NULL,
        info BLOB NOT NULL,
        files TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE downloads (
        info_hash TEXT NOT NULL,
        dir TEXT NOT NULL,
        state TEXT NOT NULL,
        total INTEGER NOT NULL,
        have INTEGER NOT NULL,
        uploaded INTEGER NOT NULL,
        downloaded INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (info_hash, dir)
    );",
    // 2: cumulative upload for seeds, names and seeding time for
    // downloads, and DHT nodes to bootstrap from next time.
    "ALTER TABLE served ADD COLUMN ip TEXT NOT NULL DEFAULT '';
    ALTER TABLE served ADD COLUMN uploaded INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE downloads ADD COLUMN name TEXT NOT NULL DEFAULT '';
    ALTER TABLE downloads ADD COLUMN seeding_secs REAL NOT NULL DEFAULT 0;
    CREATE TABLE dht_nodes (
        addr TEXT PRIMARY KEY,
        seen_at INTEGER NOT NULL
    );",
    // 3: sync folders (see `sync.rs`).
    "CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE sync_folders (
        folder_id TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        mode TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE sync_files (
        folder_id TEXT NOT NULL,
        path TEXT NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (folder_id, path)
    );
    CREATE TABLE sync_peers (
        folder_id TEXT NOT NULL,
        addr TEXT NOT NULL,
        device TEXT NOT NULL,
        seen_at INTEGER NOT NULL,
        PRIMARY KEY (folder_id, addr)
    );
    CREATE TABLE sync_status (
        folder_id TEXT NOT NULL,
        peer TEXT NOT NULL,
        path TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (folder_id, peer, path)
    );",
    // 4: a download keeps its info dictionary and the signature of its
    // completed files (an unchanged rerun needs no network), and why it
    // failed.
    "ALTER TABLE downloads ADD COLUMN info BLOB;
    ALTER TABLE downloads ADD COLUMN files TEXT NOT NULL DEFAULT '';
    ALTER TABLE downloads ADD COLUMN reason TEXT NOT NULL DEFAULT '';",
];

/// A served path as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    pub path: String,
    pub info_hash: String,
    pub name: String,
    pub piece_length: u32,
    pub ip: String,
    pub port: u16,
    /// The raw info dictionary, so an unchanged path needs no hashing.
    pub info: Vec<u8>,
    /// Files, sizes and mtimes when it was hashed (see `file_signature`).
    pub files: String,
    /// Bytes uploaded over every run.
    pub uploaded: u64,
}

/// A download as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Download {
    pub info_hash: String,
    pub dir: String,
    pub name: String,
    /// `downloading`, `complete`, `seeding`, `stopped` or `failed`.
    pub state: String,
    pub total: u64,
    pub have: u64,
    /// Over every run.
    pub uploaded: u64,
    pub downloaded: u64,
    pub seeding_secs: f64,
    /// Why it failed (state `failed`) or stopped; empty otherwise.
    pub reason: String,
}

impl Download {
    /// A download with no counters yet.
    pub fn new(info_hash: &str, dir: &str, name: &str, state: &str) -> Self {
        Self {
            info_hash: info_hash.into(),
            dir: dir.into(),
            name: name.into(),
            state: state.into(),
            total: 0,
            have: 0,
            uploaded: 0,
            downloaded: 0,
            seeding_secs: 0.0,
            reason: String::new(),
        }
    }
}

/// An open state database.
pub struct State {
    conn: Connection,
    path: PathBuf,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl State {
    /// Opens (creating or upgrading) the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open state database {}", path.display()))?;
        let cannot_open = || format!("cannot open state database {}", path.display());
        conn.busy_timeout(Duration::from_secs(30))
            .with_context(cannot_open)?;
        // WAL lets readers and one writer work at once across processes.
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .with_context(cannot_open)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL")
            .with_context(cannot_open)?;
        let mut state = State {
            conn,
            path: path.to_path_buf(),
        };
        state
            .migrate()
            .with_context(|| format!("cannot upgrade state database {}", path.display()))?;
        Ok(state)
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let version = version as usize;
        if version > MIGRATIONS.len() {
            bail!(
                "it has schema version {version}, newer than this p2pfile knows ({}); use a newer p2pfile or another --state",
                MIGRATIONS.len()
            );
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The record of a served path.
    pub fn served(&self, path: &str) -> anyhow::Result<Option<Served>> {
        Ok(self
            .conn
            .query_row(
                "SELECT path, info_hash, name, piece_length, ip, port, info, files, uploaded
                 FROM served WHERE path = ?1",
                [path],
                served_row,
            )
            .optional()?)
    }

    pub fn save_served(&self, s: &Served) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO served (path, info_hash, name, piece_length, ip, port, info, files, uploaded, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(path) DO UPDATE SET info_hash = ?2, name = ?3, piece_length = ?4,
                ip = ?5, port = ?6, info = ?7, files = ?8, uploaded = ?9, updated_at = ?10",
            params![
                s.path,
                s.info_hash,
                s.name,
                s.piece_length,
                s.ip,
                s.port,
                s.info,
                s.files,
                s.uploaded as i64,
                now()
            ],
        )?;
        Ok(())
    }

    pub fn set_served_uploaded(&self, path: &str, uploaded: u64) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE served SET uploaded = ?2, updated_at = ?3 WHERE path = ?1",
            params![path, uploaded as i64, now()],
        )?;
        Ok(())
    }

    pub fn download(&self, info_hash: &str, dir: &str) -> anyhow::Result<Option<Download>> {
        Ok(self
            .conn
            .query_row(
                "SELECT info_hash, dir, name, state, total, have, uploaded, downloaded, seeding_secs, reason
                 FROM downloads WHERE info_hash = ?1 AND dir = ?2",
                [info_hash, dir],
                download_row,
            )
            .optional()?)
    }

    pub fn save_download(&self, d: &Download) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO downloads (info_hash, dir, name, state, total, have, uploaded, downloaded, seeding_secs, updated_at, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(info_hash, dir) DO UPDATE SET name = ?3, state = ?4, total = ?5, have = ?6,
                uploaded = ?7, downloaded = ?8, seeding_secs = ?9, updated_at = ?10, reason = ?11",
            params![
                d.info_hash,
                d.dir,
                d.name,
                d.state,
                d.total as i64,
                d.have as i64,
                d.uploaded as i64,
                d.downloaded as i64,
                d.seeding_secs,
                now(),
                d.reason
            ],
        )?;
        Ok(())
    }

    /// Keeps the info dictionary of a download and the signature of its
    /// files as completed (see `commands::file_signature`); an empty
    /// `files` says the content on disk is not known to be complete.
    pub fn set_download_content(
        &self,
        info_hash: &str,
        dir: &str,
        info: &[u8],
        files: &str,
    ) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE downloads SET info = ?3, files = ?4 WHERE info_hash = ?1 AND dir = ?2",
            params![info_hash, dir, info, files],
        )?;
        Ok(())
    }

    /// The signature of a download's files as last completed (empty when
    /// unknown).
    pub fn download_files(&self, info_hash: &str, dir: &str) -> anyhow::Result<String> {
        Ok(self
            .conn
            .query_row(
                "SELECT files FROM downloads WHERE info_hash = ?1 AND dir = ?2",
                [info_hash, dir],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default())
    }

    /// The info dictionary of `info_hash` as any download or served path
    /// of this database recorded it: a magnet seen once needs no peer to
    /// know its files again.
    pub fn known_info(&self, info_hash: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT info FROM downloads WHERE info_hash = ?1 AND info IS NOT NULL
                 UNION ALL SELECT info FROM served WHERE info_hash = ?1
                 LIMIT 1",
                [info_hash],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every served path and download, for `status`.
    pub fn all(&self) -> anyhow::Result<(Vec<Served>, Vec<Download>)> {
        let mut q = self.conn.prepare(
            "SELECT path, info_hash, name, piece_length, ip, port, info, files, uploaded
             FROM served ORDER BY path",
        )?;
        let served = q.query_map([], served_row)?.collect::<Result<_, _>>()?;
        let mut q = self.conn.prepare(
            "SELECT info_hash, dir, name, state, total, have, uploaded, downloaded, seeding_secs, reason
             FROM downloads ORDER BY dir, name",
        )?;
        let downloads = q.query_map([], download_row)?.collect::<Result<_, _>>()?;
        Ok((served, downloads))
    }

    /// DHT nodes saved by earlier runs, newest first.
    pub fn dht_nodes(&self) -> anyhow::Result<Vec<String>> {
        let mut q = self
            .conn
            .prepare("SELECT addr FROM dht_nodes ORDER BY seen_at DESC LIMIT 32")?;
        let nodes = q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(nodes)
    }

    /// Forgets DHT nodes that no longer answer.
    pub fn forget_dht_nodes(&self, nodes: &[String]) -> anyhow::Result<()> {
        for n in nodes {
            self.conn
                .execute("DELETE FROM dht_nodes WHERE addr = ?1", params![n])?;
        }
        Ok(())
    }

    pub fn save_dht_nodes(&self, nodes: &[String]) -> anyhow::Result<()> {
        let t = now();
        for n in nodes {
            self.conn.execute(
                "INSERT INTO dht_nodes (addr, seen_at) VALUES (?1, ?2)
                 ON CONFLICT(addr) DO UPDATE SET seen_at = ?2",
                params![n, t],
            )?;
        }
        Ok(())
    }
}

fn served_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Served> {
    Ok(Served {
        path: r.get(0)?,
        info_hash: r.get(1)?,
        name: r.get(2)?,
        piece_length: r.get(3)?,
        ip: r.get(4)?,
        port: r.get(5)?,
        info: r.get(6)?,
        files: r.get(7)?,
        uploaded: r.get::<_, i64>(8)? as u64,
    })
}

fn download_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Download> {
    Ok(Download {
        info_hash: r.get(0)?,
        dir: r.get(1)?,
        name: r.get(2)?,
        state: r.get(3)?,
        total: r.get::<_, i64>(4)? as u64,
        have: r.get::<_, i64>(5)? as u64,
        uploaded: r.get::<_, i64>(6)? as u64,
        downloaded: r.get::<_, i64>(7)? as u64,
        seeding_secs: r.get(8)?,
        reason: r.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_version_1_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO downloads VALUES ('ab', '/d', 'complete', 10, 10, 3, 10, 0)",
                [],
            )
            .unwrap();
        }
        let s = State::open(&path).unwrap();
        let d = s.download("ab", "/d").unwrap().unwrap();
        assert_eq!(
            (d.state.as_str(), d.uploaded, d.name.as_str()),
            ("complete", 3, "")
        );
        s.save_dht_nodes(&["127.0.0.1:1".into(), "127.0.0.1:2".into()])
            .unwrap();
        s.forget_dht_nodes(&["127.0.0.1:2".into()]).unwrap();
        assert_eq!(s.dht_nodes().unwrap(), vec!["127.0.0.1:1".to_string()]);
        let v: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = State::open(&path).err().unwrap();
        assert!(format!("{err:#}").contains("newer than this p2pfile"));
    }

    #[test]
    fn served_and_download_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("s.db")).unwrap();
        let served = Served {
            path: "/x".into(),
            info_hash: "ab".into(),
            name: "x".into(),
            piece_length: 16384,
            ip: "127.0.0.1".into(),
            port: 42070,
            info: vec![1, 2],
            files: "[]".into(),
            uploaded: 5,
        };
        s.save_served(&served).unwrap();
        s.set_served_uploaded("/x", 9).unwrap();
        assert_eq!(s.served("/x").unwrap().unwrap().uploaded, 9);
        let d = Download {
            info_hash: "ab".into(),
            dir: "/d".into(),
            name: "x".into(),
            state: "downloading".into(),
            total: 10,
            have: 4,
            uploaded: 0,
            downloaded: 4,
            seeding_secs: 0.0,
            reason: String::new(),
        };
        s.save_download(&d).unwrap();
        assert_eq!(s.download("ab", "/d").unwrap().unwrap(), d);
        // Served content counts until a download recorded its own.
        assert_eq!(s.known_info("ab").unwrap(), Some(vec![1, 2]));
        assert_eq!(s.known_info("cd").unwrap(), None);
        s.set_download_content("ab", "/d", b"d4:infoe", "sig")
            .unwrap();
        assert_eq!(s.download_files("ab", "/d").unwrap(), "sig");
        assert_eq!(s.known_info("ab").unwrap(), Some(b"d4:infoe".to_vec()));
        let failed = Download {
            state: "failed".into(),
            reason: "no progress".into(),
            ..d
        };
        s.save_download(&failed).unwrap();
        assert_eq!(s.download("ab", "/d").unwrap().unwrap(), failed);
        assert_eq!(s.download_files("ab", "/d").unwrap(), "sig");
        let (a, b) = s.all().unwrap();
        assert_eq!((a.len(), b.len()), (1, 1));
    }
}
