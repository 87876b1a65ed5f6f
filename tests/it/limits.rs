//! Hosting code we did not write: every limit stops a hostile guest and nobody else.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::io::AsyncWriteExt as _;
use tokio_util::compat::FuturesAsyncReadCompatExt as _;
use ww::net::client::Client;
use ww::net::status::{self, Outcome};

use crate::support::{
    ECHO, Node, assert_failed, cell_flag, eventually, free_local_addr, http_get, open_fds,
    open_status, outcome_of, pattern, request, rss_kib,
};

/// A node serving the built-in echo plus the named test cells, with `extra` flags.
async fn node_with(cells: &[&str], extra: &[&str]) -> Node {
    node_with_admin(cells, extra, None).await
}

/// The same, with the admin endpoint on `admin`.
async fn node_with_admin(
    cells: &[&str],
    extra: &[&str],
    admin: Option<std::net::SocketAddr>,
) -> Node {
    let mut args: Vec<String> = vec!["--config".into(), echo_config()];
    if let Some(admin) = admin {
        args.extend(["--admin".into(), admin.to_string()]);
    }
    for cell in cells {
        args.push("--cell".into());
        args.push(cell_flag(cell));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(&args).await
}

/// A config file (kept for the whole test process) that serves the built-in echo.
fn echo_config() -> String {
    static FILE: std::sync::OnceLock<tempfile::NamedTempFile> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "[cells.echo]\nprotocol = \"/ww/echo/0.1.0\"\nbuiltin = \"echo\"\n",
        )
        .unwrap();
        file
    });
    file.path().display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_looping_guest_is_stopped_at_its_cpu_limit_and_others_complete() {
    let admin = free_local_addr();
    let flags = ["--cpu-ms", "300"];
    let node = node_with_admin(&["spin"], &flags, Some(admin)).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();

    let started = Instant::now();
    let spin = tokio::spawn({
        let client = client.clone();
        async move {
            let (_, outcome) = outcome_of(&client, peer, b"", "/test/spin/1").await;
            (outcome, started.elapsed())
        }
    });
    let echoes = (0..100u64).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let data = pattern(4096, i);
            request(&client, peer, ECHO, &data)
                .await
                .map(|answer| answer == data)
        })
    });
    for (i, echoed) in join_all(echoes).await.into_iter().enumerate() {
        assert!(
            echoed.unwrap().unwrap(),
            "echo {i} failed beside a spinning guest"
        );
    }
    let (outcome, elapsed) = spin.await.unwrap();
    eprintln!("a guest with a 300 ms CPU budget was stopped after {elapsed:?}");
    assert_failed(&outcome, "cpu limit 300 ms exceeded");
    let stats = node.wait_idle(&client).await;
    assert_eq!((stats.succeeded, stats.failed), (100, 1));
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("ww_streams_failed_total{cell=\"spin\",reason=\"cpu\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ww_streams_completed_total{cell=\"echo\"} 100"),
        "{metrics}"
    );
}

