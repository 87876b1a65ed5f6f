//! The caller's side of a swarm: a [`Network`] handle that other tasks use to connect,
//! find a peer or a cell's providers in the DHTs, and open streams.
//!
//! A swarm lives in one task (a node's event loop, a client's). Its [`Network`]
//! handles send [`Request`]s down a bounded channel; the owning task passes each one
//! to its [`Control`](super::control::Control), which does the work against the swarm
//! and answers on the request's reply channel. The split follows rust-libp2p's
//! file-sharing example (`Client` and `EventLoop`). `ww dial`, `ww find`, the tests
//! and cells that dial all go through here.

use std::collections::HashMap;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, kad};

use super::discovery;
use super::router::{OpenStream, OpenStreamError};
use super::rtt::{self, Ranking, Rtt};
use crate::content::ContentId;

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address does not say which peer to expect.
    #[error("{0} does not end in /p2p/<peer-id>")]
    MissingPeerId(Multiaddr),
    /// Dialing failed: unreachable, refused, or a different peer answered.
    #[error("cannot reach {peer}: {reason}")]
    Dial {
        /// The peer we tried to reach.
        peer: PeerId,
        /// What went wrong, as libp2p reported it.
        reason: String,
    },
    /// Neither the DHT nor any other source knows an address of the peer.
    #[error("no address of {0} is known here or in the DHT")]
    NotFound(PeerId),
    /// The task running the swarm is gone.
    #[error("the network task has shut down")]
    Closed,
}

/// Why no stream could be opened to any provider of a protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenAnyError {
    /// The DHT knows no provider (besides this peer).
    #[error("no provider of {0} found")]
    NoProviders(StreamProtocol),
    /// Every provider failed; each with its reason.
    #[error("no provider of {protocol} answered: {}", describe(.failures))]
    AllFailed {
        /// The protocol looked up.
        protocol: StreamProtocol,
        /// Each provider tried, and why it failed.
        failures: Vec<(PeerId, String)>,
    },
    /// The task running the swarm is gone.
    #[error("the network task has shut down")]
    Closed,
}

fn describe(failures: &[(PeerId, String)]) -> String {
    let each: Vec<String> = failures
        .iter()
        .map(|(peer, why)| format!("{peer}: {why}"))
        .collect();
    each.join("; ")
}

/// A provider of a protocol, as a lookup found it.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Who.
    pub peer: PeerId,
    /// Reached, at this address if known (without `/p2p/`); or why it could not be.
    pub reached: Result<Option<Multiaddr>, String>,
    /// Whether we already had a connection to it before the lookup.
    pub was_connected: bool,
    /// The latest round trip ping measured to it, if any ([`Network::providers`]
    /// fills it in; lookups leave it `None`).
    pub rtt: Option<Duration>,
}

/// A stream [`Network::open_any`] opened, and how it chose the provider.
#[derive(Debug)]
pub struct OpenedAny {
    /// The provider the stream goes to.
    pub peer: PeerId,
    /// The round trip to it that the ranking used, if one was measured.
    pub rtt: Option<Duration>,
    /// The stream.
    pub stream: Stream,
    /// The protocol of `offer` that the provider accepted.
    pub protocol: StreamProtocol,
    /// Every provider, in the order they were (or would have been) tried, closest
    /// first (see [`rtt::rank`]).
    pub ranked: Vec<Provider>,
}

