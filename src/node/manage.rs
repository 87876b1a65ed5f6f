//! The management handlers: `/ww/deploy/1.0.0` installs and removes cells while the
//! node runs, `/ww/cells/1.0.0` lists what it serves (see [`crate::net::manage`]).
//!
//! # Who may deploy, and what they get
//! Only the peers the node was told to trust (`deployers`, `--deployer`) may deploy,
//! and the connection's own identity says who a peer is: anyone else is refused
//! before a byte of their component is read. A deployment asks for limits and dial
//! grants; it gets at most the node's ceilings (`[deploy_limits]` over `[limits]`,
//! `deploy_dial`) and the answer says what it got. The component is checked against
//! its CID, capped in size (`max_component`), compiled on a blocking thread within a
//! time budget, recorded (so a restart serves it again), and only then swapped in:
//! a malformed or wrong-world component is refused with the reason and nothing
//! changes. Deployments run one at a time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::Semaphore;

use super::Handler;
use super::cells::{Cells, Origin};
use super::deployed::{Deployment, Deployments};
use super::loading::Loader;
use crate::cell::DialGrant;
use crate::config::CellSpec;
use crate::content::ContentId;
use crate::limits::Limits;
use crate::net::manage::{self, CellListing, DeployAnswer, DeployRequest, DialRequest, Op};
use crate::net::router::InboundStream;

/// How long a deployer may take to send its request and component.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// What a node lets deployers do.
pub(super) struct Policy {
    /// Peers allowed to deploy and undeploy.
    pub deployers: HashSet<PeerId>,
    /// The most a deployed cell is granted.
    pub ceiling: Limits,
    /// What a deployed cell may be granted to dial.
    pub dial: DialGrant,
    /// The largest component accepted.
    pub max_component: u64,
}

/// Serves [`manage::DEPLOY_PROTOCOL`].
pub(super) struct Deploy {
    cells: Arc<Cells>,
    loader: Loader,
    policy: Arc<Policy>,
    deployments: Arc<Deployments>,
    /// One deployment at a time.
    one_at_a_time: Arc<Semaphore>,
}

impl Deploy {
    pub(super) fn new(
        cells: Arc<Cells>,
        loader: Loader,
        policy: Policy,
        deployments: Arc<Deployments>,
    ) -> Self {
        Self {
            cells,
            loader,
            policy: Arc::new(policy),
            deployments,
            one_at_a_time: Arc::new(Semaphore::new(1)),
        }
    }
}

impl Handler for Deploy {
    fn accept(&self, inbound: InboundStream, closing: bool) -> BoxFuture<'static, ()> {
        let InboundStream { peer, stream, .. } = inbound;
        let work = Deployer {
            peer,
            cells: self.cells.clone(),
            loader: self.loader.clone(),
            policy: self.policy.clone(),
            deployments: self.deployments.clone(),
        };
        let one_at_a_time = self.one_at_a_time.clone();
        async move {
            let mut stream = stream;
            let answer = if closing {
                refused("the node is shutting down")
            } else if !work.policy.deployers.contains(&peer) {
                refused(format!(
                    "peer {peer} may not deploy to this node (it trusts the peers given with --deployer or `deployers`)"
                ))
            } else {
                let _turn = one_at_a_time.acquire_owned().await;
                work.serve(&mut stream).await
            };
            if let DeployAnswer::Refused { reason } = &answer {
                tracing::info!(%reason, "deployment refused");
            }
            if let Err(error) = manage::send_answer(&mut stream, &answer).await {
                tracing::debug!(%error, "deployment answer not delivered");
            }
        }
        .boxed()
    }
}

fn refused(reason: impl Into<String>) -> DeployAnswer {
    DeployAnswer::Refused {
        reason: reason.into(),
    }
}

/// One deployer's request, being served.
struct Deployer {
    peer: PeerId,
    cells: Arc<Cells>,
    loader: Loader,
    policy: Arc<Policy>,
    deployments: Arc<Deployments>,
}

