//! Requests against a swarm from other tasks: connect, find a peer or a cell's
//! providers in the DHTs (WAN and LAN, merged; see `net::lookup`), open a
//! stream.
//!
//! A swarm lives in one task (a node's event loop, a client's). Other tasks hold a
//! [`Network`] handle and send it [`Request`]s; the owning task passes each request
//! and every swarm event to its [`Control`], which starts the work (dials, DHT
//! queries) and answers when the swarm reports the outcome. `ww dial`, `ww find`, the
//! tests and cells that dial all go through here.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use libp2p::core::ConnectedPoint;
use libp2p::kad::{self, GetClosestPeersError, GetProvidersError, GetProvidersOk, QueryResult};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, Swarm, identify, mdns};

use super::discovery::{self, Dht};
use super::lookup::{LookupId, PeerSearch, ProviderLookup, Queries};
use super::router::{OpenStream, OpenStreamError};
use super::{Behaviour, BehaviourEvent};

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address does not say which peer to expect.
    #[error("{0} does not end in /p2p/<peer-id>")]
    MissingPeerId(Multiaddr),
    /// Dialing failed: unreachable, refused, or a different peer answered.
    #[error("cannot reach {peer}: {reason}")]
    Dial {
        /// The peer we tried to reach.
        peer: PeerId,
        /// What went wrong, as libp2p reported it.
        reason: String,
    },
    /// Neither the DHT nor any other source knows an address of the peer.
    #[error("no address of {0} is known here or in the DHT")]
    NotFound(PeerId),
    /// The task running the swarm is gone.
    #[error("the network task has shut down")]
    Closed,
}

/// Why no stream could be opened to any provider of a protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenAnyError {
    /// The DHT knows no provider (besides this peer).
    #[error("no provider of {0} found")]
    NoProviders(StreamProtocol),
    /// Every provider failed; each with its reason.
    #[error("no provider of {protocol} answered: {}", describe(.failures))]
    AllFailed {
        /// The protocol looked up.
        protocol: StreamProtocol,
        /// Each provider tried, and why it failed.
        failures: Vec<(PeerId, String)>,
    },
    /// The task running the swarm is gone.
    #[error("the network task has shut down")]
    Closed,
}

fn describe(failures: &[(PeerId, String)]) -> String {
    let each: Vec<String> = failures
        .iter()
        .map(|(peer, why)| format!("{peer}: {why}"))
        .collect();
    each.join("; ")
}

/// A provider of a protocol, as a lookup found it.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Who.
    pub peer: PeerId,
    /// Reached, at this address if known (without `/p2p/`); or why it could not be.
    pub reached: Result<Option<Multiaddr>, String>,
    /// Whether we already had a connection to it before the lookup.
    pub was_connected: bool,
}

/// A request to the task that owns a swarm.
pub enum Request {
    /// Connect to the peer the address ends in.
    Connect {
        /// A full address, ending in `/p2p/<peer-id>`.
        addr: Multiaddr,
        /// Answered once connected (at once if already).
        reply: oneshot::Sender<Result<PeerId, ConnectError>>,
    },
    /// Connect to a peer known only by its ID, finding its addresses in the DHT.
    ConnectPeer {
        /// Who.
        peer: PeerId,
        /// Answered once connected.
        reply: oneshot::Sender<Result<(), ConnectError>>,
    },
    /// Open a stream to a connected peer.
    Open {
        /// Who.
        peer: PeerId,
        /// The protocols to offer, in order of preference.
        protocols: Vec<StreamProtocol>,
        /// Answered with what to wait on for the stream.
        reply: oneshot::Sender<OpenStream>,
    },
    /// Find the providers of a protocol and connect to each.
    Providers {
        /// The cell protocol.
        protocol: StreamProtocol,
        /// Answered when the lookup and every dial it started have finished.
        reply: oneshot::Sender<Vec<Provider>>,
    },
}

/// How many requests may wait for the swarm's task.
const REQUEST_QUEUE: usize = 64;
/// Least time between two announcements of the node's cells triggered by bootstraps.
const REANNOUNCE_AFTER: Duration = Duration::from_secs(10);

