//! The libp2p side of a node: transports (TCP + noise + yamux, QUIC, circuit relay),
//! the composed [`Behaviour`] (limits, identify, ping, discovery, relaying, cell-protocol
//! routing), the [`control`] loop that answers requests against a swarm, and a small
//! dialing [`client`].

pub mod client;
pub mod control;
pub mod discovery;
pub mod outcome;
pub mod pending;
pub mod router;

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, autonat, dcutr, identify, kad, mdns, memory_connection_limits, noise,
    ping, relay, tcp, yamux,
};

pub use discovery::{DhtMode, NetOptions};

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
    /// The DHT: peers' addresses and which peers provide which cell.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Finds peers on the local network (on unless `--no-mdns`).
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Asks peers to dial us back, to learn whether we are reachable.
    pub autonat: autonat::Behaviour,
    /// Upgrades relayed connections to direct ones where hole punching works.
    pub dcutr: dcutr::Behaviour,
    /// Accepts streams on cell protocols and opens them on request.
    pub router: router::Behaviour,
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
        .with_behaviour(|key, relay_client| Behaviour {
            pending_limits: pending::Behaviour::default(),
            connection_limits: connection_limits::Behaviour::new(
                ConnectionLimits::default()
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                    .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
            ),
            memory_limits: memory_connection_limits::Behaviour::with_max_percentage(
                MAX_MEMORY_SHARE,
            ),
            relay_client,
            relay: Toggle::from(options.relay.then(|| discovery::relay_server(key))),
            identify: identify::Behaviour::new(
                identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                    .with_push_listen_addr_updates(true),
            ),
            ping: ping::Behaviour::default(),
            kad: discovery::kademlia(options, key),
            mdns: Toggle::from(options.mdns.then(|| discovery::mdns(key)).flatten()),
            autonat: autonat::Behaviour::new(key.public().to_peer_id(), Default::default()),
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            router: router::Behaviour::new(protocols),
        })?
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

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    config
}
