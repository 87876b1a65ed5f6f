//! How ww nodes find each other and each other's cells, with libp2p's own machinery:
//! Kademlia DHTs on ww's own protocols (so ww never joins or pollutes the IPFS DHT),
//! mDNS on the local network, AutoNAT for reachability, circuit relay v2 and DCUtR for
//! nodes behind NAT.
//!
//! There are two DHTs, as in kubo: the *WAN* DHT ([`KAD_PROTOCOL`]) a node serves once
//! it knows it is reachable ([`DhtMode`]), and the *LAN* DHT ([`LAN_KAD_PROTOCOL`])
//! every node serves from the start but whose routing table only holds loopback,
//! private and link-local addresses ([`is_lan_addr`]). A cluster on one machine or one
//! LAN thus finds its cells with no flag, while nothing learned on a LAN leaks into
//! the WAN DHT's idea of who is reachable, and no public address into the LAN's.
//!
//! A node joins through its bootstrap peers ([`join`]) and announces every cell it
//! serves as a *provider record* under [`provider_key`] of the cell's protocol, in
//! both DHTs ([`Announcements`]); `ww find`, `ww dial --any` and a cell's `dial-any`
//! look the key up (see `net::control`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::kad::QueryResult;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm, autonat, kad, mdns, relay};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{Behaviour, BehaviourEvent};
use crate::content::ContentId;

/// The WAN DHT's protocol: ww's own, not IPFS's `/ipfs/kad/1.0.0`.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ww/kad/1.0.0");
/// The LAN DHT's protocol (kubo's is `/ipfs/lan/kad/1.0.0`).
pub const LAN_KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ww/lan/kad/1.0.0");
/// How long a provider record lives on the nodes that store it, unless refreshed.
pub const PROVIDER_TTL: Duration = Duration::from_secs(20 * 60);
/// How often a node re-announces the cells it serves (well within [`PROVIDER_TTL`],
/// so a live node's records never lapse and a dead node's vanish within the TTL).
pub const PROVIDER_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Provider records a node keeps per key (libp2p-kad's default is 20, the
/// replication factor). Every node of a cluster serves the built-in cells, so a key
/// has as many providers as the cluster has nodes: with 20, each node keeps the first
/// 20 it hears of and ignores the rest, so in a cluster of more than 20 nodes what a
/// lookup finds depends on which nodes heard of which providers first (the lab's
/// 30-node cluster showed 26–29 providers of echo). Records past this are still
/// ignored (libp2p's defence against floods of fake providers). An answer of 64
/// providers with circuit addresses can pass libp2p's 16 KiB message limit, hence
/// [`MAX_DHT_MESSAGE`].
pub const MAX_PROVIDERS_PER_KEY: usize = 64;
/// Largest DHT message sent or accepted (libp2p-kad's default is 16 KiB): room for
/// [`MAX_PROVIDERS_PER_KEY`] providers with several addresses each.
pub const MAX_DHT_MESSAGE: usize = 64 * 1024;
/// Longest a DHT query may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Circuits a relay carries at once.
pub const RELAY_MAX_CIRCUITS: usize = 64;
/// Longest a relayed connection may last before the relay closes it.
pub const RELAY_MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(10 * 60);
/// Most bytes a relayed connection may carry (each way) before the relay closes it.
pub const RELAY_MAX_CIRCUIT_BYTES: u64 = 64 << 20;

/// One of the two DHTs a swarm takes part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dht {
    /// The wide-area DHT ([`KAD_PROTOCOL`]); served by reachable nodes.
    Wan,
    /// The local DHT ([`LAN_KAD_PROTOCOL`]); served by every node, non-global
    /// addresses only.
    Lan,
}

impl Dht {
    /// Both DHTs.
    pub const BOTH: [Dht; 2] = [Dht::Wan, Dht::Lan];

    /// The protocol the DHT speaks.
    pub fn protocol(self) -> StreamProtocol {
        match self {
            Dht::Wan => KAD_PROTOCOL,
            Dht::Lan => LAN_KAD_PROTOCOL,
        }
    }

    /// Whether `addr` may go into this DHT's routing table.
    pub fn admits(self, addr: &Multiaddr) -> bool {
        match self {
            Dht::Wan => true,
            Dht::Lan => is_lan_addr(addr),
        }
    }
}

/// Whether an address is a direct one on this machine or a local network: its IP is
/// loopback, private (RFC 1918, CGNAT's 100.64/10, IPv6 unique-local), link-local or
/// unspecified. Relayed and DNS addresses are not: a name may resolve anywhere.
pub fn is_lan_addr(addr: &Multiaddr) -> bool {
    if is_relayed(addr) {
        return false;
    }
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => is_lan_ip(IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => is_lan_ip(IpAddr::V6(ip)),
        _ => false,
    }
}

