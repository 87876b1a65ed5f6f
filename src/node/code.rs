//! The code-exchange handler: answers `/ww/code/1.0.0` requests (see
//! [`crate::net::code`]) with components from the node's content store, so any node
//! that holds a component can give it to another.
//!
//! A request is a few dozen bytes and its answer up to the size cap, so what one peer
//! may ask is bounded: [`PER_PEER`] transfers at a time per peer and [`IN_ALL`] for the
//! node (more are reset at once), each within [`SERVE_TIMEOUT`], and the components
//! being sent hold at most [`SERVE_MEMORY`] between them (a request that would pass it
//! is answered "not here", so the requester asks another provider).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Handler;
use crate::content::ContentId;
use crate::content::store::Store;
use crate::net::code;
use crate::net::router::InboundStream;

/// Transfers one peer may have in progress.
pub const PER_PEER: usize = 4;
/// Transfers the node serves at once.
pub const IN_ALL: usize = 32;
/// How long one transfer may take, from the request to the last byte.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most memory the components being sent may hold at once, in bytes.
pub const SERVE_MEMORY: u64 = 256 << 20;

/// Serves the content store on [`code::PROTOCOL`].
pub(super) struct Code {
    store: Store,
    in_all: Arc<Semaphore>,
    /// [`SERVE_MEMORY`], in KiB.
    memory: Arc<Semaphore>,
    /// Transfers in progress per peer.
    per_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl Code {
    /// Serves what `store` holds.
    pub(super) fn new(store: Store) -> Self {
        Self {
            store,
            in_all: Arc::new(Semaphore::new(IN_ALL)),
            memory: Arc::new(Semaphore::new((SERVE_MEMORY >> 10) as usize)),
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
        let (store, memory) = (self.store.clone(), self.memory.clone());
        async move {
            let _slot = slot;
            let lookup = |id| async move { held(&store, &memory, id).await };
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

/// A component read for sending, holding its share of [`SERVE_MEMORY`].
struct Held {
    bytes: Vec<u8>,
    _memory: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads `id` from `store` if it is there and [`SERVE_MEMORY`] has room for it.
async fn held(store: &Store, memory: &Arc<Semaphore>, id: ContentId) -> Option<Held> {
    let size = tokio::fs::metadata(store.path_of(&id)).await.ok()?.len();
    let kib = u32::try_from(size.div_ceil(1024)).ok()?;
    let Ok(permit) = memory.clone().try_acquire_many_owned(kib) else {
        tracing::debug!(content = %id, size, "components being sent fill the memory budget; answered not here");
        return None;
    };
    let bytes = store.get_async(id).await.ok()?;
    Some(Held {
        bytes,
        _memory: permit,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn components_being_sent_stay_within_the_memory_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let id = store.put(&[7; 600 << 10]).unwrap();
        // Room for one 600 KiB component at a time.
        let memory = Arc::new(Semaphore::new(1000));
        let first = held(&store, &memory, id).await.expect("within the budget");
        assert_eq!(first.as_ref().len(), 600 << 10);
        assert!(held(&store, &memory, id).await.is_none(), "over the budget");
        drop(first);
        assert!(held(&store, &memory, id).await.is_some(), "room again");
        let missing = ContentId::of(b"not here");
        assert!(held(&store, &memory, missing).await.is_none());
    }

    #[test]
    fn a_peer_holds_at_most_its_share_of_transfers() {
        let counts = Arc::default();
        let peer = PeerId::random();
        let slots: Vec<_> = (0..PER_PEER)
            .map(|_| PeerSlot::take(&counts, peer).unwrap())
            .collect();
        assert!(PeerSlot::take(&counts, peer).is_none());
        assert!(
            PeerSlot::take(&counts, PeerId::random()).is_some(),
            "others are not held up"
        );
        drop(slots);
        assert!(PeerSlot::take(&counts, peer).is_some());
    }
}
