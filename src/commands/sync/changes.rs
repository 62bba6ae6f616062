//! Changes on disk and in the index: the local scan, carrying out the
//! plan, and the records, events and sync-table rows that follow.

use super::*;

/// A row of the sync table waiting to be written.
pub(super) struct StatusRow {
    pub(super) peer: String,
    pub(super) path: String,
    pub(super) state: String,
    pub(super) detail: String,
}

/// Scans the folder off the async workers; returns the changed records.
pub(super) async fn scan_folder(
    fs: &FolderFs,
    folder: &Folder,
    device: DeviceId,
) -> Result<Vec<FileRecord>, Failure> {
    let root = fs.root().to_path_buf();
    let previous = folder.local().clone();
    let result = tokio::task::spawn_blocking(move || {
        scan::scan(&root, &previous, device, now_secs(), &mut FileHasher)
    })
    .await
    .expect("scan task panicked")
    .map_err(|e| Failure::new(Code::Runtime, e).hint("check that the folder is readable"))?;
    for s in &result.skipped {
        if s.reason.needs_attention() {
            tracing::warn!("not synced: {}: {}", s.path.display(), s.reason);
        } else {
            tracing::debug!("scan skipped {}: {}", s.path.display(), s.reason);
        }
    }
    Ok(result.changed)
}

/// Stores records in the state database in one transaction.
///
/// Unsigned local records (a read-only key's own edits) are stored too:
/// they are our view of the disk, never announced.
pub(super) fn save_records(state: &State, folder_id: &str, records: &[FileRecord]) {
    let rows: Vec<(String, Vec<u8>)> = records
        .iter()
        .map(|r| (r.path.to_string(), r.encode()))
        .collect();
    if let Err(e) = state.save_sync_records(folder_id, &rows) {
        tracing::warn!(
            "cannot record the folder index in {}: {e:#}",
            state.path().display()
        );
    }
}

impl Run {
    pub(super) async fn scan_and_announce(&mut self) -> Result<(), Failure> {
        let started = Instant::now();
        let changed = scan_folder(&self.fs, &self.folder, self.folder.device()).await?;
        tracing::debug!(
            changed = changed.len(),
            seconds = started.elapsed().as_secs_f64(),
            "scanned"
        );
        if changed.is_empty() {
            return Ok(());
        }
        for r in &changed {
            tracing::debug!(path = %r.path, deleted = r.deleted, "local change");
        }
        let stored = self.folder.local_changes(changed, self.fs.root());
        save_records(&self.state, &self.folder_id, &stored);
        let announce = self.folder.to_announce(&stored);
        self.announce(announce).await;
        self.replan = true;
        Ok(())
    }

    /// Makes the plan and carries out what can be done now; fetches start
    /// and finish later.
    pub(super) async fn carry_out_plan(&mut self) -> Result<(), Failure> {
        let plan = self.folder.plan(now_secs());
        tracing::debug!(
            actions = plan.actions.len(),
            skipped = plan.skipped.len(),
            "plan"
        );
        let fetching: HashSet<&RelPath> = self
            .fetches
            .values()
            .flat_map(|f| f.records.iter().map(|r| &r.path))
            .collect();
        let actions: Vec<Action> = plan
            .actions
            .into_iter()
            .filter(|a| match a {
                Action::Fetch(r) => !fetching.contains(&r.path),
                _ => true,
            })
            .collect();
        self.check_space(&actions)?;
        let mut announce = Vec::new();
        let mut to_fetch = Vec::new();
        for action in actions {
            match self.carry_out(action, &mut to_fetch).await {
                Ok(Some(r)) => announce.push(r),
                Ok(None) => {}
                Err(ApplyError::Changed(p)) => {
                    tracing::debug!("{} changed under the plan: scanning again", p.display());
                    self.rescan = true;
                }
                Err(e) => {
                    let msg = format!("{:#}", anyhow!(e));
                    tracing::warn!("{msg}");
                    self.summary.failed += 1;
                    self.out.event("failed", json!({"message": msg}));
                }
            }
        }
        self.start_fetches(to_fetch).await;
        self.flush();
        self.announce(announce).await;
        Ok(())
    }

