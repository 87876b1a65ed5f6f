//! Cells that call cells: `wetware:streams/dialer` across real nodes, its grant and
//! its limit.

use sha2::{Digest as _, Sha256};

use crate::support::*;
use ww::net::outcome::Outcome;

const FORWARD: &str = "/ww/forward/0.1.0";
const DIAL_MANY: &str = "/test/dial-many/1";

fn forward_cell() -> String {
    format!("{FORWARD}=builtin:forward")
}

/// A DHT hub and a node bootstrapped to it that serves the `forward` cell with `args`.
async fn hub_and_forwarder(args: &[&str]) -> (Node, Node) {
    let hub = dht_node(None, &[]).await;
    let cell = forward_cell();
    let mut all = vec!["--cell", &cell];
    all.extend(args);
    let forwarder = dht_node(Some(&hub), &all).await;
    (hub, forwarder)
}

async fn through(forwarder: &Node, protocol: &str, first_line: &str, body: &[u8]) -> Vec<u8> {
    let client = ww::net::client::Client::new().unwrap();
    let peer = client.connect(&forwarder.tcp).await.unwrap();
    let mut input = format!("{first_line}\n").into_bytes();
    input.extend_from_slice(body);
    let protocol = libp2p::StreamProtocol::try_from_owned(protocol.into()).unwrap();
    request(&client, peer, protocol, &input).await.unwrap()
}

#[tokio::test]
async fn a_cell_on_node_2_dials_a_cell_on_node_3_and_returns_its_answer() {
    let (hub, forwarder) = hub_and_forwarder(&["--grant-dial", FORWARD]).await;
    let target = dht_node(Some(&hub), &[]).await;

    let data = pattern(300_000, 23);
    let line = format!("{} /ww/sha256/0.1.0", target.peer);
    // Node 3 may still be joining the DHT when node 2 first looks for it.
    let mut answer = Vec::new();
    for _ in 0..50 {
        answer = through(&forwarder, FORWARD, &line, &data).await;
        if !answer.starts_with(b"dial failed: unreachable") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let expected = format!("{:x}\n", Sha256::digest(&data));
    assert_eq!(
        String::from_utf8_lossy(&answer),
        expected,
        "{}",
        forwarder.log()
    );

    // Echo through the dialer, byte for byte, found with dial-any.
    let data = pattern(1 << 20, 24);
    let answer = through(&forwarder, FORWARD, "any /ww/echo/0.1.0", &data).await;
    assert_eq!(answer.len(), data.len());
    assert!(answer == data, "byte-exact through dial-any");
}

#[tokio::test]
async fn a_cell_that_imports_the_dialer_without_a_grant_is_refused_at_start() {
    let cell = forward_cell();
    let err = run_fails(&["--no-mdns", "--cell", &cell]).await;
    assert!(
        err.contains("wetware:streams/dialer") && err.contains("not granted dialing"),
        "{err}"
    );
}

#[tokio::test]
async fn a_grant_for_other_protocols_makes_the_dial_not_allowed() {
    let grant = format!("{FORWARD}=/ww/echo/0.1.0");
    let (hub, forwarder) = hub_and_forwarder(&["--grant-dial", &grant]).await;
    let line = format!("{} /ww/sha256/0.1.0", hub.peer);
    let answer = through(&forwarder, FORWARD, &line, b"x").await;
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "dial failed: not-allowed\n"
    );
    // The granted protocol works.
    let line = format!("{} /ww/echo/0.1.0", hub.peer);
    assert_eq!(
        through(&forwarder, FORWARD, &line, b"granted").await,
        b"granted"
    );
}

