//! `ww deploy`, `ww undeploy`, `ww cells` and `ww id`: install and remove cells on
//! running nodes ([`net::manage`](crate::net::manage)'s wire), list a node's cells, and
//! show the peer ID a deployer is trusted by — each with its arguments.
//!
//! A node accepts a deployment only from the peer IDs it trusts, so the deployer's
//! identity is a file like a node's: `--identity`, by default the one `ww run` uses.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};

use crate::config::parse_protocol;
use crate::content::ContentId;
use crate::dial::Target;

use crate::limits::{LimitOverrides, parse_mib};
use crate::net::client::Client;
use crate::net::discovery;
use crate::net::manage::{self, DeployAnswer, DeployRequest, DialRequest};
use crate::net::network::DhtPeer;
use crate::net::router::OpenStreamError;

mod print;

pub use print::{age, describe, format_cells, judge};

/// Longest one node may take to take a deployment: connect, transfer, compile, answer.
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);
/// Nodes deployed to at once.
pub const CONCURRENT_DEPLOYS: usize = 16;
/// DHT walks `--all` makes at most, stopping early once one finds no new node.
pub const MAX_WALKS: usize = 16;

/// Which nodes `ww deploy` and `ww undeploy` act on, and as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// A node: a full address ending in /p2p/<peer-id>, or a peer ID (found in the
    /// DHT through --bootstrap); repeatable.
    #[arg(long = "to", value_name = "TARGET", required_unless_present = "all")]
    pub to: Vec<Target>,
    /// Every ww node found in the DHT through --bootstrap.
    #[arg(long, conflicts_with = "to", requires = "bootstrap")]
    pub all: bool,
    /// A peer to search the DHT through (full address); repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<Multiaddr>,
    /// The deployer's identity file, created if missing (nodes trust deployers by
    /// peer ID; see `ww id`) [default: the one `ww run` uses,
    /// ~/.local/share/ww/identity.key].
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

/// The limits a deployment may ask for; the node grants at most its own ceilings.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct RequestedLimits {
    /// Ask for this much linear memory per instance, in MiB or with a unit (`1GiB`).
    #[arg(id = "request_memory_mb", long = "memory-mb", value_name = "MIB", value_parser = parse_mib)]
    pub memory_mb: Option<u64>,
    /// Ask for this much CPU time per instance, in ms; 0 = no limit.
    #[arg(id = "request_cpu_ms", long = "cpu-ms", value_name = "MS")]
    pub cpu_ms: Option<u64>,
    /// Ask for this wall-clock limit per stream, in seconds; 0 = none.
    #[arg(id = "request_wall_s", long = "wall-s", value_name = "S")]
    pub wall_s: Option<u64>,
    /// Ask for this many live instances of the cell at once.
    #[arg(id = "request_max_instances", long = "max-instances", value_name = "N")]
    pub max_instances: Option<u32>,
}

impl From<RequestedLimits> for LimitOverrides {
    fn from(asked: RequestedLimits) -> Self {
        LimitOverrides {
            memory_mb: asked.memory_mb,
            cpu_ms: asked.cpu_ms,
            wall_s: asked.wall_s,
            max_instances: asked.max_instances,
            ..LimitOverrides::default()
        }
    }
}

/// `ww deploy`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// The component to deploy (a .wasm file).
    pub file: PathBuf,
    /// The protocol the cell is to serve, e.g. /my/cell/1.0.0.
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: StreamProtocol,
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub limits: RequestedLimits,
    /// Ask that the cell may open streams on this protocol; repeatable.
    #[arg(long, value_name = "PROTOCOL", value_parser = parse_protocol)]
    pub dial: Vec<StreamProtocol>,
    /// Ask that the cell may open streams on any protocol.
    #[arg(long, conflicts_with = "dial")]
    pub dial_any: bool,
}

impl DeployArgs {
    /// The dialing asked for.
    pub fn dial_request(&self) -> Option<DialRequest> {
        match (self.dial_any, &self.dial[..]) {
            (true, _) => Some(DialRequest::Any),
            (false, []) => None,
            (false, only) => Some(DialRequest::Only(
                only.iter().map(ToString::to_string).collect(),
            )),
        }
    }

