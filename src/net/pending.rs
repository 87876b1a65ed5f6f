//! Per-source caps on inbound connections still in their handshake.
//!
//! The swarm's global cap ([`super::MAX_PENDING_INCOMING`]) alone lets one address
//! hold every handshake slot: it opens that many connections, sends the first
//! multistream line and waits, re-opening each one the transport times out. This
//! behaviour denies a pending inbound connection when its source host, or the
//! network around it, already has its share of the slots, so a peer elsewhere can
//! still get in. Like go-libp2p's resource manager it counts IPv6 by prefix (a host
//! is usually handed a whole /64) and bounds a wider network too, so one attacker
//! needs many networks, not many addresses in one, to fill the global cap.
//!
//! Connections without an IP source (relayed circuits) are left to the global cap.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionEstablished, ListenFailure};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

/// Inbound connections in their handshake from one host (an IPv4 address, an IPv6
/// /64), at most: enough for a few nodes behind one NAT connecting at once, an
/// eighth of the global cap.
pub const MAX_PENDING_PER_HOST: usize = 16;
/// Inbound connections in their handshake from one network (an IPv4 /24, an IPv6
/// /48), at most: half the global cap.
pub const MAX_PENDING_PER_NETWORK: usize = 64;

/// Where a pending connection comes from, at the two granularities counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source {
    host: IpAddr,
    network: IpAddr,
}

impl Source {
    /// The host and network of `ip`; IPv4-mapped IPv6 addresses count as IPv4.
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source {
                host: v4.into(),
                network: Ipv4Addr::from_bits(v4.to_bits() & !0xff).into(),
            },
            IpAddr::V6(v6) => Source {
                host: Ipv6Addr::from_bits(v6.to_bits() & !(u128::MAX >> 64)).into(),
                network: Ipv6Addr::from_bits(v6.to_bits() & !(u128::MAX >> 48)).into(),
            },
        }
    }

    /// The source IP of a remote address, unless it is relayed or has none.
    fn of_addr(addr: &Multiaddr) -> Option<Self> {
        if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            return None;
        }
        addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(Source::of(ip.into())),
            Protocol::Ip6(ip) => Some(Source::of(ip.into())),
            _ => None,
        })
    }
}

/// Why a pending inbound connection was denied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PendingLimitExceeded {
    /// Its host already has [`MAX_PENDING_PER_HOST`] connections in their handshake.
    #[error("{host} already has {limit} connections in their handshake")]
    Host {
        /// The host (an IPv4 address or an IPv6 /64 prefix).
        host: IpAddr,
        /// The cap it reached.
        limit: usize,
    },
    /// Its network already has [`MAX_PENDING_PER_NETWORK`] connections in their
    /// handshake.
    #[error("network {network} already has {limit} connections in their handshake")]
    Network {
        /// The network (an IPv4 /24 or IPv6 /48 prefix).
        network: IpAddr,
        /// The cap it reached.
        limit: usize,
    },
}

/// Counts pending inbound connections by source host and network.
#[derive(Debug)]
struct PendingCounts {
    per_host_limit: usize,
    per_network_limit: usize,
    /// Every counted connection, until it is established or fails.
    pending: HashMap<ConnectionId, Source>,
    per_host: HashMap<IpAddr, usize>,
    per_network: HashMap<IpAddr, usize>,
}

impl PendingCounts {
    fn new(per_host_limit: usize, per_network_limit: usize) -> Self {
        PendingCounts {
            per_host_limit,
            per_network_limit,
            pending: HashMap::new(),
            per_host: HashMap::new(),
            per_network: HashMap::new(),
        }
    }

    /// Counts `connection` from `source` unless that would exceed a cap.
    fn try_add(
        &mut self,
        connection: ConnectionId,
        source: Source,
    ) -> Result<(), PendingLimitExceeded> {
        let host = self.per_host.get(&source.host).copied().unwrap_or(0);
        if host >= self.per_host_limit {
            return Err(PendingLimitExceeded::Host {
                host: source.host,
                limit: self.per_host_limit,
            });
        }
        let network = self.per_network.get(&source.network).copied().unwrap_or(0);
        if network >= self.per_network_limit {
            return Err(PendingLimitExceeded::Network {
                network: source.network,
                limit: self.per_network_limit,
            });
        }
        *self.per_host.entry(source.host).or_default() += 1;
        *self.per_network.entry(source.network).or_default() += 1;
        self.pending.insert(connection, source);
        Ok(())
    }

