//! The libp2p side of a node: transports (TCP + noise + yamux, QUIC), the composed
//! [`Behaviour`] (identify, ping, cell-protocol routing) and a small dialing client.

pub mod client;
pub mod outcome;
pub mod router;

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, identify, memory_connection_limits, noise, ping, tcp, yamux};

/// The identify protocol version ww nodes announce.
pub const PROTOCOL_VERSION: &str = "/ww/0.1.0";

/// How long a connection with no streams stays open.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Incoming connections still in their handshake, at most.
pub const MAX_PENDING_INCOMING: u32 = 128;
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
    /// Caps connections: pending, established, per peer.
    pub connection_limits: connection_limits::Behaviour,
    /// Refuses new connections while memory is short.
    pub memory_limits: memory_connection_limits::Behaviour,
    /// Tells peers our addresses and the protocols (cells) we serve.
    pub identify: identify::Behaviour,
    /// Keeps connections' liveness checked.
    pub ping: ping::Behaviour,
    /// Accepts streams on cell protocols and opens them on request.
    pub router: router::Behaviour,
}

/// Builds a swarm with TCP (noise, yamux) and QUIC that serves `protocols`.
pub fn build_swarm(
    keypair: Keypair,
    protocols: Vec<StreamProtocol>,
) -> anyhow::Result<Swarm<Behaviour>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux_config,
        )?
        .with_quic()
        .with_behaviour(|key| Behaviour {
            connection_limits: connection_limits::Behaviour::new(
                ConnectionLimits::default()
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                    .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
            ),
            memory_limits: memory_connection_limits::Behaviour::with_max_percentage(
                MAX_MEMORY_SHARE,
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                PROTOCOL_VERSION.to_string(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            router: router::Behaviour::new(protocols),
        })?
        .with_swarm_config(|config| {
            config
                .with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND_STREAMS)
        })
        .build();
    Ok(swarm)
}

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    config
}
