//! How many connections the session holds to one address, over all its
//! torrents.
//!
//! Every torrent has its own connection to a peer, so a download of 20
//! artifacts from the same 7 hosts holds 20 connections to each. Anything
//! sized per connection (the request pipeline's floor, see
//! `torrent::download::pipeline_depth`) is then multiplied by 20 at that
//! host: the requests queued there, and so the wait of every block in its
//! queue, grow with the number of torrents, not with its rate. Each
//! connection registers here for its life, and reads how many share its
//! address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Live connections per address, shared by every torrent of a session.
#[derive(Default)]
pub(crate) struct HostConns {
    counts: Mutex<HashMap<IpAddr, Arc<AtomicUsize>>>,
}

/// One connection's place in [`HostConns`]; leaves it when dropped.
pub(crate) struct HostConn {
    hosts: Arc<HostConns>,
    ip: IpAddr,
    count: Arc<AtomicUsize>,
}

impl HostConns {
    /// Counts a new connection to `ip` until the returned guard drops.
    pub(crate) fn register(self: &Arc<Self>, ip: IpAddr) -> HostConn {
        let mut counts = self.counts.lock().expect("host conns lock");
        let count = counts.entry(ip).or_default().clone();
        count.fetch_add(1, Ordering::Relaxed);
        HostConn {
            hosts: self.clone(),
            ip,
            count,
        }
    }
}

impl HostConn {
    /// Connections the session holds to this address now, this one
    /// included (at least 1).
    pub(crate) fn shared_by(&self) -> usize {
        self.count.load(Ordering::Relaxed).max(1)
    }
}

impl Drop for HostConn {
    fn drop(&mut self) {
        let mut counts = self.hosts.counts.lock().expect("host conns lock");
        // Under the lock, so no register sees the entry between the last
        // decrement and its removal.
        if self.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            counts.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connections_per_address_while_they_live() {
        let hosts = Arc::new(HostConns::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = hosts.register(a);
        assert_eq!(first.shared_by(), 1);
        let second = hosts.register(a);
        let other = hosts.register(b);
        assert_eq!(first.shared_by(), 2);
        assert_eq!(second.shared_by(), 2);
        assert_eq!(other.shared_by(), 1);
        drop(second);
        assert_eq!(first.shared_by(), 1);
        drop(first);
        assert!(!hosts.counts.lock().unwrap().contains_key(&a));
        let again = hosts.register(a);
        assert_eq!(again.shared_by(), 1);
        drop(other);
        assert_eq!(hosts.counts.lock().unwrap().len(), 1);
    }
}
