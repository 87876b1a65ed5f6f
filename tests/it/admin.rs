//! The admin endpoint: health, Prometheus metrics with reasons, JSON status.

use ww::net::client::Client;
use ww::net::status::{self, Outcome};

use crate::support::{
    ECHO, Node, assert_failed, cell_flag, free_local_addr, http_get, outcome_of, request,
};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_status_show_what_happened() {
    let admin = free_local_addr();
    let stranger = libp2p::PeerId::random();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[cells.echo]\nprotocol = \"/ww/echo/0.1.0\"\nbuiltin = \"echo\"\n",
    )
    .unwrap();
    let args = [
        "--config".to_string(),
        config.path().display().to_string(),
        "--admin".into(),
        admin.to_string(),
        "--cell".into(),
        cell_flag("trap"),
        "--cell".into(),
        cell_flag("sleepy"),
        "--cell".into(),
        cell_flag("exit-early"),
        "--allow".into(),
        format!("/test/exit-early/1={stranger}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start(&args).await;
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".to_string()));

    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    assert_eq!(request(&client, peer, ECHO, b"x").await.unwrap(), b"x");
    assert_failed(
        &outcome_of(&client, peer, b"", "/test/trap/1").await.1,
        "trapped",
    );
    assert_failed(
        &outcome_of(&client, peer, b"", "/test/exit-early/1").await.1,
        "refused: not allowed",
    );
    let sleepy = libp2p::StreamProtocol::new("/test/sleepy/1");
    let held = client
        .open(peer, status::status_variant(&sleepy))
        .await
        .unwrap();
    let mut live = 0;
    for _ in 0..100 {
        let (code, body) = http_get(admin, "/status").await;
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        live = status["live_instances"].as_u64().unwrap();
        if live == 1 {
            assert_eq!(status["peer_id"], node.peer.to_string());
            assert!(status["connected_peers"].as_u64().unwrap() >= 1);
            assert!(
                status["listen"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a == &node.tcp.to_string())
            );
            let cells = status["cells"].as_array().unwrap();
            let sleepy = cells
                .iter()
                .find(|c| c["name"] == "sleepy")
                .expect("sleepy listed");
            assert_eq!(sleepy["live_instances"], 1);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(live, 1, "the held stream never showed in /status");

    let (code, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "ww_streams_completed_total{cell=\"echo\"} 1",
        "ww_streams_failed_total{cell=\"trap\",reason=\"trap\"} 1",
        "ww_streams_refused_total{cell=\"exit_early\",reason=\"not_allowed\"} 1",
        "ww_instances_live{cell=\"sleepy\"} 1",
        "ww_bytes_in_total{cell=\"echo\"} 1",
        "libp2p_swarm_connections_established_total",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }

    // Ending the held stream brings the live count back down.
    use tokio::io::AsyncWriteExt as _;
    use tokio_util::compat::FuturesAsyncReadCompatExt as _;
    let (mut reader, mut writer) = tokio::io::split(held.compat());
    writer.shutdown().await.unwrap();
    assert_eq!(
        status::read_answer(&mut reader, &mut Vec::new())
            .await
            .unwrap(),
        Outcome::Success
    );
    node.wait_idle(&client).await;
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("ww_instances_live{cell=\"sleepy\"} 0"),
        "{metrics}"
    );
}