    /// Releases `connection`'s slot; connections never counted are ignored.
    fn remove(&mut self, connection: ConnectionId) {
        let Some(source) = self.pending.remove(&connection) else {
            return;
        };
        for (counts, key) in [
            (&mut self.per_host, source.host),
            (&mut self.per_network, source.network),
        ] {
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

/// A [`NetworkBehaviour`] that denies pending inbound connections beyond
/// [`MAX_PENDING_PER_HOST`] per host and [`MAX_PENDING_PER_NETWORK`] per network.
/// It never opens streams or emits events.
#[derive(Debug)]
pub struct Behaviour {
    counts: PendingCounts,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            counts: PendingCounts::new(MAX_PENDING_PER_HOST, MAX_PENDING_PER_NETWORK),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match Source::of_addr(remote_addr) {
            Some(source) => self
                .counts
                .try_add(connection_id, source)
                .map_err(ConnectionDenied::new),
            None => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.counts.remove(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A behaviour before this one may deny an established connection, so its
        // slot is also released when the swarm reports the outcome.
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.counts.remove(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ip: &str) -> Source {
        Source::of(ip.parse().unwrap())
    }

    #[test]
    fn one_host_gets_its_share_and_others_still_get_in() {
        let mut counts = PendingCounts::new(2, 3);
        let ids: Vec<_> = (0..4).map(ConnectionId::new_unchecked).collect();
        counts.try_add(ids[0], source("10.0.0.1")).unwrap();
        counts.try_add(ids[1], source("10.0.0.1")).unwrap();
        assert_eq!(
            counts.try_add(ids[2], source("10.0.0.1")),
            Err(PendingLimitExceeded::Host {
                host: "10.0.0.1".parse().unwrap(),
                limit: 2
            })
        );
        counts.try_add(ids[2], source("10.0.0.2")).unwrap();
        // The /24 is now full; another /24 is not.
        assert!(matches!(
            counts.try_add(ids[3], source("10.0.0.3")),
            Err(PendingLimitExceeded::Network { .. })
        ));
        counts.try_add(ids[3], source("10.0.1.3")).unwrap();
    }

    #[test]
    fn released_slots_are_reused_and_unknown_ids_ignored() {
        let mut counts = PendingCounts::new(1, 10);
        let (a, b) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        counts.try_add(a, source("192.0.2.7")).unwrap();
        assert!(counts.try_add(b, source("192.0.2.7")).is_err());
        counts.remove(b); // denied, never counted
        counts.remove(a);
        counts.remove(a); // reported twice (established, then failed)
        counts.try_add(b, source("192.0.2.7")).unwrap();
        assert_eq!(counts.pending.len(), 1);
        assert_eq!(counts.per_host.len(), 1);
        assert_eq!(
            counts.per_network.get(&source("192.0.2.0").network),
            Some(&1)
        );
    }

    #[test]
    fn ipv6_counts_by_prefix_and_mapped_ipv4_as_ipv4() {
        let a = source("2001:db8:1:2:aaaa::1");
        assert_eq!(a.host, source("2001:db8:1:2:bbbb::9").host);
        assert_ne!(a.host, source("2001:db8:1:3::1").host);
        assert_eq!(a.network, source("2001:db8:1:ffff::1").network);
        assert_ne!(a.network, source("2001:db8:2::1").network);
        assert_eq!(source("::ffff:10.0.0.1"), source("10.0.0.1"));
    }

    #[test]
    fn relayed_and_ip_less_addresses_are_not_counted() {
        let direct: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(Source::of_addr(&direct), Some(source("10.0.0.1")));
        let relayed: Multiaddr = "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit".parse().unwrap();
        assert_eq!(Source::of_addr(&relayed), None);
        let memory: Multiaddr = "/memory/1".parse().unwrap();
        assert_eq!(Source::of_addr(&memory), None);
    }
}
