//! A cell written in Python (componentize-py), served over the network.

use futures::future::join_all;
use libp2p::StreamProtocol;
use ww::net::client::Client;

use crate::support::{Node, free_local_addr, print_instance_cost, python_cell, request};

const WC: StreamProtocol = StreamProtocol::new("/ww/wc/0.1.0");

fn counts(answer: &[u8]) -> (u64, u64, u64) {
    let json: serde_json::Value = serde_json::from_slice(answer)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(answer)));
    let get = |key: &str| {
        json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {json}"))
    };
    (get("lines"), get("words"), get("bytes"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_cell_answers_over_the_network() {
    let wasm = python_cell();
    let admin = free_local_addr();
    let cell = format!("/ww/wc/0.1.0={}", wasm.display());
    let started = std::time::Instant::now();
    let node = Node::start(&["--cell", &cell, "--admin", &admin.to_string()]).await;
    eprintln!(
        "node with the Python cell listening after {:?} (includes compiling it)",
        started.elapsed()
    );
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();

    let answer = request(&client, peer, WC, b"hello world\nbye\n")
        .await
        .unwrap();
    assert_eq!(counts(&answer), (2, 3, 16));

    let streams = (0..20u64).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let text = "word ".repeat(i as usize) + &"\n".repeat(i as usize % 3);
            let answer = request(&client, peer, WC, text.as_bytes()).await.unwrap();
            (counts(&answer), (i % 3, i, text.len() as u64))
        })
    });
    for result in join_all(streams).await {
        let (got, expected) = result.unwrap();
        assert_eq!(got, expected);
    }
    let stats = node.wait_idle(&client).await;
    assert_eq!((stats.succeeded, stats.failed), (21, 0));

    print_instance_cost(&node, &client, peer, WC, admin, "wc", "Python cell").await;
}

/// A node's instance pool is sized from `max_instances`; a Python instance is made of
/// far more core instances than a Rust one (about 16), and the pool must still hold
/// `max_instances` of them rather than fail streams past half of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_holds_max_instances_live_python_instances() {
    const MAX: u64 = 8;
    let wasm = python_cell();
    let cell = format!("/ww/wc/0.1.0={}", wasm.display());
    let max = MAX.to_string();
    let node = Node::start(&["--cell", &cell, "--max-instances", &max]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..MAX {
        held.push(client.open(peer, WC).await.unwrap());
    }
    node.wait_live(&client, MAX).await;
    let stats = node.stats(&client).await;
    assert_eq!((stats.failed, stats.refused), (0, 0), "{}", node.log());
    // Each one still answers once its peer is done.
    for mut stream in held {
        use futures::{AsyncReadExt as _, AsyncWriteExt as _};
        stream.close().await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        assert_eq!(counts(&answer), (0, 0, 0));
    }
    let stats = node.wait_idle(&client).await;
    assert_eq!((stats.succeeded, stats.failed), (MAX, 0), "{}", node.log());
}
