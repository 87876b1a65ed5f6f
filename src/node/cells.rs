//! The cells handler and the set of cells a node serves. Every stream on a cell's
//! protocol (plain, `+status` or `+call`) is checked against the cell's allowlist,
//! waits for instance slots (see [`crate::admission`]) and runs a fresh instance of
//! its cell.
//!
//! # Versions
//! The set changes while the node runs (a deployment, a swap, an undeploy):
//! [`Cells::install`] puts a protocol's new version in place for the streams that
//! arrive from then on. A stream holds the version it started with (an
//! `Arc<ServedCell>`) until it ends, so streams in flight finish on it, and a
//! replaced version is freed when its last stream ends. Each change also updates the
//! protocols the router accepts and the keys the node provides in the DHTs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use libp2p::{PeerId, StreamProtocol, kad};
use tokio::sync::watch;
use tokio_util::compat::FuturesAsyncReadCompatExt as _;
use tokio_util::sync::CancellationToken;

use super::Handler;
use super::names::PeerNames;
use crate::admission::{Caps, Gate, Refusal, Scope};
use crate::cell::{Cell, PeerWriter};
use crate::config::CellSpec;
use crate::content::ContentId;
use crate::limits::Limits;
use crate::metrics::{CellInfoLabel, CellLabel, Metrics};
use crate::net::discovery;
use crate::net::router::{self, InboundStream};
use crate::net::status::{self, AnswerWriter, CallHeader, Outcome, Variant};

/// The cells a node serves, by protocol, and the handler of their streams.
pub(super) struct Cells {
    /// The version of each cell served now, by the protocol it is served on.
    served: RwLock<HashMap<String, Arc<ServedCell>>>,
    /// Node-wide instance slots.
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    /// Cancelled when the grace period ends: streams still running are ended.
    stop: CancellationToken,
    /// What the router accepts: `fixed`, and each cell's protocols.
    router: router::Protocols,
    /// The protocols of the node's other handlers.
    fixed: Vec<StreamProtocol>,
    /// Peers' names, for the guests' arguments.
    peer_names: PeerNames,
    /// What the node provides in the DHTs: each cell's protocol and component.
    keys: watch::Sender<Vec<kad::RecordKey>>,
}

impl Cells {
    /// An empty set: the router accepts only `fixed` until cells are installed.
    pub(super) fn new(
        limits: &Limits,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        router: router::Protocols,
        fixed: Vec<StreamProtocol>,
    ) -> (Self, watch::Receiver<Vec<kad::RecordKey>>) {
        let (keys, announced) = watch::channel(Vec::new());
        let cells = Self {
            served: RwLock::default(),
            gate: Arc::new(Gate::new(Scope::Node, caps(limits))),
            metrics,
            stop,
            router,
            fixed,
            peer_names: PeerNames::default(),
            keys,
        };
        cells.publish();
        (cells, announced)
    }

    /// Serves `cell` on its protocol from now on; returns the version it replaces,
    /// whose streams in flight run on.
    pub(super) fn install(&self, cell: ServedCell) -> Option<Arc<ServedCell>> {
        let cell = Arc::new(cell);
        let previous = self.write().insert(cell.protocol.to_string(), cell.clone());
        if let Some(previous) = &previous
            && previous.info_label() != cell.info_label()
        {
            self.metrics.cell_withdrawn(&previous.info_label());
        }
        self.metrics.cell_served(cell.info_label());
        self.publish();
        previous
    }

    /// Stops serving `protocol`: new streams on it are refused; those in flight run
    /// on. Returns the cell removed.
    pub(super) fn remove(&self, protocol: &str) -> Option<Arc<ServedCell>> {
        let removed = self.write().remove(protocol)?;
        self.metrics.cell_withdrawn(&removed.info_label());
        self.publish();
        Some(removed)
    }

    /// The cell served on `protocol` now.
    pub(super) fn get(&self, protocol: &str) -> Option<Arc<ServedCell>> {
        self.read().get(protocol).cloned()
    }

    /// Every cell served now, by protocol.
    pub(super) fn list(&self) -> Vec<Arc<ServedCell>> {
        let mut cells: Vec<_> = self.read().values().cloned().collect();
        cells.sort_by(|a, b| a.protocol.as_ref().cmp(b.protocol.as_ref()));
        cells
    }

