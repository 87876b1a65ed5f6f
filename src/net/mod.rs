//! The libp2p side of a node: transports (TCP + noise + yamux, QUIC), the composed
//! [`Behaviour`] (identify, ping, cell-protocol routing) and a small dialing client.

pub mod client;
pub mod outcome;
pub mod router;

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, identify, noise, ping, tcp, yamux};

/// The identify protocol version ww nodes announce.
pub const PROTOCOL_VERSION: &str = "/ww/0.1.0";

/// How long a connection with no streams stays open.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything a ww node (or client) speaks besides the transports.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
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
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|key| Behaviour {
            identify: identify::Behaviour::new(identify::Config::new(
                PROTOCOL_VERSION.to_string(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            router: router::Behaviour::new(protocols),
        })?
        .with_swarm_config(|config| config.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}
