//! A running node: loads the cells, builds the swarm, listens, and routes every
//! inbound stream, by its protocol, to the handler that serves it — `cells` (a fresh
//! instance of the stream's cell) or `stats` — in a task of its own.
//!
//! A byte from a peer travels: `net::router` (negotiated on a connection) → this
//! module (`accept`, a task per stream) → `cells` (allowlist, admission) →
//! `cell` (the instance's `wasi:io` streams) → the guest; and back the same way.
//!
//! # Shutdown
//! At the first signal the node stops listening, withdraws its provider records and
//! refuses new streams, then gives running guests up to the grace period to finish:
//! the swarm and the guests' own dials keep working, so their bytes still flow. When
//! the grace period ends, every stream still running (or waiting for a slot) is ended
//! with the reason `node shutting down` — a `+status` peer reads it in the trailer —
//! and the node returns once those trailers are out, or after [`FINAL_FLUSH`]. A
//! second signal skips the wait and stops at once.

mod cells;
mod stats;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt as _};
use libp2p::core::transport::ListenerId;
use libp2p::metrics::Recorder as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, autonat, identify, relay};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::admin::{self, CellInfo, NetworkView};
use crate::cell::{Cache, PoolSize, Runtime};
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::net::control::Control;
use crate::net::discovery::Announcements;
use crate::net::network::{Network, Request};
use crate::net::relays::Relays;
use crate::net::router::InboundStream;
use crate::net::{self, Behaviour, BehaviourEvent, discovery};

pub use crate::net::STATS_PROTOCOL;

/// How long streams still running when the grace period ends get to send their
/// `node shutting down` trailers.
pub const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// What serves the streams of some of the node's protocols.
trait Handler: Send + Sync {
    /// The work of serving `inbound`, to run in the stream's own task; nothing is
    /// done inline. `closing` is true once shutdown has begun: new work is refused.
    fn accept(&self, inbound: InboundStream, closing: bool) -> BoxFuture<'static, ()>;
}

/// Handlers by the exact protocol they answer.
type Handlers = HashMap<StreamProtocol, Arc<dyn Handler>>;

/// Runs a node until the first of `signals` (Ctrl-C, SIGTERM), then shuts down
/// gracefully; a second signal stops it at once (see the module docs). Listen
/// addresses are printed on stdout, one full multiaddr (ending in `/p2p/<peer-id>`)
/// per line, as soon as they are bound.
pub async fn run(
    config: NodeConfig,
    mut signals: impl Stream<Item = ()> + Unpin,
) -> anyhow::Result<()> {
    let keypair = crate::identity::load_or_create(&config.identity)?;
    let metrics = Arc::new(Metrics::new());
    let pool = PoolSize {
        instances: config.limits.max_instances,
        memory_bytes: config.max_memory_bytes(),
    };
    let cache = config.cache.clone().map(Cache::open).transpose()?;
    let runtime = Runtime::new(Some(pool), metrics.clone(), cache)?;
    let (network_handle, requests) = Network::new(keypair.public().to_peer_id());
    let stop = CancellationToken::new();
    let cells = cells::Cells::load(
        &runtime,
        &config,
        &network_handle,
        metrics.clone(),
        stop.clone(),
    )?;
    let cell_count = cells.len();
    let mut handlers = Handlers::new();
    handlers.insert(STATS_PROTOCOL, Arc::new(stats::Stats(metrics.clone())));
    let cells: Arc<dyn Handler> = Arc::new(cells);
    for protocol in cells::Cells::protocols(&config) {
        handlers.insert(protocol, cells.clone());
    }
    let protocols = handlers.keys().cloned().collect();
    let mut swarm = net::build_swarm(keypair, protocols, &config.network)?;
    let mut listeners = Vec::new();
    for addr in &config.listen {
        net::check_port_free(addr)?;
        let listener = swarm.listen_on(addr.clone());
        listeners.push(listener.with_context(|| format!("cannot listen on {addr}"))?);
    }
    let network = Arc::new(RwLock::new(NetworkView {
        peer_id: swarm.local_peer_id().to_string(),
        ..NetworkView::default()
    }));
    let admin = match config.admin {
        Some(addr) => {
            let infos = config.cells.iter().map(|cell| CellInfo {
                name: cell.name.clone(),
                protocol: cell.protocol.to_string(),
            });
            Some(admin::spawn(addr, metrics.clone(), network.clone(), infos.collect()).await?)
        }
        None => None,
    };
    tracing::info!(peer = %swarm.local_peer_id(), pooling = runtime.pooling, cells = cell_count, "node starting");

    discovery::join(&mut swarm, &config.network.bootstrap);
    let mut announcements = Announcements::default();
    let served: Vec<StreamProtocol> = config.cells.iter().map(|c| c.protocol.clone()).collect();
    announcements.provide(&mut swarm, &served);

    let mut node = Node {
        swarm,
        listeners,
        handlers,
        metrics,
        network,
        tasks: TaskTracker::new(),
        next_stream: 0,
        accepting: true,
        stop,
        control: Control::default(),
        announcements,
        requests,
        _network: network_handle,
        relays: Relays::default(),
    };
    loop {
        tokio::select! {
            Some(()) = signals.next() => break,
            event = node.swarm.select_next_some() => node.on_event(event),
            Some(request) = node.requests.next() => node.control.handle(&mut node.swarm, request),
        }
    }
    node.shut_down(config.shutdown_grace, signals).await;
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(())
}