    /// Runs `ww deploy`: prints the component's CID, then one line per node.
    pub async fn run(self) -> anyhow::Result<()> {
        let component = tokio::fs::read(&self.file)
            .await
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        let request = DeployRequest::deploy(
            &self.protocol,
            &component,
            self.limits.into(),
            self.dial_request(),
        );
        let id = ContentId::of(&component);
        println!("{id}");
        act(
            &self.targets,
            &request,
            Some(&component),
            &format!("deploy {id}"),
        )
        .await
    }
}

/// `ww undeploy`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct UndeployArgs {
    /// The protocol to stop serving.
    #[arg(value_parser = parse_protocol)]
    pub protocol: StreamProtocol,
    #[command(flatten)]
    pub targets: TargetArgs,
}

impl UndeployArgs {
    /// Runs `ww undeploy`: one line per node.
    pub async fn run(self) -> anyhow::Result<()> {
        let request = DeployRequest::undeploy(&self.protocol);
        let what = format!("undeploy {}", self.protocol);
        act(&self.targets, &request, None, &what).await
    }
}

/// `ww cells`' arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CellsArgs {
    /// The node: a full address ending in /p2p/<peer-id>, or a peer ID (found in the
    /// DHT through --bootstrap).
    pub node: Target,
    /// A peer to search the DHT through (full address); repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<Multiaddr>,
}

impl CellsArgs {
    /// Runs `ww cells`: prints the node's cells as a table.
    pub async fn run(self) -> anyhow::Result<()> {
        let node = destination(&self.node)?;
        let client = Client::with_bootstrap(self.bootstrap)?;
        let listing = async {
            let mut stream = open(&client, &node, manage::CELLS_PROTOCOL).await?;
            Ok::<_, anyhow::Error>(manage::read_listing(&mut stream).await?)
        };
        let cells = tokio::time::timeout(DEPLOY_TIMEOUT, listing)
            .await
            .map_err(|_| anyhow!("{} sent no listing within {DEPLOY_TIMEOUT:?}", node.peer))?
            .with_context(|| format!("cannot list the cells of {}", node.peer))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        print!("{}", format_cells(&cells, now.as_secs()));
        Ok(())
    }
}

/// `ww id`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct IdArgs {
    /// The identity file, created if missing [default: the one `ww run` uses,
    /// ~/.local/share/ww/identity.key].
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

impl IdArgs {
    /// Runs `ww id`: prints the identity's peer ID (for a node's `deployers`).
    pub fn run(self) -> anyhow::Result<()> {
        let keypair = load_identity(self.identity)?;
        println!("{}", keypair.public().to_peer_id());
        Ok(())
    }
}

fn load_identity(path: Option<PathBuf>) -> anyhow::Result<libp2p::identity::Keypair> {
    let path = match path {
        Some(path) => path,
        None => crate::identity::default_path()?,
    };
    crate::identity::load_or_create(&path)
}

/// A node to act on and where it may be: full addresses (each ending in
/// `/p2p/<peer>`), or none to find it in the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Who.
    pub peer: PeerId,
    /// Where to try first.
    pub addresses: Vec<Multiaddr>,
}

/// Where a `--to` target is.
pub fn destination(target: &Target) -> anyhow::Result<Destination> {
    match target {
        Target::Addr(addr) => Ok(Destination {
            peer: discovery::peer_of(addr).context("an address without /p2p/<peer-id>")?,
            addresses: vec![addr.clone()],
        }),
        Target::Peer(peer) => Ok(Destination {
            peer: *peer,
            addresses: Vec::new(),
        }),
        Target::Any => bail!("a deployment names its nodes, or --all"),
    }
}

/// Adds the peers a DHT walk found to `nodes` (each once, never `local`); returns how
/// many were new.
pub fn add_found(nodes: &mut Vec<Destination>, found: Vec<DhtPeer>, local: PeerId) -> usize {
    let mut new = 0;
    for DhtPeer { peer, addresses } in found {
        if peer == local || nodes.iter().any(|node| node.peer == peer) {
            continue;
        }
        let addresses = addresses
            .into_iter()
            .map(|addr| discovery::without_peer(addr).with(Protocol::P2p(peer)))
            .collect();
        nodes.push(Destination { peer, addresses });
        new += 1;
    }
    new
}

