//! The libp2p side of a node: transports (TCP + noise + yamux, QUIC, circuit relay),
//! the composed [`Behaviour`] (limits, identify, ping, discovery, relaying, cell-protocol
//! routing), the [`control`] loop that answers requests against a swarm, and a small
//! dialing [`client`].

pub mod client;
pub mod code;
pub mod control;
pub mod dashboard;
pub mod discovery;
mod lookup;
pub mod manage;
pub mod network;
pub mod pending;
pub mod relays;
pub mod router;
pub mod rtt;
pub mod status;

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, dcutr, identify, kad, mdns,
    memory_connection_limits, noise, ping, relay, tcp, yamux,
};

pub use discovery::{Dht, DhtMode, NetOptions};

/// The identify protocol version ww nodes announce.
pub const PROTOCOL_VERSION: &str = "/ww/0.1.0";

/// How long a connection with no streams stays open.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Incoming connections still in their handshake, at most (and per source, see
/// [`pending`]).
pub const MAX_PENDING_INCOMING: u32 = 128;
/// How long a connection may take to finish its handshake (transport, security,
/// multiplexer), either way. A handshake on a 300 ms round trip needs about 2 s;
/// libp2p's default of 10 s lets a stalled peer hold its slot twice as long. QUIC's own
/// handshake timeout is 5 s as well.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Established incoming connections, at most.
pub const MAX_ESTABLISHED_INCOMING: u32 = 1024;
/// Established connections with one peer, at most.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 8;
/// New connections are refused while the process uses more than this share of the
/// machine's memory.
pub const MAX_MEMORY_SHARE: f64 = 0.8;
/// Concurrent streams per yamux connection (QUIC allows 256).
pub const MAX_STREAMS_PER_CONNECTION: usize = 512;
/// Inbound streams negotiating their protocol at once, per connection.
pub const MAX_NEGOTIATING_INBOUND_STREAMS: usize = 128;

/// Everything a ww node (or client) speaks besides the transports.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Caps connections in their handshake per source host and network.
    pub pending_limits: pending::Behaviour,
    /// Caps connections: pending, established, per peer.
    pub connection_limits: connection_limits::Behaviour,
    /// Refuses new connections while memory is short.
    pub memory_limits: memory_connection_limits::Behaviour,
    /// Reserves slots on relays and dials through them.
    pub relay_client: relay::client::Behaviour,
    /// Relays for peers that cannot be reached directly (`--relay`).
    pub relay: Toggle<relay::Behaviour>,
    /// Tells peers our addresses and the protocols (cells) we serve.
    pub identify: identify::Behaviour,
    /// Keeps connections' liveness checked.
    pub ping: ping::Behaviour,
    /// The WAN DHT: peers' addresses and which peers provide which cell.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// The LAN DHT: the same, among peers at non-global addresses (see [`discovery`]).
    pub lan_kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Finds peers on the local network (on unless `--no-mdns`).
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Asks peers to dial us back, to learn whether we are reachable.
    pub autonat: autonat::Behaviour,
    /// Upgrades relayed connections to direct ones where hole punching works.
    pub dcutr: dcutr::Behaviour,
    /// Accepts streams on cell protocols and opens them on request.
    pub router: router::Behaviour,
}

impl Behaviour {
    /// The DHT `which`.
    pub fn dht(&mut self, which: Dht) -> &mut kad::Behaviour<kad::store::MemoryStore> {
        match which {
            Dht::Wan => &mut self.kad,
            Dht::Lan => &mut self.lan_kad,
        }
    }

    /// Adds `addr` of `peer` to the routing table of each of `dhts` that admits it
    /// ([`Dht::admits`]): the one place addresses enter a routing table.
    pub fn add_dht_address(
        &mut self,
        peer: &PeerId,
        addr: &Multiaddr,
        dhts: impl IntoIterator<Item = Dht>,
    ) {
        for which in dhts {
            if which.admits(addr) {
                self.dht(which).add_address(peer, addr.clone());
            }
        }
    }
}

/// Builds a swarm with TCP (noise, yamux), QUIC and circuit relay that serves
/// `protocols`, with discovery as `options` say. Must be called inside a tokio runtime.
pub fn build_swarm(
    keypair: Keypair,
    protocols: Vec<StreamProtocol>,
    options: &NetOptions,
) -> anyhow::Result<Swarm<Behaviour>> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux_config,
        )?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux_config)?
        .with_behaviour(|key, relay_client| behaviour(key, relay_client, protocols, options))?
        .with_swarm_config(|config| {
            config
                .with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND_STREAMS)
        })
        .with_connection_timeout(HANDSHAKE_TIMEOUT)
        .build();
    for addr in &options.external {
        swarm.add_external_address(addr.clone());
    }
    Ok(swarm)
}

