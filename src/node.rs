//! A running node: loads the cells, builds the swarm, listens, and routes every
//! inbound stream to a fresh instance of its cell in a task of its own.
//!
//! # Shutdown
//! At the first signal the node stops listening, withdraws its provider records and
//! refuses new streams, then gives running guests up to the grace period to finish:
//! the swarm and the guests' own dials keep working, so their bytes still flow. When
//! the grace period ends, every stream still running (or waiting for a slot) is ended
//! with the reason `node shutting down` — a `+status` peer reads it in the trailer —
//! and the node returns once those trailers are out, or after [`FINAL_FLUSH`]. A
//! second signal skips the wait and stops at once.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use futures::channel::mpsc;
use futures::{AsyncWriteExt as _, FutureExt as _, Stream, StreamExt as _};
use libp2p::core::transport::ListenerId;
use libp2p::metrics::Recorder as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, autonat, identify, relay};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::admin::{self, CellInfo, NetworkView};
use crate::admission::{Caps, Gate, Refusal, Scope};
use crate::cell::{self, Cache, Cell, CellOptions, PeerWriter, PoolSize, Runtime};
use crate::config::{CellSource, NodeConfig};
use crate::metrics::{CellLabel, Metrics};
use crate::net::control::Control;
use crate::net::discovery::Announcements;
use crate::net::network::{Network, Request};
use crate::net::relays::Relays;
use crate::net::router::InboundStream;
use crate::net::status::{self, AnswerWriter, CallHeader, Outcome, Variant};
use crate::net::{self, Behaviour, BehaviourEvent, discovery};

pub use crate::net::STATS_PROTOCOL;

