//! Cells that move, across a cluster: `ww deploy --all` to a 5-node `ww devnet` and a
//! sixth node that fetches the deployed component by its CID; a provider that lies
//! about a component's bytes; the fetch throughput of a 20 MB component.
//!
//! Timings are printed (`eprintln!`, run with `--nocapture`), never asserted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use ww::content::ContentId;
use ww::net::client::Client;
use ww::net::code::{self, FetchLimits};
use ww::net::control::Control;
use ww::net::discovery::{self, Announcements};
use ww::net::{BehaviourEvent, NetOptions, build_swarm};

use crate::support::*;

/// The protocol the cluster test deploys on.
const MOVED: &str = "/test/moved/1";
/// The protocol a node serves a component on that it fetched by its CID.
const BY_CID: &str = "/test/moved-by-cid/1";

/// `bytes` with a custom section (id 0) named `name` holding `payload` appended: the
/// same component to wasmtime, but other bytes, so another CID.
fn with_custom_section(bytes: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = bytes.to_vec();
    out.push(0);
    leb128(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// What a `version-1` cell answers to `data`: its version line, then the echo.
fn versioned_answer(data: &[u8]) -> Vec<u8> {
    [b"v1\n".as_slice(), data].concat()
}

/// The peer IDs in `ww find`'s output (one address ending in `/p2p/<peer>` a line).
fn found_peers(out: &[u8]) -> Vec<PeerId> {
    let mut peers: Vec<PeerId> = String::from_utf8_lossy(out)
        .lines()
        .filter_map(|line| discovery::peer_of(&line.parse::<Multiaddr>().ok()?))
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

/// The time of day a log line was written (`2026-01-02T03:04:05.678901Z …`), in
/// seconds since midnight UTC.
fn logged_at(line: &str) -> f64 {
    let time = line
        .get(11..26)
        .unwrap_or_else(|| panic!("no timestamp in {line}"));
    let fields: Vec<f64> = time
        .split(':')
        .map(|f| {
            f.parse()
                .unwrap_or_else(|_| panic!("no timestamp in {line}"))
        })
        .collect();
    fields[0] * 3600.0 + fields[1] * 60.0 + fields[2]
}

/// Megabytes (10^6 bytes) per second.
fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// One node of a running devnet, as its table shows it.
struct DevNode {
    pid: i32,
    peer: PeerId,
    addr: String,
}

/// A `ww devnet` process and its nodes. Dropping it stops the devnet with SIGTERM (it
/// stops its nodes gracefully) and kills any node still running after a grace period,
/// so no process outlives the test.
struct Devnet {
    child: tokio::process::Child,
    nodes: Vec<DevNode>,
    _dir: tempfile::TempDir,
}

impl Devnet {
    /// Starts `ww devnet NODES` on free ports, each node given `node_args` too, and
    /// reads its table.
    async fn start(nodes: usize, node_args: &[&str]) -> Devnet {
        use tokio::io::AsyncBufReadExt as _;
        let base = free_devnet_base(nodes as u16);
        let dir = tempfile::tempdir().unwrap();
        let count = nodes.to_string();
        let base = base.to_string();
        let mut args = vec![
            "devnet",
            &count,
            "--base-port",
            &base,
            "--dir",
            dir.path().to_str().unwrap(),
            "--",
        ];
        args.extend(node_args);
        let mut child = spawn_ww(&args);
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut table = Vec::new();
        while table.len() < nodes {
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .expect("devnet printed its table")
                .unwrap()
                .expect("devnet exited early");
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first().is_some_and(|f| f.parse::<u16>().is_ok()) {
                table.push(DevNode {
                    pid: fields[1].parse().unwrap(),
                    peer: fields[2].parse().unwrap(),
                    addr: fields[3].to_string(),
                });
            }
        }
        // Keep reading so the devnet never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Devnet {
            child,
            nodes: table,
            _dir: dir,
        }
    }
}

/// Whether a process is running (not gone, not a zombie waiting to be reaped).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && self.nodes.iter().any(|node| running(node.pid)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for node in self.nodes.iter().filter(|node| running(node.pid)) {
            // SAFETY: as above; a node this devnet started and did not stop.
            unsafe { libc::kill(node.pid, libc::SIGKILL) };
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_all_reaches_a_five_node_devnet_and_a_sixth_node_fetches_the_cell_by_cid() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("deployer.key").display().to_string();
    let (ok, out, err) = ww(&["id", "--identity", &identity], b"").await;
    assert!(ok, "{err}");
    let deployer = String::from_utf8(out).unwrap().trim().to_string();

    let devnet = Devnet::start(5, &["--deployer", &deployer]).await;
    let bootstrap = devnet.nodes[0].addr.clone();
    let mut five: Vec<PeerId> = devnet.nodes.iter().map(|node| node.peer).collect();
    five.sort();
    // The cluster has settled once every node's built-in echo cell is found.
    eventually("five echo providers in the devnet", || async {
        let (_, out, _) = ww(&["find", "/ww/echo/0.1.0", "--bootstrap", &bootstrap], b"").await;
        (found_peers(&out) == five).then_some(())
    })
    .await;

    let cell = test_cell("version-1");
    let cid = ContentId::of(&std::fs::read(&cell).unwrap());
    let deploy = [
        "deploy",
        cell.to_str().unwrap(),
        "--protocol",
        MOVED,
        "--all",
        "--bootstrap",
        &bootstrap,
        "--identity",
        &identity,
    ];
    let started = Instant::now();
    let attempts = std::cell::Cell::new(0);
    // Bounded: a DHT walk may still miss a node; deploying again swaps in the same
    // component on those that have it.
    eventually("a deploy that reaches all five nodes", || async {
        attempts.set(attempts.get() + 1);
        let (ok, out, err) = ww(&deploy, b"").await;
        let out = String::from_utf8(out).unwrap();
        assert!(ok, "{out}{err}");
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(cid.to_string().as_str()),
            "the CID first"
        );
        let mut deployed: Vec<PeerId> = lines
            .map(|line| {
                let (peer, what) = line.split_once("  ").unwrap();
                assert!(what.starts_with(&format!("deployed {cid} ")), "{line}");
                peer.parse().unwrap()
            })
            .collect();
        deployed.sort();
        (deployed == five).then_some(())
    })
    .await;
    let deployed_after = started.elapsed();

    // Every node answers on the deployed protocol, each through its own `ww dial`.
    let answered = futures::future::join_all(devnet.nodes.iter().map(|node| async move {
        let (ok, out, err) = ww(&["dial", &node.addr, MOVED], b"moved").await;
        assert!(ok, "{} does not answer on {MOVED}: {err}", node.peer);
        assert_eq!(out, versioned_answer(b"moved"), "{}", node.peer);
        started.elapsed()
    }))
    .await;
    let everywhere = answered.iter().max().unwrap();
    eprintln!(
        "deploy --all to a 5-node devnet: `ww deploy` done after {deployed_after:?} \
         ({} attempt(s)); the cell answered on every node (a `ww dial` each, in \
         parallel) {everywhere:?} after the deploy started; per node: {answered:?}",
        attempts.get()
    );

    let listed = eventually("ww find listing the five nodes", || async {
        let (_, out, _) = ww(&["find", MOVED, "--bootstrap", &bootstrap], b"").await;
        let found = found_peers(&out);
        (found == five).then_some(found)
    })
    .await;
    assert_eq!(listed.len(), 5);

    // A sixth node, told only the CID and one address, fetches the component from a
    // node that was deployed to and serves it.
    let flag = format!("{BY_CID}={cid}");
    let sixth = Node::start(&["--cell", &flag, "--bootstrap", &bootstrap]).await;
    let fetched = sixth.wait_logged("component fetched").await;
    assert!(
        five.iter()
            .any(|peer| fetched.contains(&format!("provider={peer}"))),
        "fetched from a devnet node: {fetched}"
    );
    let loaded = sixth.wait_logged("cell loaded").await;
    assert!(loaded.contains(&format!("content={cid}")), "{loaded}");
    let client = Client::new().unwrap();
    client.connect(&sixth.tcp).await.unwrap();
    let data = pattern(200_000, 6);
    let answer = request(&client, sixth.peer, StreamProtocol::new(BY_CID), &data)
        .await
        .unwrap();
    assert!(
        answer == versioned_answer(&data),
        "byte-exact through the fetched cell"
    );
}

