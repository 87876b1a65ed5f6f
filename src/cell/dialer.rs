//! The host side of `wetware:streams/dialer`: an instance opens streams to cells on
//! other nodes, within its cell's grant and its own `max_dials`. Like
//! `wetware:streams/streams`, it works on a view of the store data ([`DialerView`])
//! and has its own [`add_to_linker`]; a `dial-error` is returned as a Rust error
//! ([`DialFailure`]), through bindgen's `trappable_error_type`.
//!
//! A dial asks for the remote cell's `+call` variant (see [`status`]): `+status`
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

use libp2p::{PeerId, Stream, StreamProtocol};
use serde::Deserialize;
use tokio_util::compat::FuturesAsyncReadCompatExt as _;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::DynInputStream;

use super::io::{MeteredReader, PeerInputStream, PeerOutputStream, PeerWriter};
use super::meter::Traffic;
use super::streams::Connection;
use crate::limits::Limits;
use crate::net::network::{Network, OpenAnyError};
use crate::net::router::OpenStreamError;
use crate::net::status::{self, CallHeader, Caller, Deframed, Variant};

mod generated {
    // Maps the WIT `dial-error` to this Rust type (named from the generated module).
    use super::DialFailure;

    wasmtime::component::bindgen!({
        path: "wit",
        interfaces: "import wetware:streams/dialer@0.1.0;",
        // Dialing waits on the network.
        imports: { default: async | tracing | trappable },
        trappable_error_type: {
            "wetware:streams/dialer.dial-error" => DialFailure,
        },
        with: {
            "wasi": wasmtime_wasi::p2::bindings,
            "wetware:streams/streams": crate::cell::streams::bindings,
        },
    });
}

pub use bindings::DialError;
use generated::wetware::streams::dialer as bindings;

/// Why a dial failed: a [`DialError`] the guest gets back, or a host failure that
/// traps it (see [`DialFailure::trap`]).
pub type DialFailure = wasmtime_wasi::TrappableError<DialError>;

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

    /// What of this grant `allowed` permits: the protocols both cover.
    pub fn within(&self, allowed: &DialGrant) -> DialGrant {
        match (self, allowed) {
            (Self::Denied, _) | (_, Self::Denied) => Self::Denied,
            (Self::Any, other) | (other, Self::Any) => other.clone(),
            (Self::Only(asked), Self::Only(allowed)) => {
                let both: Vec<_> = asked
                    .iter()
                    .filter(|protocol| allowed.contains(protocol))
                    .cloned()
                    .collect();
                if both.is_empty() {
                    Self::Denied
                } else {
                    Self::Only(both)
                }
            }
        }
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

/// How much of a chain of calls one instance has left: the dials it may still make
/// along the chain, and when it must end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chain {
    /// Further dials deep the chain may go from this instance.
    pub hops: u8,
    /// When the instance must end, with the time its caller gave it if that (not its
    /// own `wall_s`) is what ends it; `None` for no wall-clock limit.
    pub deadline: Option<(tokio::time::Instant, Option<Duration>)>,
}

impl Chain {
    /// The chain of a stream that starts now under `limits`: a fresh one if no cell
    /// dialed it, or what the calling cell's header leaves (never more than
    /// `limits` allow).
    pub(super) fn start(limits: &Limits, call: Option<CallHeader>) -> Self {
        let now = tokio::time::Instant::now();
        let own = limits.wall().map(|wall| (now + wall, None));
        let Some(call) = call else {
            return Self {
                hops: limits.max_hops,
                deadline: own,
            };
        };
        let caller = call.deadline.map(|left| (now + left, Some(left)));
        let deadline = match (own, caller) {
            (Some(own), Some(caller)) => Some(if caller.0 < own.0 { caller } else { own }),
            (own, caller) => own.or(caller),
        };
        Self {
            hops: call.hops.min(limits.max_hops),
            deadline,
        }
    }
}