/// A handle to a swarm running in another task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Network {
    requests: mpsc::Sender<Request>,
    local_peer_id: PeerId,
}

impl Network {
    /// A handle for the swarm of `local_peer_id`, and the receiver its task must drain.
    pub fn new(local_peer_id: PeerId) -> (Self, mpsc::Receiver<Request>) {
        let (requests, receiver) = mpsc::channel(REQUEST_QUEUE);
        let network = Self {
            requests,
            local_peer_id,
        };
        (network, receiver)
    }

    /// The peer ID of the swarm behind this handle.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Connects to the peer that `addr` ends in (`/p2p/<peer-id>`) and returns its
    /// ID. Returns at once if a connection already exists.
    pub async fn connect(&self, addr: &Multiaddr) -> Result<PeerId, ConnectError> {
        let (reply, answer) = oneshot::channel();
        let addr = addr.clone();
        self.send(Request::Connect { addr, reply }).await?;
        answer.await.map_err(|_| ConnectError::Closed)?
    }

    /// Connects to `peer`, looking its addresses up in the DHT if need be.
    pub async fn connect_peer(&self, peer: PeerId) -> Result<(), ConnectError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ConnectPeer { peer, reply }).await?;
        answer.await.map_err(|_| ConnectError::Closed)?
    }

    /// Opens a stream to a connected `peer` on `protocol`.
    pub async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        Ok(self.open_first(peer, vec![protocol]).await?.0)
    }

    /// Opens a stream to a connected `peer` on the first of `protocols` it accepts.
    pub async fn open_first(
        &self,
        peer: PeerId,
        protocols: Vec<StreamProtocol>,
    ) -> Result<(Stream, StreamProtocol), OpenStreamError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Open {
            peer,
            protocols,
            reply,
        })
        .await
        .map_err(|_| OpenStreamError::NotConnected)?;
        let opening = answer.await.map_err(|_| OpenStreamError::NotConnected)?;
        opening.await.map_err(|_| OpenStreamError::NotConnected)?
    }

    /// Finds the providers of `protocol` in the DHT and connects to each, so every
    /// one returned says whether (and where) it could be reached. Peers this swarm
    /// was already connected to come first.
    pub async fn providers(
        &self,
        protocol: &StreamProtocol,
    ) -> Result<Vec<Provider>, ConnectError> {
        let (reply, answer) = oneshot::channel();
        let protocol = protocol.clone();
        self.send(Request::Providers { protocol, reply }).await?;
        answer.await.map_err(|_| ConnectError::Closed)
    }

    /// Opens a stream to any provider of `protocol`, offering `offer` (in order of
    /// preference), trying providers in the order [`Network::providers`] returns them
    /// and moving on when one fails. Returns the provider with the stream.
    pub async fn open_any(
        &self,
        protocol: &StreamProtocol,
        offer: Vec<StreamProtocol>,
    ) -> Result<(PeerId, Stream, StreamProtocol), OpenAnyError> {
        let providers = self
            .providers(protocol)
            .await
            .map_err(|_| OpenAnyError::Closed)?;
        if providers.is_empty() {
            return Err(OpenAnyError::NoProviders(protocol.clone()));
        }
        let mut failures = Vec::new();
        for provider in providers {
            if let Err(why) = provider.reached {
                failures.push((provider.peer, why));
                continue;
            }
            match self.open_first(provider.peer, offer.clone()).await {
                Ok((stream, chosen)) => return Ok((provider.peer, stream, chosen)),
                Err(error) => {
                    tracing::debug!(peer = %provider.peer, %error, "provider failed; trying the next");
                    failures.push((provider.peer, error.to_string()));
                }
            }
        }
        Err(OpenAnyError::AllFailed {
            protocol: protocol.clone(),
            failures,
        })
    }

    async fn send(&self, request: Request) -> Result<(), ConnectError> {
        use futures::SinkExt as _;
        self.requests
            .clone()
            .send(request)
            .await
            .map_err(|_| ConnectError::Closed)
    }
}