struct Node {
    swarm: Swarm<Behaviour>,
    /// Our listeners, closed first on shutdown.
    listeners: Vec<ListenerId>,
    /// What serves each protocol the router accepts.
    handlers: Handlers,
    metrics: Arc<Metrics>,
    /// What `/status` shows about the network, updated here.
    network: Arc<RwLock<NetworkView>>,
    /// Every stream's task, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Numbers streams for logs.
    next_stream: u64,
    /// False once shutdown began: new streams are refused.
    accepting: bool,
    /// Cancelled when the grace period ends: streams still running are ended.
    stop: CancellationToken,
    /// Dials, lookups and announcements in progress.
    control: Control,
    /// The cells this node announces in the DHTs.
    announcements: Announcements,
    /// Requests from this node's own tasks.
    requests: mpsc::Receiver<Request>,
    /// Keeps `requests` open while the node runs.
    _network: Network,
    /// Relays we know of, and those we listen through.
    relays: Relays,
}

impl Node {
    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.libp2p.record(&event);
        self.control.on_event(&mut self.swarm, &event);
        self.announcements.on_event(&mut self.swarm, &event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Router(inbound)) => self.accept(inbound),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                self.metrics.libp2p.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = &event {
                    self.note_relay(*peer_id, info);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => {
                self.metrics.libp2p.record(&event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
                self.metrics.libp2p.record(&event);
                if let libp2p::kad::Event::ModeChanged { new_mode } = event {
                    tracing::info!(dht = "wan", mode = %new_mode, "DHT mode changed");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                self.metrics.libp2p.record(&event);
                tracing::debug!(?event, "relay");
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal: false,
                    ..
                },
            )) => tracing::info!(relay = %relay_peer_id, "reserved a slot on a relay"),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => {
                self.metrics.libp2p.record(&event);
                match event.result {
                    Ok(_) => {
                        tracing::info!(peer = %event.remote_peer_id, "relayed connection upgraded to a direct one")
                    }
                    Err(error) => {
                        tracing::debug!(peer = %event.remote_peer_id, %error, "hole punching failed")
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => self.on_reachability(new),
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address
                    .with_p2p(*self.swarm.local_peer_id())
                    .expect("our own peer ID");
                tracing::info!(%full, "listening");
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{full}").and_then(|()| stdout.flush());
                self.network_view().listen.push(full.to_string());
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let full = address
                    .with_p2p(*self.swarm.local_peer_id())
                    .expect("our own peer ID");
                self.network_view()
                    .listen
                    .retain(|addr| *addr != full.to_string());
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, connection = %connection_id, remote = %endpoint.get_remote_address(), "connection established");
                self.network_view().connected_peers = self.swarm.connected_peers().count();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, connection = %connection_id, ?cause, "connection closed");
                self.network_view().connected_peers = self.swarm.connected_peers().count();
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                tracing::debug!(%error, remote = %send_back_addr, "incoming connection failed");
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            _ => {}
        }
    }