/// What `wetware:streams/dialer` needs of an instance's store data.
pub struct DialerView<'a> {
    /// The instance's dialer; only an instance whose cell may dial has one.
    pub(super) dialer: Option<&'a mut InstanceDialer>,
    /// The guest's resources, where dialed connections go.
    pub(super) table: &'a mut ResourceTable,
}

/// Adds `wetware:streams/dialer` to `linker`, reaching each instance's state through
/// `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> DialerView<'_>,
) -> wasmtime::Result<()> {
    bindings::add_to_linker::<T, HasDialer>(linker, view)
}

/// Names [`DialerView`] as the data the generated bindings work on.
struct HasDialer;

impl HasData for HasDialer {
    type Data<'a> = DialerView<'a>;
}

/// How long sending a call's header may take (it is 5 bytes on a fresh stream).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl DialerView<'_> {
    fn instance_dialer(&mut self) -> Result<&mut InstanceDialer, DialFailure> {
        // Only a cell with a grant may import the dialer (see `check_world`), and its
        // instances all get one; reaching here without is a host bug, so a trap.
        self.dialer.as_deref_mut().ok_or_else(|| {
            DialFailure::trap(wasmtime::Error::msg(
                "dialer called in an instance without one",
            ))
        })
    }

    /// Hands a dialed stream to the guest, first sending the call header if the
    /// remote chose the call variant.
    async fn dialed(
        &mut self,
        mut stream: Stream,
        protocol: &StreamProtocol,
    ) -> Result<Resource<Connection>, DialFailure> {
        let dialer = self.instance_dialer()?;
        let (_, variant) = status::parse(protocol);
        if variant == Variant::Call {
            let header = dialer.call_header();
            let mut writer = (&mut stream).compat();
            let sent = tokio::time::timeout(HEADER_TIMEOUT, header.write(&mut writer));
            let error = match sent.await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(format!("sending the call: {error}")),
                Err(_) => Some("sending the call timed out".into()),
            };
            if let Some(error) = error {
                return Err(DialError::Unreachable(error).into());
            }
        }
        let connection = self
            .instance_dialer()?
            .connection(stream, variant.is_framed());
        self.table.push(connection).map_err(DialFailure::trap)
    }
}

