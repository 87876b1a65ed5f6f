//! In-process swarms for unit tests of the network logic: libp2p's memory transport
//! (noise, yamux) under any behaviour, with no sockets and no spawned binary.
//!
//! Why not `libp2p-swarm-test`: its ephemeral swarm closes a connection as soon as no
//! handler keeps it alive (a zero idle timeout), which races the steps of a test, and
//! its `listen()` insists on a TCP listener too. These few helpers need no new crate.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::core::transport::{ListenerId, MemoryTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, Transport as _, noise, relay, yamux};

/// How long any one step of a test may take before it fails: generous, so a loaded
/// machine does not fail a test, yet a hang does not last forever.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// A swarm on the memory transport with the behaviour `behaviour` builds (from the
/// swarm's key and a relay client, which a node's behaviour needs). Idle connections
/// stay up for a minute, as a node's do.
pub(crate) fn memory_swarm<B: NetworkBehaviour>(
    behaviour: impl FnOnce(&Keypair, relay::client::Behaviour) -> B,
) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            Ok(MemoryTransport::default()
                .upgrade(Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default()))
        })
        .expect("a memory transport")
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .expect("a relay client")
        .with_behaviour(|key, relay_client| behaviour(key, relay_client))
        .expect("the behaviour")
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Listens on a fresh memory address; returns the listener and the full address
/// (ending in `/p2p/<peer-id>`) once it is bound.
pub(crate) async fn listen<B: NetworkBehaviour>(swarm: &mut Swarm<B>) -> (ListenerId, Multiaddr) {
    let listener = swarm.listen_on("/memory/0".parse().unwrap()).unwrap();
    let address = until_event(swarm, |event| match event {
        SwarmEvent::NewListenAddr {
            listener_id,
            address,
        } if listener_id == listener => Some(address),
        _ => None,
    })
    .await;
    let full = address.with_p2p(*swarm.local_peer_id()).unwrap();
    (listener, full)
}

/// Dials `addr` and runs `swarm` until the connection is up. The peer at `addr` must
/// be running elsewhere (its own task).
pub(crate) async fn connect<B: NetworkBehaviour>(swarm: &mut Swarm<B>, addr: Multiaddr) -> PeerId {
    swarm.dial(addr).unwrap();
    until_event(swarm, |event| match event {
        SwarmEvent::ConnectionEstablished { peer_id, .. } => Some(peer_id),
        SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
        _ => None,
    })
    .await
}

/// Runs `swarm` until `pick` takes one of its events; fails after [`PATIENCE`].
pub(crate) async fn until_event<B: NetworkBehaviour, T>(
    swarm: &mut Swarm<B>,
    mut pick: impl FnMut(SwarmEvent<B::ToSwarm>) -> Option<T>,
) -> T {
    let run = async {
        loop {
            if let Some(picked) = pick(swarm.select_next_some().await) {
                return picked;
            }
        }
    };
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the swarm never got there")
}

/// Awaits `work` while running `swarm` (whose events are dropped), so that what the
/// swarm must do for `work` gets done; fails after [`PATIENCE`].
pub(crate) async fn run_until<B: NetworkBehaviour, T>(
    swarm: &mut Swarm<B>,
    work: impl Future<Output = T>,
) -> T {
    let run = async {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = swarm.select_next_some() => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the work never finished")
}
