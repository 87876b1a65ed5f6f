//! Keeps the admin endpoint's [`NetworkView`] current from the swarm's events: the
//! connected peers (connections, RTT, agent, open streams), the external
//! addresses, AutoNAT's verdict and the DHTs' mode and routing-table sizes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, autonat, identify, kad, ping};

use crate::admin::NetworkView;
use crate::admin::state::ConnectionView;
use crate::net::{Behaviour, BehaviourEvent};

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
            };
            let mut view = write();
            let peer = view.peers.entry(peer_id.to_string()).or_default();
            peer.connections
                .insert(connection_id.to_string(), connection);
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
            if let Some(peer) = write().peers.get_mut(&peer_id.to_string()) {
                peer.agent = Some(info.agent_version.clone());
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
            peer,
            result: Ok(rtt),
            ..
        })) => {
            if let Some(peer) = write().peers.get_mut(&peer.to_string()) {
                peer.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Kad(
            kad::Event::RoutingUpdated { .. } | kad::Event::ModeChanged { .. },
        ))
        | SwarmEvent::Behaviour(BehaviourEvent::LanKad(kad::Event::RoutingUpdated { .. })) => {
            note_dht_sizes(&mut write(), swarm);
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
    peer: &PeerId,
    task: BoxFuture<'static, ()>,
) -> BoxFuture<'static, ()> {
    let view = view.read().unwrap_or_else(|e| e.into_inner());
    let Some(open) = view.peers.get(&peer.to_string()).map(|p| p.streams.clone()) else {
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
