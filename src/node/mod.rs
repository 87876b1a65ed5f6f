//! A running node: loads the cells, builds the swarm, listens, and routes every
//! inbound stream, by its protocol, to the handler that serves it — `cells` (a fresh
//! instance of the stream's cell) or `stats` — in a task of its own.
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
mod deployed;
mod loading;
mod manage;
mod reload;
mod shutdown;
mod stats;
#[cfg(test)]
mod tests;

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

use crate::admin::{self, NetworkView};
use crate::cell::{Cache, PoolSize, Runtime};
use crate::config::{CellSpec, NodeConfig};
use crate::content::store::Store;
use crate::metrics::Metrics;
use crate::net::control::Control;
use crate::net::discovery::Announcements;
use crate::net::network::{Network, Request};
use crate::net::relays::Relays;
use crate::net::router::InboundStream;
use crate::net::{self, Behaviour, BehaviourEvent, discovery};
use cells::Cells;
use deployed::Deployments;
use loading::Loader;

pub use crate::net::STATS_PROTOCOL;
pub use shutdown::FINAL_FLUSH;

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
///
/// Each configuration `reloads` gives (read again at SIGHUP) updates the cells served
/// (see [`reload`]).
pub async fn run(
    config: NodeConfig,
    signals: impl Stream<Item = ()> + Unpin,
    reloads: impl Stream<Item = anyhow::Result<NodeConfig>> + Send + Unpin + 'static,
) -> anyhow::Result<()> {
    let keypair = crate::identity::load_or_create(&config.identity)?;
    let metrics = Arc::new(Metrics::new());
    let pool = PoolSize {
        instances: config.limits.max_instances,
        memory_bytes: config.max_memory_bytes(),
    };
    let cache = config.cache.clone().map(Cache::open).transpose()?;
    let runtime = Runtime::new(Some(pool), metrics.clone(), cache)?;
    let content_dir = config.data_dir.join("content");
    let store = Store::open(&content_dir, config.max_component)
        .with_context(|| format!("cannot open the content store in {}", content_dir.display()))?;
    let (network_handle, requests) = Network::new(keypair.public().to_peer_id());
    let loader = Loader {
        runtime: runtime.clone(),
        store: store.clone(),
        network: network_handle.clone(),
    };
    // Every cell whose component is here is compiled before the node listens: a bad
    // one stops the start. Components named by a CID the node lacks come later.
    let mut loaded = Vec::new();
    let mut to_fetch = Vec::new();
    let mut configured = reload::Configured::default();
    for spec in &config.cells {
        let limits = config.cell_limits(spec);
        match loader.local(spec)? {
            Some((bytes, content, origin)) => {
                loaded.push(loader.compile(spec, limits, &bytes, content, origin)?);
                configured.note(spec, &limits, &content);
            }
            None => to_fetch.push((spec.clone(), limits)),
        }
    }
    let deployments = Arc::new(Deployments::open(&config.data_dir)?);
    let stop = CancellationToken::new();
    let fixed = vec![
        STATS_PROTOCOL,
        net::code::PROTOCOL,
        net::manage::DEPLOY_PROTOCOL,
        net::manage::CELLS_PROTOCOL,
    ];
    let swarm = net::build_swarm(keypair, fixed.clone(), &config.network)?;
    let router = swarm.behaviour().router.protocols();
    let (cells, announced) =
        Cells::new(&config.limits, metrics.clone(), stop.clone(), router, fixed);
    let cells = Arc::new(cells);
    for cell in loaded {
        cells.install(cell);
    }
    let policy = manage::Policy {
        deployers: config.deployers.iter().copied().collect(),
        ceiling: config.deploy_ceiling,
        dial: config.deploy_dial.clone(),
        max_component: config.max_component,
    };
    let deployed = restore_deployments(&loader, &cells, &deployments, &policy);
    let mut handlers = Handlers::new();
    let stats = stats::Stats {
        metrics: metrics.clone(),
        cells: cells.clone(),
    };
    handlers.insert(STATS_PROTOCOL, Arc::new(stats));
    handlers.insert(net::code::PROTOCOL, Arc::new(code::Code::new(store)));
    let deploy = manage::Deploy::new(cells.clone(), loader.clone(), policy, deployments);
    handlers.insert(net::manage::DEPLOY_PROTOCOL, Arc::new(deploy));
    handlers.insert(
        net::manage::CELLS_PROTOCOL,
        Arc::new(manage::Listing(cells.clone())),
    );
    let mut node = Node::new(
        swarm,
        handlers,
        metrics.clone(),
        stop,
        network_handle,
        requests,
    );
    node.serve_cells(cells.clone(), announced);
    for addr in &config.listen {
        node.listen(addr)?;
    }
    let admin = match config.admin {
        Some(addr) => {
            let view = cells.clone();
            let view: admin::CellsView =
                Arc::new(move || view.list().iter().map(|c| c.info()).collect());
            let network = node.network.clone();
            Some(admin::spawn(addr, metrics, network, view).await?)
        }
        None => None,
    };
    tracing::info!(peer = %node.swarm.local_peer_id(), pooling = runtime.pooling, cells = config.cells.len(), "node starting");

    discovery::join(&mut node.swarm, &config.network.bootstrap);
    // A component that cannot be fetched stops the node, as a bad file would have.
    let (failed, failures) = mpsc::unbounded();
    for (spec, limits) in to_fetch {
        let (loader, cells, failed) = (loader.clone(), cells.clone(), failed.clone());
        let span = tracing::info_span!("fetch", cell = %spec.name, protocol = %spec.protocol);
        tokio::spawn(
            async move {
                if let Err(error) =
                    fetch_and_install(&loader, &cells, spec, limits, cells::Origin::Content).await
                {
                    let _ = failed.unbounded_send(error);
                }
            }
            .instrument(span),
        );
    }
    let reloading = {
        let (loader, cells) = (loader.clone(), cells.clone());
        let span = tracing::info_span!("reload");
        tokio::spawn(
            async move { reload::apply_reloads(loader, &cells, configured, reloads).await }
                .instrument(span),
        )
    };
    for (spec, limits) in deployed {
        let (loader, cells) = (loader.clone(), cells.clone());
        let span = tracing::info_span!("fetch", cell = %spec.name, protocol = %spec.protocol);
        tokio::spawn(
            async move {
                if let Err(error) =
                    fetch_and_install(&loader, &cells, spec, limits, cells::Origin::Deployed).await
                {
                    tracing::error!(error = %format!("{error:#}"), "deployed cell not restored");
                }
            }
            .instrument(span),
        );
    }
    let failure = Arc::new(std::sync::Mutex::new(None));
    let noted = failure.clone();
    let failures = failures.map(move |error: anyhow::Error| {
        tracing::error!(error = %format!("{error:#}"), "stopping");
        noted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(error);
    });
    let signals = futures::stream::select(signals, failures);
    node.serve(config.shutdown_grace, signals).await;
    reloading.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    match failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Serves again the cells deployed before the node stopped: those whose components
/// are in the store at once; returns those to fetch.
fn restore_deployments(
    loader: &Loader,
    cells: &Cells,
    deployments: &Deployments,
    policy: &manage::Policy,
) -> Vec<(CellSpec, crate::limits::Limits)> {
    let mut to_fetch = Vec::new();
    for deployment in deployments.all() {
        let restored = manage::spec_of(&deployment, policy).and_then(|(spec, limits)| {
            match loader.local(&spec)? {
                Some((bytes, content, _)) => {
                    let cell =
                        loader.compile(&spec, limits, &bytes, content, cells::Origin::Deployed)?;
                    cells.install(cell);
                }
                None => to_fetch.push((spec, limits)),
            }
            Ok(())
        });
        if let Err(error) = restored {
            let protocol = &deployment.protocol;
            tracing::error!(%protocol, error = %format!("{error:#}"), "deployed cell not restored");
        }
    }
    to_fetch
}

/// Fetches the component `spec` names by its CID, compiles it and serves it.
async fn fetch_and_install(
    loader: &Loader,
    cells: &Cells,
    spec: CellSpec,
    limits: crate::limits::Limits,
    origin: cells::Origin,
) -> anyhow::Result<()> {
    let crate::config::CellSource::Content(content) = &spec.source else {
        unreachable!("only components named by their CID are fetched");
    };
    let content = *content;
    let name = spec.name.clone();
    let bytes = loader.fetch(&content).await?;
    let cell = loader
        .compile_off_task(spec, limits, bytes, origin)
        .await
        .with_context(|| format!("cell `{name}`"))?;
    cells.install(cell);
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
    /// Every stream's task, so shutdown can wait for them and, at the end, abort them.
    tasks: JoinSet<()>,
    /// Numbers streams for logs.
    next_stream: u64,
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
        let view = NetworkView {
            peer_id: swarm.local_peer_id().to_string(),
            ..NetworkView::default()
        };
        Node {
            swarm,
            listeners: Vec::new(),
            handlers,
            metrics,
            network: Arc::new(RwLock::new(view)),
            tasks: JoinSet::new(),
            next_stream: 0,
            accepting: true,
            stop,
            control: Control::default(),
            announcements: Announcements::default(),
            requests,
            _network: network,
            relays: Relays::default(),
            cells: None,
            announced: None,
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
        let Some(handler) = self.handlers.get(&inbound.protocol).or(self.cells.as_ref()) else {
            tracing::debug!(protocol = %inbound.protocol, "no handler; stream dropped");
            return;
        };
        let handler = handler.clone();
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

/// Notes how a stream's task ended: a panic is logged (the task's stream is gone
/// with it); an abort is shutdown's doing.
fn on_task_end(ended: Result<(), JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        tracing::error!(%error, "a stream's task panicked");
    }
}
