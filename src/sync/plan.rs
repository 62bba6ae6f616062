//! From decisions to an ordered list of disk actions.
//!
//! [`plan`] runs [`decide`] on every remote record and turns the outcome
//! into actions in an order that is safe to carry out one by one:
//!
//! 0. move conflict losers aside, and trash non-directories a directory
//!    replaces;
//! 1. create (or update) directories, parents first;
//! 2. reuse local bytes: move a file that is being deleted anyway to where
//!    the same content is wanted (a rename on a peer moves no data),
//! 3. or copy it from a file that stays;
//! 4. fetch what no local file holds, or just set attributes when the bytes
//!    are already in place;
//! 5. create symlinks;
//! 6. trash deleted paths, contents before their directory;
//! 7. write files and links where a directory was (after 6 emptied it);
//! 8. store index-only records (merged versions, tombstones we lacked).
//!
//! Two refusals keep a hostile or stale index from doing harm: nothing is
//! written or trashed below a path that is (or stays) a symlink or a file
//! here, so a link can never redirect a write outside the folder; and a
//! directory is not trashed or replaced while it holds anything this plan
//! does not delete, so a file the peer never saw is not swept away with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::index::{FileRecord, Index, Kind, RelPath};
use super::merge::{Decision, Side, decide};
use super::version::DeviceId;

/// One step for the executor. Actions that carry a record store it in the
/// local index once the step succeeded. Any write over an existing local
/// file archives the old file to the trash first, as a delete does.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// Move the local file at `from` to `to` (a conflict loser kept aside;
    /// the next scan records it as a new file, so it syncs back).
    ConflictRename {
        /// The contested path.
        from: RelPath,
        /// The `.sync-conflict-` name.
        to: RelPath,
    },
    /// Move a path to the trash (never unlink). `record` is the tombstone
    /// to store; `None` when the path is only cleared for something else.
    Trash {
        /// What to trash.
        path: RelPath,
        /// The tombstone to store, if this is a delete.
        record: Option<FileRecord>,
    },
    /// Create the directory, or set its mode if it exists.
    Dir(FileRecord),
    /// Rename local `from` (whose deletion is part of this plan) to the
    /// record's path: the bytes are already here.
    Move {
        /// A local file with the same content id, deleted by this plan.
        from: RelPath,
        /// What to store for the destination.
        record: FileRecord,
    },
    /// Copy local `from` (same content id) to the record's path.
    Copy {
        /// A local file with the same content id.
        from: RelPath,
        /// What to store for the destination.
        record: FileRecord,
    },
    /// Fetch the record's content from the swarm (by content id, from any
    /// peer holding it under any name) and write it to the record's path.
    Fetch(FileRecord),
    /// The bytes are already at the path: set mode and mtime only.
    SetAttributes(FileRecord),
    /// Create the symlink the record describes.
    Symlink(FileRecord),
    /// Store the record; nothing on disk changes.
    Record(FileRecord),
}

/// Why a remote record was left out of the plan this round.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PlanSkip {
    /// An ancestor is, or stays, something other than a directory here (a
    /// symlink or a file).
    ParentNotADirectory(RelPath),
    /// A directory to delete or replace still holds paths this plan keeps.
    DirNotEmpty,
}

/// The actions, in order, and what was left out.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Plan {
    /// Steps to carry out in order.
    pub actions: Vec<Action>,
    /// Remote records not acted on, and why (retried next round).
    pub skipped: Vec<(RelPath, PlanSkip)>,
}

