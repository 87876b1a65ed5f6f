//! Bytes in, the same bytes out: sizes, transports, concurrency, freshness.

use futures::future::join_all;
use libp2p::StreamProtocol;
use ww::net::client::Client;

use crate::support::{ECHO, Node, SHA256, pattern, request, rss_kib, test_cell, ww};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn echo_is_byte_exact_over_tcp_and_quic() {
    let node = Node::start(&[]).await;
    for addr in [&node.tcp, &node.quic] {
        let client = Client::new().unwrap();
        let peer = client.connect(addr).await.unwrap();
        for (i, len) in [0, 1, MIB, 64 * MIB].into_iter().enumerate() {
            let data = pattern(len, i as u64);
            let started = std::time::Instant::now();
            let answer = request(&client, peer, ECHO, &data).await.unwrap();
            eprintln!("{addr}: {len} bytes echoed in {:?}", started.elapsed());
            assert!(
                answer == data,
                "{addr}: echo of {len} bytes differs (got {} bytes)",
                answer.len()
            );
        }
    }
    let status = node.wait_idle(&Client::new().unwrap()).await;
    assert_eq!(status.failed, 0, "{}", node.log());
    assert_eq!(status.succeeded, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn ww_dial_talks_to_builtin_cells() {
    let node = Node::start(&[]).await;
    let tcp = node.tcp.to_string();
    let (ok, out, err) = ww(&["dial", &tcp, "/ww/echo/0.1.0"], b"hi\n").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"hi\n");

    let quic = node.quic.to_string();
    let (ok, out, err) = ww(&["dial", &quic, "/ww/sha256/0.1.0"], b"abc").await;
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sha256_of_a_large_request() {
    let node = Node::start(&[]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let data = vec![b'a'; 1_000_000];
    let answer = request(&client, peer, SHA256, &data).await.unwrap();
    // sha256 of one million 'a's (FIPS 180-2 test vector).
    assert_eq!(
        answer,
        b"cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_streams_each_get_a_fresh_instance() {
    let fresh = test_cell("fresh");
    let cell = format!("/test/fresh/1={}", fresh.display());
    // One peer, 200 streams at once, with the defaults: 64 run, the rest wait their turn.
    let node = Node::start(&["--cell", &cell]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let protocol = StreamProtocol::new("/test/fresh/1");
    let streams = (0..200u64).map(|i| {
        let client = client.clone();
        let protocol = protocol.clone();
        tokio::spawn(async move {
            let data = pattern(64 * 1024, i);
            let answer = request(&client, peer, protocol, &data).await?;
            Ok::<_, std::io::Error>((answer, data))
        })
    });
    let results = join_all(streams).await;
    let mut failures = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result.unwrap() {
            Ok((answer, data)) => {
                assert!(
                    answer.starts_with(b"1\n"),
                    "stream {i} ran in a reused instance"
                );
                assert!(answer[2..] == data[..], "stream {i}: echo differs");
            }
            Err(error) => failures.push(format!("stream {i}: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} streams failed: {failures:?}\n{}",
        failures.len(),
        node.log()
    );
    let status = node.wait_idle(&client).await;
    assert_eq!(status.succeeded, 200);
    assert_eq!(status.failed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_stops_reading_stalls_the_guest() {
    use futures::AsyncWriteExt as _;
    let node = Node::start(&[]).await;
    let pid = node.child.id().unwrap();
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let mut stream = client.open(peer, ECHO).await.unwrap();
    let before = rss_kib(pid);

    // Write without ever reading the echo. Once the guest's output, its input and the
    // muxer's windows are full, writes must stop being accepted.
    let chunk = vec![7u8; 64 * 1024];
    let mut accepted = 0usize;
    while accepted < 512 * MIB {
        let write =
            tokio::time::timeout(std::time::Duration::from_secs(2), stream.write_all(&chunk));
        match write.await {
            Ok(result) => {
                result.unwrap();
                accepted += chunk.len();
            }
            Err(_stalled) => break,
        }
    }
    let after = rss_kib(pid);
    eprintln!("accepted {accepted} bytes before stalling; node RSS {before} KiB -> {after} KiB");
    assert!(
        accepted < 32 * MIB,
        "{accepted} bytes accepted: nothing pushes back"
    );
    assert!(
        after < before + 64 * 1024,
        "the node grew from {before} KiB to {after} KiB"
    );
}
