//! `ww bench` against real nodes: counts, verification, the JSON report.

use crate::support::{ECHO, Node, cell_flag, guests_dir, spawn_ww, ww};

/// Runs `ww bench` against `node` (50 streams of 3000 bytes, 8 in flight over 2
/// connections, answers verified) and returns its JSON report.
async fn bench(node: &Node, protocol: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let tcp = node.tcp.to_string();
    let args = [
        "bench",
        &tcp,
        protocol,
        "--streams",
        "50",
        "--concurrency",
        "8",
        "--bytes",
        "3000",
        "--connections",
        "2",
        "--verify-echo",
        "--json",
        json.to_str().unwrap(),
    ];
    let (ok, _, err) = ww(&[&args[..], extra].concat(), b"").await;
    assert!(ok, "{err}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_every_stream_and_byte() {
    let node = Node::start(&[]).await;
    let report = bench(&node, ECHO.as_ref(), &[]).await;
    assert_eq!(report["streams_ok"], 50);
    assert_eq!(report["errors"], serde_json::json!({}));
    assert_eq!(
        (&report["bytes_sent"], &report["bytes_received"]),
        (&serde_json::json!(150_000), &serde_json::json!(150_000))
    );
    let us = |phase: &str, percentile: &str| report[phase][percentile].as_u64().unwrap();
    assert!(us("first_byte", "p50_us") <= us("done", "p50_us"));
    assert!(us("done", "p50_us") <= us("done", "max_us"));
    let stats = node
        .wait_idle(&ww::net::client::Client::new().unwrap())
        .await;
    assert_eq!(stats.succeeded, 50, "each stream ran one instance");

    let report = bench(&node, ECHO.as_ref(), &["--duration", "0.3"]).await;
    assert!(report["streams_ok"].as_u64().unwrap() > 0);
    assert_eq!(report["errors"], serde_json::json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_catches_a_corrupted_reply() {
    // `fresh` echoes, but prefixes its answer with a counter line.
    let node = Node::start(&["--cell", &cell_flag("fresh")]).await;
    let report = bench(&node, "/test/fresh/1", &[]).await;
    assert_eq!(report["streams_ok"], 0);
    assert_eq!(report["errors"]["mismatch"], 50);
    let report = bench(&node, "/no/such/1", &[]).await;
    assert_eq!(report["errors"]["open"], 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_report_has_every_field() {
    let node = Node::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let tcp = node.tcp.to_string();
    let args = [
        "bench",
        &tcp,
        "/ww/echo/0.1.0",
        "--streams",
        "20",
        "--bytes",
        "2k",
        "--verify-echo",
    ];
    let (ok, out, err) = ww(
        &[&args[..], &["--json", json.to_str().unwrap()]].concat(),
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(String::from_utf8(out).unwrap().contains("20 ok"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "target",
        "protocol",
        "streams_ok",
        "errors",
        "bytes_per_stream",
        "concurrency",
        "connections",
        "elapsed_s",
        "streams_per_s",
        "bytes_per_s",
        "bytes_sent",
        "bytes_received",
        "first_byte",
        "done",
    ] {
        assert!(report.get(key).is_some(), "no `{key}` in {report}");
    }
    for percentile in ["p50_us", "p90_us", "p99_us", "max_us"] {
        assert!(
            report["done"][percentile].as_u64().is_some(),
            "no done.{percentile}"
        );
    }
    assert_eq!(report["streams_ok"], 20);
    assert_eq!(report["bytes_per_stream"], 2048, "sizes take units");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_suite_measures_every_workload_against_every_server() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("suite.json");
    let (ok, out, err) = ww(
        &[
            "bench-suite",
            "--quick",
            "--repeat",
            "2",
            "--json",
            json.to_str().unwrap(),
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(String::from_utf8(out).unwrap().contains("| ww / native |"));
    let suite: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(suite["machine"]["cores"].as_u64().unwrap() >= 1);
    let rows = suite["rows"].as_array().unwrap();
    // 3 workloads x (raw TCP + native and ww over TCP and QUIC).
    assert_eq!(rows.len(), 15);
    for row in rows {
        assert_eq!(row["report"]["errors"], serde_json::json!({}), "{row}");
        assert!(row["report"]["streams_ok"].as_u64().unwrap() > 0, "{row}");
        assert_eq!(row["runs"].as_array().unwrap().len(), 2, "{row}");
    }
    let ratios = suite["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 8);
    assert!(
        ratios
            .iter()
            .all(|r| r["ww_over_native"].as_f64().unwrap() > 0.0)
    );
    // (f): the quick run holds 50 idle cells on a node of their own.
    let memory = suite["memory"].as_array().unwrap();
    assert_eq!(memory.len(), 1);
    let row = &memory[0];
    assert_eq!(row["live"], 50);
    assert_eq!(row["connections"], 1);
    assert!(
        row["rss_live_kib"].as_u64().unwrap() > row["rss_idle_kib"].as_u64().unwrap(),
        "{row}"
    );
    assert!(row["kib_per_cell"].as_f64().unwrap() > 0.0, "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_suite_measures_the_python_and_javascript_cells_against_echo() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("suite.json");
    let cells = guests_dir();
    let args = [
        "bench-suite",
        "--quick",
        "--repeat",
        "1",
        "--guests",
        "--cells-dir",
        cells.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    // Building and compiling two large components takes minutes on a busy machine: more
    // than `ww()`'s patience.
    let run = spawn_ww(&args).wait_with_output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(900), run)
        .await
        .expect("the suite took over 15 minutes")
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    let table = String::from_utf8(output.stdout).unwrap();
    let suite: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let guests = &suite["guests"];
    let rows = guests["rows"].as_array().unwrap();
    let skipped = guests["skipped"].as_array().unwrap();
    assert_eq!(rows[0]["guest"], "echo", "echo is the baseline, first");
    assert_eq!(rows.len() + skipped.len(), 3, "{guests}");
    for row in rows {
        assert_eq!(row["report"]["errors"], serde_json::json!({}), "{row}");
        assert_eq!(row["report"]["streams_ok"], 40, "{row}");
        assert!(row["instantiate_mean_us"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["memory"]["live"], 10, "{row}");
        assert!(
            row["memory"]["kib_per_cell"].as_f64().unwrap() > 0.0,
            "{row}"
        );
        let guest = row["guest"].as_str().unwrap();
        assert!(table.contains(&format!("| {guest} |")), "{table}");
    }
    // Only a missing tool may skip a guest here; a failed build fails the test.
    for skip in skipped {
        let reason = skip["reason"].as_str().unwrap();
        assert!(reason.contains("is not installed"), "{skip}");
        eprintln!("skipped: the {} cell: {reason}", skip["language"]);
    }
}