/// A request to the task that owns a swarm.
pub enum Request {
    /// Connect to the peer the address ends in.
    Connect {
        /// A full address, ending in `/p2p/<peer-id>`.
        addr: Multiaddr,
        /// Answered once connected (at once if already).
        reply: oneshot::Sender<Result<PeerId, ConnectError>>,
    },
    /// Connect to a peer known only by its ID, finding its addresses in the DHT.
    ConnectPeer {
        /// Who.
        peer: PeerId,
        /// Answered once connected.
        reply: oneshot::Sender<Result<(), ConnectError>>,
    },
    /// Open a stream to a connected peer.
    Open {
        /// Who.
        peer: PeerId,
        /// The protocols to offer, in order of preference.
        protocols: Vec<StreamProtocol>,
        /// Answered with what to wait on for the stream.
        reply: oneshot::Sender<OpenStream>,
    },
    /// Find the providers of a key (a cell protocol's, or a component's) and connect
    /// to each.
    Providers {
        /// What is provided: [`discovery::provider_key`] or [`discovery::content_key`].
        key: kad::RecordKey,
        /// Answered when the lookup and every dial it started have finished.
        reply: oneshot::Sender<Vec<Provider>>,
    },
    /// Find the DHT servers closest to a key, in both DHTs.
    ClosestPeers {
        /// The key: a peer ID (any, not only a live peer's).
        key: PeerId,
        /// Answered when both queries have finished.
        reply: oneshot::Sender<Vec<DhtPeer>>,
    },
    /// The round trips ping measured to connected peers: known ones at once, the
    /// others as their first ping answers (see [`rtt::RoundTrips::ask`]).
    RoundTrips {
        /// Whom.
        peers: Vec<PeerId>,
        /// Gets `(peer, round trip)` pairs; closes when nothing is left to wait for.
        /// It has room for one pair per peer.
        reply: mpsc::Sender<(PeerId, Duration)>,
    },
}

/// A DHT server a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtPeer {
    /// Who.
    pub peer: PeerId,
    /// Its addresses as the DHTs gave them (without `/p2p/`), each once; often none
    /// for a peer the query reached over a connection (dial it by ID then).
    pub addresses: Vec<Multiaddr>,
}

/// How many requests may wait for the swarm's task.
const REQUEST_QUEUE: usize = 64;

/// A handle to a swarm running in another task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Network {
    requests: mpsc::Sender<Request>,
    local_peer_id: PeerId,
}

impl Network {
    /// A handle for the swarm of `local_peer_id`, and the receiver its task must drain.
    pub fn new(local_peer_id: PeerId) -> (Self, mpsc::Receiver<Request>) {
        let (requests, receiver) = mpsc::channel(REQUEST_QUEUE);
        let network = Self {
            requests,
            local_peer_id,
        };
        (network, receiver)
    }

    /// The peer ID of the swarm behind this handle.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Connects to the peer that `addr` ends in (`/p2p/<peer-id>`) and returns its
    /// ID. Returns at once if a connection already exists.
    pub async fn connect(&self, addr: &Multiaddr) -> Result<PeerId, ConnectError> {
        let (reply, answer) = oneshot::channel();
        let addr = addr.clone();
        self.send(Request::Connect { addr, reply }).await?;
        answer.await.map_err(|_| ConnectError::Closed)?
    }

