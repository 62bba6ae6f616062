//! What every torrent of a session shares: identity, address, rate limits,
//! the DHT node, the registered extensions, the zone, the session's event
//! stream, its ban list, which torrents still send first copies, and the
//! per-address dial slots and connection counts. Set once when the session
//! starts; what changes after is behind short-held mutexes (the ban list,
//! the first copies, and inside the dial and connection tables), none held
//! across an `await`, none taken under another.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::bans::{BanReason, Bans};
use crate::choker::FirstCopies;
use crate::dht::Dht;
use crate::dial::DialSlots;
use crate::event::TorrentEvent;
use crate::hosts::HostConns;
use crate::metainfo::InfoHash;
use crate::rate::Limit;

/// Our local id for the first registered extension (BEP 10): 1 and 2 are
/// `ut_metadata` and `ut_pex`, and each later name takes the next id.
pub(crate) const FIRST_EXTENSION_ID: u8 = 3;

pub(crate) struct Shared {
    pub peer_id: [u8; 20],
    pub local_ip: IpAddr,
    pub listen_port: u16,
    pub upload: Limit,
    pub download: Limit,
    pub dht: Option<Dht>,
    /// Extension names beyond BEP 9 and 11, in id order from
    /// [`FIRST_EXTENSION_ID`].
    pub extensions: Vec<String>,
    /// This host's zone (see `crate::zone`), or none.
    pub zone: Option<String>,
    /// Every torrent reports here; the session hands the receiver out once.
    pub events: mpsc::UnboundedSender<TorrentEvent>,
    /// Addresses refused at accept and never dialled, by every torrent.
    pub bans: Mutex<Bans>,
    /// Connections being dialed, per address, by every torrent.
    pub dials: Arc<DialSlots>,
    /// Which seeding torrents still send first copies (see
    /// [`FirstCopies`]); short-held like the ban list.
    pub first_copies: Mutex<FirstCopies<InfoHash>>,
    /// Live connections per address, by every torrent.
    pub hosts: Arc<HostConns>,
}

impl Shared {
    /// Whether `ip` is banned now.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.bans
            .lock()
            .expect("bans lock")
            .is_banned(ip, Instant::now())
    }

    /// Bans `ip` now; true when it was not banned before.
    pub fn ban(&self, ip: IpAddr, reason: BanReason) -> bool {
        let mut bans = self.bans.lock().expect("bans lock");
        bans.ban(ip, reason, Instant::now())
    }

    /// Counts an offence of `ip` now; true when it makes a new ban.
    pub fn strike(&self, ip: IpAddr, reason: BanReason) -> bool {
        let mut bans = self.bans.lock().expect("bans lock");
        bans.strike(ip, reason, Instant::now())
    }

    /// Our id for a registered extension name.
    pub fn extension_id(&self, name: &str) -> Option<u8> {
        let i = self.extensions.iter().position(|n| n == name)?;
        Some(FIRST_EXTENSION_ID + i as u8)
    }

    /// The registered name of one of our extension ids.
    pub fn extension_name(&self, id: u8) -> Option<&str> {
        let i = id.checked_sub(FIRST_EXTENSION_ID)? as usize;
        self.extensions.get(i).map(String::as_str)
    }
}
