//! Exit codes and error rendering: the one table scripts rely on (also in
//! `--help` and the README).

use std::fmt;

/// Exit codes. Keep in step with `cli::EXIT_CODES`, the per-subcommand
/// tables in `cli` (`serve_exit_codes` …) and the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 1: runtime failure.
    Runtime = 1,
    /// 2: usage, config or input error.
    Usage = 2,
    /// 3: finished but incomplete (timeout, no peer).
    Incomplete = 3,
    /// 4: the port (or every port of the range) is taken.
    PortUnavailable = 4,
    /// 130: interrupted, after a clean shutdown.
    Interrupted = 130,
}

/// An error on its way to `main`: what to print, and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub error: anyhow::Error,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(code: Code, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
            hint: None,
        }
    }

    /// A usage or input error with a hint.
    pub fn usage(error: impl Into<anyhow::Error>, hint: impl Into<String>) -> Self {
        Self::new(Code::Usage, error).hint(hint)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Interrupted by a signal; nothing to print.
    pub fn interrupted() -> Self {
        Self::new(Code::Interrupted, anyhow::anyhow!("interrupted"))
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::new(Code::Runtime, e)
    }
}

impl fmt::Display for Failure {
    /// `error: …`, one `caused by: …` per cause, then the hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.error)?;
        for cause in self.error.chain().skip(1) {
            write!(f, "\n  caused by: {cause}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Classifies an engine error: which exit code, which hint.
pub fn from_engine(e: p2pfile_engine::Error) -> Failure {
    use p2pfile_engine::Error as E;
    match e {
        E::PortTaken { .. } => Failure::new(Code::PortUnavailable, e)
            .hint("choose another --port, or use --port-range to pick a free one"),
        E::NoFreePort { .. } => Failure::new(Code::PortUnavailable, e)
            .hint("stop other p2pfile processes on this address or widen --port-range"),
        E::Bind { .. } => Failure::usage(e, "--ip must be an IPv4 address of this host"),
        E::Build(_) | E::Metainfo(_) => {
            Failure::usage(e, "check that the path exists and is readable")
        }
        E::Duplicate(_) => Failure::usage(e, "give each source once"),
        E::InvalidLimit(_) => Failure::usage(e, "use 0.016 MiB/s or more, or 0 for no limit"),
        E::InvalidZone(_) => Failure::usage(e, "name the zone like dc1, rack-7 or eu-west.a"),
        E::Storage { .. }
        | E::Closed
        | E::UnknownTorrent(_)
        | E::UnknownExtension(_)
        | E::SeedFilesCount { .. }
        | E::SeedFilesNeedInfo => Failure::new(Code::Runtime, e),
    }
}
