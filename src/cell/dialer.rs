//! The host side of `wetware:streams/dialer`: an instance opens streams to cells on
//! other nodes, within its cell's grant and its own `max_dials`.
//!
//! A dial asks for the remote cell's `+call` variant (see [`outcome`]): `+status`
//! with a header saying how many hops the chain of calls has left and the caller's
//! remaining deadline, so a chain of cells cannot grow past `max_hops` nor outlive
//! its origin. It unwraps the answer, so the guest reads exactly the remote cell's
//! bytes, then EOF if it succeeded or a failed read (`last-operation-failed`, with
//! the reason) if it failed; a peer that only speaks `+status` or the plain protocol
//! is read as such. The stream reaches the guest as the
//! same `connection` resource the peer stream does: its
//! input half through [`PeerInputStream`], its output half through
//! [`PeerOutputStream`], which closes our write side when the guest drops it. Its
//! bytes count as the instance's traffic, so the idle limit sees a guest that waits
//! on a remote cell as busy, and the wall-clock and CPU limits cover the wait.

use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt as _;
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::Deserialize;
use tokio_util::compat::FuturesAsyncReadCompatExt as _;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynInputStream;

use super::Chain;
use super::host::{Connection, Host, dialer};
use super::io::{MeteredReader, PeerInputStream, PeerOutputStream, PeerWriter};
use super::meter::Traffic;
use crate::net::network::{Network, OpenAnyError};
use crate::net::outcome::{self, CallHeader, Deframed};
use crate::net::router::OpenStreamError;

pub use dialer::DialError;

/// Which protocols a cell's instances may open streams on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DialGrant {
    /// None: a cell that imports the dialer is refused at load.
    #[default]
    Denied,
    /// Any protocol.
    Any,
    /// Only these.
    Only(Vec<StreamProtocol>),
}

impl DialGrant {
    /// Whether the grant covers `protocol`.
    pub fn allows(&self, protocol: &StreamProtocol) -> bool {
        match self {
            Self::Denied => false,
            Self::Any => true,
            Self::Only(protocols) => protocols.contains(protocol),
        }
    }

    /// Whether the cell may dial at all.
    pub fn is_granted(&self) -> bool {
        *self != Self::Denied
    }
}

/// The `dial` key of a `[cells.<name>]` table: `true`, `false`, or a list of protocols.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DialSetting {
    /// `true`: any protocol; `false`: none.
    All(bool),
    /// Only these protocols.
    Only(Vec<String>),
}

/// One instance's dialing state.
pub struct InstanceDialer {
    network: Option<Network>,
    grant: Arc<DialGrant>,
    /// Dials left before `limit-reached`.
    remaining: u32,
    /// What the instance's chain of calls has left.
    chain: Chain,
    traffic: Arc<Traffic>,
}

impl InstanceDialer {
    /// An instance's dialer through `network` (none for a cell run without one, such
    /// as under `ww cell`) within `grant`: at most `max_dials` streams (and
    /// `providers` calls), as deep as `chain` allows, counted into `traffic`.
    pub(crate) fn new(
        network: Option<Network>,
        grant: Arc<DialGrant>,
        max_dials: u32,
        chain: Chain,
        traffic: Arc<Traffic>,
    ) -> Self {
        Self {
            network,
            grant,
            remaining: max_dials,
            chain,
            traffic,
        }
    }

    /// Checks `protocol` against the grant, and that there is a network to use.
    fn check(&self, protocol: &str) -> Result<(StreamProtocol, Network), DialError> {
        let protocol = StreamProtocol::try_from_owned(protocol.to_string())
            .map_err(|e| DialError::InvalidProtocol(format!("`{protocol}`: {e}")))?;
        if !self.grant.allows(&protocol) {
            return Err(DialError::NotAllowed);
        }
        let Some(network) = self.network.clone() else {
            return Err(DialError::Unreachable(
                "this host runs cells without a network".into(),
            ));
        };
        Ok((protocol, network))
    }

    /// Takes one from the instance's `max_dials`; call it last, once everything
    /// that can be checked without the network has been, so a request that fails
    /// those checks costs nothing.
    fn take_slot(&mut self) -> Result<(), DialError> {
        if self.remaining == 0 {
            return Err(DialError::LimitReached);
        }
        self.remaining -= 1;
        Ok(())
    }

    /// [`Self::check`]s a dial (`peer` already parsed, if it names one), that the
    /// chain has a hop left, and takes a slot.
    fn admit(&mut self, protocol: &str) -> Result<(StreamProtocol, Network), DialError> {
        let admitted = self.check(protocol)?;
        if self.chain.hops == 0 {
            return Err(DialError::HopLimitReached);
        }
        self.take_slot()?;
        Ok(admitted)
    }

    /// What the remote instance is told of the chain: one hop fewer than we have,
    /// and our time left.
    fn call_header(&self) -> CallHeader {
        let now = tokio::time::Instant::now();
        CallHeader {
            hops: self.chain.hops.saturating_sub(1),
            deadline: self
                .chain
                .deadline
                .map(|(deadline, _)| deadline.saturating_duration_since(now)),
        }
    }

