//! The merge rules: what to do when a peer's record for a path arrives.
//!
//! This is where sync tools lose data, so the rules are few, pure and
//! symmetric:
//!
//! 1. The remote version is not newer (Equal or Lesser): keep ours.
//! 2. The remote version is newer (Greater): take it, a tombstone included
//!    (the caller moves the local file to the trash, never unlinks it).
//! 3. Concurrent versions with the same content (same kind and content id,
//!    or both deleted): no conflict, adopt the merged version and move no
//!    data. This covers folders filled by copying before the peers met.
//! 4. Concurrent, one side deleted and the other modified: the
//!    modification wins. A delete never beats a modification.
//! 5. Concurrent, different content: a conflict. Both versions are kept;
//!    the loser under a `.sync-conflict-` name. Both peers pick the same
//!    winner, so they agree on which copy keeps the name.

use std::cmp::Ordering;

use super::index::{FileRecord, Kind, MAX_NAME_LEN, Mtime, RelPath};
use super::version::{DeviceId, Ordering4, VersionVector};
pub(crate) use p2pfile_engine::utc::utc_stamp;

/// One of the two records being compared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The record in our own index.
    Local,
    /// The record a peer sent.
    Remote,
}

/// What to do with a remote record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Decision {
    /// Ours is as new or newer: nothing to do.
    Keep,
    /// Fast-forward: adopt the remote record and make the disk match it
    /// (fetch the content, create the directory or link, or just record a
    /// tombstone we did not have). Before replacing a local file the caller
    /// checks the file still matches our record, so an edit made since the
    /// last scan is scanned and merged first, never overwritten.
    Take,
    /// Fast-forward to a tombstone: adopt it and move the local file to the
    /// trash (never unlink: the trash is the undo).
    Delete,
    /// Same content on both sides: adopt `version` (the merge of both) and
    /// touch nothing on disk. The local mode and mtime stay as they are.
    Merge {
        /// The merged version to record.
        version: VersionVector,
    },
    /// Our modification beats the remote delete: keep the file and announce
    /// it again with `version`, which is newer than both, so the peer that
    /// deleted it takes it back.
    KeepLocal {
        /// The merged version bumped by this device.
        version: VersionVector,
    },
    /// Concurrent edits with different content: both are kept.
    ///
    /// If `winner` is [`Side::Local`], nothing changes here: the peer holds
    /// the loser, keeps it under `loser_name` and takes ours. If `winner` is
    /// [`Side::Remote`], the local file is renamed to `loser_name` (which the
    /// next scan records as a new file, so it syncs back) and the remote
    /// record is taken with `version`, so it dominates both edits.
    Conflict {
        /// Whose content keeps the path.
        winner: Side,
        /// Where the loser's content is kept.
        loser_name: RelPath,
        /// The merge of both versions, for the side that took the winner.
        version: VersionVector,
    },
}

/// Decides what to do with `remote`, given our record for the same path
/// (`None` if the path is unknown here: the caller scans before merging, so
/// nothing unrecorded is on disk). `local_device` and `now_secs` stamp the
/// version when our modification must be re-announced.
pub fn decide(
    local: Option<&FileRecord>,
    remote: &FileRecord,
    local_device: DeviceId,
    now_secs: u64,
) -> Decision {
    debug_assert!(
        local.is_none_or(|l| l.path == remote.path),
        "bug: merging records of different paths"
    );
    // Unknown here: take it, a tombstone too, so a stale peer that still
    // has the file later cannot bring it back.
    let Some(local) = local else {
        return Decision::Take;
    };
    match remote.version.compare(&local.version) {
        Ordering4::Equal | Ordering4::Lesser => Decision::Keep,
        Ordering4::Greater if remote.deleted && !local.deleted => Decision::Delete,
        Ordering4::Greater => Decision::Take,
        Ordering4::Concurrent => {
            let version = local.version.merge(&remote.version);
            if local.same_content(remote) {
                Decision::Merge { version }
            } else if remote.deleted {
                Decision::KeepLocal {
                    version: version.update(local_device, now_secs),
                }
            } else if local.deleted {
                Decision::Take
            } else {
                let (winner, loser) = match rank(local, remote) {
                    Ordering::Greater => (Side::Local, remote),
                    _ => (Side::Remote, local),
                };
                Decision::Conflict {
                    winner,
                    loser_name: conflict_name(&loser.path, loser.mtime, loser.modified_by),
                    version,
                }
            }
        }
    }
}

