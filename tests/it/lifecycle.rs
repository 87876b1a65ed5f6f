//! A node's lifecycle beyond single streams: graceful shutdown, and `ww cell`.

use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use ww::net::client::Client;

use crate::support::{ECHO, Node, PATIENCE, test_cell, ww};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_streams_finish() {
    let mut node = Node::start(&[]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let mut stream = client.open(peer, ECHO).await.unwrap();
    stream.write_all(b"before ").await.unwrap();
    stream.flush().await.unwrap();
    let mut first = [0u8; 7];
    stream.read_exact(&mut first).await.unwrap();

    sigterm(&node).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The running stream still works and ends cleanly …
    stream.write_all(b"after").await.unwrap();
    stream.close().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"after");
    // … new ones are refused, and the node exits 0 once it is done.
    let status = tokio::time::timeout(PATIENCE, node.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}:\n{}", node.log());
    assert!(node.log().contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ww_cell_runs_a_cell_on_this_terminal() {
    let fresh = test_cell("fresh").display().to_string();
    let (ok, out, err) = ww(&["cell", &fresh], b"local bytes").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"1\nlocal bytes");

    let trap = test_cell("trap").display().to_string();
    let (ok, _, err) = ww(&["cell", &trap], b"").await;
    assert!(!ok);
    assert!(err.contains("trapped"), "{err}");
}

/// A config file that sets the shutdown grace period (and nothing else).
fn grace_config(dir: &tempfile::TempDir, seconds: u64) -> String {
    let path = dir.path().join("grace.toml");
    std::fs::write(&path, format!("shutdown_grace_s = {seconds}\n")).unwrap();
    path.display().to_string()
}

/// The halves of a `+status` stream.
type Halves = (
    tokio::io::ReadHalf<tokio_util::compat::Compat<libp2p::Stream>>,
    tokio::io::WriteHalf<tokio_util::compat::Compat<libp2p::Stream>>,
);

/// What keeps a held stream and its node's config alive: the client peer and the
/// config's directory.
type Keep = (Client, tempfile::TempDir);

/// A node with a shutdown grace period of `seconds`, running one `sleepy` instance
/// for a stream held open here.
async fn a_stream_held_with_grace(seconds: u64) -> (Node, Halves, Keep) {
    let dir = tempfile::tempdir().unwrap();
    let config = grace_config(&dir, seconds);
    let sleepy = crate::support::cell_flag("sleepy");
    let node = Node::start(&["--config", &config, "--cell", &sleepy]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let held = crate::support::open_status(&client, peer, "/test/sleepy/1").await;
    node.wait_live(&client, 1).await;
    (node, held, (client, dir))
}

/// Sends the node SIGTERM.
async fn sigterm(node: &crate::support::Node) {
    let pid = node.child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_still_running_when_the_grace_period_ends_are_told_why() {
    let (mut node, (mut reader, _writer), _keep) = a_stream_held_with_grace(1).await;
    let started = std::time::Instant::now();
    sigterm(&node).await;
    let outcome = ww::net::status::read_answer(&mut reader, &mut Vec::new())
        .await
        .unwrap();
    crate::support::assert_failed(&outcome, "node shutting down");
    let status = tokio::time::timeout(PATIENCE, node.child.wait())
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "a 1 s grace period: the trailer came and the node exited {:?} after SIGTERM",
        started.elapsed()
    );
    assert!(status.success(), "exit status {status}:\n{}", node.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_stops_at_once() {
    let (mut node, _held, _keep) = a_stream_held_with_grace(600).await;
    sigterm(&node).await;
    node.wait_logged("shutting down").await;
    sigterm(&node).await;
    // Well within the 10-minute grace period the first signal granted.
    let status = tokio::time::timeout(PATIENCE, node.child.wait())
        .await
        .expect("the second signal did not stop the node")
        .unwrap();
    assert!(node.log().contains("stopping now"), "{}", node.log());
    let _ = status;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_can_dial_during_the_grace_period() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_util::compat::FuturesAsyncReadCompatExt as _;
    let dir = tempfile::tempdir().unwrap();
    let config = grace_config(&dir, 60);
    let forward = "/ww/forward/0.1.0";
    let cell = format!("{forward}=builtin:forward");
    let origin = crate::support::dht_node(
        None,
        &[
            "--config",
            &config,
            "--cell",
            &cell,
            "--grant-dial",
            forward,
        ],
    )
    .await;
    let target = crate::support::dht_node(Some(&origin), &[]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&origin.tcp).await.unwrap();
    // Make sure the origin can reach the target before the shutdown begins.
    let line = format!("{} /ww/echo/0.1.0\n", target.peer);
    let mut warm = line.clone().into_bytes();
    warm.extend_from_slice(b"warm");
    let protocol = libp2p::StreamProtocol::new(forward);
    crate::support::eventually("the origin reaching the target", || async {
        let answer = crate::support::request(&client, peer, protocol.clone(), &warm).await;
        answer.is_ok_and(|a| a == b"warm").then_some(())
    })
    .await;
    let stream = client
        .open(peer, libp2p::StreamProtocol::new(forward))
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream.compat());
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&origin).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The instance started before the signal; its dial happens during the grace.
    writer.write_all(line.as_bytes()).await.unwrap();
    writer
        .write_all(b"dialed in the grace period")
        .await
        .unwrap();
    writer.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut answer))
        .await
        .expect("the dial hung until the grace period ended")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "dialed in the grace period",
        "origin:\n{}\ntarget:\n{}",
        origin.log(),
        target.log()
    );
}
