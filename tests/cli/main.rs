//! End-to-end tests of the `p2pfile` binary: separate processes on
//! separate 127.0.0.x addresses, as on a fleet.

mod dht;
mod errors;
mod interop;
mod seeding;
mod state;
mod sync;
mod transfer;
mod util;
