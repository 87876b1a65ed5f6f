//! Routing of cell protocols: a [`NetworkBehaviour`] whose connection handler accepts
//! inbound streams on the node's cell protocols and opens outbound ones on request.
//!
//! # No lost streams
//! `libp2p-stream` hands inbound streams to its consumer through a one-slot channel
//! and drops them when the slot is taken (rust-libp2p issue 5651). Here an accepted
//! stream travels the swarm's own event path instead: handler → behaviour → swarm
//! event. That path is bounded and applies backpressure: when the node's event loop
//! falls behind, each connection task waits for room in its event buffer and stops
//! polling its muxer, so the peer's streams wait in yamux/QUIC flow control rather
//! than vanish. Between negotiation and that buffer a handler holds at most the
//! streams its muxer let through, which the muxer's own stream limit bounds.
//!
//! A protocol the node does not serve is refused during multistream-select, so the
//! peer sees "protocol not supported" and the connection stays up.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};
use std::{fmt, io};

use futures::channel::oneshot;
use libp2p::PeerId;

use super::discovery::is_relayed;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, StreamUpgradeError, SubstreamProtocol,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// An inbound stream on one of the node's protocols, negotiated and ready.
pub struct InboundStream {
    /// Who opened it.
    pub peer: PeerId,
    /// The connection it arrived on.
    pub connection: ConnectionId,
    /// The protocol the peer asked for (one the node serves).
    pub protocol: StreamProtocol,
    /// The stream itself.
    pub stream: Stream,
}

