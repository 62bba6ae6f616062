//! One synced folder as a model: our index, what each peer announced, the
//! plan that brings the disk up to the peers, and whether everyone is in
//! step. No sockets, no disk writes and no database: `commands/sync.rs`
//! carries the plan out (through [`super::apply`] and the engine) and
//! reports back with [`Folder::applied`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::index::{FileRecord, Index, Kind, RelPath};
use super::key::FolderKey;
use super::plan::{Plan, plan};
use super::scan::IGNORE_FILE;
use super::version::DeviceId;

/// Which way changes flow for this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Both ways (a read-write key).
    SendReceive,
    /// Announce local changes, never apply a peer's.
    SendOnly,
    /// Apply a peer's changes, never announce local ones (a read-only key
    /// always works this way).
    ReceiveOnly,
}

impl Mode {
    /// The name `status` shows.
    pub fn name(self, can_write: bool) -> &'static str {
        match (self, can_write) {
            (Mode::ReceiveOnly, false) => "read-only",
            (Mode::ReceiveOnly, true) => "receive-only",
            (Mode::SendOnly, _) => "send-only",
            (Mode::SendReceive, _) => "send-receive",
        }
    }
}

/// A peer that proved the key, and what it announced.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Where its engine listens.
    pub addr: SocketAddr,
    /// It holds the read-write key.
    pub can_write: bool,
    /// Its announced index (signed records only).
    pub index: Index,
    /// Its whole index has arrived.
    pub complete: bool,
}

/// The folder model.
pub struct Folder {
    key: FolderKey,
    device: DeviceId,
    mode: Mode,
    local: Index,
    peers: BTreeMap<DeviceId, Peer>,
    ignores: Ignores,
}

impl Folder {
    /// A folder with the index stored from earlier runs (already merged
    /// with a fresh scan by the caller).
    pub fn new(key: FolderKey, device: DeviceId, mode: Mode, local: Index, root: &Path) -> Folder {
        let mode = if key.can_write() {
            mode
        } else {
            Mode::ReceiveOnly
        };
        let ignores = Ignores::load(root, &local);
        Folder {
            key,
            device,
            mode,
            local,
            peers: BTreeMap::new(),
            ignores,
        }
    }