/// How long streams still running when the grace period ends get to send their
/// `node shutting down` trailers.
pub const FINAL_FLUSH: Duration = Duration::from_secs(1);

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
    let cells = load_cells(&runtime, &config, &network_handle)?;
    let mut protocols = vec![STATS_PROTOCOL];
    for cell in &config.cells {
        protocols.push(cell.protocol.clone());
        protocols.push(status::status_variant(&cell.protocol));
        protocols.push(status::call_variant(&cell.protocol));
    }
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
    tracing::info!(peer = %swarm.local_peer_id(), pooling = runtime.pooling, cells = cells.len(), "node starting");

    discovery::join(&mut swarm, &config.network.bootstrap);
    let mut announcements = Announcements::default();
    let served: Vec<StreamProtocol> = config.cells.iter().map(|c| c.protocol.clone()).collect();
    announcements.provide(&mut swarm, &served);

    let limits = config.limits;
    let mut node = Node {
        swarm,
        listeners,
        cells,
        gate: Arc::new(Gate::new(Scope::Node, caps(&limits))),
        metrics,
        network,
        tasks: TaskTracker::new(),
        next_stream: 0,
        accepting: true,
        stop: CancellationToken::new(),
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

/// A cell as the node serves it: compiled, with its access rules and caps.
struct ServedCell {
    cell: Cell,
    label: CellLabel,
    /// Peers allowed to open streams; everyone if `None`.
    allow: Option<HashSet<PeerId>>,
    /// The cell's own caps, if it has any beyond the node's.
    gate: Option<Gate>,
    /// How long its streams may wait for a slot.
    queue: Duration,
}

/// The admission caps that `limits` set.
fn caps(limits: &crate::limits::Limits) -> Caps {
    Caps {
        instances: limits.max_instances,
        per_peer: limits.max_per_peer,
        backlog: limits.backlog,
    }
}

/// Cells by the protocol ID they are served on.
type Cells = HashMap<String, Arc<ServedCell>>;

fn load_cells(
    runtime: &Arc<Runtime>,
    config: &NodeConfig,
    network: &Network,
) -> anyhow::Result<Cells> {
    let mut cells = HashMap::new();
    for spec in &config.cells {
        let started = std::time::Instant::now();
        let limits = config.cell_limits(spec);
        let options = CellOptions {
            name: spec.name.clone(),
            limits,
            mode: spec.mode,
            dial: spec.dial.clone(),
            network: Some(network.clone()),
        };
        let cell = match &spec.source {
            CellSource::Builtin(builtin) => {
                let source = format!("built-in cell `{}`", builtin.name);
                runtime.load(&source, builtin.wasm, &options)?
            }
            CellSource::File(path) => cell::load_file(runtime, path, &options)?,
        };
        tracing::info!(cell = %spec.name, protocol = %spec.protocol, mode = cell.mode(), cached = cell.cached(), elapsed = ?started.elapsed(), ?limits, "cell loaded");
        let served = ServedCell {
            cell,
            label: CellLabel {
                cell: spec.name.clone(),
            },
            allow: spec
                .allow
                .as_ref()
                .map(|peers| peers.iter().copied().collect()),
            gate: spec
                .limits
                .caps_admission()
                .then(|| Gate::new(Scope::Cell, caps(&limits))),
            queue: limits.queue(),
        };
        cells.insert(spec.protocol.to_string(), Arc::new(served));
    }
    Ok(cells)
}

struct Node {
    swarm: Swarm<Behaviour>,
    /// Our listeners, closed first on shutdown.
    listeners: Vec<ListenerId>,
    cells: Cells,
    /// Node-wide instance slots.
    gate: Arc<Gate>,
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

    /// Hands an inbound stream to a task of its own; never does work inline.
    fn accept(&mut self, inbound: InboundStream) {
        let InboundStream {
            peer,
            connection,
            protocol,
            stream,
        } = inbound;
        let id = self.next_stream;
        self.next_stream += 1;
        let span = tracing::info_span!("stream", %peer, %protocol, id, %connection);
        if protocol == STATS_PROTOCOL {
            let stats = self.stats();
            self.tasks.spawn(send_stats(stream, stats).instrument(span));
            return;
        }
        let (base, variant) = status::parse(&protocol);
        let served = self
            .cells
            .get(base)
            .expect("the router only accepts served protocols")
            .clone();
        let refusal = if !self.accepting {
            Some(Refusal::ShuttingDown)
        } else if served
            .allow
            .as_ref()
            .is_some_and(|allow| !allow.contains(&peer))
        {
            Some(Refusal::NotAllowed)
        } else {
            None
        };
        let metrics = self.metrics.clone();
        let task = match refusal {
            Some(refusal) => refuse(stream, variant, refusal, metrics, served).boxed(),
            None => {
                let admission = Admission {
                    node_gate: self.gate.clone(),
                    peer,
                    metrics,
                    stop: self.stop.clone(),
                };
                let args = [base.to_string(), peer.to_string()];
                serve(served, admission, args, variant, stream).boxed()
            }
        };
        self.tasks.spawn(task.instrument(span));
    }

    fn stats(&self) -> String {
        let totals = self.metrics.totals();
        format!(
            "live {}\nsucceeded {}\nfailed {}\nrefused {}\n",
            totals.live.load(Ordering::Relaxed),
            totals.succeeded.load(Ordering::Relaxed),
            totals.failed.load(Ordering::Relaxed),
            totals.refused.load(Ordering::Relaxed),
        )
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

/// What a stream needs to be admitted, besides its cell.
struct Admission {
    node_gate: Arc<Gate>,
    peer: PeerId,
    metrics: Arc<Metrics>,
    /// Cancelled when the node stops serving.
    stop: CancellationToken,
}

/// How long a `+call` stream's header may take to arrive.
const CALL_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream: reads its call header if a cell dialed it (`+call`), waits for
/// slots (the cell's own, then the node's), then runs a fresh instance of the cell.
/// `args` are the guest's arguments (protocol, peer), `variant` what the peer asked for.
async fn serve(
    served: Arc<ServedCell>,
    admission: Admission,
    args: [String; 2],
    variant: Variant,
    mut stream: libp2p::Stream,
) {
    let Admission {
        node_gate,
        peer,
        metrics,
        stop,
    } = admission;
    let call = if variant == Variant::Call {
        let mut reader = (&mut stream).compat();
        let read = CallHeader::read(&mut reader);
        match tokio::time::timeout(CALL_HEADER_TIMEOUT, read).await {
            Ok(Ok(header)) => {
                tracing::debug!(hops = header.hops, deadline = ?header.deadline, "called by a cell");
                Some(header)
            }
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::info!(%error, "no call header; stream dropped");
                let outcome = Outcome::Failure(format!("no call header: {error}"));
                let _ = AnswerWriter::new(stream.compat(), true)
                    .finish(&outcome)
                    .await;
                return;
            }
        }
    } else {
        None
    };
    let deadline = tokio::time::Instant::now() + served.queue;
    let admitted = async {
        let cell_pass = match &served.gate {
            Some(cell_gate) => Some(cell_gate.enter(peer, deadline).await?),
            None => None,
        };
        Ok::<_, Refusal>((cell_pass, node_gate.enter(peer, deadline).await?))
    };
    let admitted = tokio::select! {
        admitted = admitted => admitted,
        () = stop.cancelled() => Err(Refusal::ShuttingDown),
    };
    let _passes = match admitted {
        Ok(passes) => passes,
        Err(refusal) => return refuse(stream, variant, refusal, metrics, served).await,
    };
    let (reader, writer) = tokio::io::split(stream.compat());
    let args = [args[0].as_str(), args[1].as_str()];
    let writer = PeerWriter::new(writer, variant.is_framed());
    match served
        .cell
        .serve_call(&args, reader, writer, call, &stop)
        .await
    {
        Ok(()) => tracing::debug!("cell finished"),
        Err(failure) => tracing::warn!(failure = %format!("{failure:#}"), "cell failed"),
    }
}

/// Refuses a stream visibly: a `+status` stream gets the reason in its trailer, a
/// plain one is reset.
async fn refuse(
    stream: libp2p::Stream,
    variant: Variant,
    refusal: Refusal,
    metrics: Arc<Metrics>,
    served: Arc<ServedCell>,
) {
    metrics.refused(&served.label, refusal.kind());
    tracing::info!(%refusal, "stream refused");
    if variant.is_framed() {
        let outcome = Outcome::Failure(refusal.to_string());
        if let Err(error) = AnswerWriter::new(stream.compat(), true)
            .finish(&outcome)
            .await
        {
            tracing::debug!(%error, "refusal not delivered");
        }
    }
}

async fn send_stats(mut stream: libp2p::Stream, stats: String) {
    let sent = async {
        stream.write_all(stats.as_bytes()).await?;
        stream.close().await
    };
    if let Err(error) = sent.await {
        tracing::debug!(%error, "stats not delivered");
    }
}