/// Plans how to bring the local folder up to `remote` (a peer's index, or
/// the caller's reduction of several peers' indexes to one record per path).
/// `local` must be the index of a scan made just before.
///
/// Records in `Record` actions with no signature (merged versions, a
/// modification re-announced over a delete, a conflict's merged version)
/// are the caller's to sign and announce.
pub fn plan(local: &Index, remote: &Index, local_device: DeviceId, now_secs: u64) -> Plan {
    let live = |p: &RelPath| local.get(p).filter(|r| !r.deleted);
    let mut decided: BTreeMap<&RelPath, (&FileRecord, Decision)> = remote
        .iter()
        .map(|r| {
            let d = decide(local.get(&r.path), r, local_device, now_secs);
            (&r.path, (r, d))
        })
        .collect();

    // What every path holds once the plan is carried out (`None`: nothing).
    // Keyed by string so that everything under `d/` is one range.
    let mut after: BTreeMap<String, Option<Kind>> = local
        .iter()
        .map(|r| (r.path.to_string(), (!r.deleted).then(|| r.kind.clone())))
        .collect();
    for (path, (r, d)) in &decided {
        if touches_disk(d, r) {
            after.insert(path.to_string(), (!r.deleted).then(|| r.kind.clone()));
        }
    }
    let mut skipped = Vec::new();
    let mut refuse = |path: &RelPath, why, after: &mut BTreeMap<String, Option<Kind>>| {
        after.insert(path.to_string(), live(path).map(|r| r.kind.clone()));
        skipped.push((path.clone(), why));
    };

    // A directory may be trashed or replaced only if nothing below it
    // stays. Deepest first, so a kept child keeps its parent too.
    let clears_dir: Vec<&RelPath> = decided
        .iter()
        .filter(|(path, (r, d))| {
            live(path).is_some_and(|l| l.kind == Kind::Dir)
                && touches_disk(d, r)
                && (r.deleted || r.kind != Kind::Dir)
        })
        .map(|(path, _)| *path)
        .collect();
    for path in clears_dir.into_iter().rev() {
        let prefix = format!("{path}/");
        let keeps_something = after
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .any(|(_, kind)| kind.is_some());
        if keeps_something {
            refuse(path, PlanSkip::DirNotEmpty, &mut after);
            decided.remove(path);
        }
    }

    // Nothing is written or trashed below a symlink or a file: one that is
    // here now blocks both (unless phase 0 replaces it by a directory, before
    // any write; a delete comes too late, in phase 6), and one the plan puts
    // there blocks writes.
    let writes: Vec<(&RelPath, bool)> = decided
        .iter()
        .filter(|(_, (r, d))| touches_disk(d, r))
        .map(|(path, (_, d))| (*path, *d == Decision::Delete))
        .collect();
    for (path, trash) in writes {
        let mut parent = path.parent();
        while let Some(p) = parent {
            let not_dir = |k: Option<&Kind>| k.is_some_and(|k| *k != Kind::Dir);
            let now = live(&p).map(|r| &r.kind);
            let then = after.get(p.as_str()).and_then(Option::as_ref);
            let blocked = if trash {
                not_dir(now)
            } else {
                not_dir(then) || (not_dir(now) && then != Some(&Kind::Dir))
            };
            if blocked {
                refuse(path, PlanSkip::ParentNotADirectory(p), &mut after);
                decided.remove(path);
                break;
            }
            parent = p.parent();
        }
    }

    let mut phases: [Vec<Action>; 9] = Default::default();
    // Local files this plan deletes: their bytes can move where wanted.
    let mut movable: HashMap<[u8; 20], RelPath> = HashMap::new();
    // Local files this plan leaves alone: their bytes can be copied.
    let mut sources: HashMap<[u8; 20], RelPath> = HashMap::new();
    for r in local.iter() {
        if r.deleted || r.kind != Kind::File || r.size() == 0 {
            continue;
        }
        match decided.get(&r.path) {
            Some((_, Decision::Delete)) => {
                movable
                    .entry(r.content.id())
                    .or_insert_with(|| r.path.clone());
            }
            Some((remote, d)) if touches_disk(d, remote) => {}
            _ => {
                sources
                    .entry(r.content.id())
                    .or_insert_with(|| r.path.clone());
            }
        }
    }
    let mut moved: BTreeSet<RelPath> = BTreeSet::new();

    for (path, (remote, decision)) in &decided {
        let record = match decision {
            Decision::Keep
            | Decision::Conflict {
                winner: Side::Local,
                ..
            } => continue,
            Decision::Merge { version } | Decision::KeepLocal { version } => {
                let local = local.get(path).expect("bug: merged without a local record");
                phases[8].push(Action::Record(FileRecord {
                    version: version.clone(),
                    signature: None,
                    ..local.clone()
                }));
                continue;
            }
            // After the loop, once moves are known.
            Decision::Delete => continue,
            Decision::Take if remote.deleted => {
                // Nothing here to delete: the tombstone only.
                phases[8].push(Action::Record((*remote).clone()));
                continue;
            }
            Decision::Take => (*remote).clone(),
            Decision::Conflict {
                winner: Side::Remote,
                loser_name,
                version,
            } => {
                phases[0].push(Action::ConflictRename {
                    from: (*path).clone(),
                    to: loser_name.clone(),
                });
                FileRecord {
                    version: version.clone(),
                    signature: None,
                    ..(*remote).clone()
                }
            }
        };
        // What is at the path now, unless a conflict rename moved it away.
        let occupant = live(path).filter(|_| matches!(decision, Decision::Take));
        let over_dir = occupant.is_some_and(|l| l.kind == Kind::Dir) && record.kind != Kind::Dir;
        if over_dir {
            // Emptied by the trash phase, then written in phase 7.
            phases[6].push(Action::Trash {
                path: (*path).clone(),
                record: None,
            });
        } else if let Some(l) = occupant.filter(|l| l.kind != record.kind) {
            debug_assert!(l.kind != Kind::Dir);
            phases[0].push(Action::Trash {
                path: (*path).clone(),
                record: None,
            });
        }
        let (phase, action) = match &record.kind {
            Kind::Dir => (1, Action::Dir(record)),
            Kind::Symlink { .. } => (5, Action::Symlink(record)),
            Kind::File => {
                let id = record.content.id();
                let wanted = record.size() > 0;
                if occupant.is_some_and(|l| l.kind == Kind::File && l.content.id() == id) {
                    (4, Action::SetAttributes(record))
                } else if let Some(from) = movable.remove(&id).filter(|_| wanted && !over_dir) {
                    moved.insert(from.clone());
                    // Later wants of the same bytes copy from the new place.
                    sources.entry(id).or_insert_with(|| record.path.clone());
                    (2, Action::Move { from, record })
                } else if let Some(from) = sources.get(&id).filter(|_| wanted) {
                    let from = from.clone();
                    (3, Action::Copy { from, record })
                } else {
                    (4, Action::Fetch(record))
                }
            }
        };
        phases[if over_dir { 7 } else { phase }].push(action);
    }
    for (path, (remote, decision)) in &decided {
        if *decision != Decision::Delete {
            continue;
        }
        let tombstone = (*remote).clone();
        if moved.contains(*path) {
            // Its bytes live on at the move's destination.
            phases[8].push(Action::Record(tombstone));
        } else {
            phases[6].push(Action::Trash {
                path: (*path).clone(),
                record: Some(tombstone),
            });
        }
    }
    // Contents before their directory: reverse path order.
    phases[6].sort_by(|a, b| trash_path(b).cmp(trash_path(a)));

    Plan {
        actions: phases.into_iter().flatten().collect(),
        skipped,
    }
}