/// The swarm-side state of [`Request`]s in progress, plus what the node announces.
#[derive(Default)]
pub struct Control {
    /// Dials answering a `Connect` or `ConnectPeer`.
    connecting: HashMap<ConnectionId, (PeerId, ConnectReply)>,
    /// `Connect`s and `ConnectPeer`s that found a dial to their peer already under way
    /// (a bootstrap's, the DHT's): answered when it connects, or dialed again when it
    /// fails.
    awaiting: HashMap<PeerId, Vec<(DialPlan, ConnectReply)>>,
    /// Which lookup each DHT query serves.
    queries: Queries,
    /// `ConnectPeer` requests waiting for closest-peers queries in both DHTs.
    searches: HashMap<LookupId, (PeerSearch, ConnectReply)>,
    /// Provider lookups, each querying both DHTs.
    lookups: HashMap<LookupId, ProviderLookup>,
    /// A dialable address of each connected peer, the latest we learned; a peer's
    /// entry goes with its last connection, so the map is bounded by the connection
    /// limits.
    addresses: HashMap<PeerId, Multiaddr>,
    /// Keys of the cells this swarm serves, announced in both DHTs.
    provided: Vec<kad::RecordKey>,
    /// When the cells were last announced.
    announced: Option<Instant>,
}

/// Who waits for a dial: `Connect` wants the peer ID back, `ConnectPeer` does not.
enum ConnectReply {
    WithPeer(oneshot::Sender<Result<PeerId, ConnectError>>),
    Unit(oneshot::Sender<Result<(), ConnectError>>),
}

/// Where to dial a peer; each attempt gets fresh [`DialOpts`] from it.
struct DialPlan {
    peer: PeerId,
    addresses: Vec<Multiaddr>,
    /// Whether the swarm's behaviours (the DHTs) may add addresses they know.
    extend: bool,
}

impl DialPlan {
    fn opts(&self) -> DialOpts {
        let opts = DialOpts::peer_id(self.peer).addresses(self.addresses.clone());
        if self.extend {
            opts.extend_addresses_through_behaviour().build()
        } else {
            opts.build()
        }
    }
}

impl ConnectReply {
    fn send(self, peer: PeerId, result: Result<(), ConnectError>) {
        match self {
            Self::WithPeer(reply) => {
                let _ = reply.send(result.map(|()| peer));
            }
            Self::Unit(reply) => {
                let _ = reply.send(result);
            }
        }
    }
}