    /// The folder key.
    pub fn key(&self) -> &FolderKey {
        &self.key
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// How changes flow.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Our index.
    pub fn local(&self) -> &Index {
        &self.local
    }

    /// The peers that proved the key.
    pub fn peers(&self) -> &BTreeMap<DeviceId, Peer> {
        &self.peers
    }

    /// Whether this device announces its own changes.
    fn sends(&self) -> bool {
        self.mode != Mode::ReceiveOnly && self.key.can_write()
    }

    /// Records from a local scan: signed when this device sends changes
    /// (the others cannot verify them otherwise), then stored. Returns the
    /// records as stored, to be saved as they are: saving the unsigned
    /// originals would leave a restarted folder with nothing to announce.
    pub fn local_changes(&mut self, records: Vec<FileRecord>, root: &Path) -> Vec<FileRecord> {
        let mut stored = Vec::with_capacity(records.len());
        let mut ignore_changed = false;
        for mut r in records {
            ignore_changed |= r.path.file_name() == IGNORE_FILE;
            if self.sends() {
                r.sign(&self.key);
            }
            stored.push(r.clone());
            self.local.insert(r);
        }
        if ignore_changed {
            self.ignores = Ignores::load(root, &self.local);
        }
        stored
    }

    /// Of records just stored, those to announce: the signed ones, when
    /// this device sends changes.
    pub fn to_announce(&self, stored: &[FileRecord]) -> Vec<FileRecord> {
        if !self.sends() {
            return Vec::new();
        }
        stored
            .iter()
            .filter(|r| r.signature.is_some())
            .cloned()
            .collect()
    }

    /// What we announce: every signed record of our index.
    pub fn announced(&self) -> Vec<FileRecord> {
        self.local
            .iter()
            .filter(|r| r.signature.is_some())
            .cloned()
            .collect()
    }

    /// A peer proved the key.
    pub fn peer_joined(&mut self, device: DeviceId, addr: SocketAddr, can_write: bool) {
        let peer = self.peers.entry(device).or_insert_with(|| Peer {
            addr,
            can_write,
            index: Index::new(),
            complete: false,
        });
        peer.addr = addr;
        peer.can_write = can_write;
        // A reconnecting peer sends its whole index again.
        peer.complete = false;
    }

    /// A peer went away.
    pub fn peer_left(&mut self, device: DeviceId) {
        self.peers.remove(&device);
    }

    /// Records from a peer: each one checked against the key and stored
    /// as what the peer has. Returns how many were refused (unsigned, or
    /// signed by another key, or changed after signing).
    pub fn on_remote(&mut self, from: DeviceId, records: Vec<FileRecord>, complete: bool) -> usize {
        let Some(peer) = self.peers.get_mut(&from) else {
            return records.len();
        };
        let mut refused = 0;
        for r in records {
            if r.verify(&self.key) {
                peer.index.insert(r);
            } else {
                refused += 1;
            }
        }
        peer.complete |= complete;
        refused
    }

    /// The peers' indexes reduced to one record per path (the newest; of
    /// concurrent ones, the one every device ranks first), ignored paths
    /// left out.
    /// Only peers whose whole index arrived count: a plan made from half
    /// an index would cut packs differently from a peer that saw it all.
    pub fn remote(&self) -> Index {
        let mut best: BTreeMap<&RelPath, &FileRecord> = BTreeMap::new();
        for peer in self.peers.values().filter(|p| p.complete) {
            for r in peer.index.iter() {
                match best.get(&r.path) {
                    Some(b) if !newer(r, b) => {}
                    _ => {
                        best.insert(&r.path, r);
                    }
                }
            }
        }
        best.into_values()
            .filter(|r| !self.ignores.is_ignored(&r.path, r.kind == Kind::Dir))
            .cloned()
            .collect()
    }

    /// What to do on disk to take the peers' changes (nothing for a
    /// send-only folder).
    pub fn plan(&self, now_secs: u64) -> Plan {
        if self.mode == Mode::SendOnly {
            return Plan::default();
        }
        plan(&self.local, &self.remote(), self.device, now_secs)
    }

    /// A record the plan made (a merged version, a modification announced
    /// again over a delete, a conflict's winner) carries no signature: sign
    /// it when this device sends; else keep the peer's signed record when
    /// it holds the same thing, so it can still be checked.
    pub fn seal(&self, record: FileRecord) -> FileRecord {
        if record.signature.is_some() {
            return record;
        }
        if self.sends() {
            let mut r = record;
            r.sign(&self.key);
            return r;
        }
        let remote = self.remote();
        match remote.get(&record.path) {
            Some(r) if r.same_content(&record) => r.clone(),
            _ => record,
        }
    }

    /// An action was carried out: `record` is now true on disk. Returns
    /// the record to announce, if we announce it.
    pub fn applied(&mut self, record: FileRecord, root: &Path) -> Option<FileRecord> {
        let is_ignore_file = record.path.file_name() == IGNORE_FILE;
        let announce = record.signature.is_some() && self.mode != Mode::SendOnly;
        self.local.insert(record.clone());
        if is_ignore_file {
            self.ignores = Ignores::load(root, &self.local);
        }
        announce.then_some(record)
    }

    /// Whether an action for `record` is still worth carrying out: our
    /// record has not moved past it meanwhile.
    pub fn still_wanted(&self, record: &FileRecord) -> bool {
        match self.local.get(&record.path) {
            None => true,
            Some(l) => !l.version.dominates(&record.version),
        }
    }

    /// For every live file content the peers hold, the peers holding it.
    pub fn holders_by_content(&self) -> HashMap<[u8; 20], Vec<SocketAddr>> {
        let mut map: HashMap<[u8; 20], Vec<SocketAddr>> = HashMap::new();
        for p in self.peers.values() {
            for r in p
                .index
                .iter()
                .filter(|r| !r.deleted && r.kind == Kind::File)
            {
                let holders = map.entry(r.content.id()).or_default();
                if !holders.contains(&p.addr) {
                    holders.push(p.addr);
                }
            }
        }
        map
    }

    /// Our live files by content id, for seeding or for a copy that moves
    /// no data.
    pub fn local_by_content(&self) -> HashMap<[u8; 20], Vec<&FileRecord>> {
        let mut map: HashMap<[u8; 20], Vec<&FileRecord>> = HashMap::new();
        for r in self
            .local
            .iter()
            .filter(|r| !r.deleted && r.kind == Kind::File)
        {
            map.entry(r.content.id()).or_default().push(r);
        }
        map
    }

    /// Which (peer, path) pairs are not in step, for peers whose whole
    /// index arrived: a path where one side lacks the other's version and
    /// the contents differ. Empty when everyone is in step.
    pub fn behind(&self) -> Vec<(DeviceId, RelPath)> {
        let mut out = Vec::new();
        for (device, peer) in &self.peers {
            if !peer.complete {
                continue;
            }
            let paths: std::collections::BTreeSet<&RelPath> = self
                .local
                .iter()
                .map(|r| &r.path)
                .chain(peer.index.iter().map(|r| &r.path))
                .collect();
            for path in paths {
                let ours = self.local.get(path);
                let theirs = peer.index.get(path);
                if self
                    .ignores
                    .is_ignored(path, ours.or(theirs).is_some_and(|r| r.kind == Kind::Dir))
                {
                    continue;
                }
                let in_step = match (ours, theirs) {
                    (None, None) => true,
                    (Some(o), None) => o.deleted || o.signature.is_none() && !self.sends(),
                    (None, Some(t)) => t.deleted,
                    (Some(o), Some(t)) => o.version == t.version || o.same_content(t),
                };
                if !in_step {
                    out.push((*device, path.clone()));
                }
            }
        }
        out
    }
}

/// Whether `a` should replace `b` as the record of a path: its version is
/// newer, or, for concurrent versions, it ranks first (later mtime, then
/// larger device id, then content id), as every device computes alike.
fn newer(a: &FileRecord, b: &FileRecord) -> bool {
    use super::version::Ordering4;
    match a.version.compare(&b.version) {
        Ordering4::Greater => true,
        Ordering4::Lesser | Ordering4::Equal => false,
        Ordering4::Concurrent => {
            (a.mtime, a.modified_by, a.content.id()) > (b.mtime, b.modified_by, b.content.id())
        }
    }
}

/// The folder's `.p2pignore` rules, for records that arrive from peers
/// (the local scan applies the same files through its walker).
struct Ignores {
    /// (directory the file is in, its rules), shallowest first.
    rules: Vec<(RelPathBuf, Gitignore)>,
}

/// A directory inside the folder, `""` for the top.
type RelPathBuf = String;

impl Ignores {
    fn load(root: &Path, local: &Index) -> Ignores {
        let mut rules = Vec::new();
        let mut files: Vec<&FileRecord> = local
            .iter()
            .filter(|r| !r.deleted && r.path.file_name() == IGNORE_FILE)
            .collect();
        files.sort_by_key(|r| r.path.components().count());
        let top = root.join(IGNORE_FILE);
        if top.is_file() && !files.iter().any(|r| r.path.parent().is_none()) {
            rules.push((String::new(), build(root, &top)));
        }
        for r in files {
            let dir = r
                .path
                .parent()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let abs_dir = if dir.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&dir)
            };
            rules.push((dir, build(&abs_dir, &r.path.to_path(root))));
        }
        Ignores { rules }
    }

    fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        self.rules.iter().any(|(dir, rules)| {
            let rel = if dir.is_empty() {
                Some(path.as_str())
            } else {
                path.as_str()
                    .strip_prefix(dir.as_str())
                    .and_then(|r| r.strip_prefix('/'))
            };
            rel.is_some_and(|rel| rules.matched_path_or_any_parents(rel, is_dir).is_ignore())
        })
    }
}

