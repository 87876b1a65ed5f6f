//! Clusters: discovery through the DHT, `ww find`, `ww dial` by peer ID and `--any`,
//! failover between providers, a cell reached through a relay, `ww devnet`.

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use crate::support::*;

/// A cell protocol only the nodes given `only_cell` serve.
const ONLY: &str = "/test/only/1";

fn only_cell() -> String {
    format!("{ONLY}={}", test_cell("stdio-echo").display())
}

/// Runs `ww find` until it lists a provider or `PATIENCE` runs out; returns the
/// providers' peer IDs and how long it took.
async fn find_until_found(protocol: &str, bootstrap: &Node) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let addr = bootstrap.tcp.to_string();
    loop {
        let (ok, out, err) = ww(&["find", protocol, "--bootstrap", &addr], b"").await;
        if ok {
            let lines = String::from_utf8(out).unwrap();
            let peers = lines
                .lines()
                .map(|line| {
                    let addr: Multiaddr = line.parse().expect("a multiaddr per line");
                    match addr.iter().last() {
                        Some(Protocol::P2p(peer)) => peer.to_string(),
                        _ => panic!("{line} does not end in /p2p/"),
                    }
                })
                .collect();
            return (peers, started.elapsed());
        }
        assert!(
            started.elapsed() < PATIENCE,
            "ww find never found {protocol}: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn five_nodes_find_a_cell_served_by_one_and_dial_any_reaches_it() {
    let only = only_cell();
    let n1 = dht_node(None, &[]).await;
    let n2 = dht_node(Some(&n1), &[]).await;
    let n3 = dht_node(Some(&n1), &[]).await;
    let n4 = dht_node(Some(&n1), &["--cell", &only]).await;
    let n5 = dht_node(Some(&n1), &[]).await;

    let (providers, took) = find_until_found(ONLY, &n5).await;
    println!("discovery through node 5 took {took:?}");
    assert_eq!(
        providers,
        vec![n4.peer.to_string()],
        "only node 4 serves {ONLY}"
    );

    let data = pattern(100_000, 4);
    let bootstrap = n5.tcp.to_string();
    let (ok, out, err) = ww(&["dial", "--any", ONLY, "--bootstrap", &bootstrap], &data).await;
    assert!(ok, "{err}");
    assert_eq!(out, data, "byte-exact through the provider found");

    // The built-in echo cell is everywhere but on node 4: the four others are found
    // (once every announcement has landed; a lookup may come back with fewer).
    let mut everyone = eventually("four echo providers", || async {
        let found = find_until_found("/ww/echo/0.1.0", &n5).await.0;
        (found.len() >= 4).then_some(found)
    })
    .await;
    everyone.sort();
    let mut expected: Vec<String> = [&n1, &n2, &n3, &n4, &n5]
        .iter()
        .filter(|n| n.peer != n4.peer)
        .map(|n| n.peer.to_string())
        .collect();
    expected.sort();
    assert_eq!(everyone, expected, "node 4 serves only {ONLY}");
}

#[tokio::test]
async fn dial_by_bare_peer_id_finds_the_addresses_in_the_dht() {
    let n1 = dht_node(None, &[]).await;
    let n2 = dht_node(Some(&n1), &[]).await;
    let n3 = dht_node(Some(&n2), &[]).await;
    let bootstrap = n1.tcp.to_string();
    for target in [n3.peer.to_string(), format!("/p2p/{}", n3.peer)] {
        let args = ["dial", &target, "/ww/echo/0.1.0", "--bootstrap", &bootstrap];
        let answered = eventually(&format!("an answer through {target}"), || async {
            let (ok, out, err) = ww(&args, b"by id").await;
            assert!(ok || err.contains("no address"), "{err}");
            ok.then_some(out)
        })
        .await;
        assert_eq!(answered, b"by id", "{target}");
    }
    let (ok, out, err) = ww(
        &["find", "/nobody/serves/this", "--bootstrap", &bootstrap],
        b"",
    )
    .await;
    assert!(!ok && out.is_empty());
    assert!(
        err.contains("no reachable node serves /nobody/serves/this"),
        "{err}"
    );

    let unknown = libp2p::PeerId::random().to_string();
    let (ok, _, err) = ww(
        &[
            "dial",
            &unknown,
            "/ww/echo/0.1.0",
            "--bootstrap",
            &bootstrap,
        ],
        b"",
    )
    .await;
    assert!(!ok);
    assert!(err.contains(&format!("no address of {unknown}")), "{err}");
}

#[tokio::test]
async fn dial_any_moves_to_a_surviving_provider_and_fails_clearly_without_one() {
    let only = only_cell();
    let hub = dht_node(None, &[]).await;
    let mut a = dht_node(Some(&hub), &["--cell", &only]).await;
    let mut b = dht_node(Some(&hub), &["--cell", &only]).await;
    eventually("both providers announced", || async {
        (find_until_found(ONLY, &hub).await.0.len() == 2).then_some(())
    })
    .await;
    let bootstrap = hub.tcp.to_string();
    let dial_any = |data: &'static [u8]| {
        let bootstrap = bootstrap.clone();
        async move { ww(&["dial", "--any", ONLY, "--bootstrap", &bootstrap], data).await }
    };

    a.child.kill().await.unwrap();
    for _ in 0..5 {
        let (ok, out, err) = dial_any(b"still here").await;
        assert!(ok, "the survivor answers: {err}");
        assert_eq!(out, b"still here");
    }

    b.child.kill().await.unwrap();
    let (ok, out, err) = dial_any(b"anyone?").await;
    assert!(!ok, "no provider is left");
    assert!(out.is_empty());
    assert!(
        err.contains(&format!("no provider of {ONLY} answered"))
            && err.contains(&a.peer.to_string())
            && err.contains(&b.peer.to_string()),
        "names both dead providers: {err}"
    );
}

