//! Admission: whether a stream may start an instance, and when.
//!
//! Each stream needs a slot from its peer's allowance and one from the node's (and,
//! when a cell has caps of its own, the same from the cell's). When a slot is not
//! free the stream waits up to `queue_ms`, then is refused with a [`Refusal`] the
//! peer can see. Waiting happens in the stream's own task, never in the accept path,
//! and is bounded in time; how many streams can wait at once is bounded by the
//! muxers' stream limits and the connection limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a stream was refused before an instance was created. `Display` is the reason
/// the peer is given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The cell has an allowlist and the peer is not on it.
    #[error("refused: not allowed")]
    NotAllowed,
    /// Every instance slot of the node (or of the cell) stayed taken for `queue_ms`.
    #[error("refused: {0} busy")]
    Busy(Scope),
    /// The peer already holds as many instances as it may.
    #[error("refused: too many streams from this peer ({0} at once)")]
    PeerBusy(u32),
    /// The node is shutting down.
    #[error("refused: node shutting down")]
    ShuttingDown,
}

impl Refusal {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::Busy(Scope::Node) => "node_busy",
            Refusal::Busy(Scope::Cell) => "cell_busy",
            Refusal::PeerBusy(_) => "peer_busy",
            Refusal::ShuttingDown => "shutting_down",
        }
    }
}

/// Whose instance slots a [`Gate`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every instance in the node.
    Node,
    /// The instances of one cell.
    Cell,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Node => "node",
            Scope::Cell => "cell",
        })
    }
}

/// Instance slots: a total, and an allowance per peer.
pub struct Gate {
    /// Whose slots these are, for refusals.
    scope: Scope,
    total: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>>,
    per_peer_max: u32,
}

/// Slots held by one instance; released on drop.
pub struct Pass {
    total: Option<OwnedSemaphorePermit>,
    peer: Option<OwnedSemaphorePermit>,
    release: Option<PeerRelease>,
}

/// Forgets a peer's allowance once nobody uses it, so the map does not grow with
/// every peer ever seen.
struct PeerRelease {
    map: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>>,
    peer: PeerId,
    semaphore: Arc<Semaphore>,
}

impl Gate {
    /// Slots for `max_instances` instances, at most `max_per_peer` of them per peer.
    pub fn new(scope: Scope, max_instances: u32, max_per_peer: u32) -> Self {
        Self {
            scope,
            total: Arc::new(Semaphore::new(max_instances as usize)),
            per_peer: Arc::default(),
            per_peer_max: max_per_peer,
        }
    }

    /// Takes a slot for `peer`, waiting until `deadline` at most.
    pub async fn enter(&self, peer: PeerId, deadline: Instant) -> Result<Pass, Refusal> {
        let semaphore = {
            let mut map = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
            let max = self.per_peer_max as usize;
            map.entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(max)))
                .clone()
        };
        let mut pass = Pass {
            total: None,
            peer: None,
            release: Some(PeerRelease {
                map: self.per_peer.clone(),
                peer,
                semaphore: semaphore.clone(),
            }),
        };
        let acquired = tokio::time::timeout_at(deadline, semaphore.acquire_owned()).await;
        pass.peer = Some(
            acquired
                .map_err(|_| Refusal::PeerBusy(self.per_peer_max))?
                .expect("never closed"),
        );
        let acquired = tokio::time::timeout_at(deadline, self.total.clone().acquire_owned()).await;
        pass.total = Some(
            acquired
                .map_err(|_| Refusal::Busy(self.scope))?
                .expect("never closed"),
        );
        Ok(pass)
    }

    /// Peers with an allowance in use (or being waited for).
    pub fn tracked_peers(&self) -> usize {
        self.per_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.total.take();
        self.peer.take();
        if let Some(PeerRelease {
            map,
            peer,
            semaphore,
        }) = self.release.take()
        {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            // Under the lock, two references (the map's and ours) mean nobody else
            // holds or waits on this peer's allowance.
            if Arc::strong_count(&semaphore) == 2 {
                map.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn full_gates_refuse_after_the_queue_time() {
        let gate = Gate::new(Scope::Node, 2, 1);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let first = gate.enter(a, soon()).await.unwrap();
        assert_eq!(
            gate.enter(a, soon()).await.err(),
            Some(Refusal::PeerBusy(1))
        );
        let _second = gate.enter(b, soon()).await.unwrap();
        assert_eq!(
            gate.enter(c, soon()).await.err(),
            Some(Refusal::Busy(Scope::Node))
        );
        drop(first);
        assert!(
            gate.enter(c, soon()).await.is_ok(),
            "a freed slot is taken by a waiter"
        );
    }

    #[tokio::test]
    async fn a_waiting_stream_gets_a_slot_freed_in_time() {
        let gate = Arc::new(Gate::new(Scope::Node, 1, 1));
        let peer = PeerId::random();
        let held = gate.enter(peer, soon()).await.unwrap();
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.enter(peer, Instant::now() + Duration::from_secs(10))
                    .await
                    .is_ok()
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn unused_peers_are_forgotten() {
        let gate = Gate::new(Scope::Node, 10, 2);
        for _ in 0..100 {
            drop(gate.enter(PeerId::random(), soon()).await.unwrap());
        }
        assert_eq!(gate.tracked_peers(), 0);
    }
}
