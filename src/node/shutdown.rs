//! The node's shutdown sequence. At the first signal, in this order:
//!
//! 1. [`Node::stop_accepting`]: the listeners close, the provider records are
//!    withdrawn, and every stream that arrives from now on is handed to its handler as
//!    refused (a `+status` peer reads `node shutting down`).
//! 2. [`Node::serve_until`] the grace period ends: the running streams may finish by
//!    themselves. The swarm, and the requests of the guests' own dials, keep being
//!    served, so their bytes still flow. This step ends early once every stream has.
//! 3. [`Node::cancel_streams`]: the handlers' cancellation token is cancelled, so
//!    every stream still running (or waiting for a slot) ends with `node shutting
//!    down`. They get [`FINAL_FLUSH`] to send that trailer.
//! 4. [`Node::close_connections`]: every connection is closed gracefully, so what the
//!    streams wrote last (answers, trailers, FINs queued in the muxers) reaches the
//!    peers, until that same deadline.
//! 5. [`Node::abort_streams`]: whatever stream task is left (one that ignored its
//!    cancellation, or that a stream arriving during step 4 started) is aborted.
//!
//! A second signal during steps 2–4 skips to step 5. This is the order of iroh's
//! `Router`: stop accepting, let the handlers shut down, close the endpoint, abort
//! the rest.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use libp2p::PeerId;
use tokio::time::Instant;

use super::{Node, on_task_end};

/// How long streams still running when the grace period ends get to send their
/// `node shutting down` trailers (and the connections to carry them).
pub const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// How long aborted stream tasks get to be gone. An aborted task ends at its next
/// yield: a guest yields at least every [`crate::cell::EPOCH_TICK`].
const ABORT_WAIT: Duration = Duration::from_millis(100);

impl Node {
    /// Shuts the node down, step by step as the module docs say; a signal from
    /// `signals` cuts it short.
    pub(super) async fn shut_down(
        mut self,
        grace: Duration,
        mut signals: impl Stream<Item = ()> + Unpin,
    ) {
        let signals = &mut signals;
        self.stop_accepting(grace);
        let flushed_by = match self.serve_until(Instant::now() + grace, signals).await {
            Ending::Finished => Some(Instant::now() + FINAL_FLUSH),
            Ending::Deadline => self.cancel_streams(signals).await,
            Ending::Signal => None,
        };
        match flushed_by {
            Some(deadline) => self.close_connections(deadline, signals).await,
            None => tracing::warn!(
                running = self.tasks.len(),
                "stopping now; the remaining streams are aborted"
            ),
        }
        self.abort_streams().await;
    }

    /// Step 1: closes the listeners, withdraws the provider records, refuses new work.
    fn stop_accepting(&mut self, grace: Duration) {
        self.accepting = false;
        self.announcements.withdraw(&mut self.swarm);
        tracing::info!(running = self.tasks.len(), ?grace, "shutting down");
        for listener in self.listeners.drain(..) {
            self.swarm.remove_listener(listener);
        }
    }

    /// Step 3: tells the handlers to end their streams, and serves until they have
    /// (or [`FINAL_FLUSH`] has passed). Returns when step 4 must give up, or `None`
    /// at a signal.
    async fn cancel_streams(
        &mut self,
        signals: &mut (impl Stream<Item = ()> + Unpin),
    ) -> Option<Instant> {
        tracing::warn!(
            running = self.tasks.len(),
            "grace period over; ending the remaining streams"
        );
        self.stop.cancel();
        let last = Instant::now() + FINAL_FLUSH;
        match self.serve_until(last, signals).await {
            Ending::Signal => None,
            Ending::Finished | Ending::Deadline => Some(last),
        }
    }

    /// Step 4: closes every connection gracefully, so that what the streams wrote last
    /// (their answers, trailers and FINs, queued in the muxers) reaches the peers;
    /// gives up at `deadline` or at a signal.
    async fn close_connections(
        &mut self,
        deadline: Instant,
        signals: &mut (impl Stream<Item = ()> + Unpin),
    ) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        while self.swarm.connected_peers().next().is_some() {
            tokio::select! {
                () = &mut deadline => return,
                Some(()) = signals.next() => return,
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    /// Step 5: aborts every stream task still running (dropping a stream resets it)
    /// and waits, up to [`ABORT_WAIT`], for them to be gone.
    async fn abort_streams(&mut self) {
        self.stop.cancel();
        self.tasks.abort_all();
        let gone = async {
            while let Some(ended) = self.tasks.join_next().await {
                on_task_end(ended);
            }
        };
        if tokio::time::timeout(ABORT_WAIT, gone).await.is_err() {
            tracing::warn!(
                running = self.tasks.len(),
                "some stream tasks did not end when aborted"
            );
        }
    }

    /// Step 2 (and the wait in step 3): keeps the swarm and the guests' requests
    /// going until every stream task has finished, `deadline` has passed, or a signal
    /// comes.
    async fn serve_until(
        &mut self,
        deadline: Instant,
        signals: &mut (impl Stream<Item = ()> + Unpin),
    ) -> Ending {
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ended = self.tasks.join_next() => match ended {
                    Some(ended) => on_task_end(ended),
                    None => return Ending::Finished,
                },
                () = &mut deadline => return Ending::Deadline,
                Some(()) = signals.next() => return Ending::Signal,
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(request) = self.requests.next() => self.control.handle(&mut self.swarm, request),
            }
        }
    }
}

/// Why [`Node::serve_until`] returned.
enum Ending {
    /// Every stream task is done.
    Finished,
    /// The time given ran out.
    Deadline,
    /// Another signal: stop at once.
    Signal,
}
