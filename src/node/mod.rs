//! A running node: started by [`run`] (`start.rs`), it routes every inbound stream,
//! by its protocol, to the handler that serves it, in a task of its own — `cells` (a
//! fresh instance of the version of the stream's cell served now), `stats`, `code`
//! (components for peers), `manage` (deploy, undeploy, the cell listing).
//!
//! Beside the handlers: `loading` finds a cell's bytes and compiles them, `deployed`
//! keeps the deployments on disk, `reload` applies a configuration read again.
//!
//! A byte from a peer travels: `net::router` (negotiated on a connection) → this
//! module (`accept`, a task per stream) → `cells` (allowlist, admission) →
//! `cell` (the instance's `wasi:io` streams) → the guest; and back the same way.
//!
//! # Shutdown
//! At the first signal the node shuts down in five steps, in this order, each a
//! function of its own in `node/shutdown.rs`:
//! 1. stop accepting: listeners closed, provider records withdrawn, new streams
//!    refused;
//! 2. give the running streams up to the grace period to finish, while the swarm and
//!    the guests' own dials keep working;
//! 3. cancel the handlers' token: every stream still running (or waiting for a slot)
//!    ends with the reason `node shutting down` (a `+status` peer reads it in the
//!    trailer);
//! 4. close the connections gracefully, so those trailers reach the peers, until
//!    [`FINAL_FLUSH`] has passed;
//! 5. abort whatever stream task is left.
//!
//! A second signal skips to step 5. Exit takes at most the grace period +
//! [`FINAL_FLUSH`] (and the abort, which takes no time unless a task never yields).

mod cells;
mod code;
mod dashboards;
mod deployed;
mod loading;
mod manage;
mod names;
mod reload;
mod shutdown;
mod start;
mod stats;
#[cfg(test)]
mod tests;
mod view;

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
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, autonat, identify, kad, relay};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::admin::NetworkView;
use crate::metrics::Metrics;
use crate::net::control::Control;
use crate::net::discovery::Announcements;
use crate::net::network::{Network, Request};
use crate::net::relays::Relays;
use crate::net::router::InboundStream;
use crate::net::{self, Behaviour, BehaviourEvent};

pub use crate::net::STATS_PROTOCOL;
pub use shutdown::FINAL_FLUSH;
pub use start::run;

/// What serves the streams of some of the node's protocols.
trait Handler: Send + Sync {
    /// The work of serving `inbound`, to run in the stream's own task; nothing is
    /// done inline. `closing` is true once shutdown has begun: new work is refused.
    fn accept(&self, inbound: InboundStream, closing: bool) -> BoxFuture<'static, ()>;
}

/// Handlers by the exact protocol they answer.
type Handlers = HashMap<StreamProtocol, Arc<dyn Handler>>;

struct Node {
    swarm: Swarm<Behaviour>,
    /// Our listeners, closed first on shutdown.
    listeners: Vec<ListenerId>,
    /// What serves each protocol the router accepts.
    handlers: Handlers,
    metrics: Arc<Metrics>,
    /// What `/status` shows about the network, updated here.
    network: Arc<RwLock<NetworkView>>,
    /// Every stream's task, so shutdown can wait for them and, at the end, abort them.
    tasks: JoinSet<()>,
    /// Numbers streams for logs.
    next_stream: u64,
    /// Peers' names for the streams' spans and counts.
    peer_names: names::PeerNames,
    /// False once shutdown began: new streams are refused.
    accepting: bool,
    /// The handlers' token, cancelled when the grace period ends: streams still
    /// running are ended.
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
    /// Serves every protocol without a handler of its own: the cells'.
    cells: Option<Arc<dyn Handler>>,
    /// What the cells want provided in the DHTs, as it changes.
    announced: Option<watch::Receiver<Vec<kad::RecordKey>>>,
    /// Asks peers where their dashboards are.
    dashboards: dashboards::Ask,
    /// When to read the provider records into the cluster view; `None` while no
    /// dashboard shows them (the admin endpoint is off).
    providers_refresh: Option<tokio::time::Interval>,
}