/// Whether carrying out `d` for `remote` changes the disk.
fn touches_disk(d: &Decision, remote: &FileRecord) -> bool {
    match d {
        Decision::Delete
        | Decision::Conflict {
            winner: Side::Remote,
            ..
        } => true,
        // A tombstone for a path not live here is index-only (a live one
        // would have been a Delete).
        Decision::Take => !remote.deleted,
        Decision::Keep
        | Decision::Merge { .. }
        | Decision::KeepLocal { .. }
        | Decision::Conflict {
            winner: Side::Local,
            ..
        } => false,
    }
}

fn trash_path(a: &Action) -> &RelPath {
    match a {
        Action::Trash { path, .. } => path,
        _ => unreachable!("bug: only trash actions in phase 6"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::index::Content;
    use crate::sync::index::tests::{file, path};
    use crate::sync::merge::conflict_name;

    const ME: DeviceId = DeviceId(1);
    const PEER: DeviceId = DeviceId(2);

    fn dir(p: &str) -> FileRecord {
        FileRecord {
            kind: Kind::Dir,
            mode: 0o755,
            ..file(p, b"", 3, 1)
        }
    }

    fn link(p: &str, target: &str) -> FileRecord {
        FileRecord {
            kind: Kind::Symlink {
                target: target.into(),
            },
            ..file(p, b"", 3, 1)
        }
    }

    /// `r` after the peer changed it (a fast-forward for us).
    fn newer(r: &FileRecord) -> FileRecord {
        FileRecord {
            version: r.version.update(PEER, 50),
            modified_by: PEER,
            ..r.clone()
        }
    }

    /// `r` after the peer deleted it.
    fn gone(r: &FileRecord) -> FileRecord {
        FileRecord {
            deleted: true,
            content: Content::empty(),
            ..newer(r)
        }
    }

    fn index(records: impl IntoIterator<Item = FileRecord>) -> Index {
        records.into_iter().collect()
    }

    fn run(
        local: impl IntoIterator<Item = FileRecord>,
        remote: impl IntoIterator<Item = FileRecord>,
    ) -> Plan {
        plan(&index(local), &index(remote), ME, 100)
    }

    #[test]
    fn directories_come_before_their_files() {
        let p = run([], [file("d/e/f", b"x", 3, 1), dir("d/e"), dir("d")]);
        assert_eq!(
            p.actions,
            [
                Action::Dir(dir("d")),
                Action::Dir(dir("d/e")),
                Action::Fetch(file("d/e/f", b"x", 3, 1)),
            ]
        );
        assert!(p.skipped.is_empty());
    }

    #[test]
    fn a_rename_moves_no_data() {
        let old = file("old", b"content", 3, 1);
        let new = file("new", b"content", 2, 9);
        let p = run([old.clone()], [gone(&old), new.clone()]);
        assert_eq!(
            p.actions,
            [
                Action::Move {
                    from: path("old"),
                    record: new
                },
                Action::Record(gone(&old)),
            ]
        );
    }

    #[test]
    fn known_bytes_are_copied_once_moved_and_otherwise_fetched() {
        let keep = file("keep", b"kept bytes", 3, 1);
        let old = file("old", b"moved bytes", 3, 1);
        let remote = [
            keep.clone(),
            gone(&old),
            file("c1", b"kept bytes", 2, 1),
            file("m1", b"moved bytes", 2, 1),
            file("m2", b"moved bytes", 2, 1),
            file("z", b"new bytes", 2, 1),
            file("empty", b"", 2, 1),
        ];
        let p = run([keep, old.clone()], remote.clone());
        assert_eq!(
            p.actions,
            [
                Action::Move {
                    from: path("old"),
                    record: remote[3].clone()
                },
                Action::Copy {
                    from: path("keep"),
                    record: remote[2].clone()
                },
                Action::Copy {
                    from: path("m1"),
                    record: remote[4].clone()
                },
                Action::Fetch(remote[6].clone()),
                Action::Fetch(remote[5].clone()),
                Action::Record(gone(&old)),
            ]
        );
    }

    #[test]
    fn deletes_go_to_the_trash_contents_first() {
        let local = [
            dir("d"),
            file("d/x", b"1", 3, 1),
            dir("d/y"),
            file("d/y/z", b"2", 3, 1),
        ];
        let remote: Vec<FileRecord> = local.iter().map(gone).collect();
        let p = run(local.clone(), remote);
        let order: Vec<&str> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::Trash {
                    path,
                    record: Some(r),
                } => {
                    assert_eq!(&r.path, path);
                    assert!(r.deleted);
                    path.as_str()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(order, ["d/y/z", "d/y", "d/x", "d"]);
    }

    #[test]
    fn a_directory_holding_unknown_files_is_not_trashed() {
        let local = [
            dir("d"),
            file("d/x", b"1", 3, 1),
            file("d/mine", b"new here", 1, 1),
        ];
        let p = run(local.clone(), [gone(&local[0]), gone(&local[1])]);
        assert_eq!(
            p.actions,
            [Action::Trash {
                path: path("d/x"),
                record: Some(gone(&local[1]))
            }]
        );
        assert_eq!(p.skipped, [(path("d"), PlanSkip::DirNotEmpty)]);
        // Nested: the kept file keeps both directories.
        let local = [dir("a"), dir("a/b"), file("a/b/mine", b"x", 1, 1)];
        let p = run(local.clone(), [gone(&local[0]), gone(&local[1])]);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.skipped.len(), 2);
    }

    #[test]
    fn nothing_is_written_through_a_symlink_or_below_a_file() {
        let local = [
            link("link", "/etc"),
            file("f", b"x", 3, 1),
            file("link2", b"y", 3, 1),
        ];
        let remote = [
            local[0].clone(),
            local[1].clone(),
            file("link/passwd", b"evil", 2, 1),
            file("f/child", b"x", 2, 1),
            gone(&file("link/shadow", b"", 2, 1)),
        ];
        let p = run(local.clone(), remote);
        assert!(
            p.actions.iter().all(|a| matches!(a, Action::Record(_))),
            "{:?}",
            p.actions
        );
        assert_eq!(
            p.skipped,
            [
                (path("f/child"), PlanSkip::ParentNotADirectory(path("f"))),
                (
                    path("link/passwd"),
                    PlanSkip::ParentNotADirectory(path("link"))
                ),
            ]
        );
        // A peer replacing the link with a directory unblocks the path.
        let p = run(
            local.clone(),
            [dir_over(&local[0]), file("link/ok", b"z", 2, 1)],
        );
        assert_eq!(
            p.actions,
            [
                Action::Trash {
                    path: path("link"),
                    record: None
                },
                Action::Dir(dir_over(&local[0])),
                Action::Fetch(file("link/ok", b"z", 2, 1)),
            ]
        );
    }

    fn dir_over(r: &FileRecord) -> FileRecord {
        FileRecord {
            kind: Kind::Dir,
            content: Content::empty(),
            ..newer(r)
        }
    }

    #[test]
    fn a_directory_replaced_by_a_file_is_emptied_first() {
        let local = [dir("x"), file("x/c", b"c", 3, 1)];
        let as_file = FileRecord {
            kind: Kind::File,
            ..newer(&file("x", b"now a file", 3, 1))
        };
        let as_file = FileRecord {
            version: local[0].version.update(PEER, 60),
            ..as_file
        };
        let p = run(local.clone(), [as_file.clone(), gone(&local[1])]);
        assert_eq!(
            p.actions,
            [
                Action::Trash {
                    path: path("x/c"),
                    record: Some(gone(&local[1]))
                },
                Action::Trash {
                    path: path("x"),
                    record: None
                },
                Action::Fetch(as_file.clone()),
            ]
        );
        // Unless something stays in it.
        let p = run(local.clone(), [as_file]);
        assert!(p.actions.is_empty());
        assert_eq!(p.skipped, [(path("x"), PlanSkip::DirNotEmpty)]);
    }

    #[test]
    fn conflicts_merges_and_index_only_changes() {
        let base = file("p.txt", b"base", 3, 1);
        let ours = FileRecord {
            content: Content::from_reader(&b"ours"[..], 4).unwrap(),
            version: base.version.update(ME, 10),
            modified_by: ME,
            ..base.clone()
        };
        let theirs = FileRecord {
            content: Content::from_reader(&b"theirs"[..], 6).unwrap(),
            mtime: crate::sync::index::Mtime {
                secs: ours.mtime.secs + 1,
                nanos: 0,
            },
            ..newer(&base)
        };
        let p = run([ours.clone()], [theirs.clone()]);
        let merged = FileRecord {
            version: ours.version.merge(&theirs.version),
            signature: None,
            ..theirs.clone()
        };
        assert_eq!(
            p.actions,
            [
                Action::ConflictRename {
                    from: path("p.txt"),
                    to: conflict_name(&ours.path, ours.mtime, ME)
                },
                Action::Fetch(merged),
            ]
        );
        // The winning side does nothing.
        assert!(
            plan(&index([theirs.clone()]), &index([ours.clone()]), PEER, 100)
                .actions
                .is_empty()
        );

        // Same bytes on both sides: a record update only.
        let same = FileRecord {
            version: base.version.update(PEER, 20),
            ..ours.clone()
        };
        let p = run([ours.clone()], [same.clone()]);
        assert_eq!(
            p.actions,
            [Action::Record(FileRecord {
                version: ours.version.merge(&same.version),
                signature: None,
                ..ours.clone()
            })]
        );

        // Our edit against their delete: re-announced, nothing trashed.
        let p = run([ours.clone()], [gone(&base)]);
        let [Action::Record(r)] = &p.actions[..] else {
            panic!("{:?}", p.actions);
        };
        assert!(!r.deleted && r.content == ours.content && r.signature.is_none());
        assert!(r.version.dominates(&gone(&base).version) && r.version.dominates(&ours.version));

        // Only a chmod on their side: attributes only.
        let chmod = FileRecord {
            mode: 0o600,
            ..newer(&base)
        };
        assert_eq!(
            run([base.clone()], [chmod.clone()]).actions,
            [Action::SetAttributes(chmod)]
        );

        // A tombstone for something we never had: recorded only.
        let t = gone(&file("never", b"x", 3, 1));
        assert_eq!(run([], [t.clone()]).actions, [Action::Record(t)]);
    }

    #[test]
    fn kind_changes_clear_the_old_thing_first() {
        let f = file("x", b"file", 3, 1);
        let to_link = FileRecord {
            kind: Kind::Symlink { target: "t".into() },
            content: Content::empty(),
            ..newer(&f)
        };
        assert_eq!(
            run([f.clone()], [to_link.clone()]).actions,
            [
                Action::Trash {
                    path: path("x"),
                    record: None
                },
                Action::Symlink(to_link)
            ]
        );
    }

    /// The path an action writes, trashes or records.
    fn target(a: &Action) -> &RelPath {
        match a {
            Action::ConflictRename { from, .. } => from,
            Action::Trash { path, .. } => path,
            Action::Move { record, .. } | Action::Copy { record, .. } => &record.path,
            Action::Dir(r)
            | Action::Fetch(r)
            | Action::SetAttributes(r)
            | Action::Symlink(r)
            | Action::Record(r) => &r.path,
        }
    }

    fn arb_tree() -> impl proptest::strategy::Strategy<Value = Vec<FileRecord>> {
        use proptest::prelude::*;
        const PATHS: [&str; 8] = ["a", "a/b", "a/b/c", "a/x", "l", "l/y", "f", "f/z"];
        prop::collection::vec(
            (
                0..PATHS.len(),
                0u8..4,
                any::<bool>(),
                1u64..4,
                1u64..4,
                0usize..2,
            ),
            0..8,
        )
        .prop_map(|items| {
            items
                .into_iter()
                .map(|(p, kind, deleted, dev, counter, bytes)| {
                    let bytes: &[u8] = [&b"one"[..], b"two"][bytes];
                    let mut r = match kind {
                        0 => dir(PATHS[p]),
                        1 => link(PATHS[p], "/elsewhere"),
                        _ => file(PATHS[p], bytes, dev, counter),
                    };
                    r.version = r.version.update(DeviceId(dev), counter);
                    if deleted {
                        r.deleted = true;
                        r.content = Content::empty();
                    }
                    r
                })
                .collect()
        })
    }

    proptest::proptest! {
        #[test]
        fn plans_are_ordered_and_never_reach_through_links(
            local in arb_tree(),
            remote in arb_tree(),
        ) {
            let local = index(local);
            let p = plan(&local, &index(remote), ME, 100);
            for (i, a) in p.actions.iter().enumerate() {
                let path = target(a);
                for later in &p.actions[i + 1..] {
                    let later_path = target(later);
                    // A directory is made before anything is made inside it
                    // (trash, records and conflict renames act on what exists).
                    if matches!(later, Action::Dir(_)) {
                        let makes = !matches!(
                            a,
                            Action::Trash { .. } | Action::Record(_) | Action::ConflictRename { .. }
                        );
                        proptest::prop_assert!(
                            !later_path.is_ancestor_of(path) || !makes,
                            "{:?} before {:?}", a, later
                        );
                    }
                    // A directory is trashed after everything inside it.
                    if matches!(a, Action::Trash { .. }) && matches!(later, Action::Trash { .. }) {
                        proptest::prop_assert!(!path.is_ancestor_of(later_path), "{:?} before {:?}", a, later);
                    }
                }
                if matches!(a, Action::Record(_)) {
                    continue;
                }
                // Never below a local symlink or file, unless it was
                // trashed by an earlier action.
                let mut parent = path.parent();
                while let Some(dir) = parent {
                    if local.get(&dir).is_some_and(|r| !r.deleted && r.kind != Kind::Dir) {
                        let cleared = p.actions[..i].iter().any(|b| {
                            matches!(b, Action::Trash { path, .. } | Action::ConflictRename { from: path, .. } if *path == dir)
                        });
                        proptest::prop_assert!(cleared, "{:?} below local {}", a, dir);
                    }
                    parent = dir.parent();
                }
            }
        }
    }
}