impl fmt::Debug for InboundStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundStream")
            .field("peer", &self.peer)
            .field("connection", &self.connection)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Why an outbound stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStreamError {
    /// The peer does not serve the protocol.
    #[error("the peer does not support protocol {0}")]
    UnsupportedProtocol(StreamProtocol),
    /// There is no connection to the peer (or it closed while opening).
    #[error("not connected to the peer")]
    NotConnected,
    /// Negotiation took too long.
    #[error("timed out negotiating the protocol")]
    Timeout,
    /// The transport failed.
    #[error("stream failed: {0}")]
    Io(#[from] io::Error),
    /// The caller offered no protocol at all.
    #[error("no protocol to offer")]
    NoProtocol,
}

/// What a caller of [`Behaviour::open_stream`] waits on: the stream and the protocol
/// the peer accepted.
pub type OpenStream = oneshot::Receiver<Result<(Stream, StreamProtocol), OpenStreamError>>;

/// The protocols a router accepts, shared with every connection: a change applies to
/// every stream negotiated after it, on connections old and new. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Protocols(Arc<RwLock<Arc<[StreamProtocol]>>>);

impl Protocols {
    /// The protocols accepted now.
    pub fn get(&self) -> Arc<[StreamProtocol]> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Accepts `protocols` from now on (and no others).
    pub fn set(&self, protocols: Vec<StreamProtocol>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = protocols.into();
    }
}

/// Accepts streams on the served protocols and opens streams on request.
pub struct Behaviour {
    protocols: Protocols,
    pending: VecDeque<ToSwarm<InboundStream, OpenRequest>>,
    waker: Option<Waker>,
    /// Each peer's direct (not relayed) connections: streams prefer them, since a relay
    /// limits how long and how much a relayed connection may carry.
    direct: HashMap<PeerId, Vec<ConnectionId>>,
}

impl Behaviour {
    /// A router serving `protocols` (may be empty: a pure client).
    pub fn new(protocols: Vec<StreamProtocol>) -> Self {
        let served = Protocols::default();
        served.set(protocols);
        Self {
            protocols: served,
            pending: VecDeque::new(),
            waker: None,
            direct: HashMap::new(),
        }
    }

    /// The protocols this router accepts, to change them while it runs.
    pub fn protocols(&self) -> Protocols {
        self.protocols.clone()
    }

    /// Opens a stream to `peer` over any established connection, on the first of
    /// `protocols` (in order of preference) that the peer accepts. Resolves to
    /// [`OpenStreamError::NotConnected`] if there is no connection.
    pub fn open_stream(&mut self, peer: PeerId, protocols: Vec<StreamProtocol>) -> OpenStream {
        let (reply, receiver) = oneshot::channel();
        if protocols.is_empty() {
            let _ = reply.send(Err(OpenStreamError::NoProtocol));
            return receiver;
        }
        let handler = match self.direct.get(&peer).and_then(|c| c.first()) {
            Some(direct) => NotifyHandler::One(*direct),
            None => NotifyHandler::Any,
        };
        self.pending.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler,
            event: OpenRequest { protocols, reply },
        });
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        receiver
    }

    fn handler(&self, peer: PeerId, connection: ConnectionId) -> Handler {
        Handler {
            peer,
            connection,
            protocols: self.protocols.clone(),
            inbound: VecDeque::new(),
            requested: VecDeque::new(),
            opening: 0,
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = InboundStream;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !is_relayed(local) {
            self.direct.entry(peer).or_default().push(connection);
        }
        Ok(self.handler(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !is_relayed(addr) {
            self.direct.entry(peer).or_default().push(connection);
        }
        Ok(self.handler(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event
            && let Some(direct) = self.direct.get_mut(&closed.peer_id)
        {
            direct.retain(|c| *c != closed.connection_id);
            if direct.is_empty() {
                self.direct.remove(&closed.peer_id);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        stream: THandlerOutEvent<Self>,
    ) {
        self.pending.push_back(ToSwarm::GenerateEvent(stream));
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(event) => Poll::Ready(event),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A request, from the behaviour to a connection, to open a stream.
pub struct OpenRequest {
    protocols: Vec<StreamProtocol>,
    reply: oneshot::Sender<Result<(Stream, StreamProtocol), OpenStreamError>>,
}

impl fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRequest")
            .field("protocols", &self.protocols)
            .finish_non_exhaustive()
    }
}

/// The per-connection half of [`Behaviour`].
pub struct Handler {
    peer: PeerId,
    connection: ConnectionId,
    protocols: Protocols,
    /// Negotiated inbound streams not yet handed to the behaviour. Bounded by the
    /// muxer's limit on concurrent streams.
    inbound: VecDeque<InboundStream>,
    /// Open requests not yet passed to the swarm.
    requested: VecDeque<OpenRequest>,
    /// Outbound streams being negotiated.
    opening: usize,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenRequest;
    type ToBehaviour = InboundStream;
    type InboundProtocol = ServedProtocols;
    type OutboundProtocol = OfferedProtocols;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenRequest;

    fn listen_protocol(&self) -> SubstreamProtocol<ServedProtocols> {
        SubstreamProtocol::new(ServedProtocols(self.protocols.get()), ())
    }

    fn connection_keep_alive(&self) -> bool {
        // Open streams keep the connection alive by themselves; this covers the time
        // between a request and its stream.
        !self.requested.is_empty() || self.opening > 0
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, OpenRequest, InboundStream>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(stream));
        }
        if let Some(request) = self.requested.pop_front() {
            self.opening += 1;
            let offer = OfferedProtocols(request.protocols.clone());
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(offer, request),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, request: OpenRequest) {
        self.requested.push_back(request);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<ServedProtocols, Self::OutboundProtocol, (), OpenRequest>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => self.inbound.push_back(InboundStream {
                peer: self.peer,
                connection: self.connection,
                protocol,
                stream,
            }),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: opened,
                info,
            }) => {
                self.opening -= 1;
                let _ = info.reply.send(Ok(opened));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                self.opening -= 1;
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => match info.protocols.last() {
                        Some(last) => OpenStreamError::UnsupportedProtocol(last.clone()),
                        None => OpenStreamError::NoProtocol,
                    },
                    StreamUpgradeError::Timeout => OpenStreamError::Timeout,
                    StreamUpgradeError::Io(error) => OpenStreamError::Io(error),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = info.reply.send(Err(error));
            }
            _ => {}
        }
    }
}

/// The outbound upgrade: offers protocols in order of preference and yields the
/// stream with the one the peer accepted.
#[derive(Debug, Clone)]
pub struct OfferedProtocols(Vec<StreamProtocol>);

impl UpgradeInfo for OfferedProtocols {
    type Info = StreamProtocol;
    type InfoIter = Vec<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone()
    }
}

impl OutboundUpgrade<Stream> for OfferedProtocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

/// The inbound upgrade: offers every served protocol and yields the stream together
/// with the protocol the peer picked.
#[derive(Debug, Clone)]
pub struct ServedProtocols(Arc<[StreamProtocol]>);

impl UpgradeInfo for ServedProtocols {
    type Info = StreamProtocol;
    type InfoIter = Vec<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.to_vec()
    }
}

impl InboundUpgrade<Stream> for ServedProtocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
