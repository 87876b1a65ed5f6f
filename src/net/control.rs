//! The swarm's side of [`Request`]s from [`Network`](super::network::Network) handles:
//! connect (waiting for a dial already under way), find a peer or a cell's providers
//! in the DHTs (WAN and LAN, merged; see `net::lookup`), open a stream.
//!
//! The task that owns a swarm passes every request and every swarm event to its
//! [`Control`], which starts the work (dials, DHT queries) and answers when the swarm
//! reports the outcome.

use std::collections::{HashMap, HashSet};

use futures::channel::oneshot;
use libp2p::core::ConnectedPoint;
use libp2p::kad::{self, GetClosestPeersError, GetProvidersError, GetProvidersOk, QueryResult};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, ping};

use super::discovery::{self, Dht};
use super::lookup::{LookupId, PeerSearch, PeerWalk, ProviderLookup, Queries};
use super::network::{ConnectError, Provider, Request};
use super::rtt::RoundTrips;
use super::{Behaviour, BehaviourEvent};

/// The swarm-side state of [`Request`]s in progress.
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
    /// `ClosestPeers` requests waiting for closest-peers queries in both DHTs.
    walks: HashMap<LookupId, PeerWalk>,
    /// A dialable address of each connected peer, the latest we learned; a peer's
    /// entry goes with its last connection, so the map is bounded by the connection
    /// limits.
    addresses: HashMap<PeerId, Multiaddr>,
    /// The latest round trip ping measured to each connected peer, and the
    /// `RoundTrips` requests waiting for a first one.
    round_trips: RoundTrips,
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
            Request::Providers { key, reply } => {
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
            Request::ClosestPeers { key, reply } => {
                let queries = Dht::BOTH.map(|which| {
                    (
                        which,
                        swarm.behaviour_mut().dht(which).get_closest_peers(key),
                    )
                });
                let id = self.queries.start(queries);
                self.walks.insert(id, PeerWalk::new(reply, queries.len()));
            }
            Request::RoundTrips { peers, reply } => {
                self.round_trips
                    .ask(peers, reply, |peer| swarm.is_connected(peer));
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
                self.round_trips.disconnected(*peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, .. })) => {
                match result {
                    Ok(rtt) if swarm.is_connected(peer) => self.round_trips.measured(*peer, *rtt),
                    Ok(_) => {}
                    Err(_) => self.round_trips.failed(*peer),
                }
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
        let listen_addrs = discovery::usable_listen_addrs(info);
        for addr in &listen_addrs {
            swarm
                .behaviour_mut()
                .add_dht_address(&peer, addr, served.iter().copied());
        }
        if let Some(addr) = listen_addrs.iter().find(|a| !discovery::is_relayed(a)) {
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

    /// A closest-peers query finished. For a `ConnectPeer`, once both have, dial the
    /// peer at every address they found (and those the swarm knows); a
    /// `ClosestPeers` walk answers once both have.
    fn found_closest(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        lookup: Option<LookupId>,
        peers: &[kad::PeerInfo],
    ) {
        let Some(lookup) = lookup else { return };
        if let Some(walk) = self.walks.get_mut(&lookup) {
            if walk.query_finished(peers)
                && let Some(walk) = self.walks.remove(&lookup)
            {
                walk.answer();
            }
            return;
        }
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
                    rtt: None,
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
                    rtt: None,
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
    use std::time::Duration;

    use futures::StreamExt as _;
    use libp2p::identity::Keypair;

    use super::*;
    use crate::net::{NetOptions, build_swarm};

    /// A node-like swarm on loopback TCP, run in a task; returns its full address.
    async fn listening_peer() -> (Multiaddr, tokio::task::JoinHandle<()>) {
        serving_peer(Vec::new()).await
    }

    /// The same, serving `protocols` (streams on them are accepted, then dropped) and
    /// announcing them in the DHTs, as a node does.
    async fn serving_peer(
        protocols: Vec<libp2p::StreamProtocol>,
    ) -> (Multiaddr, tokio::task::JoinHandle<()>) {
        let options = NetOptions::default();
        let key = Keypair::generate_ed25519();
        let mut swarm = build_swarm(key, protocols.clone(), &options).unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address.with_p2p(*swarm.local_peer_id()).unwrap();
            }
        };
        let mut announcements = discovery::Announcements::default();
        let keys = protocols.iter().map(discovery::provider_key).collect();
        announcements.provide(&mut swarm, keys);
        let task = tokio::spawn(async move {
            loop {
                let event = swarm.select_next_some().await;
                announcements.on_event(&mut swarm, &event);
            }
        });
        (addr, task)
    }

    /// A client swarm (DHT client, no protocols) joined through `bootstrap`.
    fn client(bootstrap: &Multiaddr) -> Swarm<Behaviour> {
        let options = NetOptions::client(vec![bootstrap.clone()]);
        let mut swarm = build_swarm(Keypair::generate_ed25519(), Vec::new(), &options).unwrap();
        discovery::join(&mut swarm, &options.bootstrap);
        swarm
    }

    /// Sends `request` to `control` and drives the swarm until the reply arrives.
    async fn ask<T>(
        swarm: &mut Swarm<Behaviour>,
        control: &mut Control,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> T {
        let (reply, mut answer) = oneshot::channel();
        control.handle(swarm, request(reply));
        let mut answered = None;
        drive_until(swarm, control, |_, _| {
            answered = answer.try_recv().unwrap();
            answered.is_some()
        })
        .await;
        answered.unwrap()
    }

    /// Connects `swarm` to `addr` through `control`; the peer reached.
    async fn connect(
        swarm: &mut Swarm<Behaviour>,
        control: &mut Control,
        addr: &Multiaddr,
    ) -> PeerId {
        let addr = addr.clone();
        ask(swarm, control, |reply| Request::Connect { addr, reply })
            .await
            .unwrap()
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
        // The bootstrap dial is under way when the Connect arrives.
        let mut swarm = client(&addr);
        let mut control = Control::default();
        let connected = ask(&mut swarm, &mut control, |reply| Request::Connect {
            addr,
            reply,
        })
        .await;
        assert_eq!(connected.unwrap(), peer);
        assert!(control.addresses.contains_key(&peer));

        swarm.disconnect_peer_id(peer).unwrap();
        drive_until(&mut swarm, &mut control, |swarm, control| {
            !swarm.is_connected(&peer) && control.addresses.is_empty()
        })
        .await;
        server.abort();
    }

    #[tokio::test]
    async fn open_negotiates_a_served_protocol_and_names_an_unserved_one() {
        let served = libp2p::StreamProtocol::new("/test/served/1");
        let (addr, server) = serving_peer(vec![served.clone()]).await;
        let mut swarm = client(&addr);
        let mut control = Control::default();
        let peer = connect(&mut swarm, &mut control, &addr).await;

        let unserved = libp2p::StreamProtocol::new("/test/unserved/1");
        for (offer, expect) in [
            (vec![unserved.clone(), served.clone()], Some(served.clone())),
            (vec![unserved.clone()], None),
        ] {
            let opening = ask(&mut swarm, &mut control, |reply| Request::Open {
                peer,
                protocols: offer,
                reply,
            })
            .await;
            // The stream is negotiated in the connection's task while the swarm runs.
            let mut opening = std::pin::pin!(opening);
            let opened = loop {
                tokio::select! {
                    opened = &mut opening => break opened.unwrap(),
                    event = swarm.select_next_some() => control.on_event(&mut swarm, &event),
                }
            };
            match (opened, expect) {
                (Ok((_, chosen)), Some(expect)) => assert_eq!(chosen, expect),
                (Err(super::super::router::OpenStreamError::UnsupportedProtocol(p)), None) => {
                    assert_eq!(p, unserved)
                }
                (other, expect) => panic!("expected {expect:?}, got {:?}", other.map(|o| o.1)),
            }
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_walk_finds_the_dht_servers_near_any_key() {
        let (first, one) = listening_peer().await;
        let (second, two) = listening_peer().await;
        let mut swarm = client(&first);
        swarm.behaviour_mut().add_dht_address(
            &discovery::peer_of(&second).unwrap(),
            &discovery::without_peer(second.clone()),
            Dht::BOTH,
        );
        let mut control = Control::default();
        let expected: HashSet<PeerId> = [&first, &second]
            .map(|addr| discovery::peer_of(addr).unwrap())
            .into();
        // Bounded: the routing tables fill in as the bootstrap dials complete.
        for attempt in 0.. {
            let found = ask(&mut swarm, &mut control, |reply| Request::ClosestPeers {
                key: PeerId::random(),
                reply,
            })
            .await;
            let peers: HashSet<PeerId> = found.iter().map(|p| p.peer).collect();
            if peers == expected {
                break;
            }
            assert!(attempt < 50, "never found both: {found:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(control.walks.is_empty(), "answered walks are forgotten");
        one.abort();
        two.abort();
    }

    #[tokio::test]
    async fn round_trips_come_from_the_connections_ping_and_go_with_it() {
        let (addr, server) = listening_peer().await;
        let mut swarm = client(&addr);
        let mut control = Control::default();
        let peer = connect(&mut swarm, &mut control, &addr).await;
        // Answered on ConnectionEstablished, before any event of the ping that starts
        // on the new connection: the request has to wait for the first measurement.
        let (reply, mut measured) = futures::channel::mpsc::channel(1);
        let peers = vec![peer, PeerId::random()];
        control.handle(&mut swarm, Request::RoundTrips { peers, reply });
        assert_eq!(
            control.round_trips.waiters(),
            1,
            "waits for the connected one"
        );
        let mut first = None;
        drive_until(&mut swarm, &mut control, |_, _| {
            first = first.or(measured.try_recv().ok());
            first.is_some()
        })
        .await;
        let (who, rtt) = first.unwrap();
        assert_eq!(who, peer);
        assert_eq!(control.round_trips.get(&peer), Some(rtt));
        assert_eq!(control.round_trips.waiters(), 0);

        swarm.disconnect_peer_id(peer).unwrap();
        drive_until(&mut swarm, &mut control, |swarm, control| {
            !swarm.is_connected(&peer) && control.round_trips.get(&peer).is_none()
        })
        .await;
        server.abort();
    }

    #[tokio::test]
    async fn providers_come_closest_first_by_the_round_trips_ping_measured() {
        let served = libp2p::StreamProtocol::new("/test/ranked/1");
        let (one, first) = serving_peer(vec![served.clone()]).await;
        let (two, second) = serving_peer(vec![served.clone()]).await;
        let expected: HashSet<PeerId> = [&one, &two]
            .map(|addr| discovery::peer_of(addr).unwrap())
            .into();
        let client = crate::net::client::Client::with_bootstrap(vec![one, two]).unwrap();
        // Bounded: the routing table fills in as the bootstrap dials complete.
        for attempt in 0.. {
            let found = client.providers(&served).await.unwrap();
            let peers: HashSet<PeerId> = found.iter().map(|p| p.peer).collect();
            if peers == expected {
                let rtts: Vec<Duration> = found
                    .iter()
                    .map(|p| p.rtt.expect("each reached provider was pinged"))
                    .collect();
                assert!(rtts.is_sorted(), "closest first: {found:?}");
                break;
            }
            assert!(attempt < 50, "never found both: {found:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first.abort();
        second.abort();
    }

    #[tokio::test]
    async fn providers_are_found_in_the_lan_dht_and_reached() {
        let served = libp2p::StreamProtocol::new("/test/provided/1");
        let (addr, server) = serving_peer(vec![served.clone()]).await;
        let provider = discovery::peer_of(&addr).unwrap();
        let mut swarm = client(&addr);
        let mut control = Control::default();
        // Bounded: the record is in the server's store from the start, but the
        // client's routing table fills in as the bootstrap dial completes.
        for attempt in 0.. {
            let found = ask(&mut swarm, &mut control, |reply| Request::Providers {
                key: discovery::provider_key(&served),
                reply,
            })
            .await;
            if let [only] = &found[..] {
                assert_eq!(only.peer, provider);
                assert!(only.reached.is_ok(), "{:?}", only.reached);
                break;
            }
            assert!(attempt < 50, "never found the provider: {found:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.abort();
    }
}