#[tokio::test]
async fn dials_past_max_dials_are_refused_and_bad_targets_are_clean_errors() {
    let hub = dht_node(None, &[]).await;
    let cell = format!("{DIAL_MANY}={}", test_cell("dial-many").display());
    let hub_addr = hub.tcp.to_string();
    let node = Node::start(&[
        "--bootstrap",
        &hub_addr,
        "--cell",
        &cell,
        "--grant-dial",
        DIAL_MANY,
        "--max-dials",
        "3",
    ])
    .await;
    let line = format!("{} /ww/echo/0.1.0 5", hub.peer);
    let answer = through(&node, DIAL_MANY, &line, b"").await;
    let lines: Vec<String> = String::from_utf8(answer)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "ok 0",
            "ok 1",
            "ok 2",
            "failed 3: limit-reached",
            "failed 4: limit-reached"
        ],
        "{}",
        node.log()
    );

    // A malformed peer and an unknown one fail cleanly; each instance has its own budget.
    let answer = through(&node, DIAL_MANY, "not-a-peer /ww/echo/0.1.0 1", b"").await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("failed 0: invalid-peer: "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let stranger = libp2p::PeerId::random();
    let answer = through(
        &node,
        DIAL_MANY,
        &format!("{stranger} /ww/echo/0.1.0 1"),
        b"",
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("failed 0: unreachable: "), "{text}");
    let stats = node
        .wait_idle(&ww::net::client::Client::new().unwrap())
        .await;
    assert_eq!(
        stats.failed, 0,
        "dial errors are answers, not failed instances"
    );
}

#[tokio::test]
async fn the_fanout_cell_asks_every_provider_and_concatenates_the_answers() {
    let hub = dht_node(None, &[]).await;
    let other = dht_node(Some(&hub), &[]).await;
    let fanout = dht_node(
        Some(&hub),
        &[
            "--cell",
            "/ww/fanout/0.1.0=builtin:fanout",
            "--grant-dial",
            "/ww/fanout/0.1.0=/ww/sha256/0.1.0",
        ],
    )
    .await;
    let digest = format!("{:x}\n", Sha256::digest(b"fan me out"));
    let mut expected: Vec<_> = [&hub, &other]
        .iter()
        .map(|n| format!("== {} {} bytes\n{digest}\n", n.peer, digest.len()))
        .collect();
    expected.sort();
    let mut answer = String::new();
    for _ in 0..50 {
        answer = String::from_utf8(
            through(
                &fanout,
                "/ww/fanout/0.1.0",
                "/ww/sha256/0.1.0",
                b"fan me out",
            )
            .await,
        )
        .unwrap();
        if answer == expected.concat() {
            break;
        }
        // Until both providers have announced themselves, fewer sections come back.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(answer, expected.concat(), "{}", fanout.log());
}

#[tokio::test]
async fn a_chain_of_forward_cells_crosses_three_nodes() {
    let (hub, first) = hub_and_forwarder(&["--grant-dial", FORWARD]).await;
    let cell = forward_cell();
    let second = dht_node(Some(&hub), &["--cell", &cell, "--grant-dial", FORWARD]).await;
    let last = dht_node(Some(&hub), &[]).await;
    let data = pattern(200_000, 31);
    let mut body = format!("{} /ww/sha256/0.1.0\n", last.peer).into_bytes();
    body.extend_from_slice(&data);
    let line = format!("{} {FORWARD}", second.peer);
    let expected = format!("{:x}\n", Sha256::digest(&data));
    let mut answer = String::new();
    for _ in 0..50 {
        answer =
            String::from_utf8_lossy(&through(&first, FORWARD, &line, &body).await).into_owned();
        if answer == expected {
            break;
        }
        // The last node may still be joining the DHT.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(answer, expected, "{}\n{}", first.log(), second.log());
}

#[tokio::test]
async fn a_remote_cell_that_fails_fails_the_cell_that_dialed_it() {
    let (hub, forwarder) = hub_and_forwarder(&["--grant-dial", FORWARD]).await;
    let trap = cell_flag("trap");
    let target = dht_node(Some(&hub), &["--cell", &trap]).await;
    let client = ww::net::client::Client::new().unwrap();
    let peer = client.connect(&forwarder.tcp).await.unwrap();

    // The hub's echo succeeds, and so does the forward cell in front of it.
    let line = format!("{} /ww/echo/0.1.0\nfine", hub.peer);
    let (payload, outcome) = outcome_of(&client, peer, line.as_bytes(), FORWARD).await;
    assert_eq!(
        (payload.as_slice(), outcome),
        (&b"fine"[..], Outcome::Success)
    );

    // The trap on node 3 reaches the forward cell as a failed read, so it fails too.
    let line = format!("{} /test/trap/1\nboom", target.peer);
    let mut outcome = Outcome::Success;
    for _ in 0..50 {
        let (payload, answer) = outcome_of(&client, peer, line.as_bytes(), FORWARD).await;
        outcome = answer;
        if !payload.starts_with(b"dial failed") {
            break;
        }
        // Node 3 may still be joining the DHT.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_failed(&outcome, "run returned an error");
}