impl Control {
    /// Joins the network through `bootstrap` peers: adds them to the DHTs' routing
    /// tables (the LAN DHT's if the address is not global), dials them and starts a
    /// bootstrap query in each DHT that knows one of them.
    pub fn join(&mut self, swarm: &mut Swarm<Behaviour>, bootstrap: &[Multiaddr]) {
        for addr in bootstrap {
            let Some(peer) = discovery::peer_of(addr) else {
                tracing::warn!(%addr, "bootstrap address has no /p2p/<peer-id>; skipped");
                continue;
            };
            swarm
                .behaviour_mut()
                .add_dht_address(&peer, addr, Dht::BOTH);
            if let Err(error) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, %error, "cannot dial bootstrap peer");
            }
        }
        for which in Dht::BOTH {
            let knows_one = bootstrap.iter().any(|addr| which.admits(addr));
            if knows_one && let Err(error) = swarm.behaviour_mut().dht(which).bootstrap() {
                tracing::warn!(?which, %error, "DHT bootstrap not started");
            }
        }
    }

    /// Announces `protocols` as served by this swarm, now and whenever the routing
    /// table fills in after a bootstrap; the DHT refreshes the records every
    /// [`discovery::PROVIDER_REFRESH`].
    pub fn provide(&mut self, swarm: &mut Swarm<Behaviour>, protocols: &[StreamProtocol]) {
        self.provided = protocols.iter().map(discovery::provider_key).collect();
        self.announce(swarm);
    }

    /// Withdraws every announcement (this node's own store; other nodes' copies
    /// expire after [`discovery::PROVIDER_TTL`]).
    pub fn withdraw(&mut self, swarm: &mut Swarm<Behaviour>) {
        for key in self.provided.drain(..) {
            for which in Dht::BOTH {
                swarm.behaviour_mut().dht(which).stop_providing(&key);
            }
        }
    }

    fn announce(&mut self, swarm: &mut Swarm<Behaviour>) {
        for key in &self.provided {
            for which in Dht::BOTH {
                let dht = swarm.behaviour_mut().dht(which);
                if let Err(error) = dht.start_providing(key.clone()) {
                    tracing::warn!(?which, %error, "cannot announce a cell");
                }
            }
        }
        self.announced = Some(Instant::now());
    }

    /// Starts the work a request asks for.
    pub fn handle(&mut self, swarm: &mut Swarm<Behaviour>, request: Request) {
        match request {
            Request::Connect { addr, reply } => {
                let Some(peer) = discovery::peer_of(&addr) else {
                    let _ = reply.send(Err(ConnectError::MissingPeerId(addr)));
                    return;
                };
                let plan = DialPlan {
                    peer,
                    addresses: vec![addr],
                    extend: false,
                };
                self.dial(swarm, plan, ConnectReply::WithPeer(reply));
            }
            Request::ConnectPeer { peer, reply } => {
                if swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let queries = Dht::BOTH.map(|which| {
                    (
                        which,
                        swarm.behaviour_mut().dht(which).get_closest_peers(peer),
                    )
                });
                let id = self.queries.start(queries);
                let search = PeerSearch::new(peer, queries.len());
                self.searches
                    .insert(id, (search, ConnectReply::Unit(reply)));
            }
            Request::Open {
                peer,
                protocols,
                reply,
            } => {
                let _ = reply.send(swarm.behaviour_mut().router.open_stream(peer, protocols));
            }
            Request::Providers { protocol, reply } => {
                let key = discovery::provider_key(&protocol);
                let queries = Dht::BOTH.map(|which| {
                    (
                        which,
                        swarm.behaviour_mut().dht(which).get_providers(key.clone()),
                    )
                });
                let id = self.queries.start(queries);
                self.lookups
                    .insert(id, ProviderLookup::new(reply, queries.len()));
            }
        }
    }

    /// Dials as `plan` says and answers `reply` when the dial settles; at once if the
    /// peer is already connected. A dial to the peer already under way is waited for,
    /// never reported as a failure.
    fn dial(&mut self, swarm: &mut Swarm<Behaviour>, plan: DialPlan, reply: ConnectReply) {
        let peer = plan.peer;
        if swarm.is_connected(&peer) {
            reply.send(peer, Ok(()));
            return;
        }
        let opts = plan.opts();
        let connection = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                self.connecting.insert(connection, (peer, reply));
            }
            Err(DialError::DialPeerConditionFalse(_)) => {
                self.awaiting.entry(peer).or_default().push((plan, reply));
            }
            Err(DialError::NoAddresses) => reply.send(peer, Err(ConnectError::NotFound(peer))),
            Err(error) => reply.send(peer, Err(dial_failed(peer, &error))),
        }
    }

    /// Advances requests with what the swarm reports. Call it with every event.
    pub fn on_event(&mut self, swarm: &mut Swarm<Behaviour>, event: &SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if let ConnectedPoint::Dialer { address, .. } = endpoint {
                    self.addresses
                        .insert(*peer_id, discovery::without_peer(address.clone()));
                }
                if let Some((peer, reply)) = self.connecting.remove(connection_id) {
                    reply.send(peer, Ok(()));
                }
                for (_, reply) in self.awaiting.remove(peer_id).unwrap_or_default() {
                    reply.send(*peer_id, Ok(()));
                }
                self.provider_dialed(*peer_id, Ok(()));
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some((peer, reply)) = self.connecting.remove(connection_id) {
                    reply.send(peer, Err(dial_failed(peer, error)));
                }
                if let Some(peer) = peer_id
                    && !swarm.is_connected(peer)
                {
                    // The dial they waited for failed: each dials for itself now (or
                    // waits again, if yet another dial is under way).
                    for (plan, reply) in self.awaiting.remove(peer).unwrap_or_default() {
                        self.dial(swarm, plan, reply);
                    }
                    self.provider_dialed(*peer, Err(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.learn(swarm, *peer_id, info),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.addresses.remove(peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "found on the local network");
                    swarm.behaviour_mut().add_dht_address(peer, addr, Dht::BOTH);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
                self.on_dht(swarm, Dht::Wan, event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::LanKad(event)) => {
                self.on_dht(swarm, Dht::Lan, event)
            }
            _ => {}
        }
    }

    /// What identify tells about a peer: a server of either DHT goes into that DHT's
    /// routing table with the listen addresses it admits.
    fn learn(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, info: &identify::Info) {
        let serves = Dht::BOTH.map(|which| info.protocols.contains(&which.protocol()));
        if serves == [false, false] {
            return;
        }
        let served = Dht::BOTH.into_iter().zip(serves).filter(|(_, s)| *s);
        let served: Vec<Dht> = served.map(|(which, _)| which).collect();
        for addr in &info.listen_addrs {
            swarm
                .behaviour_mut()
                .add_dht_address(&peer, addr, served.iter().copied());
        }
        if let Some(addr) = info.listen_addrs.iter().find(|a| !discovery::is_relayed(a)) {
            self.addresses
                .entry(peer)
                .or_insert_with(|| discovery::without_peer(addr.clone()));
        }
    }

    /// What one DHT reports: query progress; for the LAN DHT (which inserts no peer
    /// by itself) also the connected peers it could route to.
    fn on_dht(&mut self, swarm: &mut Swarm<Behaviour>, which: Dht, event: &kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => self.on_query(swarm, which, *id, result, step.last),
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address }
                if which == Dht::Lan =>
            {
                swarm
                    .behaviour_mut()
                    .add_dht_address(peer, address, [Dht::Lan]);
            }
            _ => {}
        }
    }

    fn on_query(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        which: Dht,
        id: kad::QueryId,
        result: &QueryResult,
        last: bool,
    ) {
        let lookup = self.queries.lookup_of(which, id, last);
        match result {
            QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })) => {
                if let Some(lookup) = lookup {
                    self.found_providers(swarm, lookup, providers)
                }
            }
            QueryResult::GetProviders(Ok(GetProvidersOk::FinishedWithNoAdditionalRecord {
                ..
            })) => {}
            QueryResult::GetProviders(Err(GetProvidersError::Timeout { .. })) => {
                tracing::debug!(
                    ?which,
                    "provider lookup timed out; answering with what it found"
                );
            }
            QueryResult::GetClosestPeers(result) => {
                let peers = match result {
                    Ok(ok) => &ok.peers,
                    Err(GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                self.found_closest(swarm, lookup, peers);
            }
            QueryResult::Bootstrap(Ok(_)) if last => {
                let stale = self
                    .announced
                    .is_none_or(|at| at.elapsed() > REANNOUNCE_AFTER);
                if !self.provided.is_empty() && stale {
                    self.announce(swarm);
                }
            }
            QueryResult::StartProviding(Err(error)) => {
                tracing::debug!(?which, %error, "announcing a cell failed; the DHT retries on refresh");
            }
            _ => {}
        }
        if last
            && let Some(lookup) = lookup
            && let Some(providers) = self.lookups.get_mut(&lookup)
        {
            providers.query_finished();
            self.finish_lookup(lookup);
        }
    }

    /// A closest-peers query of a `ConnectPeer` finished: once both have, dial the
    /// peer at every address they found (and those the swarm knows).
    fn found_closest(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        lookup: Option<LookupId>,
        peers: &[kad::PeerInfo],
    ) {
        let Some(lookup) = lookup else { return };
        let Some((search, _)) = self.searches.get_mut(&lookup) else {
            return;
        };
        let Some(addresses) = search.query_finished(peers) else {
            return;
        };
        let Some((search, reply)) = self.searches.remove(&lookup) else {
            return;
        };
        let plan = DialPlan {
            peer: search.peer,
            addresses,
            extend: true,
        };
        self.dial(swarm, plan, reply);
    }

    /// New providers: note the connected ones, dial the others while the query still
    /// holds their addresses.
    fn found_providers(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        id: LookupId,
        providers: &HashSet<PeerId>,
    ) {
        let local = *swarm.local_peer_id();
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        for &peer in providers {
            if peer == local || !lookup.first_sight(peer) {
                continue;
            }
            if swarm.is_connected(&peer) {
                lookup.settled(Provider {
                    peer,
                    reached: Ok(self.addresses.get(&peer).cloned()),
                    was_connected: true,
                });
                continue;
            }
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match swarm.dial(opts) {
                // A dial already under way (the DHT query's own) settles ours too.
                Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => lookup.dialing(peer),
                Err(error) => lookup.settled(Provider {
                    peer,
                    reached: Err(error.to_string()),
                    was_connected: false,
                }),
            }
        }
    }

    /// A dial to `peer` settled: every lookup waiting on it learns the outcome.
    fn provider_dialed(&mut self, peer: PeerId, result: Result<(), String>) {
        let reached = result.map(|()| self.addresses.get(&peer).cloned());
        let waiting: Vec<LookupId> = self
            .lookups
            .iter_mut()
            .filter_map(|(id, lookup)| lookup.dialed(peer, reached.clone()).then_some(*id))
            .collect();
        for id in waiting {
            self.finish_lookup(id);
        }
    }

    /// Answers a lookup once its queries and all its dials are done.
    fn finish_lookup(&mut self, id: LookupId) {
        if self.lookups.get(&id).is_some_and(ProviderLookup::is_done)
            && let Some(lookup) = self.lookups.remove(&id)
        {
            lookup.answer();
        }
    }
}