    fn network_view(&self) -> std::sync::RwLockWriteGuard<'_, NetworkView> {
        self.network.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands an inbound stream to its protocol's handler, in a task of its own (with
    /// a span naming the peer, the protocol and the stream); never does work inline.
    fn accept(&mut self, inbound: InboundStream) {
        let id = self.next_stream;
        self.next_stream += 1;
        let span = tracing::info_span!("stream", peer = %inbound.peer, protocol = %inbound.protocol, id, connection = %inbound.connection);
        let handler = self
            .handlers
            .get(&inbound.protocol)
            .expect("the router only accepts protocols with a handler")
            .clone();
        let task = handler.accept(inbound, !self.accepting);
        self.tasks.spawn(task.instrument(span));
    }

    /// Remembers (or forgets) a peer that offers circuit relay; an unreachable node
    /// listens through a new one at once.
    fn note_relay(&mut self, peer: PeerId, info: &identify::Info) {
        let offers_hop = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
        if let Some(circuit) = self
            .relays
            .on_identify(peer, offers_hop, &info.listen_addrs)
        {
            self.listen_through(circuit);
        }
    }

    /// AutoNAT's verdict changed. A node found unreachable reserves a slot on every
    /// relay it knows (and, see [`Node::note_relay`], on each it learns of later), so
    /// it can still be dialed (through `/p2p-circuit` addresses that identify and the
    /// DHT then announce).
    fn on_reachability(&mut self, status: autonat::NatStatus) {
        tracing::info!(?status, "reachability");
        for circuit in self.relays.on_reachability(&status) {
            self.listen_through(circuit);
        }
    }

    fn listen_through(&mut self, circuit: Multiaddr) {
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => tracing::info!(%circuit, "listening through a relay"),
            Err(error) => tracing::warn!(%circuit, %error, "cannot listen through relay"),
        }
    }

    async fn shut_down(mut self, grace: Duration, mut signals: impl Stream<Item = ()> + Unpin) {
        self.accepting = false;
        self.announcements.withdraw(&mut self.swarm);
        tracing::info!(running = self.tasks.len(), ?grace, "shutting down");
        for listener in self.listeners.drain(..) {
            self.swarm.remove_listener(listener);
        }
        self.tasks.close();
        let grace_ends = tokio::time::Instant::now() + grace;
        let last = match self.serve_until(grace_ends, &mut signals).await {
            Ending::Finished => tokio::time::Instant::now() + FINAL_FLUSH,
            Ending::Deadline => {
                tracing::warn!(
                    running = self.tasks.len(),
                    "grace period over; ending the remaining streams"
                );
                self.stop.cancel();
                let last = tokio::time::Instant::now() + FINAL_FLUSH;
                if let Ending::Signal = self.serve_until(last, &mut signals).await {
                    return self.stop_now();
                }
                last
            }
            Ending::Signal => return self.stop_now(),
        };
        // One second after the streams ended (or were told to), whatever the peers
        // have not taken is left behind: exit never takes longer than grace + 1 s.
        self.close_connections(last, &mut signals).await;
    }

    /// A second signal: whatever still runs is dropped, which aborts its stream.
    fn stop_now(&self) {
        tracing::warn!(
            running = self.tasks.len(),
            "stopping now; the remaining streams are aborted"
        );
        self.stop.cancel();
    }

    /// Closes every connection gracefully, so that what the streams wrote last (their
    /// answers, trailers and FINs, queued in the muxers) reaches the peers before the
    /// process exits; gives up at `deadline` or at a signal.
    async fn close_connections(
        &mut self,
        deadline: tokio::time::Instant,
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

    /// Keeps the swarm and the guests' requests going until every stream task has
    /// finished, `deadline` has passed, or a signal comes.
    async fn serve_until(
        &mut self,
        deadline: tokio::time::Instant,
        signals: &mut (impl Stream<Item = ()> + Unpin),
    ) -> Ending {
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = self.tasks.wait() => return Ending::Finished,
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