    /// Connects to `peer`, looking its addresses up in the DHT if need be.
    pub async fn connect_peer(&self, peer: PeerId) -> Result<(), ConnectError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ConnectPeer { peer, reply }).await?;
        answer.await.map_err(|_| ConnectError::Closed)?
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
        self.send(Request::Open {
            peer,
            protocols,
            reply,
        })
        .await
        .map_err(|_| OpenStreamError::NotConnected)?;
        let opening = answer.await.map_err(|_| OpenStreamError::NotConnected)?;
        opening.await.map_err(|_| OpenStreamError::NotConnected)?
    }

    /// Finds the providers of `protocol` in the DHT and connects to each, so every
    /// one returned says whether (and where) it could be reached, and how far it is:
    /// the round trip ping measured, waiting up to [`rtt::RTT_WAIT`] for the first
    /// ping of those the lookup just connected to. Closest first, as [`rtt::rank`]
    /// orders them (unmeasured after measured, unreachable last).
    pub async fn providers(
        &self,
        protocol: &StreamProtocol,
    ) -> Result<Vec<Provider>, ConnectError> {
        let mut providers = self.providers_of(discovery::provider_key(protocol)).await?;
        let reached = providers.iter().filter(|p| p.reached.is_ok());
        let reached: Vec<PeerId> = reached.map(|p| p.peer).collect();
        let rtts = self.round_trips(reached, rtt::RTT_WAIT).await?;
        for provider in &mut providers {
            provider.rtt = rtts.get(&provider.peer).copied();
        }
        rtt::rank(&mut providers);
        tracing::debug!(%protocol, ranked = %Ranking(&providers), "providers, closest first");
        Ok(providers)
    }

    /// The round trips ping measured to those of `peers` that are connected: the
    /// known ones, and the first measurement of the others that comes within `wait`.
    pub async fn round_trips(
        &self,
        peers: Vec<PeerId>,
        wait: Duration,
    ) -> Result<HashMap<PeerId, Duration>, ConnectError> {
        use futures::StreamExt as _;
        let mut rtts = HashMap::new();
        if peers.is_empty() {
            return Ok(rtts);
        }
        let (reply, mut measured) = mpsc::channel(peers.len());
        self.send(Request::RoundTrips { peers, reply }).await?;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some((peer, rtt))) = tokio::time::timeout_at(deadline, measured.next()).await {
            rtts.insert(peer, rtt);
        }
        Ok(rtts)
    }

    /// Finds the nodes that hold the component `content` (to fetch it on
    /// [`crate::net::code`]) and connects to each, like [`Network::providers`].
    pub async fn content_providers(
        &self,
        content: &ContentId,
    ) -> Result<Vec<Provider>, ConnectError> {
        self.providers_of(discovery::content_key(content)).await
    }

    async fn providers_of(&self, key: kad::RecordKey) -> Result<Vec<Provider>, ConnectError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Providers { key, reply }).await?;
        answer.await.map_err(|_| ConnectError::Closed)
    }

    /// Finds the DHT servers closest to `key` in both DHTs (up to the DHTs'
    /// replication factor, 20, from each), each once. A DHT server is a ww node: the
    /// DHTs speak ww's own protocols and clients do not serve them.
    pub async fn closest_peers(&self, key: PeerId) -> Result<Vec<DhtPeer>, ConnectError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ClosestPeers { key, reply }).await?;
        answer.await.map_err(|_| ConnectError::Closed)
    }

    /// Opens a stream to any provider of `protocol`, offering `offer` (in order of
    /// preference), trying providers in the order [`Network::providers`] returns them
    /// (closest first) and moving on when one fails. Returns the stream with the
    /// provider that took it and the ranking.
    pub async fn open_any(
        &self,
        protocol: &StreamProtocol,
        offer: Vec<StreamProtocol>,
    ) -> Result<OpenedAny, OpenAnyError> {
        let providers = self
            .providers(protocol)
            .await
            .map_err(|_| OpenAnyError::Closed)?;
        if providers.is_empty() {
            return Err(OpenAnyError::NoProviders(protocol.clone()));
        }
        let mut failures = Vec::new();
        for provider in &providers {
            if let Err(why) = &provider.reached {
                failures.push((provider.peer, why.clone()));
                continue;
            }
            match self.open_first(provider.peer, offer.clone()).await {
                Ok((stream, chosen)) => {
                    let (peer, rtt) = (provider.peer, provider.rtt);
                    tracing::debug!(%protocol, %peer, rtt = %Rtt(rtt), ranked = %Ranking(&providers), "opened a stream to a provider");
                    return Ok(OpenedAny {
                        peer,
                        rtt,
                        stream,
                        protocol: chosen,
                        ranked: providers,
                    });
                }
                Err(error) => {
                    tracing::debug!(peer = %provider.peer, %error, "provider failed; trying the next");
                    failures.push((provider.peer, error.to_string()));
                }
            }
        }
        Err(OpenAnyError::AllFailed {
            protocol: protocol.clone(),
            failures,
        })
    }

    async fn send(&self, request: Request) -> Result<(), ConnectError> {
        use futures::SinkExt as _;
        self.requests
            .clone()
            .send(request)
            .await
            .map_err(|_| ConnectError::Closed)
    }
}
