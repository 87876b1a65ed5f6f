//! How ww nodes find each other and each other's cells, with libp2p's own machinery:
//! a Kademlia DHT on ww's own protocol (so ww never joins or pollutes the IPFS DHT),
//! mDNS on the local network, AutoNAT for reachability, circuit relay v2 and DCUtR for
//! nodes behind NAT.
//!
//! A node announces every cell it serves as a *provider record* under
//! [`provider_key`] of the cell's protocol; `ww find`, `ww dial --any` and a cell's
//! `dial-any` look the key up.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, StreamProtocol, kad, mdns, relay};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The DHT's protocol: ww's own, not IPFS's `/ipfs/kad/1.0.0`.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ww/kad/1.0.0");
/// How long a provider record lives on the nodes that store it, unless refreshed.
pub const PROVIDER_TTL: Duration = Duration::from_secs(20 * 60);
/// How often a node re-announces the cells it serves (well within [`PROVIDER_TTL`],
/// so a live node's records never lapse and a dead node's vanish within the TTL).
pub const PROVIDER_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Longest a DHT query may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Circuits a relay carries at once.
pub const RELAY_MAX_CIRCUITS: usize = 64;
/// Longest a relayed connection may last before the relay closes it.
pub const RELAY_MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(10 * 60);
/// Most bytes a relayed connection may carry (each way) before the relay closes it.
pub const RELAY_MAX_CIRCUIT_BYTES: u64 = 64 << 20;

/// Whether the node answers DHT queries from other peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DhtMode {
    /// Server once the node knows it is reachable (an external address confirmed by
    /// AutoNAT, a relay reservation or `--external-address`), client before.
    #[default]
    Auto,
    /// Always answer queries (a bootstrap node, a LAN or loopback cluster).
    Server,
    /// Never answer queries; only ask.
    Client,
}

/// How a swarm takes part in the network beyond serving its protocols.
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// Peers to join the network through (each ending in `/p2p/<peer-id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Whether to find peers on the local network with mDNS.
    pub mdns: bool,
    /// Whether to answer DHT queries.
    pub dht: DhtMode,
    /// Whether to relay connections for other peers.
    pub relay: bool,
    /// Addresses others can reach this node at, confirmed up front (a public IP, a
    /// port forward, a loopback cluster's own addresses).
    pub external: Vec<Multiaddr>,
}

impl NetOptions {
    /// A client: asks the DHT but never serves it, no mDNS, no relaying.
    pub fn client(bootstrap: Vec<Multiaddr>) -> Self {
        Self {
            bootstrap,
            dht: DhtMode::Client,
            ..Self::default()
        }
    }
}

/// The DHT key under which the providers of a cell protocol are announced: SHA-256 of
/// a ww-specific prefix and the protocol ID, so keys are uniform in the key space.
pub fn provider_key(protocol: &StreamProtocol) -> kad::RecordKey {
    let digest = Sha256::new()
        .chain_update(b"/ww/provider/")
        .chain_update(protocol.as_ref().as_bytes())
        .finalize();
    kad::RecordKey::new(&digest)
}

/// The peer ID an address ends in, if it ends in `/p2p/<peer-id>`.
pub fn peer_of(addr: &Multiaddr) -> Option<libp2p::PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// `addr` without a trailing `/p2p/<peer-id>`.
pub fn without_peer(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// Whether an address goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

pub(super) fn kademlia(
    options: &NetOptions,
    key: &Keypair,
) -> kad::Behaviour<kad::store::MemoryStore> {
    let peer = key.public().to_peer_id();
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config
        .set_query_timeout(QUERY_TIMEOUT)
        .set_provider_record_ttl(Some(PROVIDER_TTL))
        .set_provider_publication_interval(Some(PROVIDER_REFRESH));
    if options.bootstrap.is_empty() {
        // A first node (a seed) has nobody to refresh its table from until peers join
        // it, and each join bootstraps it anyway; periodic bootstraps would only warn.
        config.set_periodic_bootstrap_interval(None);
    }
    let mode = options.dht;
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), config);
    match mode {
        DhtMode::Auto => {}
        DhtMode::Server => kad.set_mode(Some(kad::Mode::Server)),
        DhtMode::Client => kad.set_mode(Some(kad::Mode::Client)),
    }
    kad
}

/// mDNS, or `None` (with a warning) where this machine cannot watch its interfaces.
pub(super) fn mdns(key: &Keypair) -> Option<mdns::tokio::Behaviour> {
    mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())
        .inspect_err(|error| tracing::warn!(%error, "mDNS unavailable; local discovery is off"))
        .ok()
}

/// A relay with limits sized for cells: more and longer circuits than libp2p's
/// defaults (16 circuits, 2 minutes, 128 KiB), so a cell behind NAT stays usable when
/// hole punching fails, but still bounded.
pub(super) fn relay_server(key: &Keypair) -> relay::Behaviour {
    let config = relay::Config {
        max_circuits: RELAY_MAX_CIRCUITS,
        max_circuit_duration: RELAY_MAX_CIRCUIT_DURATION,
        max_circuit_bytes: RELAY_MAX_CIRCUIT_BYTES,
        ..relay::Config::default()
    };
    relay::Behaviour::new(key.public().to_peer_id(), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_keys_differ_per_protocol_and_are_stable() {
        let echo = provider_key(&StreamProtocol::new("/ww/echo/0.1.0"));
        assert_eq!(echo, provider_key(&StreamProtocol::new("/ww/echo/0.1.0")));
        assert_ne!(echo, provider_key(&StreamProtocol::new("/ww/echo/0.2.0")));
        assert_eq!(echo.as_ref().len(), 32);
    }
}
