//! Hostile peers and clients: what one of them can hold or provoke, and that
//! everyone else is still served.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;
use ww::net::client::Client;

use crate::support::{ECHO, Node, PATIENCE, free_local_addr, open_fds, request, rss_kib};

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

/// `GET path` that tolerates a refused, closed or reset connection (`None`).
async fn try_http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut socket = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Clients that start a request and never finish it cannot hold the admin
/// endpoint's file descriptors or lock others out: the excess is closed at once, the
/// rest when their header time is up, and `/healthz` keeps answering.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_admin_requests_are_capped_and_closed() {
    let admin = free_local_addr();
    let node = Node::start(&["--admin", &admin.to_string()]).await;
    let pid = node.child.id().unwrap();
    assert_eq!(
        crate::support::http_get(admin, "/healthz").await,
        (200, "ok\n".to_string())
    );
    let baseline = open_fds(pid);
    let rss_before = rss_kib(pid);

    let stalled = 300;
    let closed = Arc::new(AtomicUsize::new(0));
    let mut readers = JoinSet::new();
    for _ in 0..stalled {
        let mut socket = tokio::net::TcpStream::connect(admin).await.unwrap();
        // The server may already have closed an excess connection.
        let _ = socket.write_all(b"GET /h").await;
        let closed = closed.clone();
        readers.spawn(async move {
            let mut sink = [0u8; 1024];
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            closed.fetch_add(1, Ordering::Relaxed);
        });
    }

    let rss_during = rss_kib(pid);
    // The most the node had open while the stalled requests were held.
    let mut during = open_fds(pid);
    let mut healthy = false;
    for _ in 0..(PATIENCE.as_millis() / 100) {
        if try_http_get(admin, "/healthz").await == Some((200, "ok\n".to_string())) {
            healthy = true;
            break;
        }
        during = during.max(open_fds(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        healthy,
        "/healthz never answered while requests were stalled"
    );
    during = during.max(open_fds(pid));
    let bound = baseline + ww::admin::MAX_CONNECTIONS + 16;
    assert!(
        during <= bound,
        "{during} open fds at most with {stalled} stalled requests (baseline {baseline}, bound {bound})"
    );

    for _ in 0..(PATIENCE.as_millis() / 100) {
        if closed.load(Ordering::Relaxed) == stalled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        closed.load(Ordering::Relaxed),
        stalled,
        "the server left stalled requests open"
    );
    let after = open_fds(pid);
    eprintln!(
        "admin fds: {baseline} before, {during} at most with {stalled} stalled, {after} after; \
         RSS {rss_before} KiB before, {rss_during} KiB with them"
    );
    assert!(
        after <= baseline + 16,
        "{after} open fds after the stalled requests ended (baseline {baseline})"
    );
}

/// Opens `count` streams at once on one connection to `addr`, each proposing the echo
/// protocol and then waiting, with a yamux that allows far more streams than the node
/// does. Returns how the connection ended: the node must close it.
async fn flood_streams(addr: &Multiaddr, count: usize) -> std::io::Result<()> {
    use futures::AsyncWrite as _;
    use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt as _};
    use libp2p::core::transport::{DialOpts, PortUse};
    use libp2p::core::upgrade::Version;
    use libp2p::core::{Endpoint, Transport as _};

    let key = libp2p::identity::Keypair::generate_ed25519();
    let mut yamux = libp2p::yamux::Config::default();
    yamux.set_max_num_streams(4 * count);
    let mut transport = libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default())
        .upgrade(Version::V1)
        .authenticate(libp2p::noise::Config::new(&key).unwrap())
        .multiplex(yamux)
        .map(|(_, muxer), _| StreamMuxerBox::new(muxer));
    let addr: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    let dial = transport
        .dial(
            addr,
            DialOpts {
                role: Endpoint::Dialer,
                port_use: PortUse::New,
            },
        )
        .unwrap();
    let mut muxer = dial.await.map_err(std::io::Error::other)?;
    let mut proposal = MULTISTREAM_HEADER.to_vec();
    proposal.push(ECHO.as_ref().len() as u8 + 1);
    proposal.extend_from_slice(ECHO.as_ref().as_bytes());
    proposal.push(b'\n');
    // Each stream with how much of the proposal it has sent.
    let mut streams = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            let mut progress = false;
            while let Poll::Ready(event) = muxer.poll_unpin(cx) {
                event?;
            }
            while let Poll::Ready(inbound) = muxer.poll_inbound_unpin(cx) {
                drop(inbound?);
            }
            while streams.len() < count {
                match muxer.poll_outbound_unpin(cx) {
                    Poll::Ready(stream) => {
                        streams.push((stream?, 0));
                        progress = true;
                    }
                    Poll::Pending => break,
                }
            }
            for (stream, sent) in &mut streams {
                while *sent < proposal.len() {
                    match std::pin::Pin::new(&mut *stream).poll_write(cx, &proposal[*sent..]) {
                        Poll::Ready(Ok(n)) => {
                            *sent += n;
                            progress = true;
                        }
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Pending => break,
                    }
                }
                let _ = std::pin::Pin::new(&mut *stream).poll_flush(cx)?;
            }
            if !progress {
                return Poll::Pending;
            }
        }
    })
    .await
}

/// A peer that opens more streams than yamux allows on one connection gets that
/// connection closed, and cannot make the node log at ERROR by doing so.
#[tokio::test(flavor = "multi_thread")]
async fn too_many_streams_close_the_connection_without_error_logs() {
    // Every echo stream must stay open for the node's yamux to reach its cap: with the
    // default backlog most would be refused (and closed) as fast as they came, and
    // whether 513 were ever open at once would be a race. This test is about yamux's
    // cap, so admission lets all of them wait.
    let flags = ["--backlog", "1000", "--queue-ms", "600000"];
    let node = Node::start_with_log(&flags, None).await;
    let count = ww::net::MAX_STREAMS_PER_CONNECTION + 88;
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(PATIENCE, flood_streams(&node.tcp, count)).await;
    match ended {
        Ok(Err(error)) => eprintln!(
            "the node closed the flooding connection after {:?}: {error}",
            started.elapsed()
        ),
        Ok(Ok(())) => unreachable!("the flood only ends with its connection"),
        Err(_) => panic!("the node kept a connection with {count} streams open"),
    }
    serves_without_error_logs(&node).await;
}

/// The same flood against a node with the defaults a newcomer gets: admission refuses
/// the overflow as fast as it comes, so whether yamux's cap is ever reached is a race;
/// either way the flood gets nowhere, nothing is logged at ERROR and others are served.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_flood_against_the_defaults_logs_no_errors() {
    let node = Node::start_with_log(&[], None).await;
    let count = ww::net::MAX_STREAMS_PER_CONNECTION + 88;
    let flood = flood_streams(&node.tcp, count);
    // Closed by the node, or still trickling along: bounded either way.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flood).await;
    serves_without_error_logs(&node).await;
}

/// Asserts that `node` still answers a new client and has logged nothing at ERROR.
async fn serves_without_error_logs(node: &Node) {
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    assert_eq!(
        request(&client, peer, ECHO, b"next").await.unwrap(),
        b"next"
    );
    let log = node.log();
    assert!(
        !log.lines().any(|line| line.contains(" ERROR ")),
        "a peer made the node log at ERROR:\n{log}"
    );
}
