//! The cells handler: every stream on a cell's protocol (plain, `+status` or `+call`)
//! is checked against the cell's allowlist, waits for instance slots (see
//! [`crate::admission`]) and runs a fresh instance of its cell.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use libp2p::{PeerId, StreamProtocol};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;
use tokio_util::sync::CancellationToken;

use super::Handler;
use crate::admission::{Caps, Gate, Refusal, Scope};
use crate::cell::{self, Cell, CellOptions, PeerWriter, Runtime};
use crate::config::{CellSource, NodeConfig};
use crate::metrics::{CellLabel, Metrics};
use crate::net::network::Network;
use crate::net::router::InboundStream;
use crate::net::status::{self, AnswerWriter, CallHeader, Outcome, Variant};

/// Serves the node's cells.
pub(super) struct Cells {
    /// Cells by the protocol ID they are served on.
    cells: HashMap<String, Arc<ServedCell>>,
    /// Node-wide instance slots.
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    /// Cancelled when the grace period ends: streams still running are ended.
    stop: CancellationToken,
}

impl Cells {
    /// Loads and compiles every cell `config` names.
    pub(super) fn load(
        runtime: &Arc<Runtime>,
        config: &NodeConfig,
        network: &Network,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            cells: load_cells(runtime, config, network)?,
            gate: Arc::new(Gate::new(Scope::Node, caps(&config.limits))),
            metrics,
            stop,
        })
    }

    /// How many cells are served.
    pub(super) fn len(&self) -> usize {
        self.cells.len()
    }

    /// Every protocol the cells are reached on: each cell's, its `+status` and its
    /// `+call` variant.
    pub(super) fn protocols(config: &NodeConfig) -> Vec<StreamProtocol> {
        let mut protocols = Vec::new();
        for cell in &config.cells {
            protocols.push(cell.protocol.clone());
            protocols.push(status::status_variant(&cell.protocol));
            protocols.push(status::call_variant(&cell.protocol));
        }
        protocols
    }
}

impl Handler for Cells {
    fn accept(&self, inbound: InboundStream, closing: bool) -> BoxFuture<'static, ()> {
        let InboundStream {
            peer,
            protocol,
            stream,
            ..
        } = inbound;
        let (base, variant) = status::parse(&protocol);
        let served = self
            .cells
            .get(base)
            .expect("the router only accepts served protocols")
            .clone();
        let refusal = if closing {
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
        match refusal {
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
        }
    }
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

fn load_cells(
    runtime: &Arc<Runtime>,
    config: &NodeConfig,
    network: &Network,
) -> anyhow::Result<HashMap<String, Arc<ServedCell>>> {
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
