//! The code-exchange handler: answers `/ww/code/1.0.0` requests (see
//! [`crate::net::code`]) with components from the node's content store, so any node
//! that holds a component can give it to another.
//!
//! A request is a few dozen bytes and its answer up to the size cap, so what one peer
//! may ask is bounded: [`PER_PEER`] transfers at a time per peer and [`IN_ALL`] for the
//! node (more are reset at once), each within [`SERVE_TIMEOUT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use libp2p::PeerId;
use tokio::sync::Semaphore;

use super::Handler;
use crate::content::store::Store;
use crate::net::code;
use crate::net::router::InboundStream;

/// Transfers one peer may have in progress.
pub const PER_PEER: usize = 4;
/// Transfers the node serves at once.
pub const IN_ALL: usize = 32;
/// How long one transfer may take, from the request to the last byte.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the content store on [`code::PROTOCOL`].
pub(super) struct Code {
    store: Store,
    in_all: Arc<Semaphore>,
    /// Transfers in progress per peer.
    per_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl Code {
    /// Serves what `store` holds.
    pub(super) fn new(store: Store) -> Self {
        Self {
            store,
            in_all: Arc::new(Semaphore::new(IN_ALL)),
            per_peer: Arc::default(),
        }
    }
}

impl Handler for Code {
    fn accept(&self, inbound: InboundStream, closing: bool) -> BoxFuture<'static, ()> {
        let peer = inbound.peer;
        let slot = (!closing)
            .then(|| PeerSlot::take(&self.per_peer, peer))
            .flatten()
            .zip(self.in_all.clone().try_acquire_owned().ok());
        let Some(slot) = slot else {
            tracing::debug!("too many code transfers; stream reset");
            return futures::future::ready(()).boxed();
        };
        let store = self.store.clone();
        async move {
            let _slot = slot;
            let lookup = |id| async move { store.get_async(id).await.ok() };
            match tokio::time::timeout(SERVE_TIMEOUT, code::serve(inbound.stream, lookup)).await {
                Ok(Ok(served)) => {
                    tracing::debug!(content = %served.id, size = ?served.size, "component served")
                }
                Ok(Err(error)) => tracing::debug!(%error, "code request failed"),
                Err(_) => tracing::debug!("code transfer timed out"),
            }
        }
        .boxed()
    }
}

/// One of a peer's [`PER_PEER`] transfer slots, given back when dropped.
struct PeerSlot {
    counts: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl PeerSlot {
    fn take(counts: &Arc<Mutex<HashMap<PeerId, usize>>>, peer: PeerId) -> Option<Self> {
        let mut held = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(peer).or_default();
        if *count >= PER_PEER {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.peer);
            }
        }
    }
}
