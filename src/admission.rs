//! Admission: whether a stream may start an instance, and when.
//!
//! Each stream needs a slot from its peer's allowance and one from the node's (and,
//! when a cell has caps of its own, the same from the cell's). A stream whose slot is
//! not free joins a *backlog*, like a connection in a listen queue: it waits, in its
//! own task and never in the accept path, until a slot frees or `queue_ms` passes, and
//! is then refused with a [`Refusal`] the peer can see. Backlogs are bounded — per
//! peer by `backlog`, per gate by as many streams as it has instance slots — and a
//! stream that finds its backlog full is refused at once, so a burst costs bounded
//! memory and time however large it is.

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
    /// Every instance slot of the node (or of the cell) stayed taken for `queue_ms`,
    /// or its backlog was full.
    #[error("refused: {0} busy")]
    Busy(Scope),
    /// The peer already holds as many instances as it may, and as many streams wait
    /// behind them as its backlog holds (or they waited `queue_ms` in vain).
    #[error("refused: too many streams from this peer ({running} running, {waiting} waiting)")]
    PeerBusy {
        /// The peer's live-instance cap.
        running: u32,
        /// Its backlog.
        waiting: u32,
    },
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
            Refusal::PeerBusy { .. } => "peer_busy",
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

/// How many instances a [`Gate`] admits, and how many streams may wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Live instances in all.
    pub instances: u32,
    /// Live instances of one peer.
    pub per_peer: u32,
    /// Streams of one peer waiting for a slot.
    pub backlog: u32,
}

/// Instance slots: a total and an allowance per peer, each with a bounded backlog.
pub struct Gate {
    /// Whose slots these are, for refusals.
    scope: Scope,
    caps: Caps,
    total: Slots,
    per_peer: Arc<Mutex<HashMap<PeerId, Arc<Slots>>>>,
}

/// Slots of one kind and the streams waiting for them.
struct Slots {
    free: Arc<Semaphore>,
    /// Streams waiting for a slot right now.
    waiting: Mutex<u32>,
    /// Most streams that may wait.
    backlog: u32,
}

impl Slots {
    fn new(slots: u32, backlog: u32) -> Self {
        Self {
            free: Arc::new(Semaphore::new(slots as usize)),
            waiting: Mutex::new(0),
            backlog,
        }
    }

    /// A free slot at once; else a place in the backlog and a wait until `deadline`.
    /// `None` if the backlog is full or the deadline passed.
    async fn take(&self, deadline: Instant) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.free.clone().try_acquire_owned() {
            return Some(permit);
        }
        let _place = self.join_backlog()?;
        let acquired = tokio::time::timeout_at(deadline, self.free.clone().acquire_owned());
        acquired
            .await
            .ok()
            .map(|permit| permit.expect("never closed"))
    }

    fn join_backlog(&self) -> Option<BacklogPlace<'_>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if *waiting >= self.backlog {
            return None;
        }
        *waiting += 1;
        Some(BacklogPlace(self))
    }

    #[cfg(test)]
    fn waiting(&self) -> u32 {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stream's place in a backlog; given back on drop (a slot, a timeout, a
/// cancelled task).
struct BacklogPlace<'a>(&'a Slots);

impl Drop for BacklogPlace<'_> {
    fn drop(&mut self) {
        *self.0.waiting.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
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
    map: Arc<Mutex<HashMap<PeerId, Arc<Slots>>>>,
    peer: PeerId,
    slots: Arc<Slots>,
}

impl Gate {
    /// Slots as `caps` say; the gate's own backlog holds as many streams as it has
    /// instance slots.
    pub fn new(scope: Scope, caps: Caps) -> Self {
        Self {
            scope,
            caps,
            total: Slots::new(caps.instances, caps.instances),
            per_peer: Arc::default(),
        }
    }

    /// Takes a slot for `peer`, waiting in the backlogs until `deadline` at most.
    pub async fn enter(&self, peer: PeerId, deadline: Instant) -> Result<Pass, Refusal> {
        let slots = {
            let mut map = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
            let Caps {
                per_peer, backlog, ..
            } = self.caps;
            map.entry(peer)
                .or_insert_with(|| Arc::new(Slots::new(per_peer, backlog)))
                .clone()
        };
        let mut pass = Pass {
            total: None,
            peer: None,
            release: Some(PeerRelease {
                map: self.per_peer.clone(),
                peer,
                slots: slots.clone(),
            }),
        };
        pass.peer = Some(slots.take(deadline).await.ok_or(Refusal::PeerBusy {
            running: self.caps.per_peer,
            waiting: self.caps.backlog,
        })?);
        pass.total = Some(
            self.total
                .take(deadline)
                .await
                .ok_or(Refusal::Busy(self.scope))?,
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
        if let Some(PeerRelease { map, peer, slots }) = self.release.take() {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            // Under the lock, two references (the map's and ours) mean nobody else
            // holds or waits on this peer's allowance.
            if Arc::strong_count(&slots) == 2 {
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

    fn caps(instances: u32, per_peer: u32, backlog: u32) -> Caps {
        Caps {
            instances,
            per_peer,
            backlog,
        }
    }

    #[tokio::test]
    async fn full_gates_refuse_after_the_queue_time() {
        let gate = Gate::new(Scope::Node, caps(2, 1, 4));
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let first = gate.enter(a, soon()).await.unwrap();
        assert_eq!(
            gate.enter(a, soon()).await.err(),
            Some(Refusal::PeerBusy {
                running: 1,
                waiting: 4
            })
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
        let gate = Arc::new(Gate::new(Scope::Node, caps(1, 1, 1)));
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
    async fn a_burst_waits_its_turn_and_only_the_overflow_is_refused_at_once() {
        // 2 may run, 3 may wait: of 8 streams from one peer, 5 get in line and 3 are
        // refused without waiting.
        let gate = Arc::new(Gate::new(Scope::Node, caps(100, 2, 3)));
        let peer = PeerId::random();
        let later = Instant::now() + Duration::from_secs(3600);
        let held = [
            gate.enter(peer, later).await.unwrap(),
            gate.enter(peer, later).await.unwrap(),
        ];
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let gate = gate.clone();
            waiting.push(tokio::spawn(async move {
                gate.enter(peer, later).await.is_ok()
            }));
        }
        while gate.per_peer.lock().unwrap()[&peer].waiting() < 3 {
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            // Refused at once although the deadline is an hour away.
            let refused = tokio::time::timeout(Duration::from_secs(5), gate.enter(peer, later));
            assert!(matches!(refused.await, Ok(Err(Refusal::PeerBusy { .. }))));
        }
        drop(held);
        for waiter in waiting {
            assert!(
                waiter.await.unwrap(),
                "every stream in the backlog got a slot"
            );
        }
        assert_eq!(gate.tracked_peers(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_gives_its_place_back() {
        let gate = Arc::new(Gate::new(Scope::Node, caps(10, 1, 1)));
        let peer = PeerId::random();
        let _held = gate.enter(peer, soon()).await.unwrap();
        let later = Instant::now() + Duration::from_secs(3600);
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter(peer, later).await.is_ok() }
        });
        while gate.per_peer.lock().unwrap()[&peer].waiting() < 1 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(gate.per_peer.lock().unwrap()[&peer].waiting(), 0);
    }

    #[tokio::test]
    async fn unused_peers_are_forgotten() {
        let gate = Gate::new(Scope::Node, caps(10, 2, 2));
        for _ in 0..100 {
            drop(gate.enter(PeerId::random(), soon()).await.unwrap());
        }
        assert_eq!(gate.tracked_peers(), 0);
    }
}
