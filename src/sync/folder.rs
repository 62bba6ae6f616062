//! One synced folder as a model: our index, what each peer announced, the
//! merge decisions turned into actions, and whether everyone is in step.
//! No sockets, no disk writes and no database: `commands/sync.rs` carries
//! the actions out (through [`super::apply`] and the engine) and reports
//! back with [`Folder::applied`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::index::{FileRecord, Index, Kind, RelPath};
use super::key::FolderKey;
use super::merge::{Decision, Side, decide};
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

/// Something to do on disk so that it matches a peer's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Put the record's file content at its path (fetched from peers
    /// unless this machine has it). `expected` is what the path holds now.
    Fetch {
        /// The record to make true.
        record: FileRecord,
        /// Our record for the path.
        expected: Option<FileRecord>,
        /// The peer that announced it.
        from: DeviceId,
    },
    /// Make a directory, or a symlink, as the record says.
    Make {
        /// The record to make true.
        record: FileRecord,
        /// Our record for the path.
        expected: Option<FileRecord>,
        /// The peer that announced it.
        from: DeviceId,
    },
    /// Move the path to the trash and record the tombstone.
    Delete {
        /// The tombstone.
        record: FileRecord,
        /// Our record for the path.
        expected: FileRecord,
        /// The peer that announced it.
        from: DeviceId,
    },
    /// A conflict the peer won: rename our file to `loser_name` (it syncs
    /// from there as a new file), then take the winner as with `Fetch` or
    /// `Make`.
    Conflict {
        /// The winner.
        record: FileRecord,
        /// Our record for the path (the loser).
        expected: FileRecord,
        /// Where our version goes.
        loser_name: RelPath,
        /// The peer that announced it.
        from: DeviceId,
    },
    /// A conflict we won: nothing to do here, the peer keeps its version
    /// under `loser_name`; reported so the user knows.
    ConflictWon {
        /// The path.
        path: RelPath,
        /// Where the peer keeps its version.
        loser_name: RelPath,
        /// The peer.
        from: DeviceId,
    },
    /// Record only: the disk already matches (same content, a tombstone for
    /// a path we never had, a merged version). `touch` sets the file's mode
    /// and mtime to the record's.
    Adopt {
        /// The record to store.
        record: FileRecord,
        /// Set mode and mtime on disk to the record's.
        touch: bool,
    },
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
    /// records to announce.
    pub fn local_changes(&mut self, records: Vec<FileRecord>, root: &Path) -> Vec<FileRecord> {
        let mut announce = Vec::new();
        let mut ignore_changed = false;
        for mut r in records {
            ignore_changed |= r.path.file_name() == IGNORE_FILE;
            if self.sends() {
                r.sign(&self.key);
                announce.push(r.clone());
            }
            self.local.insert(r);
        }
        if ignore_changed {
            self.ignores = Ignores::load(root, &self.local);
        }
        announce
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

    /// Records from a peer: each one checked against the key, stored as
    /// what the peer has, and merged with ours into actions. Returns the
    /// actions and how many records were refused (unsigned or forged).
    pub fn on_remote(
        &mut self,
        from: DeviceId,
        records: Vec<FileRecord>,
        complete: bool,
        now_secs: u64,
    ) -> (Vec<Action>, usize) {
        let mut actions = Vec::new();
        let mut refused = 0;
        let Some(peer) = self.peers.get_mut(&from) else {
            return (actions, records.len());
        };
        let mut accepted = Vec::new();
        for r in records {
            if r.verify(&self.key) {
                peer.index.insert(r.clone());
                accepted.push(r);
            } else {
                refused += 1;
            }
        }
        peer.complete |= complete;
        if self.mode == Mode::SendOnly {
            return (actions, refused);
        }
        for r in accepted {
            if self.ignores.is_ignored(&r.path, r.kind == Kind::Dir) {
                continue;
            }
            if let Some(a) = self.decide(from, r, now_secs) {
                actions.push(a);
            }
        }
        (actions, refused)
    }

    /// The action for one verified remote record, if any.
    fn decide(&self, from: DeviceId, r: FileRecord, now_secs: u64) -> Option<Action> {
        let local = self.local.get(&r.path).cloned();
        match decide(local.as_ref(), &r, self.device, now_secs) {
            Decision::Keep => None,
            Decision::Take => Some(take(r, local, from)),
            Decision::Delete => Some(Action::Delete {
                record: r,
                expected: local.expect("a delete decision has a local record"),
                from,
            }),
            Decision::Merge { version } => {
                let local = local.expect("a merge decision has a local record");
                if self.sends() {
                    let mut merged = local;
                    merged.version = version;
                    merged.sign(&self.key);
                    Some(Action::Adopt {
                        record: merged,
                        touch: false,
                    })
                } else {
                    // We cannot sign a merged record: take the signed one,
                    // whose content we hold already.
                    Some(Action::Adopt {
                        record: r,
                        touch: true,
                    })
                }
            }
            Decision::KeepLocal { version } => {
                if !self.sends() {
                    return None;
                }
                let mut kept = local.expect("keep-local has a local record");
                kept.version = version;
                kept.sign(&self.key);
                Some(Action::Adopt {
                    record: kept,
                    touch: false,
                })
            }
            Decision::Conflict {
                winner: Side::Local,
                loser_name,
                ..
            } => Some(Action::ConflictWon {
                path: r.path,
                loser_name,
                from,
            }),
            Decision::Conflict {
                winner: Side::Remote,
                loser_name,
                ..
            } => Some(Action::Conflict {
                record: r,
                expected: local.expect("a conflict has a local record"),
                loser_name,
                from,
            }),
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
            Some(l) => !l.version.dominates(&record.version) || l.version == record.version && !l.same_content(record),
        }
    }

    /// Peers that hold live content with this content id, with the path
    /// they hold it under.
    pub fn holders(&self, content_id: &[u8; 20]) -> Vec<SocketAddr> {
        self.peers
            .values()
            .filter(|p| {
                p.index
                    .iter()
                    .any(|r| !r.deleted && r.kind == Kind::File && &r.content.id() == content_id)
            })
            .map(|p| p.addr)
            .collect()
    }

    /// A local file that holds this content (by our index), for seeding or
    /// for a copy that moves no data.
    pub fn local_with_content(&self, content_id: &[u8; 20]) -> Vec<&FileRecord> {
        self.local
            .iter()
            .filter(|r| !r.deleted && r.kind == Kind::File && &r.content.id() == content_id)
            .collect()
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
                if self.ignores.is_ignored(path, ours.or(theirs).is_some_and(|r| r.kind == Kind::Dir)) {
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

    /// Whether a path is ignored here (`.p2pignore`).
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        self.ignores.is_ignored(path, is_dir)
    }
}

/// The action that makes a fast-forward true.
fn take(r: FileRecord, local: Option<FileRecord>, from: DeviceId) -> Action {
    let live_local = local.as_ref().filter(|l| !l.deleted);
    if r.deleted {
        return match live_local {
            Some(l) => Action::Delete {
                expected: l.clone(),
                record: r,
                from,
            },
            None => Action::Adopt {
                record: r,
                touch: false,
            },
        };
    }
    if live_local.is_some_and(|l| l.same_content(&r)) {
        return Action::Adopt {
            touch: r.kind == Kind::File,
            record: r,
        };
    }
    match r.kind {
        Kind::File => Action::Fetch {
            record: r,
            expected: local,
            from,
        },
        Kind::Dir | Kind::Symlink { .. } => Action::Make {
            record: r,
            expected: local,
            from,
        },
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
            let dir = r.path.parent().map(|p| p.as_str().to_string()).unwrap_or_default();
            let abs_dir = if dir.is_empty() { root.to_path_buf() } else { root.join(&dir) };
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
    use crate::sync::index::{Content, Mtime};
    use crate::sync::version::VersionVector;

    const A: DeviceId = DeviceId(1);
    const B: DeviceId = DeviceId(2);

    fn rec(path: &str, bytes: &[u8], version: VersionVector, by: DeviceId, key: &FolderKey) -> FileRecord {
        let mut r = FileRecord {
            path: RelPath::new(path).unwrap(),
            kind: Kind::File,
            deleted: false,
            mode: 0o644,
            mtime: Mtime {
                secs: 1_700_000_000,
                nanos: 0,
            },
            content: Content::from_reader(bytes, bytes.len() as u64).unwrap(),
            version,
            modified_by: by,
            signature: None,
        };
        r.sign(key);
        r
    }

    fn folder(key: &FolderKey, mode: Mode) -> Folder {
        let dir = std::env::temp_dir();
        let mut f = Folder::new(key.clone(), A, mode, Index::new(), &dir);
        f.peer_joined(B, "127.0.0.2:1".parse().unwrap(), true);
        f
    }

    #[test]
    fn new_remote_file_is_fetched_and_then_in_step() {
        let key = FolderKey::generate().unwrap();
        let mut f = folder(&key, Mode::SendReceive);
        let r = rec("a.txt", b"hello", VersionVector::new().update(B, 5), B, &key);
        assert_eq!(f.behind(), vec![]);
        let (actions, refused) = f.on_remote(B, vec![r.clone()], true, 10);
        assert_eq!(refused, 0);
        assert!(matches!(&actions[..], [Action::Fetch { record, expected: None, from: B }] if *record == r));
        assert_eq!(f.behind(), vec![(B, r.path.clone())]);
        assert_eq!(f.holders(&r.content.id()), vec!["127.0.0.2:1".parse().unwrap()]);
        let announce = f.applied(r.clone(), &std::env::temp_dir());
        assert_eq!(announce, Some(r));
        assert_eq!(f.behind(), vec![]);
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
        let (actions, refused) = f.on_remote(B, vec![unsigned, foreign, tampered], true, 10);
        assert!(actions.is_empty());
        assert_eq!(refused, 3);
        assert!(f.peers()[&B].index.is_empty());
    }

    #[test]
    fn read_only_key_receives_but_never_announces() {
        let key = FolderKey::generate().unwrap();
        let mut f = Folder::new(key.read_only(), A, Mode::SendReceive, Index::new(), &std::env::temp_dir());
        assert_eq!(f.mode(), Mode::ReceiveOnly);
        f.peer_joined(B, "127.0.0.2:1".parse().unwrap(), true);
        let mut local = rec("mine", b"local edit", VersionVector::new().update(A, 1), A, &key);
        local.signature = None;
        assert!(f.local_changes(vec![local], &std::env::temp_dir()).is_empty());
        assert!(f.announced().is_empty());
        let r = rec("theirs", b"x", VersionVector::new().update(B, 1), B, &key);
        let (actions, _) = f.on_remote(B, vec![r.clone()], true, 10);
        assert_eq!(actions.len(), 1);
        assert_eq!(f.applied(r.clone(), &std::env::temp_dir()), Some(r));
    }

    #[test]
    fn send_only_never_applies_remote_changes() {
        let key = FolderKey::generate().unwrap();
        let mut f = folder(&key, Mode::SendOnly);
        let r = rec("a", b"x", VersionVector::new().update(B, 1), B, &key);
        let (actions, _) = f.on_remote(B, vec![r], true, 10);
        assert!(actions.is_empty());
    }

    #[test]
    fn same_content_copied_before_meeting_merges_without_transfer() {
        let key = FolderKey::generate().unwrap();
        let mut f = folder(&key, Mode::SendReceive);
        let ours = rec("p", b"same", VersionVector::new().update(A, 3), A, &key);
        f.local_changes(vec![ours.clone()], &std::env::temp_dir());
        let theirs = rec("p", b"same", VersionVector::new().update(B, 4), B, &key);
        let (actions, _) = f.on_remote(B, vec![theirs.clone()], true, 10);
        let [Action::Adopt { record, touch: false }] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert!(record.version.dominates(&ours.version) && record.version.dominates(&theirs.version));
        assert!(record.verify(&key));
        f.applied(record.clone(), &std::env::temp_dir());
        assert_eq!(f.behind(), vec![], "same content is in step whatever the versions");
    }

    #[test]
    fn conflict_sides_and_deletes() {
        let key = FolderKey::generate().unwrap();
        let mut f = folder(&key, Mode::SendReceive);
        let mut ours = rec("c.txt", b"ours", VersionVector::new().update(A, 3), A, &key);
        ours.mtime.secs += 100;
        ours.sign(&key);
        f.local_changes(vec![ours.clone()], &std::env::temp_dir());
        let theirs = rec("c.txt", b"theirs", VersionVector::new().update(B, 4), B, &key);
        let (actions, _) = f.on_remote(B, vec![theirs], true, 10);
        assert!(
            matches!(&actions[..], [Action::ConflictWon { loser_name, .. }] if loser_name.as_str().starts_with("c.sync-conflict-")),
            "{actions:?}"
        );
        let mut newer = rec("c.txt", b"theirs2", VersionVector::new().update(B, 4), B, &key);
        newer.mtime.secs += 200;
        newer.sign(&key);
        let (actions, _) = f.on_remote(B, vec![newer], true, 10);
        assert!(matches!(&actions[..], [Action::Conflict { .. }]), "{actions:?}");
        // A delete that builds on ours is a delete; one that doesn't loses.
        let mut del = ours.clone();
        del.deleted = true;
        del.content = Content::empty();
        del.version = ours.version.update(B, 20);
        del.modified_by = B;
        del.sign(&key);
        let (actions, _) = f.on_remote(B, vec![del], true, 30);
        assert!(matches!(&actions[..], [Action::Delete { .. }]), "{actions:?}");
        let mut stale_del = ours.clone();
        stale_del.deleted = true;
        stale_del.content = Content::empty();
        stale_del.version = VersionVector::new().update(B, 1);
        stale_del.modified_by = B;
        stale_del.sign(&key);
        let (actions, _) = f.on_remote(B, vec![stale_del], true, 30);
        let [Action::Adopt { record, .. }] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert!(!record.deleted, "the modification wins and is announced again");
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
            rec("build/out", b"2", VersionVector::new().update(B, 1), B, &key),
            rec("src/a.rs", b"3", VersionVector::new().update(B, 1), B, &key),
        ];
        let (actions, _) = f.on_remote(B, records, true, 10);
        assert_eq!(actions.len(), 1);
        assert!(matches!(&actions[0], Action::Fetch { record, .. } if record.path.as_str() == "src/a.rs"));
        assert_eq!(f.behind(), vec![(B, RelPath::new("src/a.rs").unwrap())]);
    }
}
