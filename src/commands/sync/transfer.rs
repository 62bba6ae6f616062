//! Packs on the wire: fetching what the plan needs (with piece hints from
//! local files), seeding what peers ask for, and committing what arrived.

use super::*;

/// A seed nobody downloads from for this long is dropped.
pub(super) const SEED_IDLE: Duration = Duration::from_secs(30);

/// A pack being fetched, and the paths waiting for its contents.
pub(super) struct Fetch {
    pub(super) torrent: InfoHash,
    pub(super) pack: Pack,
    pub(super) records: Vec<FileRecord>,
}

/// A pack we seed for peers that asked for it.
pub(super) struct Seed {
    pub(super) torrent: InfoHash,
    pub(super) since: Instant,
    pub(super) last_active: Instant,
}

/// Options of a pack's swarm: keyed, no metadata exchange, no DHT (peers
/// come from the folder's indexes).
pub(super) fn keyed(swarm: InfoHash) -> TorrentOptions {
    TorrentOptions {
        swarm_hash: Some(swarm),
        metadata: false,
        dht: false,
    }
}

/// Bytes free for an unprivileged writer on the file system of `path`.
pub(super) fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

impl Run {
    /// Seeds a pack for a peer that asked, if we hold all of it.
    pub(super) async fn seed(&mut self, ids: &[[u8; 20]], peer: SocketAddr) {
        let mut contents = Vec::with_capacity(ids.len());
        let mut files = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(r) = self
                .folder
                .local_with_content(id)
                .into_iter()
                .find(|r| self.fs.matches(&r.path, Some(r)))
            else {
                return tracing::debug!(%peer, "asked for a pack we do not hold whole");
            };
            contents.push(r.content.clone());
            files.push(self.fs.path(&r.path));
        }
        let pack = Pack::new(contents);
        if pack.ids() != ids {
            return tracing::debug!(%peer, "asked for a pack that is not in pack order");
        }
        let pack_id = pack.id();
        if let Some(s) = self.seeds.get(&pack_id) {
            let _ = self.session.add_peers(s.torrent, vec![peer]).await;
            return;
        }
        if let Some(f) = self.fetches.get(&pack_id) {
            // Fetching it ourselves: share the pieces we have.
            let _ = self.session.add_peers(f.torrent, vec![peer]).await;
            return;
        }
        let Ok(info) = pack.info() else {
            return;
        };
        let info = Arc::new(info);
        let swarm = InfoHash(self.folder.key().swarm_hash(info.info_hash().0));
        let added = self.session.add_torrent(AddTorrent {
            source: Source::Info(info),
            target: Target::SeedFiles { files },
            peers: vec![peer],
            options: keyed(swarm),
        });
        match added {
            Ok(id) => {
                self.torrents.insert(id, (pack_id, true));
                self.seeds.insert(
                    pack_id,
                    Seed {
                        torrent: id,
                        since: Instant::now(),
                        last_active: Instant::now(),
                    },
                );
            }
            Err(e) => tracing::debug!("cannot seed a pack: {e}"),
        }
    }

    pub(super) async fn expire_seeds(&mut self) {
        let mut idle = Vec::new();
        for (c, s) in self.seeds.iter_mut() {
            let busy = self
                .session
                .stats(s.torrent)
                .is_some_and(|st| st.leechers > 0 || st.incomplete_peers > 0);
            if busy {
                s.last_active = Instant::now();
            } else if s.since.elapsed() >= SEED_IDLE && s.last_active.elapsed() >= SEED_IDLE {
                idle.push(*c);
            }
        }
        for c in idle {
            if let Some(s) = self.seeds.remove(&c) {
                self.drop_torrent(s.torrent).await;
            }
        }
    }

    /// Removes a content torrent, counting its bytes (read after it
    /// stopped: stopping publishes the final counters).
    pub(super) async fn drop_torrent(&mut self, id: InfoHash) {
        let stats = self.session.watch_stats(id);
        self.torrents.remove(&id);
        let _ = self.session.remove(id).await;
        if let Some(s) = stats {
            let s = s.borrow();
            self.summary.bytes_in += s.downloaded;
            self.summary.bytes_out += s.uploaded;
        }
    }

    /// Refuses to start fetching what does not fit on the disk, so a full
    /// disk stops sync before anything changes.
    pub(super) fn check_space(&self, actions: &[Action]) -> Result<(), Failure> {
        let mut need: u64 = 0;
        let mut seen = HashSet::new();
        for a in actions {
            if let Action::Fetch(r) = a
                && seen.insert(r.content.id())
            {
                need += r.size();
            }
        }
        if need == 0 {
            return Ok(());
        }
        let free = free_space(&self.fs.tmp_dir()).unwrap_or(u64::MAX);
        if need > free {
            let msg = format!(
                "not enough space in {}: {:.1} MiB to fetch, {:.1} MiB free; nothing was changed",
                self.fs.root().display(),
                need as f64 / 1048576.0,
                free as f64 / 1048576.0
            );
            self.out
                .event("error", json!({"message": msg, "kind": "no-space"}));
            return Err(Failure::new(Code::Runtime, anyhow!(msg))
                .hint("free disk space, then run sync again"));
        }
        Ok(())
    }

    /// Starts fetching: records whose content is already on its way wait
    /// for it; the rest are cut into packs, each fetched from the peers
    /// that hold all of it (a pack no single peer holds is split into one
    /// pack per content), and those peers are asked to seed it.
    pub(super) async fn start_fetches(&mut self, records: Vec<FileRecord>) {
        let mut fresh = Vec::new();
        for r in records {
            let id = r.content.id();
            match self
                .fetches
                .values_mut()
                .find(|f| f.pack.contents().iter().any(|c| c.id() == id))
            {
                Some(f) => f.records.push(r),
                None => fresh.push(r),
            }
        }
        let mut wants: HashMap<SocketAddr, Vec<Vec<[u8; 20]>>> = HashMap::new();
        for pack in pack::group(&fresh) {
            let packs = if self.holders(&pack).is_empty() && pack.contents().len() > 1 {
                pack.contents()
                    .iter()
                    .map(|c| Pack::new([c.clone()]))
                    .collect()
            } else {
                vec![pack]
            };
            for pack in packs {
                let holders = self.holders(&pack);
                let ids = pack.ids();
                let waiting: Vec<FileRecord> = fresh
                    .iter()
                    .filter(|r| ids.contains(&r.content.id()))
                    .cloned()
                    .collect();
                if holders.is_empty() {
                    for r in &waiting {
                        tracing::debug!(path = %r.path, "no connected peer holds it yet");
                    }
                    continue;
                }
                for h in &holders {
                    wants.entry(*h).or_default().push(ids.clone());
                }
                self.start_pack(pack, waiting, holders);
            }
        }
        for (addr, packs) in wants {
            let conn = self
                .conns
                .iter()
                .find(|(_, d)| self.folder.peers().get(d).is_some_and(|p| p.addr == addr))
                .map(|(a, _)| *a);
            if let Some(conn) = conn {
                self.send(conn, &Message::Want { packs }).await;
            }
        }
    }

    /// Peers that hold every content of a pack.
    pub(super) fn holders(&self, pack: &Pack) -> Vec<SocketAddr> {
        let mut holders: Option<Vec<SocketAddr>> = None;
        for c in pack.contents() {
            let has = self.folder.holders(&c.id());
            holders = Some(match holders {
                None => has,
                Some(h) => h.into_iter().filter(|a| has.contains(a)).collect(),
            });
        }
        holders.unwrap_or_default()
    }

    /// Joins a pack's keyed swarm to fetch it into the tmp dir.
    pub(super) fn start_pack(
        &mut self,
        pack: Pack,
        records: Vec<FileRecord>,
        holders: Vec<SocketAddr>,
    ) {
        for r in &records {
            self.status(r, "syncing", "");
        }
        let info = match pack.info() {
            Ok(i) => Arc::new(i),
            Err(e) => {
                for r in &records {
                    self.failed(&r.path, &format!("bug: its pack cannot be built: {e}"));
                }
                return;
            }
        };
        let swarm = InfoHash(self.folder.key().swarm_hash(info.info_hash().0));
        let hints = self.hints(&pack);
        tracing::debug!(
            pack = %hex(&pack.id()),
            files = pack.contents().len(),
            hints = hints.len(),
            holders = holders.len(),
            "fetching a pack"
        );
        let added = self.session.add_torrent(AddTorrent {
            source: Source::Info(info),
            target: Target::Download {
                dir: self.fs.tmp_dir(),
                hints,
            },
            peers: holders,
            options: keyed(swarm),
        });
        match added {
            Ok(id) => {
                let pack_id = pack.id();
                self.torrents.insert(id, (pack_id, false));
                self.fetches.insert(
                    pack_id,
                    Fetch {
                        torrent: id,
                        pack,
                        records,
                    },
                );
            }
            Err(e) => {
                for r in &records {
                    self.failed(&r.path, &e.to_string());
                }
            }
        }
    }

    /// Where this machine may already hold pieces of a pack: any local
    /// file with the same piece length and a piece of the same hash (an
    /// older version, a copy, a file it was appended to).
    pub(super) fn hints(&self, pack: &Pack) -> Vec<PieceSource> {
        let mut wanted: HashMap<[u8; 20], Vec<u32>> = HashMap::new();
        for (c, first) in pack.contents().iter().zip(pack.first_pieces()) {
            for (i, h) in c.pieces.iter().enumerate() {
                wanted.entry(*h).or_default().push(first + i as u32);
            }
        }
        let piece_length = pack.contents().first().map(|c| c.piece_length);
        let mut hints = Vec::new();
        for r in self.folder.local().iter() {
            if r.deleted || r.kind != Kind::File || Some(r.content.piece_length) != piece_length {
                continue;
            }
            for (i, h) in r.content.pieces.iter().enumerate() {
                if let Some(pieces) = wanted.get(h) {
                    for &piece in pieces {
                        hints.push(PieceSource {
                            piece,
                            path: self.fs.path(&r.path),
                            offset: i as u64 * u64::from(r.content.piece_length),
                        });
                    }
                }
            }
        }
        hints
    }

    /// A pack arrived: put each content at every path waiting for it.
    pub(super) async fn fetched(
        &mut self,
        torrent: InfoHash,
        pack_id: [u8; 20],
    ) -> Result<(), Failure> {
        let Some(fetch) = self.fetches.remove(&pack_id) else {
            return Ok(());
        };
        tracing::debug!(pack = %hex(&pack_id), "pack complete");
        // The engine lets go of the files before they move.
        self.drop_torrent(torrent).await;
        let dir = self.fs.tmp_dir().join(hex(&pack_id));
        let mut announce = Vec::new();
        let mut records = fetch.records;
        records.retain(|r| self.folder.still_wanted(r));
        for content in fetch.pack.contents() {
            let id = content.id();
            let file = dir.join(hex(&id));
            let waiting: Vec<FileRecord> = records
                .iter()
                .filter(|r| r.content.id() == id)
                .cloned()
                .collect();
            let n = waiting.len();
            for (i, record) in waiting.into_iter().enumerate() {
                let source = if i + 1 == n {
                    file.clone()
                } else {
                    match self.fs.copy_to_tmp(&file, &format!("{}-{i}", hex(&id))) {
                        Ok(p) => p,
                        Err(e) => {
                            self.failed(&record.path, &e.to_string());
                            continue;
                        }
                    }
                };
                let expected = self
                    .folder
                    .local()
                    .get(&record.path)
                    .filter(|r| !r.deleted)
                    .cloned();
                match self
                    .fs
                    .commit_file(&source, &record, expected.as_ref(), SystemTime::now())
                {
                    Ok(()) => {
                        self.count_file(&record, expected.is_some());
                        if let Some(r) = self.applied(record) {
                            announce.push(r);
                        }
                    }
                    Err(ApplyError::Changed(p)) => {
                        // Edited meanwhile: scan it and merge again.
                        tracing::debug!("{} changed while its new version arrived", p.display());
                        let _ = std::fs::remove_file(&source);
                        self.rescan = true;
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&source);
                        self.failed(&record.path, &format!("{:#}", anyhow!(e)));
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        self.flush();
        tracing::debug!(pack = %hex(&pack_id), "pack committed");
        self.announce(announce).await;
        self.replan = true;
        Ok(())
    }
}
