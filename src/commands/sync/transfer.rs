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
    /// The peers asked to seed it.
    pub(super) holders: Vec<SocketAddr>,
    pub(super) started: Instant,
    /// The holders were dialled because none had connected.
    pub(super) nudged: bool,
}

/// A fetch waits this long for the holders (asked with `want`) to connect
/// before it dials them itself.
pub(super) const NUDGE_AFTER: Duration = Duration::from_secs(1);

/// A pack we seed for peers that asked for it.
pub(super) struct Seed {
    pub(super) torrent: InfoHash,
    /// A fetched pack seeds from its files in tmp/, removed with it.
    pub(super) tmp: Option<PathBuf>,
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

impl Run {
    /// Seeds a pack for a peer that asked, if we hold all of it.
    pub(super) async fn seed(&mut self, ids: &[[u8; 20]], peer: SocketAddr) {
        let mut contents = Vec::with_capacity(ids.len());
        let mut files = Vec::with_capacity(ids.len());
        let local = self.folder.local_by_content();
        for id in ids {
            let Some(r) = local
                .get(id)
                .into_iter()
                .flatten()
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
                        tmp: None,
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
            self.drop_seed(c).await;
        }
    }

    /// Stops seeding a pack, and removes its files from tmp/ if they were
    /// fetched there.
    pub(super) async fn drop_seed(&mut self, pack_id: [u8; 20]) {
        if let Some(s) = self.seeds.remove(&pack_id) {
            self.drop_torrent(s.torrent).await;
            if let Some(dir) = s.tmp {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Dials the holders of fetches that no peer has joined in
    /// [`NUDGE_AFTER`] (a `want` lost with a connection, say) and asks
    /// them again.
    pub(super) async fn nudge_fetches(&mut self) {
        let mut due = Vec::new();
        for f in self.fetches.values_mut() {
            if f.nudged || f.started.elapsed() < NUDGE_AFTER {
                continue;
            }
            if self.session.stats(f.torrent).is_some_and(|s| s.peers == 0) {
                f.nudged = true;
                due.push((f.torrent, f.holders.clone(), f.pack.ids()));
            }
        }
        for (torrent, holders, ids) in due {
            let _ = self.session.add_peers(torrent, holders.clone()).await;
            for h in holders {
                let conn = self
                    .conns
                    .iter()
                    .find(|(_, d)| self.folder.peers().get(d).is_some_and(|p| p.addr == h))
                    .map(|(a, _)| *a);
                if let Some(conn) = conn {
                    self.send(
                        conn,
                        &Message::Want {
                            packs: vec![ids.clone()],
                        },
                    )
                    .await;
                }
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
        let free = p2pfile_engine::storage::free_space(&self.fs.tmp_dir()).unwrap_or(u64::MAX);
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
        // Lookups by content id, made once: a folder of thousands of files
        // otherwise compares every record with every content.
        let in_flight: HashMap<[u8; 20], [u8; 20]> = self
            .fetches
            .iter()
            .flat_map(|(pack_id, f)| f.pack.contents().iter().map(move |c| (c.id(), *pack_id)))
            .collect();
        let mut fresh = Vec::new();
        for r in records {
            match in_flight
                .get(&r.content.id())
                .and_then(|p| self.fetches.get_mut(p))
            {
                Some(f) => f.records.push(r),
                None => fresh.push(r),
            }
        }
        let by_content = self.folder.holders_by_content();
        let holders = |pack: &Pack| -> Vec<SocketAddr> {
            let mut common: Option<Vec<SocketAddr>> = None;
            for c in pack.contents() {
                let has = by_content.get(&c.id()).cloned().unwrap_or_default();
                common = Some(match common {
                    None => has,
                    Some(h) => h.into_iter().filter(|a| has.contains(a)).collect(),
                });
            }
            common.unwrap_or_default()
        };
        let mut wants: HashMap<SocketAddr, Vec<Vec<[u8; 20]>>> = HashMap::new();
        let mut starts = Vec::new();
        for pack in pack::group(&fresh) {
            let packs = if holders(&pack).is_empty() && pack.contents().len() > 1 {
                pack.contents()
                    .iter()
                    .map(|c| Pack::new([c.clone()]))
                    .collect()
            } else {
                vec![pack]
            };
            for pack in packs {
                let holders = holders(&pack);
                let ids: HashSet<[u8; 20]> = pack.ids().into_iter().collect();
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
                    wants.entry(*h).or_default().push(pack.ids());
                }
                starts.push((pack, waiting, holders));
            }
        }
        for (pack, waiting, holders) in starts {
            // Fetched before and still seeded from tmp/ (the same bytes
            // wanted again at once): start over with a fresh torrent.
            if self.seeds.contains_key(&pack.id()) {
                self.drop_seed(pack.id()).await;
            }
            self.start_pack(pack, waiting, holders);
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
            // The holders dial us once our `want` reached them and they
            // seed the pack: dialling them first would meet a swarm they do
            // not have yet, and the failed attempt would hold the next one
            // back for seconds (lab: a 10 MiB file in 2.6 s instead of ~1).
            peers: Vec::new(),
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
                        holders,
                        started: Instant::now(),
                        nudged: false,
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
            for (i, record) in waiting.into_iter().enumerate() {
                // The first path links to the fetched file, which keeps
                // seeding; more paths with the same bytes get copies (a
                // link would tie their later edits together).
                let source = if i == 0 {
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
                let expected = match self.vacate(&record.path).await {
                    Ok(e) => e,
                    Err(e) => {
                        if i > 0 {
                            let _ = std::fs::remove_file(&source);
                        }
                        self.rescan = true;
                        tracing::debug!("cannot move a conflict loser aside: {e}");
                        continue;
                    }
                };
                let now = SystemTime::now();
                let committed = if i == 0 {
                    self.fs
                        .commit_link(&source, &record, expected.as_ref(), now)
                } else {
                    self.fs
                        .commit_file(&source, &record, expected.as_ref(), now)
                };
                match committed {
                    Ok(()) => {
                        self.count_file(&record, expected.is_some());
                        if let Some(r) = self.applied(record) {
                            announce.push(r);
                        }
                    }
                    Err(ApplyError::Changed(p)) => {
                        // Edited meanwhile: scan it and merge again.
                        tracing::debug!("{} changed while its new version arrived", p.display());
                        if i > 0 {
                            let _ = std::fs::remove_file(&source);
                        }
                        self.rescan = true;
                    }
                    Err(e) => {
                        if i > 0 {
                            let _ = std::fs::remove_file(&source);
                        }
                        self.failed(&record.path, &format!("{:#}", anyhow!(e)));
                    }
                }
            }
        }
        // Peers fetching the same pack trade with us until it goes idle;
        // then the seed and its files in tmp/ go.
        self.torrents.insert(torrent, (pack_id, true));
        self.seeds.insert(
            pack_id,
            Seed {
                torrent,
                since: Instant::now(),
                last_active: Instant::now(),
                tmp: Some(dir),
            },
        );
        self.flush();
        tracing::debug!(pack = %hex(&pack_id), "pack committed");
        self.announce(announce).await;
        self.replan = true;
        Ok(())
    }
}
