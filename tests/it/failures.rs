//! Bad guests and bad peers: the peer sees a failure, the node keeps serving.

use libp2p::{PeerId, StreamProtocol};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use ww::net::client::Client;
use ww::net::router::OpenStreamError;
use ww::net::status::Outcome;

use crate::support::{
    ECHO, Node, PATIENCE, assert_failed, cell_flag, outcome_of, pattern, request, spawn_ww, ww,
};

/// Asserts that an echo still works on `peer` through `client`.
async fn assert_echo_works(client: &Client, peer: PeerId) {
    let data = pattern(1000, 7);
    assert_eq!(request(client, peer, ECHO, &data).await.unwrap(), data);
}

async fn node_with_test_cells() -> Node {
    let cells: Vec<String> = ["trap", "exit-early", "twice"]
        .iter()
        .map(|c| cell_flag(c))
        .collect();
    let mut args = vec!["--config".to_string()];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ww.toml");
    std::fs::write(
        &config,
        "[cells.echo]\nprotocol = \"/ww/echo/0.1.0\"\nbuiltin = \"echo\"\n",
    )
    .unwrap();
    args.push(config.display().to_string());
    for cell in &cells {
        args.push("--cell".into());
        args.push(cell.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start(&args).await;
    drop(dir);
    node
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_protocol_is_refused_and_the_connection_stays_usable() {
    let node = Node::start(&[]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    match client
        .open(peer, StreamProtocol::new("/no/such/1.0.0"))
        .await
    {
        Err(OpenStreamError::UnsupportedProtocol(p)) => assert_eq!(p.as_ref(), "/no/such/1.0.0"),
        Err(other) => panic!("expected UnsupportedProtocol, got {other}"),
        Ok(_) => panic!("an unknown protocol was accepted"),
    }
    assert_echo_works(&client, peer).await;

    let (ok, _, err) = ww(&["dial", &node.tcp.to_string(), "/no/such/1.0.0"], b"").await;
    assert!(!ok);
    assert!(err.contains("does not serve /no/such/1.0.0"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_cells_abort_their_stream_and_the_node_keeps_serving() {
    let node = node_with_test_cells().await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();

    let (_, outcome) = outcome_of(&client, peer, b"hello", "/test/trap/1").await;
    assert_failed(&outcome, "trapped: ");
    assert_echo_works(&client, peer).await;

    let (payload, outcome) = outcome_of(&client, peer, b"hello", "/test/exit-early/1").await;
    assert_eq!(
        payload, b"partial",
        "output written before the exit is delivered"
    );
    assert_failed(&outcome, "exited with status 1");
    assert_echo_works(&client, peer).await;

    let (_, outcome) = outcome_of(&client, peer, b"hello", "/test/twice/1").await;
    assert_failed(&outcome, "create-connection called twice");
    assert_echo_works(&client, peer).await;

    let (payload, outcome) = outcome_of(&client, peer, b"hello", "/ww/echo/0.1.0").await;
    assert_eq!(
        (payload.as_slice(), outcome),
        (&b"hello"[..], Outcome::Success)
    );

    let status = node.wait_idle(&client).await;
    assert_eq!(status.failed, 3, "{}", node.log());
    let log = node.log();
    assert!(log.contains("create-connection called twice"), "{log}");
    assert!(
        log.contains("about to trap"),
        "the guest's stderr is logged: {log}"
    );
    assert!(log.contains("exited with status 1"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ww_dial_reports_a_failed_cell() {
    let node = node_with_test_cells().await;
    let addr = node.tcp.to_string();
    let (ok, out, err) = ww(&["dial", &addr, "/test/exit-early/1"], b"").await;
    assert!(!ok);
    assert_eq!(out, b"partial");
    assert!(
        err.contains("/test/exit-early/1 on") && err.contains("failed: exited with status 1"),
        "{err}"
    );

    // The same with stdin still open while the cell traps, and over QUIC.
    let mut dial = spawn_ww(&["dial", &node.quic.to_string(), "/test/trap/1"]);
    let _stdin = dial.stdin.take();
    let output = tokio::time::timeout(PATIENCE, dial.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("failed: trapped"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_killed_mid_stream_frees_its_instance() {
    let node = Node::start(&[]).await;
    let mut dial = spawn_ww(&["dial", &node.tcp.to_string(), "/ww/echo/0.1.0"]);
    let mut stdin = dial.stdin.take().unwrap();
    let mut stdout = dial.stdout.take().unwrap();
    stdin.write_all(b"ping").await.unwrap();
    stdin.flush().await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(PATIENCE, stdout.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping");

    let client = Client::new().unwrap();
    assert_eq!(node.stats(&client).await.live, 1);
    dial.kill().await.unwrap();
    let status = node.wait_idle(&client).await;
    assert_eq!(status.live, 0);
    let peer = client.connect(&node.tcp).await.unwrap();
    assert_echo_works(&client, peer).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ww_dial_names_unreachable_and_wrong_peers() {
    let node = Node::start(&[]).await;
    let other = PeerId::random();
    let wrong = node
        .tcp
        .to_string()
        .replace(&node.peer.to_string(), &other.to_string());
    let (ok, _, err) = ww(&["dial", &wrong, "/ww/echo/0.1.0"], b"").await;
    assert!(!ok);
    assert!(
        err.contains("cannot reach") && err.contains(&node.peer.to_string()),
        "{err}"
    );

    // A port nobody listens on (bind, learn the port, close).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{other}");
    let (ok, _, err) = ww(&["dial", &unreachable, "/ww/echo/0.1.0"], b"").await;
    assert!(!ok);
    assert!(err.contains("cannot reach"), "{err}");

    let (ok, _, err) = ww(&["dial", "/ip4/127.0.0.1/tcp/1", "/ww/echo/0.1.0"], b"").await;
    assert!(!ok);
    assert!(err.contains("does not end in /p2p/"), "{err}");
}