/// `ww find --rtt` prints each provider's measured round trip, closest first, and
/// `ww dial --any` says at info which provider it chose and the round trips it ranked
/// on (the lines the network-namespace lab reads). Which loopback peer is closer is
/// noise, so only the form and the order are checked.
#[tokio::test]
async fn find_and_dial_any_show_the_round_trips_they_rank_providers_by() {
    let only = only_cell();
    let hub = dht_node(None, &[]).await;
    let a = dht_node(Some(&hub), &["--cell", &only]).await;
    let b = dht_node(Some(&hub), &["--cell", &only]).await;
    let bootstrap = hub.tcp.to_string();
    // `12.3ms`, or `?` if ping had not answered within the wait (a loaded machine).
    let ms = |rtt: &str| -> Option<f64> {
        if rtt == "?" {
            return None;
        }
        let number = rtt.strip_suffix("ms");
        Some(
            number
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{rtt} is not NN.Nms")),
        )
    };
    let rtts = eventually("both providers found with their round trips", || async {
        let (ok, out, _) = ww(&["find", ONLY, "--rtt", "--bootstrap", &bootstrap], b"").await;
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        if !ok || lines.len() != 2 {
            return None;
        }
        let rtts = lines.iter().map(|line| match line.split_once(' ') {
            Some((addr, rtt)) => {
                addr.parse::<Multiaddr>()
                    .expect("an address, then the round trip");
                ms(rtt)
            }
            None => panic!("{line}: no round trip"),
        });
        rtts.collect::<Option<Vec<f64>>>()
    })
    .await;
    assert!(rtts.is_sorted(), "closest first: {rtts:?}");

    let output = tokio::process::Command::new(WW)
        .args(["dial", "--any", ONLY, "--bootstrap", &bootstrap])
        .env("RUST_LOG", "warn,ww::dial=info")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{err}");
    let line = err
        .lines()
        .find(|line| line.contains("dialing a provider"))
        .unwrap_or_else(|| panic!("no choice logged: {err}"));
    let field = |name: &str| {
        let start = line
            .find(&format!(" {name}="))
            .unwrap_or_else(|| panic!("{line}"))
            + name.len()
            + 2;
        line[start..].split(' ').next().unwrap().to_string()
    };
    let (peer, rtt, ranked) = (field("peer"), field("rtt"), field("ranked"));
    let ranked: Vec<(&str, &str)> = ranked
        .split(',')
        .map(|p| p.split_once('=').unwrap())
        .collect();
    let peers: Vec<&str> = ranked.iter().map(|(peer, _)| *peer).collect();
    let mut expected = [a.peer.to_string(), b.peer.to_string()];
    expected.sort();
    let mut sorted = peers.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "{line}");
    assert_eq!(
        (peer.as_str(), rtt.as_str()),
        ranked[0],
        "the first ranked is chosen: {line}"
    );
    // Measured ones ascending, then any not measured in time.
    let rtts: Vec<(bool, Option<f64>)> = ranked
        .iter()
        .map(|(_, rtt)| ms(rtt))
        .map(|rtt| (rtt.is_none(), rtt))
        .collect();
    assert!(rtts.is_sorted_by(|x, y| x <= y), "closest first: {line}");
}

