//! The folder key and the folder itself: `DIR/.p2pfile/key`, the checks
//! before a folder is synced, and `--show-keys`.

use super::*;

/// Name of the key file inside `DIR/.p2pfile/`.
pub(super) const KEY_FILE: &str = "key";

/// The folder as given: an existing directory, made absolute.
pub(super) fn folder_dir(dir: &Path) -> Result<PathBuf, Failure> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())),
        Ok(_) => Err(Failure::usage(
            anyhow!("cannot sync {}: not a directory", dir.display()),
            "sync takes a directory; put the file in one",
        )),
        Err(_) => Err(Failure::usage(
            anyhow!("cannot sync {}: no such directory", dir.display()),
            format!("create it first: mkdir -p {}", dir.display()),
        )),
    }
}

/// The folder's key: the one given (remembered for next time when the
/// folder has none, or has only the read-only one), else the one in
/// `DIR/.p2pfile/key`, else a new read-write key.
pub(super) fn folder_key(fs: &FolderFs, given: Option<&str>) -> Result<FolderKey, Failure> {
    let path = fs.private_dir().join(KEY_FILE);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<FolderKey>().map_err(|e| {
            Failure::new(
                Code::Runtime,
                anyhow!(e).context(format!("{} is damaged", path.display())),
            )
            .hint("pass the folder's key with --key to replace it")
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Failure::new(
                Code::Runtime,
                anyhow!(e).context(format!("cannot read {}", path.display())),
            )
            .hint("check that the folder's .p2pfile directory is readable by this user"));
        }
    };
    let given = given
        .map(|k| {
            k.trim().parse::<FolderKey>().map_err(|e| {
                Failure::usage(
                    anyhow!(e).context("bad --key"),
                    "copy the whole key that `p2pfile sync DIR --show-keys` prints on a peer",
                )
            })
        })
        .transpose()?;
    let key = match (stored, given) {
        (Some(s), Some(g)) if s.folder_id() != g.folder_id() => {
            return Err(Failure::usage(
                anyhow!(
                    "{} is already synced as folder {} with another key",
                    fs.root().display(),
                    s.folder_id()
                ),
                "pass that folder's key, or sync another directory",
            ));
        }
        (Some(s), Some(g)) => {
            if g.can_write() && !s.can_write() {
                store_key(&path, &g)?;
            }
            g
        }
        (Some(s), None) => s,
        (None, Some(g)) => {
            store_key(&path, &g)?;
            g
        }
        (None, None) => {
            let k = FolderKey::generate()?;
            store_key(&path, &k)?;
            k
        }
    };
    Ok(key)
}

pub(super) fn store_key(path: &Path, key: &FolderKey) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{key}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write()
        .with_context(|| format!("cannot write the folder key to {}", path.display()))
        .map_err(|e| Failure::new(Code::Runtime, e).hint("check the folder is writable"))
}

/// Prepares `DIR/.p2pfile/`, refusing a folder whose private directory
/// vanished while the state database still knows its files: that is what
/// an unmounted disk looks like, and syncing it would delete everything on
/// every peer.
pub(super) fn prepare_folder(
    fs: &FolderFs,
    state: &State,
    given: Option<&str>,
) -> Result<FolderKey, Failure> {
    if !fs.private_dir().is_dir()
        && let Some(k) = given.and_then(|k| k.trim().parse::<FolderKey>().ok())
    {
        let known = state.sync_records(&k.folder_id().to_string())?.len();
        if known > 0 {
            return Err(Failure::new(
                Code::Runtime,
                anyhow!(
                    "{} has no .p2pfile directory, but this state database knows {known} of its files",
                    fs.root().display()
                ),
            )
            .hint("check that the disk is mounted; to start the folder over, use another --state"));
        }
    }
    fs.create_private_dirs()
        .with_context(|| format!("cannot create {}", fs.private_dir().display()))
        .map_err(|e| Failure::new(Code::Runtime, e).hint("check that the folder is writable"))?;
    folder_key(fs, given)
}

/// `p2pfile sync DIR --show-keys`: needs no network.
pub fn show_keys(
    args: &SyncArgs,
    file: &FileValues,
    state_path: &Path,
    json: bool,
) -> Result<(), Failure> {
    let dir = folder_dir(&args.dir)?;
    let fs = FolderFs::new(&dir);
    let state =
        State::open(state_path).map_err(|e| crate::commands::state_failure(state_path, e))?;
    let key = prepare_folder(&fs, &state, file.pick(&args.key, "key").as_deref())?;
    let out = Output::new(json);
    let rw = key.can_write().then(|| key.to_string());
    let ro = key.read_only().to_string();
    if out.is_json() {
        out.event(
            "keys",
            json!({"folder": key.folder_id().to_string(), "path": dir.display().to_string(), "rw": rw, "ro": ro}),
        );
    } else {
        if let Some(rw) = rw {
            out.line(&format!("rw {rw}"));
        }
        out.line(&format!("ro {ro}"));
    }
    Ok(())
}