impl Node {
    /// A node that runs `swarm` and routes its inbound streams to `handlers`, which
    /// end their streams when `stop` is cancelled; `requests` come from `network`'s
    /// clones (the guests' dials and lookups).
    fn new(
        swarm: Swarm<Behaviour>,
        handlers: Handlers,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        network: Network,
        requests: mpsc::Receiver<Request>,
    ) -> Self {
        let mut swarm = swarm;
        let mut view = NetworkView {
            peer_id: swarm.local_peer_id().to_string(),
            ..NetworkView::default()
        };
        view::start(&mut view, &mut swarm);
        Node {
            swarm,
            listeners: Vec::new(),
            handlers,
            metrics,
            network: Arc::new(RwLock::new(view)),
            tasks: JoinSet::new(),
            next_stream: 0,
            peer_names: names::PeerNames::default(),
            accepting: true,
            stop,
            control: Control::default(),
            announcements: Announcements::default(),
            requests,
            _network: network,
            relays: Relays::default(),
            cells: None,
            announced: None,
            dashboards: dashboards::Ask::default(),
            providers_refresh: None,
        }
    }

    /// Routes every stream on a protocol without a handler of its own to `cells`,
    /// and provides in the DHTs what `announced` says, as it changes.
    fn serve_cells(
        &mut self,
        cells: Arc<dyn Handler>,
        announced: watch::Receiver<Vec<kad::RecordKey>>,
    ) {
        self.cells = Some(cells);
        self.announced = Some(announced);
    }

    /// Keeps the cluster view's provider records current (see
    /// [`view::note_providers`]), for the dashboard.
    fn watch_providers(&mut self) {
        let mut every = tokio::time::interval(view::PROVIDERS_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.providers_refresh = Some(every);
    }

    /// Listens on `addr` (its address is printed once bound, see [`run`]).
    fn listen(&mut self, addr: &Multiaddr) -> anyhow::Result<()> {
        net::check_port_free(addr)?;
        let listener = self.swarm.listen_on(addr.clone());
        let listener = listener.with_context(|| format!("cannot listen on {addr}"))?;
        self.listeners.push(listener);
        Ok(())
    }

    /// Runs the node until the first of `signals`, then shuts it down (see
    /// [`shutdown`]); returns when the shutdown is over.
    async fn serve(mut self, grace: Duration, mut signals: impl Stream<Item = ()> + Unpin) {
        loop {
            tokio::select! {
                Some(()) = signals.next() => break,
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(request) = self.requests.next() => self.control.handle(&mut self.swarm, request),
                keys = changed(&mut self.announced) => self.announcements.provide(&mut self.swarm, keys),
                () = tick(&mut self.providers_refresh) => view::note_providers(&self.network, &mut self.swarm),
                // Reaped as they end: a JoinSet keeps every finished task until joined.
                Some(ended) = self.tasks.join_next() => on_task_end(ended),
            }
        }
        self.shut_down(grace, signals).await;
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.libp2p.record(&event);
        self.control.on_event(&mut self.swarm, &event);
        self.announcements.on_event(&mut self.swarm, &event);
        view::note(&self.network, &mut self.swarm, &event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Router(inbound)) => self.accept(inbound),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                self.metrics.libp2p.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = &event {
                    self.note_relay(*peer_id, info);
                    self.dashboards
                        .on_identify(&mut self.swarm, &self.network, *peer_id, info);
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
        let peer = self.peer_names.get(&inbound.peer);
        let span = tracing::info_span!("stream", %peer, protocol = %inbound.protocol, id, connection = %inbound.connection);
        let Some(handler) = self.handlers.get(&inbound.protocol).or(self.cells.as_ref()) else {
            tracing::debug!(protocol = %inbound.protocol, "no handler; stream dropped");
            return;
        };
        let handler = handler.clone();
        let task = handler.accept(inbound, !self.accepting);
        let task = view::counted(&self.network, &peer, task);
        self.tasks.spawn(task.instrument(span));
    }

    /// Remembers (or forgets) a peer that offers circuit relay; an unreachable node
    /// listens through a new one at once.
    fn note_relay(&mut self, peer: PeerId, info: &identify::Info) {
        let offers_hop = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
        let listen_addrs = crate::net::discovery::usable_listen_addrs(info);
        if let Some(circuit) = self.relays.on_identify(peer, offers_hop, &listen_addrs) {
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
}

/// The next set of keys `announced` gives; never, if there is none.
async fn changed(
    announced: &mut Option<watch::Receiver<Vec<kad::RecordKey>>>,
) -> Vec<kad::RecordKey> {
    if let Some(keys) = announced
        && keys.changed().await.is_ok()
    {
        return keys.borrow_and_update().clone();
    }
    std::future::pending().await
}

/// The next tick of `every`; never, if there is none.
async fn tick(every: &mut Option<tokio::time::Interval>) {
    match every {
        Some(every) => {
            every.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Notes how a stream's task ended: a panic is logged (the task's stream is gone
/// with it); an abort is shutdown's doing.
fn on_task_end(ended: Result<(), JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        tracing::error!(%error, "a stream's task panicked");
    }
}
