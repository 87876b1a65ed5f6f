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

    let pid = node.child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
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
