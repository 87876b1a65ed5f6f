//! The node's event loop and shutdown sequence, on in-process swarms (the memory
//! transport) with a stub handler: no binary, no sockets.
//!
//! Bounds on time are generous ([`testing::PATIENCE`]); what each test checks is what the peer
//! sees and which stream tasks are left, not how fast.

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _, StreamExt as _};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, Swarm};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{FINAL_FLUSH, Handler, Handlers, Node};
use crate::metrics::Metrics;
use crate::net::network::Network;
use crate::net::router::testing;
use crate::net::router::{self, InboundStream};
use crate::net::{self, NetOptions};

/// Streams that wait for their peer to finish them, or for their cancellation.
const PATIENT: StreamProtocol = StreamProtocol::new("/test/patient/1");
/// Streams that ignore their cancellation and never end by themselves.
const STUBBORN: StreamProtocol = StreamProtocol::new("/test/stubborn/1");

/// What a stream's first bytes are once its handler runs it.
const STARTED: &[u8] = b"started\n";

/// A stub handler. A stream that arrives once the node is closing is answered
/// `refused`; any other gets [`STARTED`], then a [`PATIENT`] one is answered `finished`
/// when its peer closes its half or `cancelled` when the handlers' token is, and a
/// [`STUBBORN`] one waits forever, holding a clone of `alive`.
struct Stub {
    stop: CancellationToken,
    alive: Arc<()>,
}

impl Handler for Stub {
    fn accept(&self, inbound: InboundStream, closing: bool) -> BoxFuture<'static, ()> {
        let mut stream = inbound.stream;
        if closing {
            return async move {
                let _ = stream.write_all(b"refused").await;
                let _ = stream.close().await;
            }
            .boxed();
        }
        let (stop, alive) = (self.stop.clone(), self.alive.clone());
        let patient = inbound.protocol == PATIENT;
        async move {
            let _alive = alive;
            let _ = stream.write_all(STARTED).await;
            let _ = stream.flush().await;
            if !patient {
                return std::future::pending().await;
            }
            let mut rest = Vec::new();
            let reply: &[u8] = tokio::select! {
                _ = stream.read_to_end(&mut rest) => b"finished",
                () = stop.cancelled() => b"cancelled",
            };
            let _ = stream.write_all(reply).await;
            let _ = stream.close().await;
        }
        .boxed()
    }
}

/// A node serving the stub, run in a task of its own, and what a test holds of it.
struct Running {
    /// Its full address.
    addr: Multiaddr,
    /// Sends it a signal (Ctrl-C, SIGTERM).
    signal: mpsc::UnboundedSender<()>,
    /// Yields once per signal the node has taken: by then it has begun shutting down.
    taken: mpsc::UnboundedReceiver<()>,
    /// The node's task; it ends when the node's shutdown is over.
    task: JoinHandle<()>,
    /// One clone per live [`STUBBORN`] stream task, besides this one.
    alive: Arc<()>,
}

/// Starts a node with a grace period of `grace`, on the memory transport.
async fn start(grace: Duration) -> Running {
    let stop = CancellationToken::new();
    let alive = Arc::new(());
    let stub: Arc<dyn Handler> = Arc::new(Stub {
        stop: stop.clone(),
        alive: alive.clone(),
    });
    let handlers: Handlers = [(PATIENT, stub.clone()), (STUBBORN, stub)].into();
    let protocols = handlers.keys().cloned().collect();
    let options = NetOptions::default();
    let mut swarm = testing::memory_swarm(|key, relay_client| {
        net::behaviour(key, relay_client, protocols, &options)
    });
    let (listener, addr) = testing::listen(&mut swarm).await;
    let (network, requests) = Network::new(*swarm.local_peer_id());
    let metrics = Arc::new(Metrics::new());
    let mut node = Node::new(swarm, handlers, metrics, stop, network, requests);
    node.listeners.push(listener);

    let (signal, signals) = mpsc::unbounded();
    let (took, taken) = mpsc::unbounded();
    // The node takes a signal and begins its shutdown in one go (no await between).
    let signals = signals.inspect(move |()| {
        let _ = took.unbounded_send(());
    });
    let task = tokio::spawn(node.serve(grace, signals));
    Running {
        addr,
        signal,
        taken,
        task,
        alive,
    }
}

/// A client swarm connected to `node`.
async fn client(node: &Running) -> (Swarm<router::Behaviour>, PeerId) {
    let mut client = testing::memory_swarm(|_, _| router::Behaviour::new(Vec::new()));
    let peer = testing::connect(&mut client, node.addr.clone()).await;
    (client, peer)
}