impl bindings::Host for DialerView<'_> {
    fn convert_dial_error(&mut self, failure: DialFailure) -> wasmtime::Result<DialError> {
        failure.downcast()
    }

    async fn dial(
        &mut self,
        peer: String,
        protocol: String,
    ) -> Result<Resource<Connection>, DialFailure> {
        // A malformed peer ID is the guest's mistake, found without the network: it
        // must not cost a dial.
        let peer: PeerId = peer
            .parse()
            .map_err(|error| DialError::InvalidPeer(format!("`{peer}`: {error}")))?;
        let (protocol, network) = self.instance_dialer()?.admit(&protocol)?;
        network
            .connect_peer(peer)
            .await
            .map_err(|error| DialError::Unreachable(error.to_string()))?;
        match network
            .open_first(peer, status::offer(&protocol, Caller::Cell))
            .await
        {
            Ok((stream, chosen)) => self.dialed(stream, &chosen).await,
            Err(OpenStreamError::UnsupportedProtocol(_)) => {
                let error = format!("{peer} does not serve {protocol}");
                Err(DialError::Unreachable(error).into())
            }
            Err(error) => Err(DialError::Unreachable(format!("{peer}: {error}")).into()),
        }
    }

    async fn dial_any(&mut self, protocol: String) -> Result<Resource<Connection>, DialFailure> {
        let (protocol, network) = self.instance_dialer()?.admit(&protocol)?;
        match network
            .open_any(&protocol, status::offer(&protocol, Caller::Cell))
            .await
        {
            Ok(opened) => self.dialed(opened.stream, &opened.protocol).await,
            Err(OpenAnyError::NoProviders(_)) => Err(DialError::NoProviders.into()),
            Err(error) => Err(DialError::Unreachable(error.to_string()).into()),
        }
    }

    async fn providers(&mut self, protocol: String) -> Result<Vec<String>, DialFailure> {
        // One slot per call, like `dial-any`, which makes the same lookup and the
        // same connection to every provider: the slot bounds how often an instance
        // can make the network do that work. Counting each provider instead would
        // make the answer depend on the slots left.
        let dialer = self.instance_dialer()?;
        let (protocol, network) = dialer.check(&protocol)?;
        dialer.take_slot()?;
        let providers = network
            .providers(&protocol)
            .await
            .map_err(|error| DialError::Unreachable(error.to_string()))?;
        Ok(providers
            .into_iter()
            .filter(|p| p.reached.is_ok())
            .map(|p| p.peer.to_string())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_grant_within_another_covers_what_both_do() {
        let (a, b, c) = (
            StreamProtocol::new("/a/1"),
            StreamProtocol::new("/b/1"),
            StreamProtocol::new("/c/1"),
        );
        let only =
            |p: &[&StreamProtocol]| DialGrant::Only(p.iter().map(|p| (*p).clone()).collect());
        assert_eq!(DialGrant::Any.within(&DialGrant::Any), DialGrant::Any);
        assert_eq!(DialGrant::Any.within(&only(&[&a])), only(&[&a]));
        assert_eq!(only(&[&a, &b]).within(&DialGrant::Any), only(&[&a, &b]));
        assert_eq!(only(&[&a, &b]).within(&only(&[&b, &c])), only(&[&b]));
        assert_eq!(only(&[&a]).within(&only(&[&c])), DialGrant::Denied);
        assert_eq!(DialGrant::Any.within(&DialGrant::Denied), DialGrant::Denied);
    }

    use super::*;
    use bindings::Host as _;

    #[test]
    fn dial_errors_reach_the_guest_and_host_failures_trap() {
        let mut table = ResourceTable::new();
        let mut view = DialerView {
            dialer: None,
            table: &mut table,
        };
        let failure = DialFailure::from(DialError::InvalidPeer("`x`".into()));
        match view.convert_dial_error(failure) {
            Ok(DialError::InvalidPeer(why)) => assert_eq!(why, "`x`"),
            other => panic!("expected the guest's error back, got {other:?}"),
        }
        // An instance without a dialer reaching it is a host bug: a trap, not a value.
        let trap = view.instance_dialer().err().expect("no dialer");
        let error = view.convert_dial_error(trap).unwrap_err();
        assert!(error.to_string().contains("without one"), "{error}");
    }

    /// `chain`'s deadline as (time left from `start`, whether the caller's), rounded
    /// to whole seconds: the clock moves between `start` and `Chain::start`.
    fn left(chain: Chain, start: tokio::time::Instant) -> Option<(u64, bool)> {
        let (deadline, callers) = chain.deadline?;
        Some((deadline.duration_since(start).as_secs(), callers.is_some()))
    }

    #[tokio::test]
    async fn a_called_instance_gets_the_smaller_budget_and_the_earlier_deadline() {
        let limits = Limits {
            wall_s: 10,
            max_hops: 4,
            ..Limits::default()
        };
        let start = tokio::time::Instant::now();
        let call = |hops, secs: Option<u64>| {
            let deadline = secs.map(Duration::from_secs);
            Some(CallHeader { hops, deadline })
        };
        let own = Chain::start(&limits, None);
        assert_eq!((own.hops, left(own, start)), (4, Some((10, false))));
        let tight = Chain::start(&limits, call(9, Some(3)));
        assert_eq!(
            (tight.hops, left(tight, start)),
            (4, Some((3, true))),
            "never more hops than this node's max_hops"
        );
        let loose = Chain::start(&limits, call(2, Some(30)));
        assert_eq!((loose.hops, left(loose, start)), (2, Some((10, false))));

        let unlimited = Limits {
            wall_s: 0,
            ..limits
        };
        assert_eq!(left(Chain::start(&unlimited, call(1, None)), start), None);
        let callers = Chain::start(&unlimited, call(1, Some(5)));
        assert_eq!(left(callers, start), Some((5, true)));
    }
}
