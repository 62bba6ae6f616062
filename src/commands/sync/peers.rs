//! The rendezvous swarm: engine events, the `p2pfile_sync` messages
//! (hello, index, want) and announcing our changes.

use super::*;

impl Run {
    pub(super) async fn on_event(
        &mut self,
        ev: p2pfile_engine::TorrentEvent,
    ) -> Result<(), Failure> {
        if let Event::PeerBanned { addr, reason } = ev.event {
            let hash = ev.info_hash.to_string();
            crate::output::peer_banned(&self.out, &hash, addr, reason);
            return Ok(());
        }
        if ev.info_hash == self.rendezvous {
            match ev.event {
                Event::ExtensionsReady { addr, .. } => {
                    tracing::debug!(%addr, "sync peer connected: sending hello");
                    let hello = Message::hello(
                        self.folder.key(),
                        self.folder.device(),
                        self.session.local_addr().port(),
                    );
                    self.send(addr, &hello).await;
                }
                Event::ExtensionMessage { addr, payload, .. } => {
                    self.on_message(addr, &payload).await
                }
                Event::PeerDisconnected { addr, .. } => {
                    // Two peers that dial each other at once keep one of the
                    // two connections: the peer is gone only with its last.
                    if let Some(device) = self.conns.remove(&addr)
                        && !self.conns.values().any(|d| *d == device)
                    {
                        self.folder.peer_left(device);
                        self.out
                            .event("peer_left", json!({"device": device.to_string()}));
                    }
                }
                _ => {}
            }
            return Ok(());
        }
        let Some(&(pack, seed)) = self.torrents.get(&ev.info_hash) else {
            return Ok(());
        };
        match ev.event {
            Event::Completed if !seed => self.fetched(ev.info_hash, pack).await?,
            Event::Failed { error } => {
                if seed {
                    self.drop_seed(pack).await;
                } else {
                    self.drop_torrent(ev.info_hash).await;
                }
                if let Some(f) = self.fetches.remove(&pack) {
                    for r in &f.records {
                        self.failed(&r.path, &error.to_string());
                    }
                }
                if matches!(
                    error,
                    TorrentError::NoSpace { .. } | TorrentError::NotEnoughSpace { .. }
                ) {
                    return Err(Failure::new(Code::Runtime, anyhow!(error).context("sync stopped"))
                        .hint("free disk space, then run it again: verified pieces are kept and nothing was replaced"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) async fn send(&self, addr: SocketAddr, msg: &Message) {
        let _ = self
            .session
            .send_extension(self.rendezvous, addr, EXTENSION, Bytes::from(msg.encode()))
            .await;
    }

    /// Closes a rendezvous connection whose peer has not proved the folder
    /// key: the engine counts extension messages as use, so without this a
    /// peer that only knows the swarm hash would keep its slot by talking.
    async fn close(&self, addr: SocketAddr, reason: &str) {
        let _ = self.session.close_peer(self.rendezvous, addr, reason).await;
    }

    pub(super) async fn on_message(&mut self, addr: SocketAddr, payload: &[u8]) {
        let msg = match Message::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%addr, "sync message refused: {e}");
                return self.close(addr, "sync message that does not decode").await;
            }
        };
        match msg {
            Message::Hello {
                device,
                port,
                can_write,
                ..
            } => {
                if !msg.verify_hello(self.folder.key()) {
                    tracing::debug!(%addr, "hello without proof of the folder key");
                    return self
                        .close(addr, "hello without proof of the folder key")
                        .await;
                }
                if device == self.folder.device() {
                    return tracing::debug!(%addr, "hello from ourselves");
                }
                let listen = SocketAddr::new(addr.ip(), port);
                tracing::debug!(%addr, %device, "hello: sending our index");
                let fresh = self.conns.insert(addr, device).is_none();
                self.folder.peer_joined(device, listen, can_write);
                let _ = self.state.save_sync_peer(
                    &self.folder_id,
                    &listen.to_string(),
                    &device.to_string(),
                );
                if fresh {
                    self.out.event("peer", json!({"device": device.to_string(), "address": listen.to_string(), "can_write": can_write}));
                }
                for batch in protocol::batches(&self.folder.announced()) {
                    self.send(addr, &batch).await;
                }
            }
            Message::Index { records, complete } => {
                let Some(&device) = self.conns.get(&addr) else {
                    tracing::debug!(%addr, "index before hello");
                    return self.close(addr, "index before hello").await;
                };
                tracing::debug!(%addr, records = records.len(), complete, "index");
                let refused = self.folder.on_remote(device, records, complete);
                if refused > 0 {
                    tracing::debug!(%addr, refused, "records without a valid signature of the folder key");
                }
                self.replan = true;
            }
            Message::Want { packs } => {
                let Some(&device) = self.conns.get(&addr) else {
                    return self.close(addr, "want before hello").await;
                };
                let Some(listen) = self.folder.peers().get(&device).map(|p| p.addr) else {
                    return;
                };
                for ids in packs {
                    self.seed(&ids, listen).await;
                }
            }
        }
    }

    /// Sends changed records to every peer that proved the key.
    pub(super) async fn announce(&self, records: Vec<FileRecord>) {
        if records.is_empty() {
            return;
        }
        let addrs: Vec<SocketAddr> = self.conns.keys().copied().collect();
        for batch in protocol::batches(&records) {
            for addr in &addrs {
                self.send(*addr, &batch).await;
            }
        }
    }
}