    /// Tells the router and the DHT announcements what is served now.
    fn publish(&self) {
        let served = self.read();
        let mut protocols = self.fixed.clone();
        let mut keys = Vec::new();
        for cell in served.values() {
            protocols.push(cell.protocol.clone());
            protocols.push(status::status_variant(&cell.protocol));
            protocols.push(status::call_variant(&cell.protocol));
            keys.push(discovery::provider_key(&cell.protocol));
            keys.push(discovery::content_key(&cell.content));
        }
        self.router.set(protocols);
        self.keys.send_replace(keys);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<ServedCell>>> {
        self.served.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<ServedCell>>> {
        self.served.write().unwrap_or_else(|e| e.into_inner())
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
        // Removed between the negotiation and now: as if it had never been served.
        let Some(served) = self.get(base) else {
            tracing::debug!("cell removed while its stream was negotiated; stream dropped");
            return futures::future::ready(()).boxed();
        };
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
            Some(refusal) => refuse(stream, variant, refusal, metrics, served, peer).boxed(),
            None => {
                let admission = Admission {
                    node_gate: self.gate.clone(),
                    peer,
                    metrics,
                    stop: self.stop.clone(),
                };
                let args = [base.into(), self.peer_names.get(&peer)];
                serve(served, admission, args, variant, stream).boxed()
            }
        }
    }
}

/// Where a served cell's component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Compiled into ww.
    Builtin,
    /// A file named in the config or a flag.
    File,
    /// Named by its CID in the config or a flag (from the store, or fetched).
    Content,
    /// Deployed by a peer while the node runs.
    Deployed,
}

impl Origin {
    /// How `ww cells` and `/status` name it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Origin::Builtin => "builtin",
            Origin::File => "file",
            Origin::Content => "content",
            Origin::Deployed => "deployed",
        }
    }
}

/// One version of a cell as the node serves it: compiled, named by its component's
/// CID, with its access rules and caps.
pub(super) struct ServedCell {
    cell: Cell,
    label: CellLabel,
    /// The protocol it is served on.
    pub(super) protocol: StreamProtocol,
    /// Its component's CID.
    pub(super) content: ContentId,
    /// Where its component came from.
    pub(super) origin: Origin,
    /// When it was installed.
    pub(super) since: SystemTime,
    /// Instances of this version alive now.
    live: AtomicU64,
    /// Peers allowed to open streams; everyone if `None`.
    allow: Option<HashSet<PeerId>>,
    /// The cell's own caps, if it has any beyond the node's.
    gate: Option<Gate>,
    /// How long its streams may wait for a slot.
    queue: Duration,
}

impl ServedCell {
    /// `cell`, compiled from `spec`'s component `content` to run within `limits`.
    pub(super) fn new(
        spec: &CellSpec,
        cell: Cell,
        content: ContentId,
        origin: Origin,
        limits: Limits,
    ) -> Self {
        Self {
            cell,
            label: CellLabel {
                cell: spec.name.clone(),
            },
            protocol: spec.protocol.clone(),
            content,
            origin,
            since: SystemTime::now(),
            live: AtomicU64::new(0),
            allow: spec
                .allow
                .as_ref()
                .map(|peers| peers.iter().copied().collect()),
            gate: spec
                .limits
                .caps_admission()
                .then(|| Gate::new(Scope::Cell, caps(&limits))),
            queue: limits.queue(),
        }
    }

    /// How it reaches its stream: `connection` or `stdio`.
    pub(super) fn mode(&self) -> &'static str {
        self.cell.mode()
    }

    /// Instances of this version alive now.
    pub(super) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// How `/status` shows it.
    pub(super) fn info(&self) -> crate::admin::CellInfo {
        crate::admin::CellInfo {
            name: self.label.cell.clone(),
            protocol: self.protocol.to_string(),
            content: self.content.to_string(),
            kind: self.mode(),
            source: self.origin.name(),
            since_unix_s: self
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        }
    }

    fn info_label(&self) -> CellInfoLabel {
        CellInfoLabel {
            cell: self.label.cell.clone(),
            protocol: self.protocol.to_string(),
            content: self.content.to_string(),
        }
    }
}

impl Drop for ServedCell {
    fn drop(&mut self) {
        tracing::debug!(cell = %self.label.cell, protocol = %self.protocol, content = %self.content, "cell version freed");
    }
}

/// Counts a live instance of a version while it is held.
struct LiveInstance(Arc<ServedCell>);

impl LiveInstance {
    fn new(served: &Arc<ServedCell>) -> Self {
        served.live.fetch_add(1, Ordering::Relaxed);
        Self(served.clone())
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The admission caps that `limits` set.
fn caps(limits: &Limits) -> Caps {
    Caps {
        instances: limits.max_instances,
        per_peer: limits.max_per_peer,
        backlog: limits.backlog,
    }
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
    args: [Arc<str>; 2],
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
        Err(refusal) => return refuse(stream, variant, refusal, metrics, served, peer).await,
    };
    let _live = LiveInstance::new(&served);
    let (reader, writer) = tokio::io::split(stream.compat());
    let args = [&*args[0], &*args[1]];
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
    peer: PeerId,
) {
    metrics.refused(
        &served.label,
        refusal.kind(),
        refusal.to_string(),
        peer.to_string(),
    );
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

#[cfg(test)]
mod tests;