fn dial_failed(peer: PeerId, error: &DialError) -> ConnectError {
    match error {
        DialError::NoAddresses => ConnectError::NotFound(peer),
        error => ConnectError::Dial {
            peer,
            reason: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use libp2p::identity::Keypair;

    use super::*;
    use crate::net::{NetOptions, build_swarm};

    /// A node-like swarm on loopback TCP, run in a task; returns its full address.
    async fn listening_peer() -> (Multiaddr, tokio::task::JoinHandle<()>) {
        let options = NetOptions::default();
        let mut swarm = build_swarm(Keypair::generate_ed25519(), Vec::new(), &options).unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address.with_p2p(*swarm.local_peer_id()).unwrap();
            }
        };
        let task = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        (addr, task)
    }

    /// Runs `swarm` and `control` until `done` holds (bounded by a generous timeout).
    async fn drive_until(
        swarm: &mut Swarm<Behaviour>,
        control: &mut Control,
        mut done: impl FnMut(&Swarm<Behaviour>, &Control) -> bool,
    ) {
        let run = async {
            while !done(swarm, control) {
                let event = swarm.select_next_some().await;
                control.on_event(swarm, &event);
            }
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the swarm never got there");
    }

    #[tokio::test]
    async fn a_connect_meeting_a_dial_under_way_waits_for_it_and_addresses_go_with_the_connection()
    {
        let (addr, server) = listening_peer().await;
        let peer = discovery::peer_of(&addr).unwrap();
        let options = NetOptions::client(vec![addr.clone()]);
        let mut swarm = build_swarm(Keypair::generate_ed25519(), Vec::new(), &options).unwrap();
        let mut control = Control::default();
        // The bootstrap dial is under way when the Connect arrives.
        control.join(&mut swarm, &options.bootstrap);
        let (reply, mut answer) = oneshot::channel();
        control.handle(&mut swarm, Request::Connect { addr, reply });
        let mut answered = None;
        drive_until(&mut swarm, &mut control, |_, _| {
            answered = answer.try_recv().unwrap();
            answered.is_some()
        })
        .await;
        assert_eq!(answered.unwrap().unwrap(), peer);
        assert!(control.addresses.contains_key(&peer));

        swarm.disconnect_peer_id(peer).unwrap();
        drive_until(&mut swarm, &mut control, |swarm, control| {
            !swarm.is_connected(&peer) && control.addresses.is_empty()
        })
        .await;
        server.abort();
    }
}
