//! A client peer: dials ww nodes and opens streams to their cells. `ww dial` and the
//! integration tests use it; it serves no protocol of its own.

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, Swarm};
use std::collections::HashMap;
use tracing::Instrument;

use super::router::{OpenStream, OpenStreamError};
use super::{Behaviour, build_swarm};

/// Why a node could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address does not say which peer to expect.
    #[error("{0} does not end in /p2p/<peer-id>")]
    MissingPeerId(Multiaddr),
    /// Dialing failed: unreachable, refused, or a different peer answered.
    #[error("cannot reach {peer}: {source}")]
    Dial {
        /// The peer we tried to reach.
        peer: PeerId,
        /// What went wrong.
        #[source]
        source: DialError,
    },
    /// The client's event loop is gone.
    #[error("the client has shut down")]
    Closed,
}

enum Command {
    Connect {
        addr: Multiaddr,
        peer: PeerId,
        reply: oneshot::Sender<Result<(), ConnectError>>,
    },
    Open {
        peer: PeerId,
        protocols: Vec<StreamProtocol>,
        reply: oneshot::Sender<OpenStream>,
    },
}

/// A handle to a client peer running in a background task. Dropping every handle stops
/// the task and closes its connections, so keep it alive while its streams are in use.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
}

impl Client {
    /// Starts a client with a fresh identity. Must be called inside a tokio runtime.
    pub fn new() -> anyhow::Result<Self> {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let swarm = build_swarm(keypair, Vec::new())?;
        let local_peer_id = *swarm.local_peer_id();
        let (commands, receiver) = mpsc::channel(16);
        let span = tracing::info_span!("client", peer = %local_peer_id);
        tokio::spawn(run(swarm, receiver).instrument(span));
        Ok(Self {
            commands,
            local_peer_id,
        })
    }

    /// This client's own peer ID.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Connects to the node at `addr`, which must end in `/p2p/<peer-id>`, and returns
    /// that peer ID. Returns at once if a connection to the peer already exists.
    pub async fn connect(&self, addr: &Multiaddr) -> Result<PeerId, ConnectError> {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(ConnectError::MissingPeerId(addr.clone()));
        };
        let (reply, answer) = oneshot::channel();
        self.send(Command::Connect {
            addr: addr.clone(),
            peer,
            reply,
        })
        .await?;
        answer.await.map_err(|_| ConnectError::Closed)??;
        Ok(peer)
    }

    /// Opens a stream to a connected `peer` on `protocol`.
    pub async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        Ok(self.open_first(peer, vec![protocol]).await?.0)
    }

    /// Opens a stream to a connected `peer` on the first of `protocols` it accepts.
    pub async fn open_first(
        &self,
        peer: PeerId,
        protocols: Vec<StreamProtocol>,
    ) -> Result<(Stream, StreamProtocol), OpenStreamError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Open {
            peer,
            protocols,
            reply,
        })
        .await
        .map_err(|_| OpenStreamError::NotConnected)?;
        let opening = answer.await.map_err(|_| OpenStreamError::NotConnected)?;
        opening.await.map_err(|_| OpenStreamError::NotConnected)?
    }

    async fn send(&self, command: Command) -> Result<(), ConnectError> {
        use futures::SinkExt;
        self.commands
            .clone()
            .send(command)
            .await
            .map_err(|_| ConnectError::Closed)
    }
}

/// The client's event loop: runs the swarm and answers commands until every handle
/// is dropped.
async fn run(mut swarm: Swarm<Behaviour>, mut commands: mpsc::Receiver<Command>) {
    let mut dialing: HashMap<ConnectionId, oneshot::Sender<Result<(), ConnectError>>> =
        HashMap::new();
    loop {
        tokio::select! {
            command = commands.next() => match command {
                None => return,
                Some(Command::Connect { addr, peer, reply }) => {
                    if swarm.is_connected(&peer) {
                        let _ = reply.send(Ok(()));
                        continue;
                    }
                    let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
                    let id = opts.connection_id();
                    match swarm.dial(opts) {
                        Ok(()) => { dialing.insert(id, reply); }
                        Err(source) => { let _ = reply.send(Err(ConnectError::Dial { peer, source })); }
                    }
                }
                Some(Command::Open { peer, protocols, reply }) => {
                    let _ = reply.send(swarm.behaviour_mut().router.open_stream(peer, protocols));
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                    if let Some(reply) = dialing.remove(&connection_id) {
                        let _ = reply.send(Ok(()));
                    }
                }
                SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                    if let (Some(reply), Some(peer)) = (dialing.remove(&connection_id), peer_id) {
                        let _ = reply.send(Err(ConnectError::Dial { peer, source: error }));
                    }
                }
                event => tracing::trace!(?event, "swarm event"),
            },
        }
    }
}
