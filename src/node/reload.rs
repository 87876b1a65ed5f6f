//! Re-reading the configuration while the node runs (SIGHUP). The cells it names are
//! compared with those the configuration named before: a cell whose component (its
//! CID) or settings changed is compiled again and swapped in — new streams go to the
//! new version, streams in flight finish on the old one — a new cell is added, and a
//! cell no longer named is removed (its streams in flight finish). A cell that fails
//! to load keeps its old version: nothing half-loaded is served. Deployed cells are
//! left alone, and other settings (listen addresses, limits, …) apply at a restart.

use std::collections::HashMap;

use futures::{Stream, StreamExt as _};

use super::cells::{Cells, Origin};
use super::loading::Loader;
use crate::config::{CellSpec, NodeConfig};
use crate::content::ContentId;
use crate::limits::Limits;

/// The configured cells as last loaded: a fingerprint of each (its component and
/// settings) by protocol.
#[derive(Debug, Default)]
pub(super) struct Configured(HashMap<String, String>);

impl Configured {
    /// Remembers that `spec` was loaded from `content` to run within `limits`.
    pub(super) fn note(&mut self, spec: &CellSpec, limits: &Limits, content: &ContentId) {
        let print = fingerprint(spec, limits, content);
        self.0.insert(spec.protocol.to_string(), print);
    }

    fn unchanged(&self, spec: &CellSpec, limits: &Limits, content: &ContentId) -> bool {
        self.0.get(spec.protocol.as_ref()) == Some(&fingerprint(spec, limits, content))
    }
}

/// What a cell was loaded from and with, in a form that changes when either does.
fn fingerprint(spec: &CellSpec, limits: &Limits, content: &ContentId) -> String {
    format!(
        "{content} {} {:?} {:?} {:?} {limits:?}",
        spec.name, spec.allow, spec.dial, spec.mode
    )
}

/// Applies each configuration `reloads` gives, in turn, until it ends.
pub(super) async fn apply_reloads(
    loader: Loader,
    cells: &Cells,
    mut configured: Configured,
    mut reloads: impl Stream<Item = anyhow::Result<NodeConfig>> + Unpin,
) {
    while let Some(config) = reloads.next().await {
        match config {
            Ok(config) => reload(&loader, cells, &mut configured, &config).await,
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "configuration not reloaded; the node serves on as before")
            }
        }
    }
}

/// Brings the configured cells in line with `config`.
async fn reload(loader: &Loader, cells: &Cells, configured: &mut Configured, config: &NodeConfig) {
    let (mut swapped, mut added, mut failed) = (0, 0, 0);
    for spec in &config.cells {
        let limits = config.cell_limits(spec);
        match load(loader, cells, configured, spec, limits).await {
            Ok(None) => {}
            Ok(Some(replaced)) => {
                if replaced {
                    swapped += 1;
                } else {
                    added += 1;
                }
            }
            Err(error) => {
                failed += 1;
                tracing::error!(cell = %spec.name, protocol = %spec.protocol, error = %format!("{error:#}"), "cell not reloaded; its old version (if any) serves on");
            }
        }
    }
    let named: Vec<String> = config
        .cells
        .iter()
        .map(|c| c.protocol.to_string())
        .collect();
    let gone: Vec<String> = configured
        .0
        .keys()
        .filter(|protocol| !named.contains(protocol))
        .cloned()
        .collect();
    let mut removed = 0;
    for protocol in gone {
        configured.0.remove(&protocol);
        let deployed = cells
            .get(&protocol)
            .is_some_and(|cell| cell.origin == Origin::Deployed);
        if !deployed && cells.remove(&protocol).is_some() {
            tracing::info!(%protocol, "cell removed; its streams in flight finish");
            removed += 1;
        }
    }
    tracing::info!(
        swapped,
        added,
        removed,
        failed,
        "configuration reloaded (cells only; other settings apply at a restart)"
    );
}

/// Loads `spec` again if its component or settings changed; returns whether it
/// replaced a cell (`None`: unchanged).
async fn load(
    loader: &Loader,
    cells: &Cells,
    configured: &mut Configured,
    spec: &CellSpec,
    limits: Limits,
) -> anyhow::Result<Option<bool>> {
    let local = {
        let (loader, spec) = (loader.clone(), spec.clone());
        tokio::task::spawn_blocking(move || loader.local(&spec)).await??
    };
    let (bytes, content, origin) = match local {
        Some(found) => found,
        None => {
            let crate::config::CellSource::Content(content) = &spec.source else {
                unreachable!("only a component named by its CID can be missing");
            };
            (loader.fetch(content).await?, *content, Origin::Content)
        }
    };
    if configured.unchanged(spec, &limits, &content) && cells.get(spec.protocol.as_ref()).is_some()
    {
        return Ok(None);
    }
    let cell = loader
        .compile_off_task(spec.clone(), limits, bytes, content, origin)
        .await?;
    configured.note(spec, &limits, &content);
    let replaced = cells.install(cell);
    if let Some(old) = &replaced {
        tracing::info!(protocol = %spec.protocol, from = %old.content, to = %content, in_flight = old.live(), "cell swapped; streams in flight finish on the old version");
    }
    Ok(Some(replaced.is_some()))
}
