//! Stdio cells: plain WASI programs whose stdin and stdout are the peer's stream.

use futures::future::join_all;
use libp2p::StreamProtocol;
use ww::net::client::Client;
use ww::net::status::Outcome;

use crate::support::{Node, assert_failed, cell_flag, outcome_of, pattern, request, ww};

const MIB: usize = 1 << 20;

async fn node() -> Node {
    let cells = ["stdio-echo", "stdio-exit", "stdio-panic", "stdio-noread"].map(cell_flag);
    let mut args = Vec::new();
    for cell in &cells {
        args.extend(["--cell", cell.as_str()]);
    }
    Node::start(&args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_std_only_echo_program_is_byte_exact() {
    let node = node().await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let protocol = StreamProtocol::new("/test/stdio-echo/1");
    for (i, len) in [0, 1, MIB, 16 * MIB].into_iter().enumerate() {
        let data = pattern(len, i as u64);
        let started = std::time::Instant::now();
        let answer = request(&client, peer, protocol.clone(), &data)
            .await
            .unwrap();
        eprintln!("stdio echo of {len} bytes in {:?}", started.elapsed());
        assert!(
            answer == data,
            "stdio echo of {len} bytes differs (got {})",
            answer.len()
        );
    }
    let (payload, outcome) = outcome_of(&client, peer, b"framed", "/test/stdio-echo/1").await;
    assert_eq!(
        (payload.as_slice(), outcome),
        (&b"framed"[..], Outcome::Success)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_stdio_streams_all_succeed() {
    let node = node().await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let protocol = StreamProtocol::new("/test/stdio-echo/1");
    let streams = (0..100u64).map(|i| {
        let (client, protocol) = (client.clone(), protocol.clone());
        tokio::spawn(async move {
            let data = pattern(16 * 1024, i);
            request(&client, peer, protocol, &data)
                .await
                .map(|answer| answer == data)
        })
    });
    for (i, result) in join_all(streams).await.into_iter().enumerate() {
        assert!(
            result.unwrap().unwrap(),
            "stream {i} failed:\n{}",
            node.log()
        );
    }
    let stats = node.wait_idle(&client).await;
    assert_eq!((stats.succeeded, stats.failed), (100, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_and_panics_are_failures_and_the_next_stream_is_fine() {
    let node = node().await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let echo = StreamProtocol::new("/test/stdio-echo/1");

    let (payload, outcome) = outcome_of(&client, peer, b"question\n", "/test/stdio-exit/1").await;
    assert_eq!(payload, b"partial");
    assert_failed(&outcome, "exited with status 1");
    assert_eq!(
        request(&client, peer, echo.clone(), b"next").await.unwrap(),
        b"next"
    );

    let (_, outcome) = outcome_of(&client, peer, b"question\n", "/test/stdio-panic/1").await;
    assert_failed(&outcome, "trapped");
    assert_eq!(
        request(&client, peer, echo.clone(), b"next").await.unwrap(),
        b"next"
    );

    // Exiting 0 without reading stdin is a success, even with input left unread.
    let (payload, outcome) = outcome_of(&client, peer, &[7; 100_000], "/test/stdio-noread/1").await;
    assert_eq!(payload, b"hello from a command that never reads\n");
    assert_eq!(outcome, Outcome::Success);
    assert!(
        node.log().contains("about to panic"),
        "stderr reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_builtin_calculator_answers_line_by_line() {
    let node = Node::start(&[]).await;
    let input = b"1 + 2 * 3\n(1+2)*3\n2^10/4\n\n1/0\n";
    let (ok, out, err) = ww(&["dial", &node.tcp.to_string(), "/ww/calc/0.1.0"], input).await;
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "7\n9\n256\nerror: division by zero\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ww_cell_runs_a_stdio_program_on_this_terminal() {
    let echo = crate::support::test_cell("stdio-echo")
        .display()
        .to_string();
    let (ok, out, err) = ww(&["cell", &echo], b"through the terminal").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"through the terminal");
    let exit = crate::support::test_cell("stdio-exit")
        .display()
        .to_string();
    let (ok, _, err) = ww(&["cell", &exit], b"x\n").await;
    assert!(!ok);
    assert!(err.contains("exited with status 1"), "{err}");
}
