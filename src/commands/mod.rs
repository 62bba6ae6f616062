//! One module per subcommand: the only place settings, engine and output
//! meet.

pub mod completion;
pub mod download;
pub mod magnet;
pub mod man;
pub mod serve;
pub mod status;
pub mod sync;

use p2pfile_engine::{Session, SessionConfig};

use crate::config::Settings;
use crate::error::{Failure, from_engine};
use crate::state::State;

/// Starts the engine with the global settings and extra DHT bootstrap
/// addresses (magnet peer hints).
pub async fn start_session(
    settings: &Settings,
    extra_bootstrap: &[std::net::SocketAddr],
) -> Result<Session, Failure> {
    let mut bootstrap = settings.peers.clone();
    for a in extra_bootstrap {
        if !bootstrap.contains(a) {
            bootstrap.push(*a);
        }
    }
    Session::start(SessionConfig {
        ip: settings.ip,
        port: settings.port.clone(),
        bootstrap,
        dht: true,
        upload_limit: settings.upload_limit,
        download_limit: settings.download_limit,
        extensions: Vec::new(),
        zone: settings.zone.clone(),
    })
    .await
    .map_err(from_engine)
}

/// SIGINT and SIGTERM, caught from the moment a command starts. The
/// streams live as long as the command, so a signal that arrives while the
/// command is busy elsewhere is kept, not lost.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Self, Failure> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Opens the state database named by the settings.
pub fn open_state(settings: &Settings) -> Result<State, Failure> {
    State::open(&settings.state).map_err(|e| state_failure(&settings.state, e))
}

/// A state database that cannot be opened, with the hint that fits: a
/// directory, a file that is not a database, or a place not writable.
pub fn state_failure(path: &std::path::Path, e: anyhow::Error) -> Failure {
    let not_a_database = e.chain().any(|c| c.to_string().contains("not a database"));
    let hint = if path.is_dir() {
        format!(
            "--state names a directory; give a file path such as {}",
            path.join(".p2pfile.db").display()
        )
    } else if not_a_database {
        format!(
            "{} is not a p2pfile state database; pass --state with another file, or move it away",
            path.display()
        )
    } else {
        "pass --state with a writable file path, or run from a writable directory".into()
    };
    Failure::new(crate::error::Code::Runtime, e).hint(hint)
}

/// Keeps the DHT nodes this run learned, to bootstrap from next time, and
/// forgets the remembered ones that did not answer.
pub async fn save_dht_nodes(state: &State, session: &Session) {
    let found = session.dht_nodes().await;
    let saved = state
        .forget_dht_nodes(&found.unanswered)
        .and_then(|()| state.save_dht_nodes(&found.nodes));
    if let Err(e) = saved {
        tracing::warn!(
            "cannot record DHT nodes in {}: {e:#}",
            state.path().display()
        );
    }
}

/// Files, sizes, modification times and execute bits: when these match the
/// record, the content is taken as unchanged: `serve` and `magnet` do not
/// hash it again, and a `download` whose recorded signature matches needs
/// no check at all. The bit is in the torrent (BEP 47 `x`) and a `chmod`
/// leaves the mtime alone. Only executables carry it, so a record made
/// before p2pfile carried the bit still matches a tree without executables,
/// whose info-hash is the same.
pub fn file_signature(scan: &p2pfile_engine::builder::Scan) -> String {
    let files: Vec<_> = scan
        .files
        .iter()
        .map(|f| {
            let mut sig = serde_json::json!([f.path.join("/"), f.length, f.mtime_ns.to_string()]);
            if f.executable {
                sig.as_array_mut()
                    .expect("an array")
                    .push(serde_json::json!("x"));
            }
            sig
        })
        .collect();
    serde_json::json!({"name": scan.name, "single": scan.single_file, "files": files, "empty_dirs": scan.empty_dirs}).to_string()
}