/// Opens a stream on `protocol`.
async fn open(
    client: &mut Swarm<router::Behaviour>,
    peer: PeerId,
    protocol: StreamProtocol,
) -> Stream {
    let opening = client.behaviour_mut().open_stream(peer, vec![protocol]);
    let (stream, _) = testing::run_until(client, opening).await.unwrap().unwrap();
    stream
}

/// Opens a stream on `protocol` and waits until its handler runs it.
async fn start_stream(
    client: &mut Swarm<router::Behaviour>,
    peer: PeerId,
    protocol: StreamProtocol,
) -> Stream {
    let mut stream = open(client, peer, protocol).await;
    let mut first = [0; STARTED.len()];
    testing::run_until(client, stream.read_exact(&mut first))
        .await
        .unwrap();
    assert_eq!(first, STARTED);
    stream
}

/// Reads `stream` to its end, as text.
async fn read_rest(client: &mut Swarm<router::Behaviour>, stream: &mut Stream) -> String {
    let mut rest = String::new();
    testing::run_until(client, stream.read_to_string(&mut rest))
        .await
        .unwrap();
    rest
}

/// Sends `node` a signal and waits until it has taken it.
async fn signal(client: &mut Swarm<router::Behaviour>, node: &mut Running) {
    node.signal.unbounded_send(()).unwrap();
    testing::run_until(client, node.taken.next()).await.unwrap();
}

#[tokio::test]
async fn once_shutdown_begins_new_streams_are_refused_and_running_ones_may_finish() {
    let mut node = start(Duration::from_secs(600)).await;
    let (mut client, peer) = client(&node).await;
    let mut running = start_stream(&mut client, peer, PATIENT).await;

    signal(&mut client, &mut node).await;
    let mut late = open(&mut client, peer, PATIENT).await;
    assert_eq!(read_rest(&mut client, &mut late).await, "refused");

    testing::run_until(&mut client, running.close())
        .await
        .unwrap();
    assert_eq!(read_rest(&mut client, &mut running).await, "finished");
    // Its last stream done, the node returns long before its 10-minute grace period.
    testing::run_until(&mut client, node.task).await.unwrap();
}

#[tokio::test]
async fn a_stream_running_when_the_grace_period_ends_is_cancelled_before_its_connection_closes() {
    let mut node = start(Duration::from_secs(1)).await;
    let (mut client, peer) = client(&node).await;
    let mut running = start_stream(&mut client, peer, PATIENT).await;

    signal(&mut client, &mut node).await;
    // The handler heard of its cancellation while the connection still carried its
    // answer; only then was the connection closed.
    assert_eq!(read_rest(&mut client, &mut running).await, "cancelled");
    testing::run_until(&mut client, node.task).await.unwrap();
    if client.is_connected(&peer) {
        testing::until_event(&mut client, |event| match event {
            SwarmEvent::ConnectionClosed { .. } => Some(()),
            _ => None,
        })
        .await;
    }
}

#[tokio::test]
async fn a_stream_ignoring_its_cancellation_is_aborted_when_the_final_flush_ends() {
    let grace = Duration::from_secs(1);
    let mut node = start(grace).await;
    let (mut client, peer) = client(&node).await;
    let mut stubborn = start_stream(&mut client, peer, STUBBORN).await;

    let signalled = tokio::time::Instant::now();
    signal(&mut client, &mut node).await;
    testing::run_until(&mut client, node.task).await.unwrap();
    let took = signalled.elapsed();
    assert_eq!(
        Arc::strong_count(&node.alive),
        1,
        "the stream's task is gone"
    );
    // Generous: the node returns at grace + FINAL_FLUSH, plus a busy machine's delay.
    let bound = grace + FINAL_FLUSH + Duration::from_secs(10);
    assert!(took < bound, "the node took {took:?} to shut down");
    // The peer's stream ends too (reset, or with its connection), rather than hang.
    let mut rest = Vec::new();
    let _ = testing::run_until(&mut client, stubborn.read_to_end(&mut rest)).await;
}

#[tokio::test]
async fn a_second_signal_aborts_the_streams_at_once() {
    let mut node = start(Duration::from_secs(600)).await;
    let (mut client, peer) = client(&node).await;
    let _stubborn = start_stream(&mut client, peer, STUBBORN).await;

    signal(&mut client, &mut node).await;
    signal(&mut client, &mut node).await;
    // Well within the 10-minute grace period the first signal granted.
    testing::run_until(&mut client, node.task).await.unwrap();
    assert_eq!(
        Arc::strong_count(&node.alive),
        1,
        "the stream's task is gone"
    );
}
