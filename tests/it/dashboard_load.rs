//! The dashboard of a node holding many live instances: it shows the right count, and
//! what a snapshot and open feeds cost there (printed, never asserted: the machine is
//! shared and noisy).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use ww::net::client::Client;

use crate::support::{ECHO, Node, cpu_ticks, free_local_addr, http_get};

/// Streams each client peer holds in the 10,000-instance run: under yamux's 512 per
/// connection, and the node's per-peer cap is raised to this there.
const PER_CLIENT: usize = 400;
/// `max_per_peer` by default: what each client peer holds on a node left at defaults.
const DEFAULT_PER_PEER: usize = 64;
/// Streams each client opens at once (the node negotiates at most 128 per connection).
const OPENING_AT_ONCE: usize = 32;

/// Starts a node with a dashboard and the default limits; returns it with the admin
/// address.
async fn default_node() -> (Node, SocketAddr) {
    let admin = free_local_addr();
    let admin_arg = admin.to_string();
    // ww's default log filter: no line per stream.
    let node = Node::start_with_log(&["--admin", &admin_arg], None).await;
    (node, admin)
}

/// Starts a node whose caps are raised to allow `live` instances from peers holding
/// [`PER_CLIENT`] each, with a dashboard; returns it with the admin address.
async fn node_for(live: usize) -> (Node, SocketAddr) {
    let admin = free_local_addr();
    let (admin_arg, max, per_peer) = (
        admin.to_string(),
        live.max(1000).to_string(),
        PER_CLIENT.to_string(),
    );
    let args = [
        "--admin",
        &admin_arg,
        "--max-instances",
        &max,
        "--max-per-peer",
        &per_peer,
    ];
    (Node::start_with_log(&args, None).await, admin)
}

/// One echo stream, answered once (so its instance is running) and kept open.
async fn open_echo(client: &Client, peer: PeerId) -> Stream {
    let mut stream = client.open(peer, ECHO).await.expect("an echo stream");
    stream.write_all(b"x").await.unwrap();
    stream.flush().await.unwrap();
    let mut byte = [0u8];
    stream.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"x");
    stream
}

