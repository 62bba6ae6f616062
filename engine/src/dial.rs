//! How many connections the session dials to one address at once.
//!
//! Every torrent dials its own connection to a peer (the handshake names
//! one torrent), so a host that starts 20 downloads from one seed opens 20
//! connections to it in the same millisecond. The seed lets one address
//! hold only so many connections awaiting a handshake (8 in older
//! p2pfile, [`MAX_PENDING_PER_ADDRESS`] now) and closes the rest at accept
//! (see `crate::admission`); those torrents
//! would then wait out a retry backoff. So the dialing side, which knows
//! that limit, keeps fewer than it in flight to each address: the others
//! wait here for a moment (a handshake takes one round trip) instead of
//! being refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::MAX_PENDING_PER_ADDRESS;

/// Connections dialed to one address that may await their handshake at
/// once: half of the 8 that p2pfile before 2026-11-27 let one address hold
/// (now [`MAX_PENDING_PER_ADDRESS`]), leaving room for our other sessions
/// (sync beside download) and other processes behind the same address.
/// A handshake takes one round trip, so on a LAN the wait is short.
pub(crate) const MAX_DIALS_PER_ADDRESS: usize = 4;
const _: () =
    assert!(MAX_DIALS_PER_ADDRESS >= 1 && MAX_DIALS_PER_ADDRESS < MAX_PENDING_PER_ADDRESS);

/// Per-address dial slots shared by every torrent of a session.
#[derive(Default)]
pub(crate) struct DialSlots {
    slots: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// A dial slot, held from connect until the peer's handshake is read (or
/// the attempt failed); given back when dropped.
pub(crate) struct DialSlot {
    slots: Arc<DialSlots>,
    ip: IpAddr,
    permit: Option<OwnedSemaphorePermit>,
}

impl DialSlots {
    /// Waits for a slot to dial `ip`.
    pub(crate) async fn acquire(self: &Arc<Self>, ip: IpAddr) -> DialSlot {
        let semaphore = self
            .slots
            .lock()
            .expect("dial slots lock")
            .entry(ip)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_DIALS_PER_ADDRESS)))
            .clone();
        let permit = semaphore
            .acquire_owned()
            .await
            .expect("dial semaphores are never closed");
        DialSlot {
            slots: self.clone(),
            ip,
            permit: Some(permit),
        }
    }

    /// Addresses with a dial in flight or waiting (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.slots.lock().expect("dial slots lock").len()
    }
}

impl Drop for DialSlot {
    fn drop(&mut self) {
        let mut slots = self.slots.slots.lock().expect("dial slots lock");
        drop(self.permit.take());
        // Forget an address nobody dials any more, so the map holds only
        // addresses with a dial in flight or waiting. A waiter holds a
        // clone of the semaphore, so the count tells.
        if slots
            .get(&self.ip)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            slots.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test]
    async fn one_address_gets_at_most_its_slots_and_others_are_not_held_up() {
        let slots = Arc::new(DialSlots::default());
        let mut held = Vec::new();
        for _ in 0..MAX_DIALS_PER_ADDRESS {
            held.push(slots.acquire(A).await);
        }
        // The next dial to A waits ...
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(A).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        // ... while B is dialed at once.
        let b = tokio::time::timeout(Duration::from_secs(5), slots.acquire(B))
            .await
            .expect("another address is not held up");
        // A slot given back lets the waiting dial go.
        held.pop();
        let next = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting dial gets the slot")
            .unwrap();
        drop((held, next, b));
        assert_eq!(slots.tracked(), 0, "idle addresses are forgotten");
    }
}
