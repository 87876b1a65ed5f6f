//! Loading a cell: its component's bytes — built in, a file, the node's content store,
//! or fetched from a node that provides them — named by their CID and kept in the
//! store (so this node can provide them in turn), then compiled into a [`ServedCell`].
//!
//! Compiling is CPU-bound: a cell loaded while the node runs (fetched, deployed) is
//! compiled on a blocking thread under [`COMPILE_BUDGET`], never on the network task.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use libp2p::PeerId;

use super::cells::{Origin, ServedCell};
use crate::cell::{CellOptions, Runtime};
use crate::config::{CellSource, CellSpec};
use crate::content::ContentId;
use crate::content::store::Store;
use crate::limits::Limits;
use crate::net::code::{self, FetchLimits};
use crate::net::network::Network;

/// How long a component may take to compile once the node runs. The compiler cannot
/// be interrupted: past the budget the load fails at once and the thread finishes
/// (bounded by the size cap) in the background.
pub const COMPILE_BUDGET: Duration = Duration::from_secs(60);
/// How long a node keeps looking for providers of a component it must fetch: the
/// DHT may still be filling in when the node starts.
pub const FETCH_PATIENCE: Duration = Duration::from_secs(30);
/// How long one provider may take to send a component.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(60);
/// Providers tried per round: a DHT full of fake providers that each stall until
/// [`PROVIDER_TIMEOUT`] cannot hold a fetch for longer than this many timeouts.
pub const PROVIDERS_PER_ROUND: usize = 8;
/// Pause between rounds of looking for providers.
const FETCH_RETRY: Duration = Duration::from_secs(1);

/// Loads cells: finds their components' bytes and compiles them. Cheap to clone.
#[derive(Clone)]
pub(super) struct Loader {
    pub(super) runtime: Arc<Runtime>,
    pub(super) store: Store,
    pub(super) network: Network,
}

impl Loader {
    /// The bytes of `spec`'s component, its CID, and where it came from, if this node
    /// has them (built in, a file, or in the store); `Ok(None)` for a CID to fetch.
    /// What is found is kept in the store.
    pub(super) fn local(
        &self,
        spec: &CellSpec,
    ) -> anyhow::Result<Option<(Vec<u8>, ContentId, Origin)>> {
        let (bytes, origin) = match &spec.source {
            CellSource::Builtin(builtin) => (builtin.wasm.to_vec(), Origin::Builtin),
            CellSource::File(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                (bytes, Origin::File)
            }
            CellSource::Content(content) => {
                if !self.store.contains(content) {
                    return Ok(None);
                }
                let bytes = self.store.get(content)?;
                return Ok(Some((bytes, *content, Origin::Content)));
            }
        };
        // The operator's own cells are served whatever the store says; keeping them
        // only lets peers fetch them.
        let content = match self.keep(&bytes) {
            Ok(content) => content,
            Err(error) => {
                let content = ContentId::of(&bytes);
                tracing::warn!(cell = %spec.name, %content, error = %format!("{error:#}"), "not kept in the content store; peers cannot fetch it from here");
                content
            }
        };
        Ok(Some((bytes, content, origin)))
    }

    /// Keeps `bytes` in the store (once), returning their CID.
    pub(super) fn keep(&self, bytes: &[u8]) -> anyhow::Result<ContentId> {
        let content = ContentId::of(bytes);
        if !self.store.contains(&content) {
            self.store
                .put(bytes)
                .context("cannot keep the component in the content store")?;
        }
        Ok(content)
    }

