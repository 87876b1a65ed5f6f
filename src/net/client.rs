//! A client peer: dials ww nodes, finds cells in the DHT and opens streams to them.
//! `ww dial`, `ww find`, `ww bench` and the integration tests use it; it serves no
//! protocol of its own and never answers DHT queries.

use futures::StreamExt as _;
use futures::channel::mpsc;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, Swarm};
use tracing::Instrument as _;

use super::control::Control;
use super::discovery;
use super::network::{Network, Request};
use super::{Behaviour, NetOptions, build_swarm};

pub use super::network::ConnectError;

/// A client peer running in a background task. It derefs to its [`Network`] handle
/// (connect, find, open). Dropping every handle stops the task and closes its
/// connections, so keep it alive while its streams are in use.
#[derive(Clone)]
pub struct Client {
    network: Network,
}

impl Client {
    /// Starts a client with a fresh identity that knows no other peer. Must be called
    /// inside a tokio runtime.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_bootstrap(Vec::new())
    }

    /// Starts a client with a fresh identity that joins the network (its DHT) through
    /// `bootstrap` peers, each address ending in `/p2p/<peer-id>`.
    pub fn with_bootstrap(bootstrap: Vec<Multiaddr>) -> anyhow::Result<Self> {
        Self::with_keypair(Keypair::generate_ed25519(), bootstrap)
    }

    /// Like [`Client::with_bootstrap`], as the peer `keypair` names: for peers that
    /// trust it by its ID (a deployer).
    pub fn with_keypair(keypair: Keypair, bootstrap: Vec<Multiaddr>) -> anyhow::Result<Self> {
        let options = NetOptions::client(bootstrap);
        let mut swarm = build_swarm(keypair, Vec::new(), &options)?;
        let (network, requests) = Network::new(*swarm.local_peer_id());
        discovery::join(&mut swarm, &options.bootstrap);
        let control = Control::default();
        let span = tracing::info_span!("client", peer = %swarm.local_peer_id());
        tokio::spawn(run(swarm, control, requests).instrument(span));
        Ok(Self { network })
    }
}

impl std::ops::Deref for Client {
    type Target = Network;

    fn deref(&self) -> &Network {
        &self.network
    }
}

/// The client's event loop: runs the swarm and answers requests until every handle
/// is dropped.
async fn run(
    mut swarm: Swarm<Behaviour>,
    mut control: Control,
    mut requests: mpsc::Receiver<Request>,
) {
    loop {
        tokio::select! {
            request = requests.next() => match request {
                Some(request) => control.handle(&mut swarm, request),
                None => return,
            },
            event = swarm.select_next_some() => {
                control.on_event(&mut swarm, &event);
                tracing::trace!(?event, "swarm event");
            }
        }
    }
}
