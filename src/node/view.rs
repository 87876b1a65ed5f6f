//! Keeps the admin endpoint's [`NetworkView`] current from the swarm's events: the
//! connected peers (connections, RTT, agent, open streams), the external
//! addresses, AutoNAT's verdict, the relays holding a reservation for this node, the
//! DHTs' mode and routing-table sizes, and the
//! cluster — every peer the node learns of through the DHTs, mDNS or a connection,
//! with the cells it says (in identify) that it serves, and those the provider
//! records this node holds say it provides ([`note_providers`]).
//!
//! Provider records add little that identify does not: every provider whose record a
//! node holds connected to it to store it, and identified itself then. What they add
//! is whether the peer announces the cell in the DHT now (records expire), which is
//! what others find it by; they are read from the local stores only — no query, no
//! crawl.
//!
//! The cluster is bounded: at most [`MAX_CLUSTER`] peers (more are not added) with at
//! most [`MAX_ADDRESSES`] addresses each, so peers announcing themselves cannot grow
//! it without end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use libp2p::kad::store::RecordStore as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, autonat, identify, kad, mdns, ping, relay};

use crate::admin::NetworkView;
use crate::admin::state::{ClusterPeer, ConnectionView};
use crate::net::status::{self, Variant};
use crate::net::{Behaviour, BehaviourEvent};

/// The most peers the cluster view holds.
pub const MAX_CLUSTER: usize = 1000;
/// The most addresses the cluster view keeps per peer.
pub const MAX_ADDRESSES: usize = 4;
/// The most cell protocols whose provider records [`note_providers`] reads.
pub const MAX_KNOWN_CELLS: usize = 256;
/// How often [`note_providers`] reads them (while the admin endpoint is on).
pub const PROVIDERS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Notes what `event` changes in `view`; takes the lock only for events that do.
pub(super) fn note(
    view: &RwLock<NetworkView>,
    swarm: &mut Swarm<Behaviour>,
    event: &SwarmEvent<BehaviourEvent>,
) {
    let write = || view.write().unwrap_or_else(|e| e.into_inner());
    match event {
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            ..
        } => {
            let connection = ConnectionView {
                direction: if endpoint.is_dialer() {
                    "outbound"
                } else {
                    "inbound"
                },
                address: endpoint.get_remote_address().to_string(),
                transport: transport(endpoint.get_remote_address()),
                relayed: endpoint.is_relayed(),
                rtt_ms: None,
            };
            let mut view = write();
            let address = connection.address.clone();
            let peer = view.peers.entry(peer_id.to_string()).or_default();
            peer.connections
                .insert(connection_id.to_string(), connection);
            if let Some(known) = known(&mut view, peer_id) {
                known.found_by.insert("connection");
                add_address(known, address);
            }
            note_dht_sizes(&mut view, swarm);
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            num_established,
            ..
        } => {
            let mut view = write();
            let key = peer_id.to_string();
            if *num_established == 0 {
                view.peers.remove(&key);
                // A reservation lives on its connection to the relay.
                view.relays.remove(&key);
            } else if let Some(peer) = view.peers.get_mut(&key) {
                peer.connections.remove(&connection_id.to_string());
            }
            note_dht_sizes(&mut view, swarm);
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            let mut view = write();
            if let Some(peer) = view.peers.get_mut(&peer_id.to_string()) {
                peer.agent = Some(info.agent_version.clone());
            }
            if let Some(known) = known(&mut view, peer_id) {
                known.cells = Some(cells_among(&info.protocols));
                for address in &info.listen_addrs {
                    add_address(known, address.to_string());
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
            peer,
            connection,
            result: Ok(rtt),
        })) => {
            let rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
            if let Some(peer) = write().peers.get_mut(&peer.to_string()) {
                peer.rtt_ms = rtt_ms;
                if let Some(connection) = peer.connections.get_mut(&connection.to_string()) {
                    connection.rtt_ms = rtt_ms;
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
            peer,
            addresses,
            ..
        })) => found(&mut write(), swarm, peer, "wan-dht", addresses.iter()),
        SwarmEvent::Behaviour(BehaviourEvent::LanKad(kad::Event::RoutingUpdated {
            peer,
            addresses,
            ..
        })) => found(&mut write(), swarm, peer, "lan-dht", addresses.iter()),
        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::ModeChanged { .. })) => {
            note_dht_sizes(&mut write(), swarm);
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
            let mut view = write();
            for (peer, address) in list {
                if let Some(known) = known(&mut view, peer) {
                    known.found_by.insert("mdns");
                    add_address(known, address.to_string());
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
            relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
        )) => {
            write().relays.insert(relay_peer_id.to_string());
        }
        SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
            new,
            ..
        })) => write().nat = nat_status(new),
        SwarmEvent::ExternalAddrConfirmed { .. } | SwarmEvent::ExternalAddrExpired { .. } => {
            write().external = swarm
                .external_addresses()
                .map(ToString::to_string)
                .collect();
        }
        _ => {}
    }
}