#[tokio::test]
async fn a_cell_behind_a_relay_is_reached_through_p2p_circuit() {
    let port = free_tcp_port();
    let relay_addr = format!("/ip4/127.0.0.1/tcp/{port}");
    let relay = Node::start(&[
        "--relay",
        "--listen",
        &relay_addr,
        "--external-address",
        &relay_addr,
    ])
    .await;
    let circuit_listen = format!("{relay_addr}/p2p/{}/p2p-circuit", relay.peer);
    let admin = crate::support::free_local_addr();
    let admin_arg = admin.to_string();
    let behind = Node::start(&["--listen", &circuit_listen, "--admin", &admin_arg]).await;
    let circuit: Multiaddr = format!("{circuit_listen}/p2p/{}", behind.peer)
        .parse()
        .unwrap();

    let client = ww::net::client::Client::new().unwrap();
    // The reservation may not be in place yet.
    let what = format!("a connection through {circuit}");
    let peer = eventually(&what, || async { client.connect(&circuit).await.ok() }).await;
    assert_eq!(peer, behind.peer);
    let data = pattern(64 << 10, 9);
    let answer = request(&client, peer, ECHO, &data).await.unwrap();
    assert_eq!(answer, data, "byte-exact through the relay");
    assert!(
        behind.log().contains("reserved a slot on a relay"),
        "{}",
        behind.log()
    );
    // The dashboard's node facts name the relay holding the reservation.
    let (status, body) = crate::support::http_get(admin, "/api/state").await;
    assert_eq!(status, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        state["node"]["relays"],
        serde_json::json!([relay.peer.to_string()])
    );
}

