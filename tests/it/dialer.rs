//! Cells that call cells: `wetware:streams/dialer` across real nodes, its grant and
//! its limit.

use sha2::{Digest as _, Sha256};

use crate::support::*;
use ww::net::status::Outcome;

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

/// Sends `first_line` and `body` to `protocol` on `node` as `+status`, from a client
/// of its own, until the answer is not a dial that failed for want of the DHT (a node
/// may still be joining it); returns the payload and the outcome.
async fn status_through(
    node: &Node,
    protocol: &str,
    first_line: &str,
    body: &[u8],
) -> (Vec<u8>, Outcome) {
    let client = ww::net::client::Client::new().unwrap();
    let mut input = format!("{first_line}\n").into_bytes();
    input.extend_from_slice(body);
    let mut answer = (Vec::new(), Outcome::Success);
    for _ in 0..50 {
        // Connected again each time: on a loaded machine the retries can outlast the
        // client's connection (seen once in CI as `NotConnected`).
        let peer = client.connect(&node.tcp).await.unwrap();
        answer = outcome_of(&client, peer, &input, protocol).await;
        match &answer.1 {
            Outcome::Failure(reason) if reason.contains("unreachable") => {}
            _ => break,
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    answer
}

#[tokio::test]
async fn a_cell_on_node_2_dials_a_cell_on_node_3_and_returns_its_answer() {
    let (hub, forwarder) = hub_and_forwarder(&["--grant-dial", FORWARD]).await;
    let target = dht_node(Some(&hub), &[]).await;

    let data = pattern(300_000, 23);
    let line = format!("{} /ww/sha256/0.1.0", target.peer);
    // Node 3 may still be joining the DHT when node 2 first looks for it.
    let (answer, outcome) = status_through(&forwarder, FORWARD, &line, &data).await;
    let expected = format!("{:x}\n", Sha256::digest(&data));
    assert_eq!(
        (String::from_utf8_lossy(&answer).as_ref(), outcome),
        (expected.as_str(), Outcome::Success),
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
    let (answer, outcome) = status_through(&forwarder, FORWARD, &line, b"x").await;
    assert_eq!(
        (answer.as_slice(), outcome),
        (
            &b""[..],
            Outcome::Failure("run returned an error: dial failed: not-allowed".into())
        ),
        "a failed dial is a failed stream, with the dial error as its reason"
    );
    // The granted protocol works.
    let line = format!("{} /ww/echo/0.1.0", hub.peer);
    assert_eq!(
        through(&forwarder, FORWARD, &line, b"granted").await,
        b"granted"
    );
}

/// A node bootstrapped to `hub` serving the `dial-many` test cell, granted any dial,
/// with `--max-dials 3`.
async fn dial_many_node(hub: &Node) -> Node {
    let cell = format!("{DIAL_MANY}={}", test_cell("dial-many").display());
    let args = [
        "--cell",
        &cell,
        "--grant-dial",
        DIAL_MANY,
        "--max-dials",
        "3",
    ];
    dht_node(Some(hub), &args).await
}

#[tokio::test]
async fn dials_past_max_dials_are_refused_and_bad_targets_are_clean_errors() {
    let hub = dht_node(None, &[]).await;
    let node = dial_many_node(&hub).await;
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

/// A node bootstrapped to `hub` that serves `fanout`, granted to dial sha256.
async fn fanout_node(hub: &Node) -> Node {
    let args = [
        "--cell",
        "/ww/fanout/0.1.0=builtin:fanout",
        "--grant-dial",
        "/ww/fanout/0.1.0=/ww/sha256/0.1.0",
    ];
    dht_node(Some(hub), &args).await
}

#[tokio::test]
async fn the_fanout_cell_asks_every_provider_and_concatenates_the_answers() {
    let hub = dht_node(None, &[]).await;
    let other = dht_node(Some(&hub), &[]).await;
    let fanout = fanout_node(&hub).await;
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
    // The last node may still be joining the DHT.
    let (answer, outcome) = status_through(&first, FORWARD, &line, &body).await;
    assert_eq!(
        (String::from_utf8_lossy(&answer).as_ref(), outcome),
        (expected.as_str(), Outcome::Success),
        "{}\n{}",
        first.log(),
        second.log()
    );
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

    // The trap on node 3 reaches the forward cell as a failed read, so it fails too,
    // with the trap as its reason.
    let line = format!("{} /test/trap/1", target.peer);
    let (_, outcome) = status_through(&forwarder, FORWARD, &line, b"boom").await;
    assert_failed(
        &outcome,
        "run returned an error: the remote cell failed: trapped",
    );
    drop(client);
}

/// Three nodes that serve `forward` (which may dial anything) and echo, the first
/// the DHT's hub.
async fn three_forwarders(extra: &[&str]) -> [Node; 3] {
    let cell = forward_cell();
    let echo = "/ww/echo/0.1.0=builtin:echo";
    let mut args = vec!["--cell", &cell, "--cell", echo, "--grant-dial", FORWARD];
    args.extend(extra);
    let a = dht_node(None, &args).await;
    let b = dht_node(Some(&a), &args).await;
    let c = dht_node(Some(&a), &args).await;
    [a, b, c]
}

#[tokio::test]
async fn a_cycle_of_forward_cells_ends_at_the_hop_budget_and_others_get_through() {
    let nodes = three_forwarders(&[]).await;
    let [a, b, c] = &nodes;
    // A request that would go round A → B → C → A … 60 times: each forward cell reads
    // the first line (the next hop) and passes the rest on. Without a hop budget it
    // holds 60 instances, 20 on each pair of nodes, until the chain ends.
    let mut hops = Vec::new();
    for i in 1..=60 {
        hops.push(format!("{} {FORWARD}", nodes[i % 3].peer));
    }
    hops.push(format!("{} /ww/echo/0.1.0", a.peer));
    let first_line = hops.remove(0);
    let body = hops.join("\n") + "\n";

    // Meanwhile another client's ordinary request crosses the same pair of nodes.
    let chain = status_through(a, FORWARD, &first_line, body.as_bytes());
    let other_line = format!("{} /ww/echo/0.1.0", b.peer);
    let other = status_through(a, FORWARD, &other_line, b"someone else");
    let ((payload, outcome), other) = tokio::join!(chain, other);
    assert_eq!(
        other,
        (b"someone else".to_vec(), Outcome::Success),
        "{}",
        a.log()
    );
    assert!(payload.is_empty(), "{}", String::from_utf8_lossy(&payload));
    // The default budget is 8 dials; the 9th, on C, fails at once and every cell
    // back to the origin fails with it, passing the reason on.
    assert_failed(&outcome, "dial failed: hop-limit-reached");
    let Outcome::Failure(reason) = outcome else {
        unreachable!()
    };
    assert_eq!(
        reason.matches("the remote cell failed").count(),
        8,
        "one per hop: {reason}"
    );
    assert!(
        reason.starts_with("run returned an error: the remote cell failed: "),
        "{reason}"
    );
    let client = ww::net::client::Client::new().unwrap();
    for node in &nodes {
        node.wait_idle(&client).await;
    }
    assert!(
        c.log().contains("dial failed: hop-limit-reached"),
        "{}",
        c.log()
    );
}

#[tokio::test]
async fn max_hops_sets_the_budget_of_chains_that_start_on_a_node() {
    let nodes = three_forwarders(&["--max-hops", "1"]).await;
    let [a, b, c] = &nodes;
    // One hop is allowed (A → B); the forward cell on B may not dial C.
    let first_line = format!("{} {FORWARD}", b.peer);
    let body = format!("{} /ww/echo/0.1.0\nhello", c.peer);
    let (_, outcome) = status_through(a, FORWARD, &first_line, body.as_bytes()).await;
    assert_failed(
        &outcome,
        "run returned an error: the remote cell failed: run returned an error: dial failed: \
         hop-limit-reached",
    );
    let first_line = format!("{} /ww/echo/0.1.0", c.peer);
    let (payload, outcome) = status_through(a, FORWARD, &first_line, b"hello").await;
    assert_eq!(
        (payload.as_slice(), outcome),
        (&b"hello"[..], Outcome::Success)
    );
}

#[tokio::test]
async fn a_refusal_at_the_end_of_a_chain_reaches_the_origin_with_its_reason() {
    let [a, b, _] = three_forwarders(&[]).await;
    // The last node serves echo only to a stranger, so B's dial is refused.
    let allow = format!("/ww/echo/0.1.0={}", libp2p::PeerId::random());
    let last = dht_node(Some(&a), &["--allow", &allow]).await;
    let first_line = format!("{} {FORWARD}", b.peer);
    let body = format!("{} /ww/echo/0.1.0\nhello", last.peer);
    let (payload, outcome) = status_through(&a, FORWARD, &first_line, body.as_bytes()).await;
    assert!(payload.is_empty());
    assert_eq!(
        outcome,
        Outcome::Failure(
            "run returned an error: the remote cell failed: run returned an error: \
             the remote cell failed: refused: not allowed"
                .into()
        ),
        "{}",
        b.log()
    );
}

#[tokio::test]
async fn a_dialed_instance_ends_with_its_callers_deadline() {
    let cell = forward_cell();
    let origin = dht_node(
        None,
        &["--cell", &cell, "--grant-dial", FORWARD, "--wall-s", "2"],
    )
    .await;
    // Nap sleeps for a minute whatever its stream does: without the caller's
    // deadline only its node's idle limit (300 s) would end it.
    let nap = cell_flag("nap");
    let remote = dht_node(Some(&origin), &["--cell", &nap]).await;
    let first_line = format!("{} /test/nap/1", remote.peer);
    let (_, outcome) = status_through(&origin, FORWARD, &first_line, b"").await;
    assert_failed(&outcome, "wall-clock limit 2 s reached");
    remote
        .wait_logged("cell failed failure=the calling cell's deadline (")
        .await;
}

#[tokio::test]
async fn providers_count_against_max_dials_and_malformed_peers_do_not() {
    let hub = dht_node(None, &[]).await;
    let node = dial_many_node(&hub).await;
    let lines = |answer: Vec<u8>| -> Vec<String> {
        String::from_utf8(answer)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    // Two malformed peer IDs cost nothing: all three dials to the hub go through.
    let line = format!("not-a-peer /ww/echo/0.1.0 2;{} /ww/echo/0.1.0 3", hub.peer);
    let answer = lines(through(&node, DIAL_MANY, &line, b"").await);
    assert_eq!(answer.len(), 5, "{answer:?}");
    assert!(
        answer[..2].iter().all(|l| l.contains("invalid-peer")),
        "{answer:?}"
    );
    assert_eq!(answer[2..], ["ok 2", "ok 3", "ok 4"], "{}", node.log());

    // A providers listing takes a slot: only two dials are left.
    let line = format!("providers /ww/echo/0.1.0;{} /ww/echo/0.1.0 3", hub.peer);
    let answer = lines(through(&node, DIAL_MANY, &line, b"").await);
    assert!(
        answer[0].starts_with("providers 0: ") || answer[0].starts_with("failed 0: unreachable"),
        "{answer:?}"
    );
    assert_eq!(
        answer[1..],
        ["ok 1", "ok 2", "failed 3: limit-reached"],
        "{}",
        node.log()
    );
}

#[tokio::test]
async fn the_fanout_cell_fails_its_stream_when_a_provider_fails() {
    let hub = dht_node(None, &[]).await;
    // A second provider of sha256 that serves it only to a stranger.
    let allow = format!("/ww/sha256/0.1.0={}", libp2p::PeerId::random());
    let closed = dht_node(Some(&hub), &["--allow", &allow]).await;
    let fanout = fanout_node(&hub).await;
    let client = ww::net::client::Client::new().unwrap();
    let peer = client.connect(&fanout.tcp).await.unwrap();
    let mut answer = (Vec::new(), Outcome::Success);
    for _ in 0..50 {
        answer = outcome_of(&client, peer, b"/ww/sha256/0.1.0\nx", "/ww/fanout/0.1.0").await;
        if answer.0.windows(3).filter(|w| w == b"== ").count() == 2 {
            break;
        }
        // Until both providers have announced themselves, fewer sections come back.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (payload, outcome) = answer;
    let text = String::from_utf8_lossy(&payload);
    // The hub's section is there; the refused provider's says why; the stream fails.
    let digest = format!("{:x}\n", Sha256::digest(b"x"));
    assert!(
        text.contains(&format!("== {} 65 bytes\n{digest}", hub.peer)),
        "{text}"
    );
    let refused = format!("== {} failed: receiving: ", closed.peer);
    assert!(
        text.contains(&refused) && text.contains("refused: not allowed"),
        "{text}"
    );
    assert_failed(
        &outcome,
        &format!(
            "run returned an error: 1 of 2 providers failed; first: {}: receiving: ",
            closed.peer
        ),
    );
    assert_failed(&outcome, "refused: not allowed");
}
