//! The router's unit tests: its choices alone, then on in-process swarms.

use futures::StreamExt as _;
use futures::channel::mpsc;
use libp2p::swarm::SwarmEvent;

use super::*;

/// The connection `open_stream` sends its request to; `None` for any.
fn chosen_connection(router: &mut Behaviour, peer: PeerId) -> Option<ConnectionId> {
    let _answer = router.open_stream(peer, vec![StreamProtocol::new("/x/1")]);
    let waker = std::task::Waker::noop();
    match router.poll(&mut Context::from_waker(waker)) {
        Poll::Ready(ToSwarm::NotifyHandler { handler, .. }) => match handler {
            NotifyHandler::One(connection) => Some(connection),
            NotifyHandler::Any => None,
        },
        _ => panic!("open_stream queued no request"),
    }
}

#[test]
fn an_empty_offer_is_an_error_not_a_panic() {
    let mut router = Behaviour::new(Vec::new());
    let mut answer = router.open_stream(PeerId::random(), Vec::new());
    assert!(matches!(
        answer.try_recv(),
        Ok(Some(Err(OpenStreamError::NoProtocol)))
    ));
    let waker = std::task::Waker::noop();
    assert!(
        router.poll(&mut Context::from_waker(waker)).is_pending(),
        "nothing is sent to a connection"
    );
}

#[test]
fn streams_prefer_a_direct_connection_to_a_relayed_one() {
    let mut router = Behaviour::new(Vec::new());
    let peer = PeerId::random();
    let relayed: Multiaddr =
        "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE/p2p-circuit"
            .parse()
            .unwrap();
    let direct: Multiaddr = "/ip4/127.0.0.1/tcp/2".parse().unwrap();
    let (over_relay, straight) = (
        ConnectionId::new_unchecked(1),
        ConnectionId::new_unchecked(2),
    );

    router
        .handle_established_inbound_connection(over_relay, peer, &relayed, &direct)
        .unwrap();
    assert_eq!(
        chosen_connection(&mut router, peer),
        None,
        "only a relayed one"
    );

    router
        .handle_established_outbound_connection(
            straight,
            peer,
            &direct,
            Endpoint::Dialer,
            PortUse::Reuse,
        )
        .unwrap();
    assert_eq!(chosen_connection(&mut router, peer), Some(straight));
}

/// A router serving `served` on an in-process swarm, run in a task of its own;
/// returns its address and the streams it accepts.
async fn serving(
    served: Vec<StreamProtocol>,
) -> (Multiaddr, mpsc::UnboundedReceiver<InboundStream>) {
    let mut server = testing::memory_swarm(|_, _| Behaviour::new(served));
    let (_, addr) = testing::listen(&mut server).await;
    let (accepted, streams) = mpsc::unbounded();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(inbound) = server.select_next_some().await {
                let _ = accepted.unbounded_send(inbound);
            }
        }
    });
    (addr, streams)
}

#[tokio::test]
async fn a_protocol_not_served_is_refused_with_a_typed_error_and_the_connection_stays_up() {
    let served = StreamProtocol::new("/test/served/1");
    let unserved = StreamProtocol::new("/test/unserved/1");
    let (addr, mut accepted) = serving(vec![served.clone()]).await;
    let mut client = testing::memory_swarm(|_, _| Behaviour::new(Vec::new()));
    let peer = testing::connect(&mut client, addr).await;

    let refused = client
        .behaviour_mut()
        .open_stream(peer, vec![unserved.clone()]);
    match testing::run_until(&mut client, refused).await {
        Ok(Err(OpenStreamError::UnsupportedProtocol(protocol))) => assert_eq!(protocol, unserved),
        other => panic!(
            "expected UnsupportedProtocol, got {:?}",
            other.map(|r| r.map(|o| o.1))
        ),
    }

    // The same connection still carries streams on what the peer serves.
    let opened = client
        .behaviour_mut()
        .open_stream(peer, vec![served.clone()]);
    let (_stream, chosen) = testing::run_until(&mut client, opened)
        .await
        .expect("the connection is still up")
        .unwrap();
    assert_eq!(chosen, served);
    let inbound = testing::run_until(&mut client, accepted.next())
        .await
        .unwrap();
    assert_eq!(
        (inbound.peer, inbound.protocol),
        (*client.local_peer_id(), served)
    );
    assert_eq!(
        client
            .network_info()
            .connection_counters()
            .num_established(),
        1
    );
}

#[tokio::test]
async fn protocols_changed_while_connected_apply_to_the_next_stream() {
    let first = StreamProtocol::new("/test/first/1");
    let second = StreamProtocol::new("/test/second/1");
    let mut server = testing::memory_swarm(|_, _| Behaviour::new(vec![first.clone()]));
    let served = server.behaviour().protocols();
    let (_, addr) = testing::listen(&mut server).await;
    tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    let mut client = testing::memory_swarm(|_, _| Behaviour::new(Vec::new()));
    let peer = testing::connect(&mut client, addr).await;
    let open = |client: &mut libp2p::Swarm<Behaviour>, protocol: &StreamProtocol| {
        client
            .behaviour_mut()
            .open_stream(peer, vec![protocol.clone()])
    };

    let refused = open(&mut client, &second);
    let refused = testing::run_until(&mut client, refused).await.unwrap();
    assert!(matches!(
        refused,
        Err(OpenStreamError::UnsupportedProtocol(_))
    ));

    served.set(vec![second.clone()]);
    let opened = open(&mut client, &second);
    let (_stream, chosen) = testing::run_until(&mut client, opened)
        .await
        .unwrap()
        .expect("a protocol added is served on the open connection");
    assert_eq!(chosen, second);
    let refused = open(&mut client, &first);
    let refused = testing::run_until(&mut client, refused).await.unwrap();
    assert!(
        matches!(refused, Err(OpenStreamError::UnsupportedProtocol(_))),
        "a protocol removed is refused"
    );
}