    /// Compiles `bytes` (the component `content`) as `spec`'s cell, to run within
    /// `limits`. Blocks: call it at start-up or through [`Loader::compile_off_task`].
    pub(super) fn compile(
        &self,
        spec: &CellSpec,
        limits: Limits,
        bytes: &[u8],
        content: ContentId,
        origin: Origin,
    ) -> anyhow::Result<ServedCell> {
        let started = std::time::Instant::now();
        let options = CellOptions {
            name: spec.name.clone(),
            limits,
            mode: spec.mode,
            dial: spec.dial.clone(),
            network: Some(self.network.clone()),
        };
        let source = match &spec.source {
            CellSource::Builtin(builtin) => format!("built-in cell `{}`", builtin.name),
            CellSource::File(path) => path.display().to_string(),
            CellSource::Content(content) => content.to_string(),
        };
        let cell = self.runtime.load(&source, bytes, &options)?;
        tracing::info!(cell = %spec.name, protocol = %spec.protocol, %content, origin = origin.name(), mode = cell.mode(), cached = cell.cached(), elapsed = ?started.elapsed(), ?limits, "cell loaded");
        Ok(ServedCell::new(spec, cell, content, origin, limits))
    }

    /// [`Loader::compile`] on a blocking thread, within [`COMPILE_BUDGET`]; `content` is
    /// the CID of `bytes`, which the caller has already checked.
    pub(super) async fn compile_off_task(
        &self,
        spec: CellSpec,
        limits: Limits,
        bytes: Vec<u8>,
        content: ContentId,
        origin: Origin,
    ) -> anyhow::Result<ServedCell> {
        let loader = self.clone();
        let compiling = tokio::task::spawn_blocking(move || {
            loader.compile(&spec, limits, &bytes, content, origin)
        });
        match tokio::time::timeout(COMPILE_BUDGET, compiling).await {
            Ok(compiled) => compiled.context("the compiler's thread failed")?,
            Err(_) => bail!("compiling took longer than {} s", COMPILE_BUDGET.as_secs()),
        }
    }

    /// Fetches the component `content` from the nodes that provide it (found in the
    /// DHTs, looked for up to [`FETCH_PATIENCE`]), passing over any that is slow,
    /// lies or goes away; keeps it in the store.
    pub(super) async fn fetch(&self, content: &ContentId) -> anyhow::Result<Vec<u8>> {
        let limits = FetchLimits {
            max_size: self.store.max_size(),
            timeout: PROVIDER_TIMEOUT,
        };
        let me = self.network.local_peer_id();
        let give_up = tokio::time::Instant::now() + FETCH_PATIENCE;
        let mut why = String::from("no node provides it");
        loop {
            let found = self
                .network
                .content_providers(content)
                .await
                .context("the node is stopping")?;
            let (reached, unreached): (Vec<_>, Vec<_>) = found
                .into_iter()
                .filter(|provider| provider.peer != me)
                .partition(|provider| provider.reached.is_ok());
            if !unreached.is_empty() {
                let unreached: Vec<String> = unreached
                    .iter()
                    .map(|p| format!("{}: {}", p.peer, p.reached.as_ref().unwrap_err()))
                    .collect();
                why = format!("no provider could be reached ({})", unreached.join("; "));
            }
            let peers: Vec<PeerId> = reached
                .iter()
                .map(|provider| provider.peer)
                .take(PROVIDERS_PER_ROUND)
                .collect();
            if !peers.is_empty() {
                let network = &self.network;
                let open = |peer| async move { network.open(peer, code::PROTOCOL).await };
                match code::fetch_from_any(content, peers, open, &limits).await {
                    Ok(fetched) => {
                        for failed in &fetched.failed {
                            tracing::warn!(provider = %failed.provider, error = %failed.error, %content, "a provider failed; used the next");
                        }
                        tracing::info!(%content, provider = %fetched.provider, bytes = fetched.bytes.len(), "component fetched");
                        self.keep(&fetched.bytes)?;
                        return Ok(fetched.bytes);
                    }
                    Err(failed) => why = failed.to_string(),
                }
            }
            if tokio::time::Instant::now() + FETCH_RETRY > give_up {
                bail!("cannot fetch {content}: {why}");
            }
            tracing::debug!(%content, %why, "looking for providers again");
            tokio::time::sleep(FETCH_RETRY).await;
        }
    }
}