/// Opens `live` echo streams to `node` and holds them: `per_client` per client
/// peer. Dropping what it returns closes them.
async fn hold_echo_streams(
    node: &Node,
    live: usize,
    per_client: usize,
) -> Vec<(Client, Vec<Stream>)> {
    let mut held = Vec::new();
    let mut left = live;
    while left > 0 {
        let n = left.min(per_client);
        left -= n;
        let client = Client::new().unwrap();
        let peer = client.connect(&node.tcp).await.unwrap();
        let streams = futures::stream::iter(0..n)
            .map(|_| open_echo(&client, peer))
            .buffer_unordered(OPENING_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        held.push((client, streams));
    }
    held
}

/// `/api/state` now: the JSON, its size in bytes and how long the answer took.
async fn state(admin: SocketAddr) -> (serde_json::Value, usize, Duration) {
    let started = Instant::now();
    let (code, body) = http_get(admin, "/api/state").await;
    let took = started.elapsed();
    assert_eq!(code, 200, "{body}");
    (serde_json::from_str(&body).unwrap(), body.len(), took)
}

/// Polls `/api/state` until the node and its echo cell count `live` instances
/// (bounded); returns the last state.
async fn wait_for_live(admin: SocketAddr, live: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..600 {
        last = state(admin).await.0;
        let echo = last["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "echo")
            .cloned()
            .unwrap_or_default();
        if last["node"]["live_instances"] == live && echo["live_instances"] == live {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the dashboard never showed {live} live instances: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_counts_five_hundred_held_streams_and_their_end() {
    // The defaults a newcomer gets: 64 streams per peer, so 8 client peers.
    let (node, admin) = default_node().await;
    let held = hold_echo_streams(&node, 500, DEFAULT_PER_PEER).await;
    let at_500 = wait_for_live(admin, 500).await;
    let clients = 500usize.div_ceil(DEFAULT_PER_PEER);
    assert_eq!(
        at_500["node"]["connected_peers"], clients,
        "{}",
        at_500["node"]
    );
    let open: u64 = at_500["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["open_streams"].as_u64().unwrap())
        .sum();
    assert_eq!(open, 500, "{}", at_500["peers"]);
    let (_, bytes, took) = state(admin).await;
    println!("/api/state at 500 live: {bytes} bytes in {took:?}");
    drop(held);
    wait_for_live(admin, 0).await;
}

/// Reads an `/api/events` feed to nowhere for `how_long`; returns the bytes read.
fn read_feed(admin: SocketAddr, how_long: Duration) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut socket = tokio::net::TcpStream::connect(admin).await.unwrap();
        let request = format!("GET /api/events HTTP/1.1\r\nHost: {admin}\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut total = 0;
        let ends = tokio::time::Instant::now() + how_long;
        while let Ok(Ok(n)) = tokio::time::timeout_at(ends, socket.read(&mut buffer)).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    })
}

/// The heavy one (`cargo test --test it -- --ignored ten_thousand`): a node holding
/// 10,000 live echo instances (25 client peers × 400 streams); prints the size and
/// time of one `/api/state` snapshot, and the node's CPU over windows with no feed and
/// with 4 open feeds, interleaved. Asserts only that the dashboard counts them.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "heavy: 10,000 live instances; run by hand, it prints numbers"]
async fn ten_thousand_live_instances_with_and_without_open_dashboards() {
    const LIVE: usize = 10_000;
    const WINDOW: Duration = Duration::from_secs(20);
    const ROUNDS: usize = 3;
    let (node, admin) = node_for(LIVE).await;
    let pid = node.child.id().unwrap();
    let started = Instant::now();
    let held = hold_echo_streams(&node, LIVE, PER_CLIENT).await;
    wait_for_live(admin, LIVE as u64).await;
    println!(
        "{LIVE} streams held in {:?}; node RSS {} MiB",
        started.elapsed(),
        crate::support::rss_kib(pid) / 1024
    );
    let mut snapshots = Vec::new();
    for _ in 0..5 {
        let (_, bytes, took) = state(admin).await;
        snapshots.push((took, bytes));
    }
    snapshots.sort();
    let (median, bytes) = snapshots[snapshots.len() / 2];
    println!("/api/state at {LIVE} live: {bytes} bytes, median {median:?} (of 5, HTTP included)");

    let window = |feeds: usize| async move {
        // The feeds start a second before the count, and end with it.
        let lasting = WINDOW + Duration::from_secs(1);
        let readers: Vec<_> = (0..feeds).map(|_| read_feed(admin, lasting)).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = cpu_ticks(pid);
        let at = Instant::now();
        tokio::time::sleep(WINDOW).await;
        let cpu = (cpu_ticks(pid) - before) as f64 / 100.0 / at.elapsed().as_secs_f64();
        let mut feed_bytes = 0;
        for reader in readers {
            feed_bytes += reader.await.unwrap();
        }
        (cpu, feed_bytes)
    };
    let (mut without, mut with) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let (a, _) = window(0).await;
        let (b, feed_bytes) = window(4).await;
        println!(
            "round {round}: node CPU {:.1}% of a core with no feed, {:.1}% with 4 feeds ({} bytes/s per feed)",
            a * 100.0,
            b * 100.0,
            feed_bytes / 4 / (WINDOW.as_secs() as usize + 1)
        );
        without += a;
        with += b;
    }
    println!(
        "node CPU at {LIVE} live, 4 feeds / none: {:.2} ({:.1}% vs {:.1}% of a core, mean of {ROUNDS} rounds)",
        with / without,
        with * 100.0 / ROUNDS as f64,
        without * 100.0 / ROUNDS as f64
    );
    wait_for_live(admin, LIVE as u64).await;
    drop(held);
}