    /// Carries out one action; returns the record to announce.
    pub(super) async fn carry_out(
        &mut self,
        action: Action,
        to_fetch: &mut Vec<FileRecord>,
    ) -> Result<Option<FileRecord>, ApplyError> {
        let now = SystemTime::now();
        let local = |f: &Folder, p: &RelPath| f.local().get(p).filter(|r| !r.deleted).cloned();
        match action {
            Action::ConflictRename { from, to } => {
                // Our version moves aside only when the winner is here to
                // take its place (a fetch can take a while, or fail).
                self.conflicts_pending.insert(from, to);
                Ok(None)
            }
            Action::Trash { path, record } => {
                let expected = local(&self.folder, &path);
                self.fs.delete(&path, expected.as_ref(), now)?;
                match record {
                    Some(r) => {
                        self.summary.deleted += 1;
                        self.event_file("file_deleted", &path, json!({}));
                        Ok(self.applied(r))
                    }
                    None => Ok(None),
                }
            }
            Action::Dir(r) => {
                let expected = self.vacate(&r.path).await?;
                self.fs.make_dir(&r, expected.as_ref())?;
                Ok(self.applied(r))
            }
            Action::Symlink(r) => {
                let expected = self.vacate(&r.path).await?;
                self.fs.make_symlink(&r, expected.as_ref(), now)?;
                self.count_file(&r, expected.is_some());
                Ok(self.applied(r))
            }
            Action::SetAttributes(r) => {
                let expected = local(&self.folder, &r.path);
                let full = self.fs.path(&r.path);
                let same_bytes = expected.as_ref().is_some_and(|e| e.same_content(&r));
                if !same_bytes || !self.fs.matches(&r.path, expected.as_ref()) {
                    return Err(ApplyError::Changed(full));
                }
                set_mode_and_mtime(&full, r.mode, r.mtime)
                    .map_err(|source| ApplyError::Io { path: full, source })?;
                Ok(self.applied(r))
            }
            Action::Move { from, record } => {
                let source = local(&self.folder, &from)
                    .ok_or_else(|| ApplyError::Changed(self.fs.path(&from)))?;
                if !self.fs.matches(&from, Some(&source)) {
                    return Err(ApplyError::Changed(self.fs.path(&from)));
                }
                let expected = self.vacate(&record.path).await?;
                self.fs
                    .commit_file(&self.fs.path(&from), &record, expected.as_ref(), now)?;
                self.count_file(&record, expected.is_some());
                Ok(self.applied(record))
            }
            Action::Copy { from, record } => {
                let source = local(&self.folder, &from)
                    .ok_or_else(|| ApplyError::Changed(self.fs.path(&from)))?;
                if !self.fs.matches(&from, Some(&source)) {
                    return Err(ApplyError::Changed(self.fs.path(&from)));
                }
                let tmp = self
                    .fs
                    .copy_to_tmp(&self.fs.path(&from), &hex(&record.content.id()))
                    .map_err(|e| ApplyError::Io {
                        path: self.fs.path(&from),
                        source: e,
                    })?;
                let expected = self.vacate(&record.path).await?;
                let res = self.fs.commit_file(&tmp, &record, expected.as_ref(), now);
                if res.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                res?;
                self.count_file(&record, expected.is_some());
                Ok(self.applied(record))
            }
            Action::Fetch(record) => {
                if record.size() == 0 {
                    let tmp = self
                        .fs
                        .tmp_dir()
                        .join(format!("empty-{}", std::process::id()));
                    std::fs::write(&tmp, b"").map_err(|e| ApplyError::Io {
                        path: tmp.clone(),
                        source: e,
                    })?;
                    let expected = self.vacate(&record.path).await?;
                    self.fs.commit_file(&tmp, &record, expected.as_ref(), now)?;
                    self.count_file(&record, expected.is_some());
                    return Ok(self.applied(record));
                }
                to_fetch.push(record);
                Ok(None)
            }
            Action::Record(r) => Ok(self.applied(r)),
        }
    }

