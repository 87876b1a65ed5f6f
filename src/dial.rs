//! `ww dial`, `ww find` and `ww stats`: a stream between local bytes (this terminal)
//! and a remote cell, the peers that serve a cell, and a node's counters — each with
//! its arguments.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::net::client::Client;
use crate::net::discovery;
use crate::net::router::OpenStreamError;
use crate::net::rtt::{Ranking, Rtt};
use crate::net::status::{self, Caller, Outcome};

/// `ww dial`'s arguments: NODE PROTOCOL, or `--any PROTOCOL` (the one-of rule is on
/// the subcommand, as clap groups need).
#[derive(Debug, clap::Args)]
pub struct DialArgs {
    /// The node: a full address ending in /p2p/<peer-id>, or a peer ID alone
    /// (found in the DHT through --bootstrap).
    #[arg(requires = "protocol")]
    pub target: Option<Target>,
    /// The cell's protocol, e.g. /ww/echo/0.1.0.
    #[arg(value_parser = crate::config::parse_protocol)]
    pub protocol: Option<StreamProtocol>,
    /// Dial any node that serves this protocol (found in the DHT through
    /// --bootstrap): the closest (lowest round-trip time, as ping measures it)
    /// first, trying the next when one fails.
    #[arg(long, value_name = "PROTOCOL", value_parser = crate::config::parse_protocol, conflicts_with = "protocol")]
    pub any: Option<StreamProtocol>,
    /// A peer to search the DHT through (full address); repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<Multiaddr>,
}

impl DialArgs {
    /// Runs `ww dial` between this terminal's stdin and stdout and the cell.
    pub async fn run(self) -> anyhow::Result<()> {
        let (target, protocol) = match (self.target, self.protocol, self.any) {
            (Some(target), Some(protocol), None) => (target, protocol),
            (None, None, Some(protocol)) => (Target::Any, protocol),
            _ => bail!("give NODE PROTOCOL, or --any PROTOCOL"),
        };
        let (stdin, stdout) = (tokio::io::stdin(), tokio::io::stdout());
        dial(&target, protocol, self.bootstrap, stdin, stdout).await
    }
}

/// `ww find`'s arguments.
#[derive(Debug, clap::Args)]
pub struct FindArgs {
    /// The cell's protocol, e.g. /ww/echo/0.1.0.
    #[arg(value_parser = crate::config::parse_protocol)]
    pub protocol: StreamProtocol,
    /// A peer to search the DHT through (full address); repeatable, at least one.
    #[arg(long, value_name = "MULTIADDR", required = true)]
    pub bootstrap: Vec<Multiaddr>,
    /// Print each provider's round-trip time after its address (`12.3ms`, or `?`
    /// if ping has not measured it).
    #[arg(long)]
    pub rtt: bool,
}

impl FindArgs {
    /// Runs `ww find`: prints every reachable provider's address on stdout, one per
    /// line, closest first (with its round-trip time if `--rtt`), and fails if there
    /// is none.
    pub async fn run(self) -> anyhow::Result<()> {
        let (found, unreachable) = find(&self.protocol, self.bootstrap).await?;
        for provider in &unreachable {
            tracing::warn!("provider unreachable: {provider}");
        }
        if found.is_empty() {
            bail!("no reachable node serves {}", self.protocol);
        }
        for (addr, rtt) in found {
            if self.rtt {
                println!("{addr} {}", Rtt(rtt));
            } else {
                println!("{addr}");
            }
        }
        Ok(())
    }
}

/// Runs `ww stats`: copies a node's counters ([`crate::net::STATS_PROTOCOL`]) to stdout.
pub async fn stats(addr: Multiaddr) -> anyhow::Result<()> {
    let (input, output) = (tokio::io::empty(), tokio::io::stdout());
    let protocol = crate::net::STATS_PROTOCOL;
    dial(&Target::Addr(addr), protocol, Vec::new(), input, output).await
}

/// Which node `ww dial` opens its stream on.
#[derive(Debug, Clone)]
pub enum Target {
    /// A full address, ending in `/p2p/<peer-id>`.
    Addr(Multiaddr),
    /// A peer ID alone (`12D3KooW…` or `/p2p/12D3KooW…`): its addresses come from the DHT.
    Peer(PeerId),
    /// Any provider of the protocol, found in the DHT.
    Any,
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        if let Ok(peer) = text.parse::<PeerId>() {
            return Ok(Self::Peer(peer));
        }
        let addr: Multiaddr = text
            .parse()
            .with_context(|| format!("`{text}` is neither a multiaddr nor a peer ID"))?;
        match addr.iter().collect::<Vec<_>>().as_slice() {
            [Protocol::P2p(peer)] => Ok(Self::Peer(*peer)),
            _ if discovery::peer_of(&addr).is_some() => Ok(Self::Addr(addr)),
            _ => bail!("{addr} does not end in /p2p/<peer-id>"),
        }
    }
}