fn build(dir: &Path, file: &Path) -> Gitignore {
    let mut b = GitignoreBuilder::new(dir);
    if let Some(e) = b.add(file) {
        tracing::debug!("{}: {e}", file.display());
    }
    b.build().unwrap_or_else(|_| Gitignore::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::index::Mtime;
    use crate::sync::index::tests::file;
    use crate::sync::plan::Action;
    use crate::sync::version::VersionVector;

    const A: DeviceId = DeviceId(1);
    const B: DeviceId = DeviceId(2);
    const C: DeviceId = DeviceId(3);

    /// A file record with this version, signed by `key`.
    fn rec(
        path: &str,
        bytes: &[u8],
        version: VersionVector,
        by: DeviceId,
        key: &FolderKey,
    ) -> FileRecord {
        let mut r = file(path, bytes, by.0, 1);
        r.mtime = Mtime {
            secs: 1_700_000_000,
            nanos: 0,
        };
        r.version = version;
        r.sign(key);
        r
    }

    fn folder(key: &FolderKey, mode: Mode) -> Folder {
        let mut f = Folder::new(key.clone(), A, mode, Index::new(), &std::env::temp_dir());
        f.peer_joined(B, "127.0.0.2:1".parse().unwrap(), true);
        f
    }

    #[test]
    fn new_remote_file_is_fetched_and_then_in_step() {
        let key = FolderKey::generate().unwrap();
        let mut f = folder(&key, Mode::SendReceive);
        let r = rec(
            "a.txt",
            b"hello",
            VersionVector::new().update(B, 5),
            B,
            &key,
        );
        assert_eq!(f.behind(), vec![]);
        assert_eq!(f.on_remote(B, vec![r.clone()], true), 0);
        assert_eq!(f.plan(10).actions, vec![Action::Fetch(r.clone())]);
        assert_eq!(f.behind(), vec![(B, r.path.clone())]);
        assert_eq!(
            f.holders_by_content()[&r.content.id()],
            vec!["127.0.0.2:1".parse().unwrap()]
        );
        assert!(f.local_by_content().is_empty());
        assert!(f.still_wanted(&r));
        let announce = f.applied(r.clone(), &std::env::temp_dir());
        assert_eq!(announce, Some(r.clone()));
        assert!(!f.still_wanted(&r));
        assert_eq!(f.behind(), vec![]);
        assert!(f.plan(10).actions.is_empty());
    }

    #[test]
    fn unsigned_and_foreign_records_are_refused() {
        let key = FolderKey::generate().unwrap();
        let other = FolderKey::generate().unwrap();
        let mut f = folder(&key, Mode::SendReceive);
        let mut unsigned = rec("a", b"x", VersionVector::new().update(B, 1), B, &key);
        unsigned.signature = None;
        let foreign = rec("b", b"y", VersionVector::new().update(B, 1), B, &other);
        let mut tampered = rec("c", b"z", VersionVector::new().update(B, 1), B, &key);
        tampered.mode = 0o777;
        assert_eq!(f.on_remote(B, vec![unsigned, foreign, tampered], true), 3);
        assert_eq!(f.peers()[&B].index.len(), 0);
        assert!(f.plan(10).actions.is_empty());
        assert_eq!(
            f.on_remote(C, vec![], true),
            0,
            "an unknown peer sends nothing"
        );
    }

    #[test]
    fn read_only_key_receives_but_never_announces() {
        let key = FolderKey::generate().unwrap();
        let mut f = Folder::new(
            key.read_only(),
            A,
            Mode::SendReceive,
            Index::new(),
            &std::env::temp_dir(),
        );
        assert_eq!(f.mode(), Mode::ReceiveOnly);
        f.peer_joined(B, "127.0.0.2:1".parse().unwrap(), true);
        let mut local = rec(
            "mine",
            b"local edit",
            VersionVector::new().update(A, 1),
            A,
            &key,
        );
        local.signature = None;
        let stored = f.local_changes(vec![local.clone()], &std::env::temp_dir());
        assert_eq!(
            stored,
            vec![local.clone()],
            "kept, unsigned, as our view of the disk"
        );
        assert!(
            f.to_announce(&stored).is_empty(),
            "a read-only key announces nothing"
        );
        assert!(f.announced().is_empty());
        let r = rec("theirs", b"x", VersionVector::new().update(B, 1), B, &key);
        f.on_remote(B, vec![r.clone()], true);
        assert_eq!(f.plan(10).actions, vec![Action::Fetch(r.clone())]);
        assert_eq!(f.applied(r.clone(), &std::env::temp_dir()), Some(r));
        // The local edit is reported as behind, never pushed.
        assert_eq!(f.behind(), vec![]);
        assert!(f.seal(local.clone()).signature.is_none());
    }

    #[test]
    fn send_only_never_applies_remote_changes() {
        let key = FolderKey::generate().unwrap();
        let mut f = folder(&key, Mode::SendOnly);
        let r = rec("a", b"x", VersionVector::new().update(B, 1), B, &key);
        f.on_remote(B, vec![r], true);
        assert!(f.plan(10).actions.is_empty());
        assert_eq!(f.behind().len(), 1, "the peer has what we lack: reported");
    }

    #[test]
    fn same_content_copied_before_meeting_merges_without_transfer() {
        let key = FolderKey::generate().unwrap();
        let mut f = folder(&key, Mode::SendReceive);
        let ours = rec("p", b"same", VersionVector::new().update(A, 3), A, &key);
        f.local_changes(vec![ours.clone()], &std::env::temp_dir());
        let theirs = rec("p", b"same", VersionVector::new().update(B, 4), B, &key);
        f.on_remote(B, vec![theirs.clone()], true);
        assert_eq!(
            f.behind(),
            vec![],
            "same content is in step whatever the versions"
        );
        let actions = f.plan(10).actions;
        let [Action::Record(record)] = &actions[..] else {
            panic!("{actions:?}")
        };
        let record = f.seal(record.clone());
        assert!(
            record.version.dominates(&ours.version) && record.version.dominates(&theirs.version)
        );
        assert!(record.verify(&key));
    }

    #[test]
    fn newest_of_several_peers_wins_the_reduction() {
        let key = FolderKey::generate().unwrap();
        let mut f = folder(&key, Mode::SendReceive);
        f.peer_joined(C, "127.0.0.3:1".parse().unwrap(), true);
        let v1 = VersionVector::new().update(B, 1);
        let old = rec("x", b"old", v1.clone(), B, &key);
        let new = rec("x", b"new", v1.update(C, 2), C, &key);
        f.on_remote(B, vec![old], true);
        f.on_remote(C, vec![new.clone()], true);
        assert_eq!(f.remote().get(&new.path), Some(&new));
        let mut later = rec("y", b"b", VersionVector::new().update(B, 1), B, &key);
        later.mtime.secs += 5;
        later.sign(&key);
        let earlier = rec("y", b"c", VersionVector::new().update(C, 1), C, &key);
        f.on_remote(B, vec![later.clone()], true);
        f.on_remote(C, vec![earlier], true);
        assert_eq!(
            f.remote().get(&later.path),
            Some(&later),
            "concurrent: later mtime ranks first"
        );
    }

    #[test]
    fn ignored_paths_are_never_touched() {
        let key = FolderKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IGNORE_FILE), "*.log\nbuild/\n").unwrap();
        let mut f = Folder::new(key.clone(), A, Mode::SendReceive, Index::new(), dir.path());
        f.peer_joined(B, "127.0.0.2:1".parse().unwrap(), true);
        let records = vec![
            rec("x.log", b"1", VersionVector::new().update(B, 1), B, &key),
            rec(
                "build/out",
                b"2",
                VersionVector::new().update(B, 1),
                B,
                &key,
            ),
            rec("src/a.rs", b"3", VersionVector::new().update(B, 1), B, &key),
        ];
        f.on_remote(B, records, true);
        let actions = f.plan(10).actions;
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert!(matches!(&actions[0], Action::Fetch(r) if r.path.as_str() == "src/a.rs"));
        assert_eq!(f.behind(), vec![(B, RelPath::new("src/a.rs").unwrap())]);
    }
}
