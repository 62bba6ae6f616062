//! End-to-end tests of the `p2pfile` binary: separate processes on
//! separate 127.0.0.x addresses, as on a fleet.

mod admission;
mod ansible;
mod dht;
mod errors;
mod files;
mod hostile;
mod interop;
mod metadata;
mod metrics;
mod packaging;
mod placement;
mod rerun;
mod rollout;
mod seeding;
mod state;
mod sync;
mod terminal;
mod transfer;
mod usability;
mod util;
mod zones;