/// Opens a stream to `protocol` on `target`, copies `input` to it and closes its
/// write side at EOF, and copies the answer to `output` until the node closes the
/// stream. `bootstrap` peers let the DHT find a peer ID or a protocol's providers.
///
/// The status variant `protocol+status` is asked for first, so a failed cell is
/// reported even when the transport cannot show it (see [`status`]); a peer that
/// only speaks `protocol` is served plainly. Errors are one line: an unsupported
/// protocol, an unreachable or wrong peer, no provider, a failed cell, a broken stream.
pub async fn dial<I, O>(
    target: &Target,
    protocol: StreamProtocol,
    bootstrap: Vec<Multiaddr>,
    input: I,
    output: O,
) -> anyhow::Result<()>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let client = Client::with_bootstrap(bootstrap)?;
    let offer = status::offer(&protocol, Caller::Peer);
    let unsupported = |peer: PeerId, error: OpenStreamError| match error {
        OpenStreamError::UnsupportedProtocol(_) => {
            anyhow::anyhow!("{peer} does not serve {protocol}")
        }
        error => anyhow::Error::new(error).context(format!("cannot open {protocol} on {peer}")),
    };
    let (peer, stream, chosen) = match target {
        Target::Addr(addr) => {
            let peer = client.connect(addr).await?;
            let (stream, chosen) = client
                .open_first(peer, offer)
                .await
                .map_err(|e| unsupported(peer, e))?;
            (peer, stream, chosen)
        }
        Target::Peer(peer) => {
            client.connect_peer(*peer).await?;
            let (stream, chosen) = client
                .open_first(*peer, offer)
                .await
                .map_err(|e| unsupported(*peer, e))?;
            (*peer, stream, chosen)
        }
        Target::Any => {
            let opened = client.open_any(&protocol, offer).await?;
            tracing::info!(peer = %opened.peer, rtt = %Rtt(opened.rtt), ranked = %Ranking(&opened.ranked), "dialing a provider");
            (opened.peer, opened.stream, opened.protocol)
        }
    };
    let (_, variant) = status::parse(&chosen);
    let (mut from_node, mut to_node) = tokio::io::split(stream.compat());
    let (mut input, mut output) = (input, output);

    let send = async {
        tokio::io::copy(&mut input, &mut to_node).await?;
        to_node.shutdown().await
    };
    let receive = async {
        let outcome = if variant.is_framed() {
            status::read_answer(&mut from_node, &mut output).await?
        } else {
            tokio::io::copy(&mut from_node, &mut output).await?;
            Outcome::Success
        };
        output.flush().await?;
        Ok::<_, std::io::Error>(outcome)
    };
    tokio::pin!(send, receive);
    let mut sending = true;
    let received = loop {
        tokio::select! {
            sent = &mut send, if sending => {
                sending = false;
                // The node may stop reading early (and answer anyway): the outcome is
                // what the receiving side sees.
                if let Err(error) = sent {
                    tracing::debug!(%error, "sending to the node stopped");
                }
            }
            received = &mut receive => break received,
        }
    };
    match received.context("the stream broke")? {
        Outcome::Success => Ok(()),
        Outcome::Failure(reason) => bail!("{protocol} on {peer} failed: {reason}"),
    }
}

/// Finds the nodes that serve `protocol` through `bootstrap` peers, and returns the
/// reachable ones as full addresses (`…/p2p/<peer-id>`) with their round-trip times
/// if measured, closest first, and warnings about providers that could not be
/// reached (stale records of nodes that have gone).
pub async fn find(
    protocol: &StreamProtocol,
    bootstrap: Vec<Multiaddr>,
) -> anyhow::Result<(Vec<(Multiaddr, Option<Duration>)>, Vec<String>)> {
    if bootstrap.is_empty() {
        bail!("give at least one --bootstrap peer to search the DHT through");
    }
    let client = Client::with_bootstrap(bootstrap)?;
    let providers = client.providers(protocol).await?;
    let mut found = Vec::new();
    let mut unreachable = Vec::new();
    for provider in providers {
        match provider.reached {
            Ok(addr) => {
                let addr = addr.unwrap_or_else(Multiaddr::empty);
                found.push((addr.with(Protocol::P2p(provider.peer)), provider.rtt));
            }
            Err(why) => unreachable.push(format!("{}: {why}", provider.peer)),
        }
    }
    Ok((found, unreachable))
}