/// Who asked the liar for which component.
type Asked = Mutex<Vec<(PeerId, ContentId)>>;

/// A peer in this process that announces itself as a provider of components and,
/// asked for any of them on `/ww/code/1.0.0`, sends the same wrong bytes.
struct Liar {
    peer: PeerId,
    addr: Multiaddr,
    asked: Arc<Asked>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Liar {
    /// Joins the DHTs through `seed` and provides `components`, answering every
    /// request with `lie`.
    async fn start(seed: &Node, components: &[ContentId], lie: Vec<u8>) -> Liar {
        let options = NetOptions {
            bootstrap: vec![seed.tcp.clone()],
            ..NetOptions::default()
        };
        let keypair = Keypair::generate_ed25519();
        let mut swarm = build_swarm(keypair, vec![code::PROTOCOL], &options).unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let peer = *swarm.local_peer_id();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address.with(Protocol::P2p(peer));
            }
        };
        discovery::join(&mut swarm, &options.bootstrap);
        // As a node announces what it holds: in both DHTs, again once a bootstrap
        // has filled the routing tables in.
        let mut announcements = Announcements::default();
        let keys = components.iter().map(discovery::content_key).collect();
        announcements.provide(&mut swarm, keys);
        let asked = Arc::new(Asked::default());
        let record = asked.clone();
        let lie: Arc<[u8]> = lie.into();
        let task = tokio::spawn(async move {
            let mut control = Control::default();
            loop {
                let event = swarm.select_next_some().await;
                control.on_event(&mut swarm, &event);
                announcements.on_event(&mut swarm, &event);
                if let SwarmEvent::Behaviour(BehaviourEvent::Router(inbound)) = event {
                    let (record, lie) = (record.clone(), lie.clone());
                    tokio::spawn(async move {
                        let mut stream = inbound.stream;
                        let Ok(id) = code::read_request(&mut stream).await else {
                            return;
                        };
                        record.lock().unwrap().push((inbound.peer, id));
                        let _ = code::send_answer(&mut stream, Some(&lie)).await;
                    });
                }
            }
        });
        Liar {
            peer,
            addr,
            asked,
            task,
        }
    }

    /// Whether `peer` asked for `id`.
    fn was_asked(&self, peer: PeerId, id: ContentId) -> bool {
        self.asked.lock().unwrap().contains(&(peer, id))
    }
}