impl Deployer {
    async fn serve(&self, stream: &mut libp2p::Stream) -> DeployAnswer {
        let read = manage::read_request(stream, self.policy.max_component);
        let (request, component) = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => return refused(error.to_string()),
            Err(_) => return refused(format!("the request took longer than {READ_TIMEOUT:?}")),
        };
        let protocol = match check_protocol(&request.protocol) {
            Ok(protocol) => protocol,
            Err(reason) => return refused(reason),
        };
        match (request.op, component) {
            (Op::Deploy, Some(component)) => self.deploy(protocol, &request, component).await,
            (Op::Undeploy, _) => self.undeploy(&protocol, request.content),
            (Op::Deploy, None) => Ok(refused("a deployment without a component")),
        }
        .unwrap_or_else(|error| refused(format!("{error:#}")))
    }

    async fn deploy(
        &self,
        protocol: StreamProtocol,
        request: &DeployRequest,
        component: Vec<u8>,
    ) -> anyhow::Result<DeployAnswer> {
        let asked_dial = match &request.dial {
            Some(dial) => dial.to_grant().map_err(anyhow::Error::msg)?,
            None => DialGrant::Denied,
        };
        let deployment = Deployment {
            protocol: protocol.to_string(),
            content: ContentId::of(&component),
            limits: request.limits.granted_under(&self.policy.ceiling),
            dial: DialRequest::from_grant(&asked_dial.within(&self.policy.dial)),
            deployer: self.peer.to_string(),
            since_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        };
        tracing::info!(%protocol, content = %deployment.content, deployer = %self.peer, bytes = component.len(), "deploying");
        let (spec, limits) = spec_of(&deployment, &self.policy)?;
        let loader = self.loader.clone();
        let component =
            tokio::task::spawn_blocking(move || loader.keep(&component).map(|_| component))
                .await??;
        let content = deployment.content;
        let cell = self
            .loader
            .compile_off_task(spec.clone(), limits, component, content, Origin::Deployed)
            .await?;
        self.deployments.record(deployment.clone())?;
        let replaced = self.cells.install(cell);
        if let Some(old) = &replaced {
            tracing::info!(%protocol, from = %old.content, to = %deployment.content, in_flight = old.live(), "cell swapped; streams in flight finish on the old version");
        }
        Ok(DeployAnswer::Deployed {
            protocol: protocol.to_string(),
            content: deployment.content,
            granted: limits,
            dial: deployment.dial,
            replaced: replaced.map(|old| old.content),
        })
    }

    fn undeploy(
        &self,
        protocol: &StreamProtocol,
        only: Option<ContentId>,
    ) -> anyhow::Result<DeployAnswer> {
        let Some(served) = self.cells.get(protocol.as_ref()) else {
            anyhow::bail!("no cell is served on {protocol}");
        };
        if served.origin != Origin::Deployed {
            anyhow::bail!(
                "the cell on {protocol} comes from the node's configuration, not a deployment; it cannot be undeployed"
            );
        }
        if let Some(only) = only
            && only != served.content
        {
            anyhow::bail!("{protocol} serves {}, not {only}", served.content);
        }
        self.deployments.forget(protocol.as_ref())?;
        self.cells.remove(protocol.as_ref());
        tracing::info!(%protocol, content = %served.content, deployer = %self.peer, in_flight = served.live(), "undeployed; streams in flight finish");
        Ok(DeployAnswer::Undeployed {
            protocol: protocol.to_string(),
            content: served.content,
        })
    }
}

/// A protocol a deployment may take: a valid ID, not one the node speaks itself.
fn check_protocol(protocol: &str) -> Result<StreamProtocol, String> {
    let protocol = crate::config::parse_protocol(protocol).map_err(|e| format!("{e:#}"))?;
    crate::config::check_cell_protocol(&protocol).map_err(|e| format!("{e:#}"))?;
    Ok(protocol)
}

/// The cell a deployment describes, and the limits it runs within: what it was
/// granted, granted again under `policy` — the node's ceilings now, which may be lower
/// than when it was deployed, and which a record edited on disk cannot raise.
pub(super) fn spec_of(
    deployment: &Deployment,
    policy: &Policy,
) -> anyhow::Result<(CellSpec, Limits)> {
    let protocol = crate::config::parse_protocol(&deployment.protocol)?;
    let mut spec = CellSpec::content(protocol.clone(), deployment.content);
    // Named by protocol, so a new version carries on the metrics of the old.
    spec.name = protocol.to_string();
    spec.limits = deployment.limits.granted_under(&policy.ceiling);
    spec.dial = match &deployment.dial {
        Some(dial) => dial.to_grant().map_err(anyhow::Error::msg)?,
        None => DialGrant::Denied,
    }
    .within(&policy.dial);
    let limits = spec.limits.apply(policy.ceiling);
    Ok((spec, limits))
}

/// Serves [`manage::CELLS_PROTOCOL`]: the cells served now.
pub(super) struct Listing(pub(super) Arc<Cells>);

impl Handler for Listing {
    fn accept(&self, inbound: InboundStream, _closing: bool) -> BoxFuture<'static, ()> {
        let listing: Vec<CellListing> = self
            .0
            .list()
            .iter()
            .map(|cell| {
                let info = cell.info();
                CellListing {
                    protocol: info.protocol,
                    content: cell.content,
                    kind: info.kind.to_string(),
                    source: info.source.to_string(),
                    live: cell.live(),
                    since_unix_s: info.since_unix_s,
                }
            })
            .collect();
        let mut stream = inbound.stream;
        async move {
            if let Err(error) = manage::send_listing(&mut stream, &listing).await {
                tracing::debug!(%error, "cell listing not delivered");
            }
        }
        .boxed()
    }
}