/// Notes a peer a DHT's routing table took in, at `addresses`.
fn found<'a>(
    view: &mut NetworkView,
    swarm: &mut Swarm<Behaviour>,
    peer: &PeerId,
    dht: &'static str,
    addresses: impl Iterator<Item = &'a Multiaddr>,
) {
    if let Some(known) = known(view, peer) {
        known.found_by.insert(dht);
        for address in addresses {
            add_address(known, address.to_string());
        }
    }
    note_dht_sizes(view, swarm);
}

/// `peer`'s entry in the cluster view, made if there is room.
fn known<'v>(view: &'v mut NetworkView, peer: &PeerId) -> Option<&'v mut ClusterPeer> {
    let key = peer.to_string();
    if key == view.peer_id
        || (view.cluster.len() >= MAX_CLUSTER && !view.cluster.contains_key(&key))
    {
        return None;
    }
    Some(view.cluster.entry(key).or_default())
}

fn add_address(known: &mut ClusterPeer, address: String) {
    if known.addresses.len() < MAX_ADDRESSES && !known.addresses.contains(&address) {
        known.addresses.push(address);
    }
}

/// The cells among the protocols a peer accepts: not a node protocol (see
/// [`crate::net::reserved_by`]) and not a cell's `+status` or `+call` variant.
pub(super) fn cells_among(protocols: &[libp2p::StreamProtocol]) -> Vec<String> {
    let mut cells: Vec<String> = protocols
        .iter()
        .filter(|protocol| crate::net::reserved_by(protocol.as_ref()).is_none())
        .filter(|protocol| status::parse(protocol).1 == Variant::Plain)
        .map(ToString::to_string)
        .collect();
    cells.sort();
    cells
}

/// Notes in the cluster view which cells each peer provides, from the provider
/// records this node's DHT stores hold (as a DHT server, for the keys nearest it; in
/// a small cluster, all of them) — for the cell protocols it knows of: the ones it
/// serves and those peers named in identify, at most [`MAX_KNOWN_CELLS`]. A provider
/// not yet known joins the cluster (within its bound), found by `provider-record`.
///
/// Reads only local stores, no query: a few hundred hash lookups, run every
/// [`PROVIDERS_INTERVAL`].
pub(super) fn note_providers(view: &RwLock<NetworkView>, swarm: &mut Swarm<Behaviour>) {
    let served = swarm.behaviour().router.protocols().get();
    let mut view = view.write().unwrap_or_else(|e| e.into_inner());
    let mut names = std::collections::BTreeSet::new();
    let named = view
        .cluster
        .values()
        .filter_map(|known| known.cells.as_ref())
        .flatten()
        .cloned();
    for name in cells_among(&served).into_iter().chain(named) {
        if names.len() >= MAX_KNOWN_CELLS {
            break;
        }
        names.insert(name);
    }
    let mut provided: BTreeMap<PeerId, (BTreeSet<String>, Vec<Multiaddr>)> = BTreeMap::new();
    for name in names {
        let Ok(protocol) = libp2p::StreamProtocol::try_from_owned(name.clone()) else {
            continue;
        };
        let key = crate::net::discovery::provider_key(&protocol);
        for which in crate::net::Dht::BOTH {
            for record in swarm.behaviour_mut().dht(which).store_mut().providers(&key) {
                let (cells, addresses) = provided.entry(record.provider).or_default();
                cells.insert(name.clone());
                addresses.extend(record.addresses);
            }
        }
    }
    for known in view.cluster.values_mut() {
        known.provides.clear();
    }
    for (peer, (cells, addresses)) in provided {
        if let Some(known) = known(&mut view, &peer) {
            known.found_by.insert("provider-record");
            known.provides = cells.into_iter().collect();
            for address in addresses {
                add_address(known, address.to_string());
            }
        }
    }
}

