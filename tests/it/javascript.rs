//! A cell written in JavaScript (componentize-js), served over the network.

use futures::future::join_all;
use libp2p::StreamProtocol;
use ww::net::client::Client;

use crate::support::{
    Node, free_local_addr, javascript_cell, pattern, print_instance_cost, request,
};

const ECHO_JS: StreamProtocol = StreamProtocol::new("/ww/echo-js/0.1.0");

#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_cell_answers_over_the_network() {
    let Some(wasm) = javascript_cell() else {
        return; // javascript_cell() said why
    };
    let admin = free_local_addr();
    let cell = format!("/ww/echo-js/0.1.0={}", wasm.display());
    // 24 MiB of linear memory: enough to start the engine (it needs ~11 MiB), less
    // than the large stream below, which only fits because the cell splices.
    let args = [
        "--cell",
        &cell,
        "--admin",
        &admin.to_string(),
        "--memory-mb",
        "24",
    ];
    let started = std::time::Instant::now();
    let node = Node::start(&args).await;
    eprintln!(
        "node with the JavaScript cell listening after {:?} (includes compiling it)",
        started.elapsed()
    );
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();

    let answer = request(&client, peer, ECHO_JS, b"hello from js\n")
        .await
        .unwrap();
    assert_eq!(answer, b"hello from js\n");

    let streams = (0..20u64).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let data = pattern(i as usize * 1000, i);
            let answer = request(&client, peer, ECHO_JS, &data).await.unwrap();
            (answer == data, i)
        })
    });
    for result in join_all(streams).await {
        let (same, i) = result.unwrap();
        assert!(same, "stream {i} answered other bytes");
    }

    let large = pattern(40 << 20, 7);
    let answer = request(&client, peer, ECHO_JS, &large).await.unwrap();
    assert!(
        answer == large,
        "40 MiB came back as {} other bytes",
        answer.len()
    );

    let stats = node.wait_idle(&client).await;
    assert_eq!((stats.succeeded, stats.failed), (22, 0));

    print_instance_cost(
        &node,
        &client,
        peer,
        ECHO_JS,
        admin,
        "echo-js",
        "JavaScript cell",
    )
    .await;
}