/// The listen addresses a peer told us in identify that can lead to it from here.
/// A loopback address only leads to the peer if this node shares its host, which is
/// so when the peer sees this node at a loopback address too (`observed_addr`);
/// otherwise it leads back to this node or to some other process on its host (as
/// the network-namespace lab showed: nodes dialed their own loopback port in search
/// of a relay and of DHT peers, and a circuit was taken through a relay's
/// loopback address).
pub fn usable_listen_addrs(info: &libp2p::identify::Info) -> Vec<Multiaddr> {
    let same_host = is_loopback(&info.observed_addr);
    info.listen_addrs
        .iter()
        .filter(|addr| same_host || !is_loopback(addr))
        .cloned()
        .collect()
}

fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// Whether `ip` is not globally routable in the sense of [`is_lan_addr`].
pub fn is_lan_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            let shared = a == 100 && (b & 0b1100_0000) == 64; // 100.64.0.0/10
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || shared
        }
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_lan_ip(IpAddr::V4(v4)),
            None => ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local(),
        },
    }
}

/// Whether the node answers WAN DHT queries from other peers (it always answers the
/// LAN DHT's, unless it is a client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DhtMode {
    /// Server once the node knows it is reachable (an external address confirmed by
    /// AutoNAT, a relay reservation or `--external-address`), client before.
    #[default]
    Auto,
    /// Always answer queries (a bootstrap node whose reachability AutoNAT cannot
    /// confirm). LAN and loopback clusters need no flag: see [`Dht::Lan`].
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
    /// Whether to answer WAN DHT queries.
    pub dht: DhtMode,
    /// A client only asks, in both DHTs (`ww dial`, `ww find`); a node (`false`)
    /// serves the LAN DHT whatever `dht` says.
    pub client: bool,
    /// Whether to relay connections for other peers.
    pub relay: bool,
    /// Whether AutoNAT also tests non-global addresses (a lab, a private WAN): see
    /// [`autonat`].
    pub autonat_private: bool,
    /// Addresses others can reach this node at, confirmed up front (a public IP, a
    /// port forward, a loopback cluster's own addresses).
    pub external: Vec<Multiaddr>,
}