/// Orders two live records with different content; the greater wins the
/// conflict. Both peers must compute the same winner, so it uses only
/// record fields, in this order:
///
/// 1. a directory beats a file or symlink (renaming a directory aside would
///    move everything under it);
/// 2. the later mtime (the newer edit, as Syncthing does);
/// 3. the larger `modified_by` device id;
/// 4. content id, then symlink target: only reached when one device made
///    two different versions with the same mtime, and makes the order total.
fn rank(a: &FileRecord, b: &FileRecord) -> Ordering {
    fn key(r: &FileRecord) -> (bool, Mtime, DeviceId, [u8; 20], &str) {
        let target = match &r.kind {
            Kind::Symlink { target } => target.as_str(),
            Kind::File | Kind::Dir => "",
        };
        (
            r.kind == Kind::Dir,
            r.mtime,
            r.modified_by,
            r.content.id(),
            target,
        )
    }
    key(a).cmp(&key(b))
}

/// The name a conflict loser is kept under, as Syncthing names it:
/// `<base>.sync-conflict-YYYYMMDD-HHMMSS-<device><ext>`, in the same
/// directory. The time is the loser's mtime in UTC; `<device>` the short id
/// of the device that made the losing edit; `<ext>` the file name from its
/// last dot (`c.tar.gz` → `c.tar.sync-conflict-…-XXXXXXX.gz`), none for a
/// name without a dot or whose only dot leads (`.bashrc`).
///
/// The base is shortened if needed so the name stays within
/// [`MAX_NAME_LEN`] bytes; times outside 1970–9999 are clamped so the stamp
/// keeps its shape whatever a peer claims.
pub fn conflict_name(path: &RelPath, mtime: Mtime, device: DeviceId) -> RelPath {
    let name = path.file_name();
    let suffix = format!(".sync-conflict-{}-{device}", utc_stamp(mtime.secs));
    let (mut base, mut ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    };
    if suffix.len() + ext.len() > MAX_NAME_LEN {
        (base, ext) = (name, "");
    }
    let budget = MAX_NAME_LEN - suffix.len() - ext.len();
    if base.len() > budget {
        let mut end = budget;
        while !base.is_char_boundary(end) {
            end -= 1;
        }
        base = &base[..end];
    }
    path.with_file_name(&format!("{base}{suffix}{ext}"))
        .expect("bug: a conflict name breaks a path rule")
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, for people (status tables).
pub(crate) fn utc_time(secs: i64) -> String {
    let s = utc_stamp(secs);
    format!(
        "{}-{}-{} {}:{}:{}",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::index::Content;
    use crate::sync::index::tests::{file, path};
    use proptest::prelude::*;

    const A: DeviceId = DeviceId(1);
    const B: DeviceId = DeviceId(2);

    fn tombstone(of: &FileRecord, device: DeviceId, now: u64) -> FileRecord {
        FileRecord {
            deleted: true,
            content: Content::empty(),
            version: of.version.update(device, now),
            modified_by: device,
            ..of.clone()
        }
    }

    fn edit(of: &FileRecord, bytes: &[u8], device: DeviceId, now: u64, secs: i64) -> FileRecord {
        FileRecord {
            content: Content::from_reader(bytes, bytes.len() as u64).unwrap(),
            version: of.version.update(device, now),
            modified_by: device,
            mtime: Mtime { secs, nanos: 0 },
            ..of.clone()
        }
    }

    #[test]
    fn unknown_path_is_taken_even_as_a_tombstone() {
        let r = file("a", b"x", 2, 1);
        assert_eq!(decide(None, &r, A, 0), Decision::Take);
        assert_eq!(decide(None, &tombstone(&r, B, 2), A, 0), Decision::Take);
    }

    #[test]
    fn older_or_equal_remote_is_kept_out() {
        let base = file("a", b"x", 2, 1);
        let newer = edit(&base, b"y", A, 2, 10);
        assert_eq!(decide(Some(&base), &base, A, 0), Decision::Keep);
        assert_eq!(decide(Some(&newer), &base, A, 0), Decision::Keep);
        assert_eq!(
            decide(Some(&tombstone(&base, A, 5)), &base, A, 0),
            Decision::Keep
        );
    }

    #[test]
    fn newer_remote_fast_forwards() {
        let base = file("a", b"x", 2, 1);
        let newer = edit(&base, b"y", B, 2, 10);
        assert_eq!(decide(Some(&base), &newer, A, 0), Decision::Take);
        let gone = tombstone(&base, B, 2);
        assert_eq!(decide(Some(&base), &gone, A, 0), Decision::Delete);
        // Already deleted here: only the record moves forward.
        let ours = tombstone(&base, A, 2);
        let theirs = tombstone(&ours, B, 3);
        assert_eq!(decide(Some(&ours), &theirs, A, 0), Decision::Take);
        // Coming back after a delete is a plain fast-forward too.
        assert_eq!(
            decide(Some(&gone), &edit(&gone, b"z", B, 3, 20), A, 0),
            Decision::Take
        );
    }

    #[test]
    fn same_content_is_never_a_conflict() {
        // Two folders filled by copying before the peers met.
        let a = file("a", b"same", 1, 100);
        let b = FileRecord {
            mtime: Mtime { secs: 5, nanos: 0 },
            mode: 0o600,
            ..file("a", b"same", 2, 200)
        };
        let version = a.version.merge(&b.version);
        assert_eq!(
            decide(Some(&a), &b, A, 0),
            Decision::Merge {
                version: version.clone()
            }
        );
        assert_eq!(decide(Some(&b), &a, B, 0), Decision::Merge { version });
        // Both deleted concurrently: nothing to argue about.
        let base = file("a", b"x", 3, 1);
        let (da, db) = (tombstone(&base, A, 2), tombstone(&base, B, 2));
        assert!(matches!(
            decide(Some(&da), &db, A, 0),
            Decision::Merge { .. }
        ));
    }

    #[test]
    fn a_modification_beats_a_concurrent_delete() {
        let base = file("a", b"x", 3, 1);
        let modified = edit(&base, b"kept", A, 2, 10);
        let deleted = tombstone(&base, B, 2);
        let d = decide(Some(&modified), &deleted, A, 50);
        let Decision::KeepLocal { version } = d else {
            panic!("{d:?}");
        };
        assert_eq!(version.compare(&modified.version), Ordering4::Greater);
        assert_eq!(version.compare(&deleted.version), Ordering4::Greater);
        assert_eq!(version.get(A), 50);
        // The other side takes the modification.
        assert_eq!(decide(Some(&deleted), &modified, B, 50), Decision::Take);
        // And after it is re-announced, the deleter fast-forwards to it.
        let reannounced = FileRecord {
            version,
            ..modified
        };
        assert_eq!(decide(Some(&deleted), &reannounced, B, 60), Decision::Take);
    }

    #[test]
    fn different_content_is_a_conflict_won_by_the_later_mtime() {
        let base = file("docs/c.tar.gz", b"x", 3, 1);
        let ours = edit(&base, b"ours", A, 2, 1_700_000_000);
        let theirs = edit(&base, b"theirs", B, 2, 1_700_000_100);
        let version = ours.version.merge(&theirs.version);
        let loser_name = path(&format!("docs/c.tar.sync-conflict-20231114-221320-{A}.gz"));
        assert_eq!(
            decide(Some(&ours), &theirs, A, 0),
            Decision::Conflict {
                winner: Side::Remote,
                loser_name: loser_name.clone(),
                version: version.clone()
            }
        );
        assert_eq!(
            decide(Some(&theirs), &ours, B, 0),
            Decision::Conflict {
                winner: Side::Local,
                loser_name,
                version
            }
        );
    }

    #[test]
    fn conflict_ties_go_to_the_larger_device_then_to_directories_first() {
        let base = file("f", b"x", 3, 1);
        let ours = edit(&base, b"ours", A, 2, 77);
        let theirs = edit(&base, b"theirs", B, 2, 77);
        let d = decide(Some(&ours), &theirs, A, 0);
        assert!(
            matches!(
                d,
                Decision::Conflict {
                    winner: Side::Remote,
                    ..
                }
            ),
            "{d:?}"
        );
        let d = decide(Some(&theirs), &ours, B, 0);
        assert!(
            matches!(
                d,
                Decision::Conflict {
                    winner: Side::Local,
                    ..
                }
            ),
            "{d:?}"
        );

        // A directory wins against a newer file, from either side.
        let dir = FileRecord {
            kind: Kind::Dir,
            content: Content::empty(),
            ..edit(&base, b"", A, 2, 1)
        };
        let d = decide(Some(&dir), &theirs, A, 0);
        assert!(
            matches!(
                d,
                Decision::Conflict {
                    winner: Side::Local,
                    ..
                }
            ),
            "{d:?}"
        );
        let d = decide(Some(&theirs), &dir, B, 0);
        assert!(
            matches!(
                d,
                Decision::Conflict {
                    winner: Side::Remote,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn conflict_names() {
        let t = Mtime {
            secs: 1_234_567_890,
            nanos: 999,
        };
        let dev = DeviceId(0x0123_4567_89ab_cdef);
        let cases = [
            (
                "a/b/c.tar.gz",
                "a/b/c.tar.sync-conflict-20090213-233130-AERUKZ4.gz",
            ),
            (
                "notes.txt",
                "notes.sync-conflict-20090213-233130-AERUKZ4.txt",
            ),
            ("Makefile", "Makefile.sync-conflict-20090213-233130-AERUKZ4"),
            (
                "d/.bashrc",
                "d/.bashrc.sync-conflict-20090213-233130-AERUKZ4",
            ),
            (
                ".config.bak",
                ".config.sync-conflict-20090213-233130-AERUKZ4.bak",
            ),
            ("trail.", "trail.sync-conflict-20090213-233130-AERUKZ4."),
            (
                "dir.d/file",
                "dir.d/file.sync-conflict-20090213-233130-AERUKZ4",
            ),
        ];
        for (from, to) in cases {
            assert_eq!(conflict_name(&path(from), t, dev).as_str(), to);
        }
        // Long names are shortened to fit, on a character boundary.
        let long = format!("{}.txt", "é".repeat(125));
        let named = conflict_name(&path(&long), t, dev);
        assert!(named.as_str().len() <= MAX_NAME_LEN);
        assert!(named.as_str().ends_with("-AERUKZ4.txt"), "{named:?}");
        let long_ext = format!("x.{}", "e".repeat(250));
        let named = conflict_name(&path(&long_ext), t, dev);
        assert!(named.as_str().len() <= MAX_NAME_LEN);
        assert!(named.as_str().ends_with("-AERUKZ4"), "{named:?}");
        // Absurd times keep the stamp's shape.
        let past = conflict_name(&path("p"), Mtime { secs: -5, nanos: 0 }, dev);
        assert_eq!(past.as_str(), "p.sync-conflict-19700101-000000-AERUKZ4");
        let future = conflict_name(
            &path("p"),
            Mtime {
                secs: i64::MAX,
                nanos: 0,
            },
            dev,
        );
        assert_eq!(future.as_str(), "p.sync-conflict-99991231-235959-AERUKZ4");
    }

    /// Records for one path as two peers might hold them: small ranges so
    /// every relation (equal, newer, concurrent) and every tie shows up.
    fn arb_record() -> impl Strategy<Value = FileRecord> {
        (
            prop::collection::btree_map(1u64..4, 1u64..4, 1..4),
            0usize..3,
            any::<bool>(),
            0u8..6,
            0i64..3,
            1u64..4,
        )
            .prop_map(|(counters, content, deleted, kind, secs, by)| {
                let mut version = VersionVector::new();
                for (d, c) in counters {
                    version = version.update(DeviceId(d), c);
                }
                let bytes: &[u8] = [&b""[..], b"one", b"two"][content];
                let kind = match kind {
                    0 => Kind::Dir,
                    1 => Kind::Symlink {
                        target: format!("t{content}"),
                    },
                    _ => Kind::File,
                };
                let content = if deleted || kind != Kind::File {
                    Content::empty()
                } else {
                    Content::from_reader(bytes, bytes.len() as u64).unwrap()
                };
                FileRecord {
                    kind,
                    deleted,
                    content,
                    version,
                    modified_by: DeviceId(by),
                    mtime: Mtime { secs, nanos: 0 },
                    ..file("p", b"", 1, 1)
                }
            })
    }

    /// What a peer holds after applying `d`: its record for the path, and
    /// any other live copy it keeps (a renamed conflict loser).
    fn apply(
        d: &Decision,
        local: &FileRecord,
        remote: &FileRecord,
    ) -> (FileRecord, Option<FileRecord>) {
        match d {
            Decision::Keep
            | Decision::Conflict {
                winner: Side::Local,
                ..
            } => (local.clone(), None),
            Decision::Take | Decision::Delete => (remote.clone(), None),
            Decision::Merge { version } | Decision::KeepLocal { version } => (
                FileRecord {
                    version: version.clone(),
                    ..local.clone()
                },
                None,
            ),
            Decision::Conflict {
                winner: Side::Remote,
                version,
                loser_name,
            } => (
                FileRecord {
                    version: version.clone(),
                    ..remote.clone()
                },
                Some(FileRecord {
                    path: loser_name.clone(),
                    ..local.clone()
                }),
            ),
        }
    }

    fn live_contents(held: &(FileRecord, Option<FileRecord>)) -> Vec<(Kind, [u8; 20])> {
        [Some(&held.0), held.1.as_ref()]
            .into_iter()
            .flatten()
            .filter(|r| !r.deleted)
            .map(|r| (r.kind.clone(), r.content.id()))
            .collect()
    }

    fn mirrored(d: &Decision) -> Decision {
        match d.clone() {
            Decision::Conflict {
                winner: Side::Local,
                loser_name,
                version,
            } => Decision::Conflict {
                winner: Side::Remote,
                loser_name,
                version,
            },
            Decision::Conflict {
                winner: Side::Remote,
                loser_name,
                version,
            } => Decision::Conflict {
                winner: Side::Local,
                loser_name,
                version,
            },
            other => other,
        }
    }

    proptest! {
        #[test]
        fn decide_is_deterministic_and_symmetric(a in arb_record(), b in arb_record()) {
            let da = decide(Some(&a), &b, A, 9);
            prop_assert_eq!(&da, &decide(Some(&a), &b, A, 9));
            let db = decide(Some(&b), &a, B, 9);
            match (&da, &db) {
                (Decision::Conflict { .. }, _) | (_, Decision::Conflict { .. }) => {
                    prop_assert_eq!(mirrored(&da), db);
                }
                (Decision::Merge { .. }, _) | (_, Decision::Merge { .. }) => {
                    prop_assert_eq!(da, db);
                }
                _ => {}
            }
        }

        #[test]
        fn no_decision_loses_a_live_version(a in arb_record(), b in arb_record()) {
            let at_a = apply(&decide(Some(&a), &b, A, 9), &a, &b);
            let at_b = apply(&decide(Some(&b), &a, B, 9), &b, &a);
            let mut kept = live_contents(&at_a);
            kept.extend(live_contents(&at_b));
            // A version the other side has seen (and replaced or deleted)
            // may go; any other live version must survive somewhere.
            for (x, other) in [(&a, &b), (&b, &a)] {
                if !x.deleted && x.version.compare(&other.version) != Ordering4::Lesser {
                    prop_assert!(
                        kept.contains(&(x.kind.clone(), x.content.id())),
                        "lost {:?}; kept {:?}", x, kept
                    );
                }
            }
        }

        #[test]
        fn peers_converge_and_keep_every_live_version(a in arb_record(), b in arb_record()) {
            // Equal versions with different content only come from a bug or
            // a hostile peer; the rules keep both sides' data, nothing more.
            prop_assume!(a.version != b.version || a.same_content(&b));
            let (mut x, mut y) = (a.clone(), b.clone());
            let mut copies = Vec::new();
            for round in 0.. {
                prop_assert!(round < 4, "no agreement: {:?} / {:?}", x, y);
                if x.version == y.version && x.same_content(&y) {
                    break;
                }
                let (nx, copy_x) = apply(&decide(Some(&x), &y, A, 9), &x, &y);
                let (ny, copy_y) = apply(&decide(Some(&y), &x, B, 9), &y, &x);
                copies.extend(copy_x.into_iter().chain(copy_y));
                (x, y) = (nx, ny);
            }
            // Once they agree, every live version neither side had replaced
            // is still there: at the path or as a conflict copy.
            let mut kept = live_contents(&(x, None));
            for c in &copies {
                kept.extend(live_contents(&(c.clone(), None)));
            }
            for (v, other) in [(&a, &b), (&b, &a)] {
                if !v.deleted && v.version.compare(&other.version) != Ordering4::Lesser {
                    prop_assert!(
                        kept.contains(&(v.kind.clone(), v.content.id())),
                        "lost {:?}; kept {:?}", v, kept
                    );
                }
            }
        }
    }
}