/// Waits until a client joining through `seed` finds every one of `providers` for
/// `id`.
async fn wait_provided(seed: &Node, id: ContentId, providers: &[PeerId]) {
    let client = Client::with_bootstrap(vec![seed.tcp.clone()]).unwrap();
    let what = format!("{providers:?} found as providers of {id}");
    eventually(&what, || async {
        let found = client.content_providers(&id).await.ok()?;
        providers
            .iter()
            .all(|peer| found.iter().any(|p| p.peer == *peer && p.reached.is_ok()))
            .then_some(())
    })
    .await;
}

/// Starts a node that fetches `id` through `bootstrap` and checks that it serves it
/// byte-exact; if it asked the liar, checks that its log shows the liar passed over.
async fn fetch_past_the_liar(
    bootstrap: &[&Multiaddr],
    id: ContentId,
    liar: &Liar,
    honest: &Node,
    label: &str,
) {
    let flag = format!("{BY_CID}={id}");
    let mut args = vec!["--cell".to_string(), flag];
    for addr in bootstrap {
        args.extend(["--bootstrap".to_string(), addr.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fetcher = Node::start(&args).await;
    let fetched = fetcher.wait_logged("component fetched").await;
    assert!(
        fetched.contains(&format!("provider={}", honest.peer)),
        "the honest provider gave it: {fetched}"
    );
    fetcher.wait_logged("cell loaded").await;

    let client = Client::new().unwrap();
    client.connect(&fetcher.tcp).await.unwrap();
    let data = pattern(100_000, 2);
    let answer = request(&client, fetcher.peer, StreamProtocol::new(BY_CID), &data)
        .await
        .unwrap();
    assert!(answer == versioned_answer(&data), "byte-exact, not the lie");

    let log = fetcher.log();
    let liar_id = liar.peer.to_string();
    if liar.was_asked(fetcher.peer, id) {
        let passed_over = log
            .lines()
            .find(|line| line.contains("a provider failed; used the next"));
        let passed_over = passed_over.unwrap_or_else(|| panic!("the liar was asked:\n{log}"));
        assert!(
            passed_over.contains(&liar_id)
                && passed_over.contains("the provider sent the wrong bytes"),
            "{passed_over}"
        );
        eprintln!("{label}: the liar was tried first and passed over: {passed_over}");
    } else {
        assert!(
            !log.contains("wrong bytes"),
            "the liar was never asked:\n{log}"
        );
        eprintln!("{label}: the honest provider was tried first; the liar was not asked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_sending_wrong_bytes_is_passed_over_and_alone_fails_the_fetch() {
    let seed = dht_node(None, &[]).await;
    // Components no other test's node holds: `version-1` with a custom section.
    let v1 = std::fs::read(test_cell("version-1")).unwrap();
    let honest_bytes = with_custom_section(&v1, "ww-test", b"the honest copy");
    let only_liar_bytes = with_custom_section(&v1, "ww-test", b"nobody has these");
    let (honest_id, only_liar_id) = (
        ContentId::of(&honest_bytes),
        ContentId::of(&only_liar_bytes),
    );
    // The lie: as long as the real thing, one byte off.
    let mut lie = honest_bytes.clone();
    *lie.last_mut().unwrap() ^= 1;
    let liar = Liar::start(&seed, &[honest_id, only_liar_id], lie).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("honest.wasm");
    std::fs::write(&file, &honest_bytes).unwrap();
    let flag = format!("/test/honest/1={}", file.display());
    let honest = dht_node(Some(&seed), &["--cell", &flag]).await;
    wait_provided(&seed, honest_id, &[liar.peer, honest.peer]).await;

    // Through the seed only, which provider comes first is not controlled.
    fetch_past_the_liar(&[&seed.tcp], honest_id, &liar, &honest, "through the seed").await;
    // Also bootstrapped from the liar: a provider already connected is tried first,
    // so the liar usually is (5 of 6 runs here).
    let through_both = [&seed.tcp, &liar.addr];
    fetch_past_the_liar(
        &through_both,
        honest_id,
        &liar,
        &honest,
        "through the seed and the liar",
    )
    .await;

    // With the liar as the only provider, the node does not start, and says why.
    wait_provided(&seed, only_liar_id, &[liar.peer]).await;
    let seed_addr = seed.tcp.to_string();
    let flag = format!("{BY_CID}={only_liar_id}");
    let stderr = run_fails(&["--bootstrap", &seed_addr, "--cell", &flag, "--no-mdns"]).await;
    assert!(
        stderr.contains(&format!("cannot fetch {only_liar_id}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}: the provider sent the wrong bytes: expected {only_liar_id}, but the {} bytes are",
            liar.peer,
            honest_bytes.len()
        )),
        "names the liar and the mismatch: {stderr}"
    );
}

/// Sends `bytes` over a plain loopback TCP connection and reads them to the end; how
/// long it took.
async fn raw_tcp_copy(bytes: Arc<Vec<u8>>) -> Duration {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let expected = bytes.len();
    let sender = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(&bytes).await.unwrap();
        socket.shutdown().await.unwrap();
    });
    let started = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut received = Vec::with_capacity(expected);
    socket.read_to_end(&mut received).await.unwrap();
    let took = started.elapsed();
    sender.await.unwrap();
    assert_eq!(received.len(), expected);
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn a_20_mb_component_travels_between_two_nodes() {
    const SIZE: usize = 20_000_000;
    let v1 = std::fs::read(test_cell("version-1")).unwrap();
    let big = with_custom_section(&v1, "ww-test-payload", &pattern(SIZE - v1.len() - 32, 20));
    let id = ContentId::of(&big);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.wasm");
    std::fs::write(&file, &big).unwrap();

    // Node A serves it (wasmtime takes a component with a 20 MB custom section).
    let flag = format!("/test/big/1={}", file.display());
    let a = Node::start(&["--cell", &flag]).await;
    let loaded = a.wait_logged("cell loaded").await;
    assert!(loaded.contains(&format!("content={id}")), "{loaded}");

    // Node B is told only the CID and A's address.
    let a_addr = a.tcp.to_string();
    let flag = format!("{BY_CID}={id}");
    let b = Node::start(&["--cell", &flag, "--bootstrap", &a_addr]).await;
    let fetched = b.wait_logged("component fetched").await;
    assert!(
        fetched.contains(&format!("provider={}", a.peer)),
        "{fetched}"
    );
    assert!(
        fetched.contains(&format!("bytes={}", big.len())),
        "{fetched}"
    );
    b.wait_logged("cell loaded").await;
    let starting = b.wait_logged("node starting").await;
    let node_fetch = Duration::from_secs_f64(logged_at(&fetched) - logged_at(&starting));

    let client = Client::new().unwrap();
    client.connect(&b.tcp).await.unwrap();
    let data = pattern(50_000, 3);
    let answer = request(&client, b.peer, StreamProtocol::new(BY_CID), &data)
        .await
        .unwrap();
    assert!(
        answer == versioned_answer(&data),
        "B serves the fetched cell"
    );
    let kept = std::fs::read(b.dir.path().join("content").join(id.to_string())).unwrap();
    assert!(kept == big, "B keeps the component byte-exact");

    // The transfer alone: this process asks A on the same wire.
    let peer = client.connect(&a.tcp).await.unwrap();
    let started = Instant::now();
    let stream = client.open(peer, code::PROTOCOL).await.unwrap();
    let bytes = code::fetch(stream, &id, &FetchLimits::default())
        .await
        .unwrap();
    let wire = started.elapsed();
    assert!(bytes == big);

    let raw = raw_tcp_copy(Arc::new(big.clone())).await;
    let mb = big.len() as f64 / 1e6;
    eprintln!(
        "a {mb:.1} MB component: node B fetched it in {node_fetch:?} from `node starting` to \
         `component fetched` (DHT lookup + transfer + hash) = {:.1} MB/s; \
         /ww/code/1.0.0 from A to a client in this process: {wire:?} = {:.1} MB/s; \
         raw loopback TCP copy: {raw:?} = {:.1} MB/s; raw TCP / B's fetch = {:.1}x, \
         raw TCP / code wire = {:.1}x",
        mb_per_s(big.len(), node_fetch),
        mb_per_s(big.len(), wire),
        mb_per_s(big.len(), raw),
        node_fetch.as_secs_f64() / raw.as_secs_f64(),
        wire.as_secs_f64() / raw.as_secs_f64(),
    );
}