/// The behaviour of a swarm serving `protocols`, with discovery as `options` say:
/// what [`build_swarm`] puts on its transports (tests put it on others).
pub fn behaviour(
    key: &Keypair,
    relay_client: relay::client::Behaviour,
    protocols: Vec<StreamProtocol>,
    options: &NetOptions,
) -> Behaviour {
    Behaviour {
        pending_limits: pending::Behaviour::default(),
        connection_limits: connection_limits::Behaviour::new(
            ConnectionLimits::default()
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
        ),
        memory_limits: memory_connection_limits::Behaviour::with_max_percentage(MAX_MEMORY_SHARE),
        relay_client,
        relay: Toggle::from(options.relay.then(|| discovery::relay_server(key))),
        identify: identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                .with_push_listen_addr_updates(true),
        ),
        ping: ping::Behaviour::default(),
        kad: discovery::kademlia(Dht::Wan, options, key),
        lan_kad: discovery::kademlia(Dht::Lan, options, key),
        mdns: Toggle::from(options.mdns.then(|| discovery::mdns(key)).flatten()),
        autonat: discovery::autonat(key, options),
        dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
        router: router::Behaviour::new(protocols),
    }
}

/// Fails, naming the port, if a TCP or UDP port in `addr` is already taken by a live
/// socket. libp2p's TCP listener sets `SO_REUSEPORT`, so without this check a second
/// node would share a port with the first and half of its dials would land on the
/// wrong peer ("Unexpected peer ID"); a plain bind (without the option) notices.
/// Port 0, relayed addresses (listening through a relay binds nothing here) and
/// addresses that are not IP + TCP/UDP pass.
pub fn check_port_free(addr: &Multiaddr) -> anyhow::Result<()> {
    use libp2p::multiaddr::Protocol;
    if discovery::is_relayed(addr) {
        return Ok(());
    }
    let mut ip = None;
    for part in addr.iter() {
        let taken = match (part, ip) {
            (Protocol::Ip4(v4), _) => {
                ip = Some(std::net::IpAddr::V4(v4));
                continue;
            }
            (Protocol::Ip6(v6), _) => {
                ip = Some(std::net::IpAddr::V6(v6));
                continue;
            }
            (Protocol::Tcp(port), Some(ip)) if port != 0 => std::net::TcpListener::bind((ip, port))
                .err()
                .map(|e| ("TCP", port, e)),
            (Protocol::Udp(port), Some(ip)) if port != 0 => std::net::UdpSocket::bind((ip, port))
                .err()
                .map(|e| ("UDP", port, e)),
            _ => None,
        };
        if let Some((kind, port, error)) = taken {
            anyhow::bail!("cannot listen on {addr}: {kind} port {port} is in use ({error})");
        }
    }
    Ok(())
}

/// A native protocol every node serves: a plain-text snapshot of its counters, one
/// `name value` pair per line (`live`, `succeeded`, `failed`, `refused`), then the
/// stream closes.
pub const STATS_PROTOCOL: StreamProtocol = StreamProtocol::new("/ww/stats/0.1.0");

/// Protocol families a node speaks itself, by prefix, with what speaks them. A cell on
/// one of them would be shadowed by (or shadow) the node's own handler, so
/// [`reserved_by`] refuses them at start-up.
const RESERVED_PROTOCOLS: &[(&str, &str)] = &[
    ("/ww/kad/", "the DHT"),
    ("/ww/lan/kad/", "the LAN DHT"),
    ("/ww/stats/", "ww stats"),
    ("/ww/code/", "the code exchange"),
    ("/ww/deploy/", "ww deploy"),
    ("/ww/cells/", "ww cells"),
    ("/ww/dashboard/", "the dashboard's address"),
    ("/ipfs/id/", "identify"),
    ("/ipfs/ping/", "ping"),
    ("/ipfs/kad/", "the IPFS DHT"),
    ("/libp2p/circuit/relay/", "circuit relay"),
    ("/libp2p/autonat/", "AutoNAT"),
    ("/libp2p/dcutr", "DCUtR"),
];

/// What in the node already speaks `protocol`, if anything: such a protocol cannot be
/// a cell's.
pub fn reserved_by(protocol: &str) -> Option<&'static str> {
    RESERVED_PROTOCOLS
        .iter()
        .find(|(prefix, _)| protocol.starts_with(prefix))
        .map(|(_, what)| *what)
}

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    config
}