impl NetOptions {
    /// A client: asks both DHTs but never serves them, no mDNS, no relaying.
    pub fn client(bootstrap: Vec<Multiaddr>) -> Self {
        Self {
            bootstrap,
            dht: DhtMode::Client,
            client: true,
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

/// The DHT key under which nodes holding a component announce it: the multihash of
/// its CID, as IPFS does.
pub fn content_key(content: &ContentId) -> kad::RecordKey {
    kad::RecordKey::new(&content.cid().hash().to_bytes())
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

/// The DHT `which`, configured as `options` say: the WAN one in `options.dht`'s mode,
/// the LAN one a server (unless this is a client) that inserts peers into its routing
/// table only through [`Dht::admits`] (see `net::control`).
/// Least time between two announcements of the node's cells triggered by bootstraps.
const REANNOUNCE_AFTER: Duration = Duration::from_secs(10);

/// Joins the network through `bootstrap` peers: adds them to the DHTs' routing
/// tables (the LAN DHT's if the address is not global), dials them and starts a
/// bootstrap query in each DHT that knows one of them.
pub fn join(swarm: &mut Swarm<Behaviour>, bootstrap: &[Multiaddr]) {
    for addr in bootstrap {
        let Some(peer) = peer_of(addr) else {
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

/// What a swarm announces as their provider, in both DHTs (its cells' protocols and
/// components, see [`provider_key`] and [`content_key`]): announced at once,
/// again whenever a bootstrap fills a routing table in or an external address is
/// confirmed (at most every `REANNOUNCE_AFTER`, 10 s), refreshed by the DHTs every
/// [`PROVIDER_REFRESH`], and withdrawn on shutdown.
///
/// A record carries the addresses the node had confirmed when it announced, and a
/// node holding a record without addresses answers with the provider only if its
/// routing table knows where the provider is. So a node that announced before it
/// knew its own address announces again once it does; the lab found 4 of 30
/// providers missing from every lookup without this, until their 5-minute refresh.
#[derive(Debug, Default)]
pub struct Announcements {
    /// Keys provided.
    keys: Vec<kad::RecordKey>,
    /// When they were last announced.
    announced: Option<Instant>,
    /// Whether an announcement is due (an external address was confirmed) once
    /// `REANNOUNCE_AFTER` has passed since the last one.
    due: bool,
}

impl Announcements {
    /// Provides exactly `keys` from now on: announces the new ones, withdraws those
    /// no longer given.
    pub fn provide(&mut self, swarm: &mut Swarm<Behaviour>, keys: Vec<kad::RecordKey>) {
        for gone in self.keys.iter().filter(|key| !keys.contains(key)) {
            for which in Dht::BOTH {
                swarm.behaviour_mut().dht(which).stop_providing(gone);
            }
        }
        let new: Vec<_> = keys
            .iter()
            .filter(|key| !self.keys.contains(key))
            .cloned()
            .collect();
        self.keys = keys;
        Self::start_providing(swarm, &new);
    }

    /// Withdraws every announcement (this node's own store; other nodes' copies
    /// expire after [`PROVIDER_TTL`]).
    pub fn withdraw(&mut self, swarm: &mut Swarm<Behaviour>) {
        for key in self.keys.drain(..) {
            for which in Dht::BOTH {
                swarm.behaviour_mut().dht(which).stop_providing(&key);
            }
        }
    }

    /// Re-announces once a bootstrap has filled a routing table in or an external
    /// address was confirmed. Call it with every swarm event.
    pub fn on_event(&mut self, swarm: &mut Swarm<Behaviour>, event: &SwarmEvent<BehaviourEvent>) {
        let (which, event) = match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => (Dht::Wan, event),
            SwarmEvent::Behaviour(BehaviourEvent::LanKad(event)) => (Dht::Lan, event),
            SwarmEvent::ExternalAddrConfirmed { .. } => {
                self.due = true;
                return self.announce_if_due(swarm);
            }
            _ => return self.announce_if_due(swarm),
        };
        match event {
            kad::Event::OutboundQueryProgressed {
                result: QueryResult::Bootstrap(Ok(_)),
                step,
                ..
            } if step.last => self.due = true,
            kad::Event::OutboundQueryProgressed {
                result: QueryResult::StartProviding(Err(error)),
                ..
            } => {
                tracing::debug!(?which, %error, "announcing a cell failed; the DHT retries on refresh");
            }
            _ => {}
        }
        self.announce_if_due(swarm);
    }

    /// Announces if one is due and the last was over `REANNOUNCE_AFTER` ago.
    fn announce_if_due(&mut self, swarm: &mut Swarm<Behaviour>) {
        let stale = self
            .announced
            .is_none_or(|at| at.elapsed() > REANNOUNCE_AFTER);
        if self.due && stale {
            self.due = false;
            if !self.keys.is_empty() {
                self.announce(swarm);
            }
        }
    }

    fn announce(&mut self, swarm: &mut Swarm<Behaviour>) {
        let external = swarm.external_addresses().count();
        tracing::debug!(
            keys = self.keys.len(),
            external,
            "announcing the cells again"
        );
        Self::start_providing(swarm, &self.keys);
        self.announced = Some(Instant::now());
    }

    fn start_providing(swarm: &mut Swarm<Behaviour>, keys: &[kad::RecordKey]) {
        for key in keys {
            for which in Dht::BOTH {
                let dht = swarm.behaviour_mut().dht(which);
                if let Err(error) = dht.start_providing(key.clone()) {
                    tracing::warn!(?which, %error, "cannot announce a cell");
                }
            }
        }
    }
}

pub(super) fn kademlia(
    which: Dht,
    options: &NetOptions,
    key: &Keypair,
) -> kad::Behaviour<kad::store::MemoryStore> {
    let peer = key.public().to_peer_id();
    let mut config = kad::Config::new(which.protocol());
    config
        .set_query_timeout(QUERY_TIMEOUT)
        .set_provider_record_ttl(Some(PROVIDER_TTL))
        .set_provider_publication_interval(Some(PROVIDER_REFRESH))
        .set_max_packet_size(MAX_DHT_MESSAGE);
    if options.bootstrap.is_empty() {
        // A first node (a seed) has nobody to refresh its table from until peers join
        // it, and each join bootstraps it anyway; periodic bootstraps would only warn.
        config.set_periodic_bootstrap_interval(None);
    }
    if which == Dht::Lan {
        // kad would insert every connected peer at the address it dialed; ww filters.
        config.set_kbucket_inserts(kad::BucketInserts::Manual);
    }
    let mode = match which {
        Dht::Wan => options.dht,
        Dht::Lan if options.client => DhtMode::Client,
        Dht::Lan => DhtMode::Server,
    };
    let store = kad::store::MemoryStoreConfig {
        max_providers_per_key: MAX_PROVIDERS_PER_KEY,
        ..Default::default()
    };
    let store = kad::store::MemoryStore::with_config(peer, store);
    let mut kad = kad::Behaviour::with_config(peer, store, config);
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
/// AutoNAT (v1) with libp2p's defaults, but for [`NetOptions::autonat_private`]: then
/// it also probes through, and answers probes from, peers at non-global addresses.
/// A probe still dials back only the IP the server sees the client at, so this
/// opens no way to make a node dial third parties.
pub(super) fn autonat(key: &Keypair, options: &NetOptions) -> autonat::Behaviour {
    let config = autonat::Config {
        only_global_ips: !options.autonat_private,
        ..Default::default()
    };
    autonat::Behaviour::new(key.public().to_peer_id(), config)
}

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

    #[test]
    fn a_node_keeps_the_providers_of_a_cell_served_by_a_cluster_larger_than_twenty() {
        use libp2p::kad::store::RecordStore as _;
        let key = Keypair::generate_ed25519();
        let mut dht = kademlia(Dht::Wan, &NetOptions::default(), &key);
        let cell = provider_key(&StreamProtocol::new("/ww/echo/0.1.0"));
        for _ in 0..MAX_PROVIDERS_PER_KEY + 5 {
            let provider = libp2p::PeerId::random();
            let record = kad::ProviderRecord::new(cell.clone(), provider, Vec::new());
            dht.store_mut().add_provider(record).unwrap();
        }
        assert_eq!(
            dht.store_mut().providers(&cell).len(),
            MAX_PROVIDERS_PER_KEY
        );
    }

    #[test]
    fn a_peers_loopback_addresses_are_used_only_by_a_node_on_its_host() {
        let info = |observed: &str| libp2p::identify::Info {
            public_key: Keypair::generate_ed25519().public(),
            protocol_version: String::new(),
            agent_version: String::new(),
            listen_addrs: vec![
                "/ip4/127.0.0.1/tcp/2025".parse().unwrap(),
                "/ip4/198.51.100.6/tcp/2025".parse().unwrap(),
                "/ip6/::1/udp/2025/quic-v1".parse().unwrap(),
            ],
            protocols: Vec::new(),
            observed_addr: observed.parse().unwrap(),
            signed_peer_record: None,
        };
        let shown = |addrs: Vec<Multiaddr>| addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shown(usable_listen_addrs(&info("/ip4/198.18.1.6/tcp/40000"))),
            ["/ip4/198.51.100.6/tcp/2025"]
        );
        assert_eq!(
            usable_listen_addrs(&info("/ip4/127.0.0.1/tcp/40000")).len(),
            3
        );
    }

    #[test]
    fn the_lan_dht_admits_only_non_global_direct_addresses() {
        let lan = [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/10.1.2.3/udp/4001/quic-v1",
            "/ip4/172.16.0.9/tcp/1",
            "/ip4/172.31.255.255/tcp/1",
            "/ip4/192.168.1.20/tcp/4001/p2p/12D3KooWGjMCqBg5nYMGJ1y3oGHnNpiZ1zwh5WCnpAsQoRPMT6Wt",
            "/ip4/169.254.3.4/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip4/100.127.255.254/tcp/1",
            "/ip6/::1/tcp/4001",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/::ffff:192.168.0.1/tcp/1",
        ];
        let wan = [
            "/ip4/8.8.8.8/tcp/4001",
            "/ip4/172.32.0.1/tcp/1",
            "/ip4/100.128.0.1/tcp/1",
            "/ip4/11.0.0.1/tcp/1",
            "/ip6/2001:4860::8888/tcp/1",
            "/ip6/::ffff:8.8.8.8/tcp/1",
            "/dns4/localhost/tcp/1",
            "/ip4/0.0.0.0/tcp/1",
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGjMCqBg5nYMGJ1y3oGHnNpiZ1zwh5WCnpAsQoRPMT6Wt/p2p-circuit",
        ];
        for addr in lan {
            let addr: Multiaddr = addr.parse().unwrap();
            assert!(Dht::Lan.admits(&addr), "{addr} is a LAN address");
            assert!(Dht::Wan.admits(&addr), "the WAN DHT takes every address");
        }
        for addr in wan {
            let addr: Multiaddr = addr.parse().unwrap();
            assert!(!Dht::Lan.admits(&addr), "{addr} is not a LAN address");
            assert!(Dht::Wan.admits(&addr));
        }
    }
}