    /// A dialed stream as a `connection`, its bytes counted as the instance's. On a
    /// `+status` stream (`framed`) the guest reads the remote cell's bytes, then EOF
    /// if it succeeded or a failed read with its reason.
    fn connection(&self, stream: Stream, framed: bool) -> Connection {
        let (reader, writer) = tokio::io::split(stream.compat());
        let reader = MeteredReader::new(reader, self.traffic.clone());
        let writer = PeerWriter::with_traffic(writer, false, self.traffic.clone());
        let input: DynInputStream = if framed {
            Box::new(PeerInputStream::new(Deframed::new(reader)).driving(writer.clone()))
        } else {
            Box::new(PeerInputStream::new(reader).driving(writer.clone()))
        };
        Connection::dialed(input, Box::new(PeerOutputStream::new(writer)))
    }
}

type DialResult = wasmtime::Result<Result<Resource<Connection>, DialError>>;

/// What a dial offers: the call variant first (so the remote learns the chain's
/// budget, and its cell's failure reaches the guest), then the status variant and
/// the plain protocol for peers that only speak those.
fn offer(protocol: &StreamProtocol) -> Vec<StreamProtocol> {
    vec![
        outcome::call_variant(protocol),
        outcome::status_variant(protocol),
        protocol.clone(),
    ]
}

/// How long sending a call's header may take (it is 5 bytes on a fresh stream).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl Host {
    fn instance_dialer(&mut self) -> wasmtime::Result<&mut InstanceDialer> {
        // Only a cell with a grant may import the dialer (see `check_world`), and its
        // instances all get one; reaching here without is a host bug, so a trap.
        self.dialer
            .as_mut()
            .ok_or_else(|| wasmtime::Error::msg("dialer called in an instance without one"))
    }

    /// Hands a dialed stream to the guest, first sending the call header if the
    /// remote chose the call variant.
    async fn dialed(&mut self, mut stream: Stream, protocol: &StreamProtocol) -> DialResult {
        let dialer = self.instance_dialer()?;
        if outcome::is_call(protocol) {
            let header = dialer.call_header().encode();
            let sent = tokio::time::timeout(HEADER_TIMEOUT, async {
                stream.write_all(&header).await?;
                stream.flush().await
            });
            match sent.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return Ok(Err(DialError::Unreachable(format!(
                        "sending the call: {error}"
                    ))));
                }
                Err(_) => {
                    return Ok(Err(DialError::Unreachable(
                        "sending the call timed out".into(),
                    )));
                }
            }
        }
        let (_, framed) = outcome::parse(protocol);
        let connection = self.instance_dialer()?.connection(stream, framed);
        Ok(Ok(self.push_connection(connection)?))
    }
}

impl dialer::Host for Host {
    async fn dial(&mut self, peer: String, protocol: String) -> DialResult {
        // A malformed peer ID is the guest's mistake, found without the network: it
        // must not cost a dial.
        let peer: PeerId = match peer.parse() {
            Ok(peer) => peer,
            Err(error) => return Ok(Err(DialError::InvalidPeer(format!("`{peer}`: {error}")))),
        };
        let admitted = self.instance_dialer()?.admit(&protocol);
        let (protocol, network) = match admitted {
            Ok(admitted) => admitted,
            Err(error) => return Ok(Err(error)),
        };
        if let Err(error) = network.connect_peer(peer).await {
            return Ok(Err(DialError::Unreachable(error.to_string())));
        }
        match network.open_first(peer, offer(&protocol)).await {
            Ok((stream, chosen)) => self.dialed(stream, &chosen).await,
            Err(OpenStreamError::UnsupportedProtocol(_)) => Ok(Err(DialError::Unreachable(
                format!("{peer} does not serve {protocol}"),
            ))),
            Err(error) => Ok(Err(DialError::Unreachable(format!("{peer}: {error}")))),
        }
    }

    async fn dial_any(&mut self, protocol: String) -> DialResult {
        let admitted = self.instance_dialer()?.admit(&protocol);
        let (protocol, network) = match admitted {
            Ok(admitted) => admitted,
            Err(error) => return Ok(Err(error)),
        };
        match network.open_any(&protocol, offer(&protocol)).await {
            Ok((_, stream, chosen)) => self.dialed(stream, &chosen).await,
            Err(OpenAnyError::NoProviders(_)) => Ok(Err(DialError::NoProviders)),
            Err(error) => Ok(Err(DialError::Unreachable(error.to_string()))),
        }
    }

    async fn providers(
        &mut self,
        protocol: String,
    ) -> wasmtime::Result<Result<Vec<String>, DialError>> {
        // One slot per call, like `dial-any`, which makes the same lookup and the
        // same connection to every provider: the slot bounds how often an instance
        // can make the network do that work. Counting each provider instead would
        // make the answer depend on the slots left.
        let dialer = self.instance_dialer()?;
        let checked = dialer.check(&protocol).and_then(|checked| {
            dialer.take_slot()?;
            Ok(checked)
        });
        let (protocol, network) = match checked {
            Ok(checked) => checked,
            Err(error) => return Ok(Err(error)),
        };
        match network.providers(&protocol).await {
            Ok(providers) => Ok(Ok(providers
                .into_iter()
                .filter(|p| p.reached.is_ok())
                .map(|p| p.peer.to_string())
                .collect())),
            Err(error) => Ok(Err(DialError::Unreachable(error.to_string()))),
        }
    }
}