/// Every ww node the DHT knows through `bootstrap`: the bootstrap peers, then the
/// peers found by walking the DHTs from this client's own ID and from random keys,
/// until a walk finds no new node (at most [`MAX_WALKS`]).
async fn find_all(client: &Client, bootstrap: &[Multiaddr]) -> anyhow::Result<Vec<Destination>> {
    let local = client.local_peer_id();
    let mut nodes = Vec::new();
    for addr in bootstrap {
        let node = destination(&Target::Addr(addr.clone()))?;
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    for walk in 0..MAX_WALKS {
        let key = if walk == 0 { local } else { PeerId::random() };
        let found = client.closest_peers(key).await?;
        if add_found(&mut nodes, found, local) == 0 && walk > 0 {
            break;
        }
    }
    Ok(nodes)
}

/// Connects to `node` (its addresses first, then the DHT) and opens `protocol`.
async fn open(
    client: &Client,
    node: &Destination,
    protocol: StreamProtocol,
) -> anyhow::Result<libp2p::Stream> {
    let mut connected = false;
    for addr in &node.addresses {
        match client.connect(addr).await {
            Ok(_) => {
                connected = true;
                break;
            }
            Err(error) => tracing::debug!(%addr, %error, "cannot connect"),
        }
    }
    if !connected {
        client.connect_peer(node.peer).await?;
    }
    client
        .open(node.peer, protocol.clone())
        .await
        .map_err(|error| match error {
            OpenStreamError::UnsupportedProtocol(_) => anyhow!("it does not serve {protocol}"),
            error => anyhow::Error::new(error).context(format!("cannot open {protocol}")),
        })
}

/// Sends `request` (and `component`) to one node; its answer.
async fn ask(
    client: &Client,
    node: &Destination,
    request: &DeployRequest,
    component: Option<&[u8]>,
) -> anyhow::Result<DeployAnswer> {
    if node.peer == client.local_peer_id() {
        bail!(
            "that is the deployer's own peer ID: the node and the deployer share an \
             identity file; give the deployer its own (--identity)"
        );
    }
    let mut stream = open(client, node, manage::DEPLOY_PROTOCOL).await?;
    // A node that refuses early stops reading and resets the stream: the write fails,
    // but its answer is already here to read.
    let sent = manage::send_request(&mut stream, request, component).await;
    match (manage::read_answer(&mut stream).await, sent) {
        (Ok(answer), _) => Ok(answer),
        (Err(_), Err(error)) => Err(anyhow::Error::new(error).context("the request broke off")),
        (Err(error), Ok(())) => Err(anyhow::Error::new(error).context("no answer")),
    }
}

/// Sends `request` to every node `targets` names, [`CONCURRENT_DEPLOYS`] at a time;
/// prints one line per node in the order given, and fails if any did not `what`.
async fn act(
    targets: &TargetArgs,
    request: &DeployRequest,
    component: Option<&[u8]>,
    what: &str,
) -> anyhow::Result<()> {
    let keypair = load_identity(targets.identity.clone())?;
    let client = Client::with_keypair(keypair, targets.bootstrap.clone())?;
    let nodes = if targets.all {
        find_all(&client, &targets.bootstrap).await?
    } else {
        let mut nodes: Vec<Destination> = Vec::new();
        for target in &targets.to {
            let node = destination(target)?;
            if !nodes.iter().any(|known| known.peer == node.peer) {
                nodes.push(node);
            }
        }
        nodes
    };
    if nodes.is_empty() {
        bail!("no ww node found through --bootstrap");
    }
    let answers = futures::stream::iter(&nodes)
        .map(|node| async {
            let answer =
                tokio::time::timeout(DEPLOY_TIMEOUT, ask(&client, node, request, component));
            let answer = answer
                .await
                .unwrap_or_else(|_| Err(anyhow!("no answer within {DEPLOY_TIMEOUT:?}")));
            (node.peer, answer)
        })
        .buffered(CONCURRENT_DEPLOYS);
    let mut answers = std::pin::pin!(answers);
    let mut failed = 0;
    while let Some((peer, answer)) = answers.next().await {
        let (ok, line) = judge(request, answer);
        failed += usize::from(!ok);
        println!("{peer}  {line}");
    }
    match failed {
        0 => Ok(()),
        failed => bail!("{failed} of {} nodes did not {what}", nodes.len()),
    }
}

#[cfg(test)]
mod tests;
