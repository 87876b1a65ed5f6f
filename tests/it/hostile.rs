//! Hostile peers and clients: what one of them can hold or provoke, and that
//! everyone else is still served.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;
use ww::net::client::Client;

use crate::support::{ECHO, Node, PATIENCE, request};

/// The first line of a multistream-select negotiation.
const MULTISTREAM_HEADER: &[u8] = b"\x13/multistream/1.0.0\n";

/// The TCP socket address of a `/ip4/…/tcp/…` multiaddr.
fn socket_addr(addr: &Multiaddr) -> SocketAddr {
    let mut ip = None;
    let mut port = None;
    for protocol in addr {
        match protocol {
            Protocol::Ip4(v4) => ip = Some(IpAddr::V4(v4)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    SocketAddr::new(ip.unwrap(), port.unwrap())
}

/// Keeps `count` TCP connections from `from` to `to` stalled in their handshake: each
/// sends the multistream header and waits; whichever the node closes is re-opened.
/// Returns how many connections were opened so far; the tasks end with the set.
fn stall_handshakes(
    from: IpAddr,
    to: SocketAddr,
    count: usize,
    tasks: &mut JoinSet<()>,
) -> Arc<AtomicUsize> {
    let opened = Arc::new(AtomicUsize::new(0));
    for _ in 0..count {
        let opened = opened.clone();
        tasks.spawn(async move {
            loop {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(from, 0)).unwrap();
                if let Ok(mut stream) = socket.connect(to).await
                    && stream.write_all(MULTISTREAM_HEADER).await.is_ok()
                {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let mut sink = [0u8; 256];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    opened
}

/// A peer at 127.0.0.1 connects over TCP and over QUIC and is served while another
/// address (127.0.0.2) keeps more connections stalled in their handshake than the
/// node's global cap on pending connections.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_handshakes_from_one_address_do_not_lock_out_others() {
    let node = Node::start(&[]).await;
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let count = ww::net::MAX_PENDING_INCOMING as usize + 12;
    let mut tasks = JoinSet::new();
    let opened = stall_handshakes(attacker, socket_addr(&node.tcp), count, &mut tasks);
    for _ in 0..(PATIENCE.as_millis() / 50) {
        if opened.load(Ordering::Relaxed) >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        opened.load(Ordering::Relaxed) >= count,
        "the attack never got going"
    );
    // Let the node take up what is in its accept queue.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for addr in [&node.tcp, &node.quic] {
        let client = Client::new().unwrap();
        let mut connected = None;
        for _ in 0..3 {
            match tokio::time::timeout(PATIENCE, client.connect(addr)).await {
                Ok(Ok(peer)) => {
                    connected = Some(peer);
                    break;
                }
                Ok(Err(error)) => eprintln!("connecting to {addr}: {error}"),
                Err(_) => eprintln!("connecting to {addr}: timed out"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let peer = connected.unwrap_or_else(|| panic!("locked out of {addr}"));
        assert_eq!(
            request(&client, peer, ECHO, b"still here").await.unwrap(),
            b"still here"
        );
    }
    tasks.abort_all();
}