/// Fills in what the view knows before the first event.
pub(super) fn start(view: &mut NetworkView, swarm: &mut Swarm<Behaviour>) {
    view.nat = nat_status(&autonat::NatStatus::Unknown);
    note_dht_sizes(view, swarm);
}

/// The transport a connection to `address` runs on (for a relayed connection, the
/// one to the relay).
fn transport(address: &Multiaddr) -> &'static str {
    let mut transport = "other";
    for protocol in address.iter() {
        match protocol {
            Protocol::Tcp(_) => transport = "tcp",
            Protocol::QuicV1 => transport = "quic",
            _ => {}
        }
    }
    transport
}

/// AutoNAT's verdict, in words.
fn nat_status(status: &autonat::NatStatus) -> String {
    match status {
        autonat::NatStatus::Public(address) => format!("public ({address})"),
        autonat::NatStatus::Private => "private".into(),
        autonat::NatStatus::Unknown => "unknown".into(),
    }
}

/// The DHTs' mode and the peers in their routing tables (non-empty buckets only).
fn note_dht_sizes(view: &mut NetworkView, swarm: &mut Swarm<Behaviour>) {
    let behaviour = swarm.behaviour_mut();
    view.dht_mode = behaviour.kad.mode().to_string();
    view.dht_wan_peers = behaviour.kad.kbuckets().map(|b| b.num_entries()).sum();
    view.dht_lan_peers = behaviour.lan_kad.kbuckets().map(|b| b.num_entries()).sum();
}

/// `task`, counted among `peer`'s open streams while it runs (if the peer is in the
/// view; a stream can outlive its peer's last connection, and its count goes with it).
pub(super) fn counted(
    view: &RwLock<NetworkView>,
    peer: &str,
    task: BoxFuture<'static, ()>,
) -> BoxFuture<'static, ()> {
    let view = view.read().unwrap_or_else(|e| e.into_inner());
    let Some(open) = view.peers.get(peer).map(|p| p.streams.clone()) else {
        return task;
    };
    let guard = OpenStream::new(open);
    Box::pin(async move {
        let _guard = guard;
        task.await
    })
}

/// One open stream in its peer's count, for as long as it lives.
struct OpenStream(Arc<AtomicU64>);

impl OpenStream {
    fn new(count: Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        OpenStream(count)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use libp2p::StreamProtocol;

    use super::*;

    #[test]
    fn a_peers_cells_are_its_protocols_less_the_node_ones_and_the_variants() {
        let protocols = [
            "/ww/echo/0.1.0",
            "/ww/echo/0.1.0+status",
            "/ww/echo/0.1.0+call",
            "/ipfs/id/1.0.0",
            "/ipfs/ping/1.0.0",
            "/ww/lan/kad/1.0.0",
            "/ww/code/1.0.0",
            "/ww/stats/0.1.0",
            "/app/upper/1",
        ]
        .map(StreamProtocol::new);
        assert_eq!(cells_among(&protocols), ["/app/upper/1", "/ww/echo/0.1.0"]);
    }

    #[test]
    fn the_cluster_is_bounded_and_leaves_this_node_out() {
        let me = PeerId::random();
        let mut view = NetworkView {
            peer_id: me.to_string(),
            ..NetworkView::default()
        };
        assert!(known(&mut view, &me).is_none());
        let first = PeerId::random();
        let entry = known(&mut view, &first).unwrap();
        for port in 0..10 {
            add_address(entry, format!("/ip4/127.0.0.1/tcp/{port}"));
        }
        add_address(entry, "/ip4/127.0.0.1/tcp/0".into());
        assert_eq!(entry.addresses.len(), MAX_ADDRESSES);
        for _ in 1..MAX_CLUSTER {
            known(&mut view, &PeerId::random()).unwrap();
        }
        assert!(known(&mut view, &PeerId::random()).is_none(), "full");
        assert!(
            known(&mut view, &first).is_some(),
            "a known peer still updates"
        );
        assert_eq!(view.cluster.len(), MAX_CLUSTER);
    }
}
