//! Starting a node ([`run`]): its cells loaded and compiled, the swarm built, the
//! handlers routed, the listeners up, and the tasks beside the event loop — cells to
//! fetch, deployments to restore, configurations to reload — then the node served
//! until a signal, and shut down.

use std::sync::Arc;

use anyhow::Context as _;
use futures::channel::mpsc;
use futures::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::cells::{self, Cells};
use super::deployed::Deployments;
use super::loading::Loader;
use super::{Handlers, Node, STATS_PROTOCOL, code, dashboards, manage, reload, stats};
use crate::admin;
use crate::cell::{Cache, PoolSize, Runtime};
use crate::config::{CellSpec, NodeConfig};
use crate::content::store::Store;
use crate::metrics::Metrics;
use crate::net::network::Network;
use crate::net::{self, discovery};

/// Runs a node until the first of `signals` (Ctrl-C, SIGTERM), then shuts down
/// gracefully; a second signal stops it at once (see the module docs). Listen
/// addresses are printed on stdout, one full multiaddr (ending in `/p2p/<peer-id>`)
/// per line, as soon as they are bound.
///
/// Each configuration `reloads` gives (read again at SIGHUP) updates the cells served
/// (see the `reload` module).
pub async fn run(
    config: NodeConfig,
    signals: impl Stream<Item = ()> + Unpin + Send + 'static,
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
    let mut fixed = vec![
        STATS_PROTOCOL,
        net::code::PROTOCOL,
        net::manage::DEPLOY_PROTOCOL,
        net::manage::CELLS_PROTOCOL,
    ];
    if config.admin.is_some() {
        fixed.push(net::dashboard::PROTOCOL);
    }
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
            let token = config.admin_token.clone();
            let (bound, admin) = admin::spawn(addr, token, metrics, network, view).await?;
            let tell = Arc::new(dashboards::Tell(bound));
            node.handlers.insert(net::dashboard::PROTOCOL, tell);
            node.watch_providers();
            Some(admin)
        }
        None => None,
    };
    tracing::info!(peer = %node.swarm.local_peer_id(), pooling = runtime.pooling, reset_in_place = runtime.reset_in_place, cells = config.cells.len(), "node starting");

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
    // The swarm loop runs as a task on a worker rather than in the caller (`block_on`
    // on the main thread): each stream's task is then spawned from a worker into
    // that worker's own queue, not the runtime's shared one, which saves waking a
    // worker for every stream (context switches per stream at 64 in flight: 5.0 →
    // 2.4 in all of the node's threads).
    if let Err(error) = tokio::spawn(node.serve(config.shutdown_grace, signals)).await
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
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
        .compile_off_task(spec, limits, bytes, content, origin)
        .await
        .with_context(|| format!("cell `{name}`"))?;
    cells.install(cell);
    Ok(())
}