    /// What `path` must hold before a new version goes there. A conflict
    /// loser waiting there is first moved to its conflict name (and
    /// recorded as a new file of ours), so nothing is expected.
    pub(super) async fn vacate(
        &mut self,
        path: &RelPath,
    ) -> Result<Option<FileRecord>, ApplyError> {
        let current = self
            .folder
            .local()
            .get(path)
            .filter(|r| !r.deleted)
            .cloned();
        let Some(to) = self.conflicts_pending.remove(path) else {
            return Ok(current);
        };
        let expected = current.ok_or_else(|| ApplyError::Changed(self.fs.path(path)))?;
        self.fs.rename(path, &to, &expected)?;
        self.summary.conflicts += 1;
        self.event_file("conflict", path, json!({"kept_as": to.to_string()}));
        // Our losing version, under its new name: a new file of ours.
        let mut moved = expected;
        moved.path = to;
        moved.version = VersionVector::new().update(self.folder.device(), now_secs());
        moved.modified_by = self.folder.device();
        moved.signature = None;
        let stored = self.folder.local_changes(vec![moved], self.fs.root());
        save_records(&self.state, &self.folder_id, &stored);
        let announce = self.folder.to_announce(&stored);
        self.announce(announce).await;
        Ok(None)
    }

    /// Stores an applied record (signed as needed) and says what to announce.
    pub(super) fn applied(&mut self, record: FileRecord) -> Option<FileRecord> {
        let record = self.folder.seal(record);
        self.unsaved.push(record.clone());
        self.status(&record, "done", "");
        self.folder.applied(record, self.fs.root())
    }

    /// Notes a row of the sync table (written with the next flush).
    pub(super) fn status(&mut self, r: &FileRecord, state: &str, detail: &str) {
        self.status_rows.push(StatusRow {
            peer: r.modified_by.to_string(),
            path: r.path.to_string(),
            state: state.to_string(),
            detail: detail.to_string(),
        });
    }

    /// Writes what changed to the state database in one transaction each
    /// for records and the sync table: thousands of files cost two commits,
    /// not thousands.
    pub(super) fn flush(&mut self) {
        if !self.unsaved.is_empty() {
            save_records(
                &self.state,
                &self.folder_id,
                &std::mem::take(&mut self.unsaved),
            );
        }
        if !self.status_rows.is_empty() {
            let rows: Vec<_> = std::mem::take(&mut self.status_rows)
                .into_iter()
                .map(|r| (r.peer, r.path, r.state, r.detail))
                .collect();
            if let Err(e) = self.state.set_sync_statuses(&self.folder_id, &rows) {
                tracing::warn!(
                    "cannot record the sync table in {}: {e:#}",
                    self.state.path().display()
                );
            }
        }
    }

    pub(super) fn count_file(&mut self, r: &FileRecord, existed: bool) {
        let (event, counter) = if existed {
            ("file_changed", &mut self.summary.changed)
        } else {
            ("file_added", &mut self.summary.added)
        };
        *counter += 1;
        self.event_file(
            event,
            &r.path,
            json!({"bytes": r.size(), "from": r.modified_by.to_string()}),
        );
    }

    pub(super) fn event_file(&self, event: &str, path: &RelPath, mut fields: serde_json::Value) {
        fields["path"] = json!(path.to_string());
        if self.out.is_json() {
            self.out.event(event, fields);
        } else {
            let verb = event.trim_start_matches("file_");
            self.out.line(&format!("{verb} {path}"));
        }
    }

    pub(super) fn failed(&mut self, path: &RelPath, message: &str) {
        self.summary.failed += 1;
        let _ = self
            .state
            .set_sync_status(&self.folder_id, "", path.as_str(), "failed", message);
        self.flush();
        self.out.event(
            "failed",
            json!({"path": path.to_string(), "message": message}),
        );
        tracing::warn!("cannot sync {path}: {message}");
    }
}