/// The same with the CPU budget a newcomer gets (10 s): the spinning guest is stopped
/// there, and an echo beside it is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_looping_guest_is_stopped_at_the_default_cpu_limit() {
    let node = node_with(&["spin"], &[]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let spin = tokio::spawn({
        let client = client.clone();
        async move { outcome_of(&client, peer, b"", "/test/spin/1").await.1 }
    });
    assert_eq!(
        request(&client, peer, ECHO, b"beside").await.unwrap(),
        b"beside"
    );
    assert_failed(&spin.await.unwrap(), "cpu limit 10000 ms exceeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_waiting_on_io_is_not_charged_cpu() {
    let node = node_with(&[], &["--cpu-ms", "50"]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let (mut reader, mut writer) = open_status(&client, peer, ECHO.as_ref()).await;
    writer.write_all(b"slow").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // ten budgets of waiting
    writer.shutdown().await.unwrap();
    let mut payload = Vec::new();
    let outcome = status::read_answer(&mut reader, &mut payload)
        .await
        .unwrap();
    assert_eq!(
        (payload.as_slice(), outcome),
        (&b"slow"[..], Outcome::Success)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_stops_at_the_cap() {
    let node = node_with(&["hog"], &["--memory-mb", "16"]).await;
    let pid = node.child.id().unwrap();
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let before = rss_kib(pid);
    let bombs = (0..4).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { outcome_of(&client, peer, b"", "/test/hog/1").await.1 })
    });
    for outcome in join_all(bombs).await {
        assert_failed(&outcome.unwrap(), "memory limit 16 MiB exceeded");
    }
    let after = rss_kib(pid);
    eprintln!("4 memory bombs capped at 16 MiB: node RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 4 * 16 * 1024 + 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert_eq!(
        request(&client, peer, ECHO, b"still here").await.unwrap(),
        b"still here"
    );
}

/// The same with the memory a newcomer's cells get (64 MiB).
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_stops_at_the_default_cap() {
    let node = node_with(&["hog"], &[]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let (_, outcome) = outcome_of(&client, peer, b"", "/test/hog/1").await;
    assert_failed(&outcome, "memory limit 64 MiB exceeded");
    assert_eq!(
        request(&client, peer, ECHO, b"still here").await.unwrap(),
        b"still here"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_recursion_traps_without_taking_the_node_down() {
    let node = node_with(&["recurse"], &[]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let bombs = (0..100).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { outcome_of(&client, peer, b"", "/test/recurse/1").await.1 })
    });
    for outcome in join_all(bombs).await {
        assert_failed(&outcome.unwrap(), "trapped: ");
    }
    assert_eq!(
        request(&client, peer, ECHO, b"alive").await.unwrap(),
        b"alive"
    );
    assert_eq!(node.wait_idle(&client).await.failed, 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stream_is_closed_and_its_slot_returned() {
    let node = node_with(&["sleepy"], &["--idle-s", "1", "--max-instances", "1"]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let (mut reader, _writer) = open_status(&client, peer, "/test/sleepy/1").await;
    let started = Instant::now();
    let outcome = status::read_answer(&mut reader, &mut Vec::new())
        .await
        .unwrap();
    eprintln!(
        "an idle stream (idle_s = 1) was closed after {:?}",
        started.elapsed()
    );
    assert_failed(&outcome, "idle limit 1 s reached");
    // The only slot is free again.
    assert_eq!(
        request(&client, peer, ECHO, b"next").await.unwrap(),
        b"next"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_over_its_wall_clock_limit_is_ended() {
    let node = node_with(&["sleepy"], &["--wall-s", "1", "--idle-s", "0"]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let (mut reader, mut writer) = open_status(&client, peer, "/test/sleepy/1").await;
    // Keep the stream busy so only the wall clock can end it.
    let keep_busy = tokio::spawn(async move {
        while writer.write_all(b".").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let outcome = status::read_answer(&mut reader, &mut Vec::new())
        .await
        .unwrap();
    assert_failed(&outcome, "wall-clock limit 1 s reached");
    keep_busy.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_flooding_a_peer_that_never_reads_stays_flat() {
    let node = node_with(&["flood"], &[]).await;
    let pid = node.child.id().unwrap();
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let protocol = libp2p::StreamProtocol::new("/test/flood/1");
    let _stream = client.open(peer, protocol).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    eprintln!("flooding a peer that never reads: node RSS {before} KiB -> {after} KiB over 2 s");
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert_eq!(node.stats(&client).await.live, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_over_the_caps_wait_then_are_refused_visibly() {
    let admin = free_local_addr();
    let flags = [
        "--max-instances",
        "2",
        "--max-per-peer",
        "1",
        "--queue-ms",
        "200",
    ];
    let node = node_with_admin(&["sleepy"], &flags, Some(admin)).await;
    let protocol = libp2p::StreamProtocol::new("/test/sleepy/1");
    let framed = status::status_variant(&protocol);
    let (first, second, third) = (
        Client::new().unwrap(),
        Client::new().unwrap(),
        Client::new().unwrap(),
    );
    let mut held = Vec::new();
    for client in [&first, &second] {
        let peer = client.connect(&node.tcp).await.unwrap();
        held.push(client.open(peer, framed.clone()).await.unwrap());
    }
    let stats_client = Client::new().unwrap();
    node.wait_live(&stats_client, 2).await;

    // The same peer again: over its own cap.
    let peer = first.connect(&node.tcp).await.unwrap();
    let (_, outcome) = outcome_of(&first, peer, b"", "/test/sleepy/1").await;
    assert_failed(
        &outcome,
        "refused: too many streams from this peer (1 running, 256 waiting)",
    );
    // A third peer: the node is full.
    let peer = third.connect(&node.tcp).await.unwrap();
    let started = Instant::now();
    let (_, outcome) = outcome_of(&third, peer, b"", "/test/sleepy/1").await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it waited queue_ms first"
    );
    assert_failed(&outcome, "refused: node busy");

    // The held streams were not disturbed: they end cleanly when their peers close.
    let stats = node.stats(&stats_client).await;
    assert_eq!((stats.live, stats.refused), (2, 2));
    let (_, metrics) = http_get(admin, "/metrics").await;
    for reason in ["peer_busy", "node_busy"] {
        let line = format!("ww_streams_refused_total{{cell=\"sleepy\",reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
    for stream in held {
        let (mut reader, mut writer) = tokio::io::split(stream.compat());
        writer.shutdown().await.unwrap();
        let outcome = status::read_answer(&mut reader, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Success);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowlist_refuses_other_peers_before_instantiating() {
    let allowed = Client::new().unwrap();
    let stranger = Client::new().unwrap();
    let allow = format!("/ww/echo/0.1.0={}", allowed.local_peer_id());
    let node = node_with(&[], &["--allow", &allow]).await;

    let peer = stranger.connect(&node.tcp).await.unwrap();
    let (payload, outcome) = outcome_of(&stranger, peer, b"hi", "/ww/echo/0.1.0").await;
    assert!(payload.is_empty());
    assert_failed(&outcome, "refused: not allowed");
    let stats = node.stats(&stranger).await;
    assert_eq!(
        (stats.live, stats.succeeded, stats.failed, stats.refused),
        (0, 0, 0, 1)
    );
    assert!(node.log().contains("refused: not allowed"));

    let peer = allowed.connect(&node.tcp).await.unwrap();
    assert_eq!(request(&allowed, peer, ECHO, b"hi").await.unwrap(), b"hi");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_peers_leave_nothing_behind_round_after_round() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let node = node_with(&[], &[]).await;
    let pid = node.child.id().unwrap();
    let client = Client::new().unwrap();
    let tcp = node.tcp.to_string();
    let mut samples = Vec::new();
    for round in 0..3 {
        let mut dials = Vec::new();
        for _ in 0..20 {
            let mut dial = crate::support::spawn_ww(&["dial", &tcp, "/ww/echo/0.1.0"]);
            let mut stdin = dial.stdin.take().unwrap();
            let mut stdout = dial.stdout.take().unwrap();
            stdin.write_all(b"ping").await.unwrap();
            let mut echoed = [0u8; 4];
            stdout.read_exact(&mut echoed).await.unwrap();
            dials.push((dial, stdin, stdout));
        }
        assert_eq!(node.stats(&client).await.live, 20, "round {round}");
        for (mut dial, ..) in dials {
            dial.kill().await.unwrap();
        }
        node.wait_idle(&client).await;
        // Let the node notice the dead connections.
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push((open_fds(pid), rss_kib(pid)));
    }
    eprintln!("after each round of 20 killed peers: (open fds, RSS KiB) = {samples:?}");
    let (first_fds, first_rss) = samples[0];
    let (last_fds, last_rss) = samples[2];
    assert!(
        last_fds <= first_fds + 4,
        "file descriptors grew: {samples:?}"
    );
    assert!(last_rss < first_rss + 16 * 1024, "memory grew: {samples:?}");
}

/// Opens `n` `+status` echo streams from one client at once, each sending `data`, and
/// holds them open (write side too) until `release` says go; then closes each and
/// reads its outcome. Returns the outcomes, whose payloads must equal `data`.
async fn held_echo_burst(
    node: libp2p::Multiaddr,
    n: usize,
    data: Vec<u8>,
    opened: tokio::sync::mpsc::Sender<()>,
    release: tokio::sync::watch::Receiver<bool>,
) -> Vec<Outcome> {
    let client = Client::new().unwrap();
    let peer = client.connect(&node).await.unwrap();
    let framed = status::status_variant(&ECHO);
    let streams = (0..n).map(|_| {
        let (client, framed, data) = (client.clone(), framed.clone(), data.clone());
        let (opened, mut release) = (opened.clone(), release.clone());
        tokio::spawn(async move {
            let stream = client.open(peer, framed).await.unwrap();
            let (mut reader, mut writer) = tokio::io::split(stream.compat());
            let _ = opened.send(()).await;
            let mut payload = Vec::new();
            let read = status::read_answer(&mut reader, &mut payload);
            let write = async {
                // A refused stream may be closed under our writes; its trailer says why.
                let _ = writer.write_all(&data).await;
                let _ = release.wait_for(|go| *go).await;
                let _ = writer.shutdown().await;
            };
            let (outcome, ()) = tokio::join!(read, write);
            let outcome = outcome.unwrap();
            if outcome == Outcome::Success {
                assert!(payload == data, "an echo came back wrong");
            }
            outcome
        })
    });
    join_all(streams)
        .await
        .into_iter()
        .map(|outcome| outcome.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_200_streams_from_one_peer_is_served_with_the_defaults() {
    let node = Node::start(&[]).await;
    let (opened, mut opened_rx) = tokio::sync::mpsc::channel(256);
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let data = pattern(64 * 1024, 200);
    let burst = tokio::spawn(held_echo_burst(
        node.tcp.clone(),
        200,
        data,
        opened,
        release_rx,
    ));
    for _ in 0..200 {
        opened_rx.recv().await.unwrap();
    }
    // 64 run (the per-peer cap) and hold their slots; the other 136 wait their turn
    // for longer than the old 100 ms queue.
    node.wait_live(&Client::new().unwrap(), 64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    release.send(true).unwrap();
    let outcomes = burst.await.unwrap();
    let ok = outcomes.iter().filter(|o| **o == Outcome::Success).count();
    assert_eq!(ok, 200, "outcomes: {outcomes:?}");
    let stats = node.wait_idle(&Client::new().unwrap()).await;
    assert_eq!((stats.succeeded, stats.refused), (200, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_past_the_backlog_is_refused_at_once_and_stays_bounded() {
    let node = Node::start(&[]).await;
    let pid = node.child.id().unwrap();
    let before = rss_kib(pid);
    // One yamux connection carries at most 512 streams: 64 run, 256 wait, 180 are
    // refused at once with the reason.
    let (n, running, waiting): (usize, usize, usize) = (500, 64, 256);
    let (opened, mut opened_rx) = tokio::sync::mpsc::channel(n);
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let burst = tokio::spawn(held_echo_burst(
        node.tcp.clone(),
        n,
        pattern(64 * 1024, 500),
        opened,
        release_rx,
    ));
    for _ in 0..n {
        opened_rx.recv().await.unwrap();
    }
    let stats_client = Client::new().unwrap();
    node.wait_live(&stats_client, running as u64).await;
    let overflow = (n - running - waiting) as u64;
    eventually("the overflow refused", || async {
        (node.stats(&stats_client).await.refused == overflow).then_some(())
    })
    .await;
    let held = rss_kib(pid);
    release.send(true).unwrap();
    let outcomes = burst.await.unwrap();
    eprintln!(
        "{n} streams from one peer: node RSS {before} KiB before, {held} KiB while {running} ran \
         and {waiting} waited; all answered after {:?}",
        started.elapsed()
    );
    let ok = outcomes.iter().filter(|o| **o == Outcome::Success).count();
    assert_eq!(ok, running + waiting, "outcomes: {outcomes:?}");
    for outcome in outcomes.iter().filter(|o| **o != Outcome::Success) {
        assert_failed(
            outcome,
            "refused: too many streams from this peer (64 running, 256 waiting)",
        );
    }
    // Each waiting stream holds at most what its peer sent (here 64 KiB) and a task.
    assert!(
        held < before + 128 * 1024,
        "RSS grew from {before} to {held} KiB"
    );
    let stats = node.wait_idle(&stats_client).await;
    assert_eq!(
        (stats.succeeded, stats.refused),
        ((running + waiting) as u64, (n - running - waiting) as u64)
    );
}