#[tokio::test]
async fn devnet_starts_serves_and_stops_without_leftovers() {
    // The defaults: dashboards 1000 ports above the nodes.
    let base = free_devnet_base(3);
    let admin_base = base + 1000;
    let dir = tempfile::tempdir().unwrap();
    let mut devnet = spawn_ww(&[
        "devnet",
        "3",
        "--base-port",
        &base.to_string(),
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(devnet.stdout.take().unwrap()).lines();
    let mut rows = Vec::new();
    while rows.len() < 3 {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("devnet printed its table")
            .unwrap()
            .expect("devnet exited early");
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first().is_some_and(|f| f.parse::<u16>().is_ok()) {
            let pid = fields[1].parse::<u32>().unwrap();
            rows.push((pid, fields[3].to_string(), fields[4].to_string()));
        }
    }
    for (i, (_, addr, dashboard)) in rows.iter().enumerate() {
        assert!(
            addr.starts_with(&format!("/ip4/127.0.0.1/tcp/{}/p2p/", base + i as u16)),
            "{addr}"
        );
        let admin = format!("127.0.0.1:{}", admin_base + i as u16);
        assert_eq!(dashboard, &format!("http://{admin}/"));
        let (status, _) = http_get(admin.parse().unwrap(), "/healthz").await;
        assert_eq!(status, 200, "node {i}'s dashboard");
    }
    // Node 0's dashboard links to the others' (they tell it their admin addresses).
    let peer_of = |addr: &str| addr.rsplit('/').next().unwrap().to_string();
    let node0 = format!("127.0.0.1:{admin_base}").parse().unwrap();
    let mut links = Vec::new();
    for _ in 0..200 {
        let (_, body) = http_get(node0, "/api/state").await;
        let state: serde_json::Value = serde_json::from_str(&body).unwrap();
        links = rows[1..]
            .iter()
            .map(|(_, addr, _)| {
                let known = state["cluster"].as_array().and_then(|known| {
                    known
                        .iter()
                        .find(|k| k["peer_id"] == peer_of(addr).as_str())
                });
                known.map(|k| k["dashboard"].clone()).unwrap_or_default()
            })
            .collect();
        if links.iter().all(|link| !link.is_null()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected: Vec<serde_json::Value> =
        rows[1..].iter().map(|row| row.2.clone().into()).collect();
    assert_eq!(links, expected);
    let (ok, out, err) = ww(
        &["dial", "--any", "/ww/echo/0.1.0", "--bootstrap", &rows[2].1],
        b"devnet",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, b"devnet");

    let devnet_pid = devnet.id().unwrap() as libc::pid_t;
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(devnet_pid, libc::SIGTERM) };
    let status = tokio::time::timeout(PATIENCE, devnet.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    for (pid, _, _) in rows {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "node process {pid} is still running"
        );
    }
    for i in 0..3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node{i}/ww.log"))).unwrap();
        assert!(
            log.contains("shutting down"),
            "node {i} was stopped gracefully:\n{log}"
        );
    }
}

#[tokio::test]
async fn devnet_refuses_ports_in_use() {
    let base = free_port_block(2);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "devnet",
        "2",
        "--base-port",
        &base.to_string(),
        "--dir",
        dir.path().to_str().unwrap(),
    ];
    let (ok, _, err) = ww(&args, b"").await;
    assert!(!ok);
    assert!(
        err.contains(&format!("port {} is in use", base + 1)),
        "{err}"
    );
}

#[tokio::test]
async fn dial_with_the_target_as_its_own_bootstrap_always_connects() {
    let node = Node::start(&[]).await;
    let addr = node.tcp.to_string();
    let mut failures = Vec::new();
    for round in 0..10 {
        let data = pattern(1000, round);
        let (ok, out, err) = ww(
            &["dial", &addr, "/ww/echo/0.1.0", "--bootstrap", &addr],
            &data,
        )
        .await;
        if !ok || out != data {
            failures.push(format!("round {round}: {err}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The cluster of the README, started by hand with no `--dht-mode`: the LAN DHT
/// (always served, loopback and private addresses only) finds the cell.
#[tokio::test]
async fn a_hand_started_loopback_cluster_finds_its_cells_without_dht_flags() {
    const LAN: &str = "/test/lan/1";
    let a = Node::start(&[]).await;
    let bootstrap = a.tcp.to_string();
    let b = Node::start(&["--bootstrap", &bootstrap]).await;
    let c = Node::start(&[
        "--bootstrap",
        &bootstrap,
        "--cell",
        &format!("{LAN}=builtin:echo"),
    ])
    .await;
    let d = Node::start(&["--bootstrap", &bootstrap]).await;

    let (providers, took) = find_until_found(LAN, &b).await;
    println!("found through node b after {took:?}");
    assert_eq!(
        providers,
        vec![c.peer.to_string()],
        "only node c serves {LAN}"
    );

    let through = d.tcp.to_string();
    let answered = eventually("an answer from the LAN cell", || async {
        let (ok, out, err) = ww(&["dial", "--any", LAN, "--bootstrap", &through], b"lan").await;
        assert!(ok || err.contains("no provider"), "{err}");
        ok.then_some(out)
    })
    .await;
    assert_eq!(answered, b"lan");
    for node in [&a, &b, &c, &d] {
        assert!(
            !node.log().contains("DHT mode changed"),
            "no node became a WAN DHT server on loopback:\n{}",
            node.log()
        );
    }
}

/// A node that knows its public address serves the WAN DHT, as before the LAN DHT.
#[tokio::test]
async fn a_node_with_an_external_address_serves_the_wan_dht() {
    let port = free_tcp_port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}");
    let node = Node::start(&["--listen", &addr, "--external-address", &addr]).await;
    let line = node.wait_logged("DHT mode changed").await;
    assert!(
        line.contains("dht=\"wan\"") || line.contains("dht=wan"),
        "{line}"
    );
    assert!(line.contains("mode=server"), "{line}");
}
