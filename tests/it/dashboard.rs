//! The dashboard on the admin port: the token, the live feed, the page in a real
//! (headless) Chromium, and what an open dashboard costs the node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use ww::net::client::Client;

use crate::support::{
    ECHO, Node, cell_flag, cpu_ticks, free_local_addr, outcome_of, request, run_fails, ww,
};

/// A token good enough for `--admin-token`.
const TOKEN: &str = "dashboard-test-token-0123";

/// Sends `GET path` (with `authorization` as the header, if any) and returns the
/// status code, reading no more than the status line: a feed never ends.
async fn status_of(admin: SocketAddr, path: &str, authorization: Option<&str>) -> u16 {
    let mut socket = TcpStream::connect(admin).await.unwrap();
    let header = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n{header}Connection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut line = String::new();
    BufReader::new(socket).read_line(&mut line).await.unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends `GET path` and returns the whole body (for responses that end).
async fn body_of(admin: SocketAddr, path: &str) -> String {
    let mut socket = TcpStream::connect(admin).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// Starts a node with an admin endpoint (and the token), the built-in cells and
/// `trap`; returns it with its admin address.
async fn node_with_dashboard(extra: &[&str]) -> (Node, SocketAddr) {
    let admin = free_local_addr();
    let admin_arg = admin.to_string();
    let trap = cell_flag("trap");
    let mut args = vec![
        "--admin",
        &admin_arg,
        "--admin-token",
        TOKEN,
        "--cell",
        "/ww/echo/0.1.0=builtin:echo",
        "--cell",
        &trap,
    ];
    args.extend_from_slice(extra);
    let node = Node::start(&args).await;
    (node, admin)
}

/// An open `/api/events` feed.
struct Feed {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
    /// Bytes read so far, headers included.
    bytes: usize,
}

impl Feed {
    async fn open(admin: SocketAddr) -> Feed {
        let mut socket = TcpStream::connect(admin).await.unwrap();
        let request = format!("GET /api/events?token={TOKEN} HTTP/1.1\r\nHost: {admin}\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut feed = Feed {
            lines: BufReader::new(socket).lines(),
            bytes: 0,
        };
        let status = feed.line().await.expect("a status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        while !feed.line().await.expect("headers").is_empty() {}
        feed
    }

    async fn line(&mut self) -> Option<String> {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("the feed went quiet")
            .ok()??;
        self.bytes += line.len() + 1;
        Some(line)
    }

    /// The next snapshot, or `None` once the feed has ended.
    async fn next(&mut self) -> Option<serde_json::Value> {
        loop {
            let line = self.line().await?;
            // Chunked transfer encoding puts size lines between the events.
            if let Some(json) = line.strip_prefix("data: ") {
                return Some(serde_json::from_str(json).unwrap());
            }
        }
    }
}

/// The cell named `name` in a snapshot.
fn cell<'a>(state: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    state["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cell {name} in {state}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_once_given_is_required_on_every_request() {
    let (_node, admin) = node_with_dashboard(&[]).await;
    let good = format!("Bearer {TOKEN}");
    for path in [
        "/",
        "/api/state",
        "/api/events",
        "/status",
        "/metrics",
        "/healthz",
    ] {
        assert_eq!(
            status_of(admin, path, None).await,
            401,
            "{path} without a token"
        );
        let wrong = Some("Bearer dashboard-test-token-0124");
        assert_eq!(
            status_of(admin, path, wrong).await,
            401,
            "{path}, wrong token"
        );
        assert_eq!(
            status_of(admin, path, Some(&good)).await,
            200,
            "{path}, header"
        );
        let query = if path.contains('?') { '&' } else { '?' };
        let with_query = format!("{path}{query}token={TOKEN}");
        assert_eq!(
            status_of(admin, &with_query, None).await,
            200,
            "{path}, query"
        );
    }
    // Off loopback, a token is a must. (The address is not this machine's: nothing
    // could bind it even if the check were missing.)
    let error = run_fails(&["--admin", "198.51.100.7:2026"]).await;
    assert!(error.contains("not loopback"), "{error}");
    let error = run_fails(&["--admin", "127.0.0.1:0", "--admin-token", "short"]).await;
    assert!(error.contains("at least 16 characters"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feed_shows_counts_rising_failures_and_peers() {
    let (node, admin) = node_with_dashboard(&[]).await;
    let mut feed = Feed::open(admin).await;
    let first = feed.next().await.unwrap();
    assert_eq!(first["node"]["peer_id"], node.peer.to_string());
    let completed_before = cell(&first, "echo")["completed"].as_u64().unwrap();

    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    for _ in 0..5 {
        assert_eq!(request(&client, peer, ECHO, b"hi").await.unwrap(), b"hi");
    }
    let (_, outcome) = outcome_of(&client, peer, b"", "/test/trap/1").await;
    crate::support::assert_failed(&outcome, "trapped");
    let me = client.local_peer_id().to_string();

    let mut seen = None;
    for _ in 0..30 {
        let state = feed.next().await.expect("the feed ended early");
        let echo = cell(&state, "echo");
        let identified = state["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == me.as_str() && !p["agent"].is_null());
        if echo["completed"].as_u64().unwrap() >= completed_before + 5 && identified {
            seen = Some(state);
            break;
        }
    }
    let state = seen.expect("the feed never showed the traffic");
    let echo = cell(&state, "echo");
    assert_eq!(echo["bytes_in"], 10);
    assert!(echo["p50_s"].as_f64().unwrap() > 0.0);
    assert_eq!(cell(&state, "trap")["failed"], 1);
    let failure = &state["failures"][0];
    assert_eq!(failure["cell"], "trap");
    assert_eq!(failure["kind"], "trap");
    assert!(
        failure["reason"].as_str().unwrap().starts_with("trapped"),
        "{failure}"
    );
    assert_eq!(failure["peer"], me.as_str());
    let me_seen = state["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == me.as_str())
        .unwrap();
    assert_eq!(me_seen["connections"][0]["direction"], "inbound");
    assert_eq!(me_seen["connections"][0]["relayed"], false);
    assert_eq!(me_seen["connections"][0]["transport"], "tcp");
    assert_eq!(state["node"]["connected_peers"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_keeps_the_last_minutes_for_a_page_opened_later() {
    let (node, admin) = node_with_dashboard(&[]).await;
    let client = Client::new().unwrap();
    let peer = client.connect(&node.tcp).await.unwrap();
    let state_path = format!("/api/state?token={TOKEN}");
    // Echo streams for a few seconds, no dashboard open; then the node's history has
    // a rate per second for them.
    let mut rates = Vec::new();
    for _ in 0..100 {
        for _ in 0..5 {
            assert_eq!(request(&client, peer, ECHO, b"hi").await.unwrap(), b"hi");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let state: serde_json::Value =
            serde_json::from_str(&body_of(admin, &state_path).await).unwrap();
        rates = state["history"]["echo"]
            .as_array()
            .map(|r| r.iter().map(|r| r.as_f64().unwrap()).collect())
            .unwrap_or_default();
        if rates.iter().filter(|r| **r > 0.0).count() >= 3 {
            break;
        }
    }
    assert!(
        rates.iter().filter(|r| **r > 0.0).count() >= 3,
        "no history: {rates:?}"
    );
    assert!(rates.len() <= ww::admin::history::HISTORY_POINTS);
    // The feed's snapshots leave it out: it is sent once, with the page.
    let mut feed = Feed::open(admin).await;
    assert!(feed.next().await.unwrap().get("history").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_feed_outlives_the_connection_lifetime() {
    let (_node, admin) = node_with_dashboard(&[]).await;
    let mut feed = Feed::open(admin).await;
    let first = feed.next().await.unwrap()["node"]["uptime_s"]
        .as_u64()
        .unwrap();
    let lifetime = ww::admin::CONNECTION_LIFETIME.as_secs();
    let mut last = first;
    // One snapshot a second: bounded by twice the lifetime's worth of snapshots.
    for _ in 0..2 * lifetime {
        let Some(state) = feed.next().await else {
            break;
        };
        last = state["node"]["uptime_s"].as_u64().unwrap();
        if last > first + lifetime + 2 {
            break;
        }
    }
    assert!(
        last > first + lifetime + 2,
        "the feed ended after {}s, within the {lifetime}s connection lifetime",
        last - first
    );
}

/// The cluster entry for `peer` in a snapshot, if any.
fn known<'a>(state: &'a serde_json::Value, peer: &str) -> Option<&'a serde_json::Value> {
    state["cluster"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["peer_id"] == peer)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_links_to_the_dashboards_peers_tell_of() {
    let (first, first_admin) = node_with_dashboard(&[]).await;
    let second_admin = free_local_addr();
    let second_admin_arg = second_admin.to_string();
    let first_tcp = first.tcp.to_string();
    let second = Node::start(&["--admin", &second_admin_arg, "--bootstrap", &first_tcp]).await;
    // A third node without a dashboard: known, but with nothing to link to.
    let third = Node::start(&["--bootstrap", &first_tcp]).await;
    let state_path = format!("/api/state?token={TOKEN}");
    let mut state = serde_json::Value::Null;
    for _ in 0..200 {
        state = serde_json::from_str(&body_of(first_admin, &state_path).await).unwrap();
        let linked =
            known(&state, &second.peer.to_string()).is_some_and(|k| !k["dashboard"].is_null());
        let third_told =
            known(&state, &third.peer.to_string()).is_some_and(|k| !k["cells"].is_null());
        if linked && third_told {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entry = known(&state, &second.peer.to_string())
        .unwrap_or_else(|| panic!("the second node is not in the cluster: {state}"));
    // Both on loopback, reached over loopback: the link is the second node's own
    // admin address, as a URL.
    assert_eq!(
        entry["dashboard"],
        format!("http://{second_admin}/"),
        "{entry}"
    );
    let third_entry = known(&state, &third.peer.to_string()).unwrap();
    assert!(third_entry["dashboard"].is_null(), "{third_entry}");
    assert!(
        third_entry["cells"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| !c.as_str().unwrap().starts_with("/ww/dashboard/")),
        "the protocol is the node's, not a cell: {third_entry}"
    );
    // And the other way: the second node links to the first's.
    let mut linked = serde_json::Value::Null;
    for _ in 0..200 {
        let state: serde_json::Value =
            serde_json::from_str(&body_of(second_admin, "/api/state").await).unwrap();
        linked = known(&state, &first.peer.to_string())
            .map(|k| k["dashboard"].clone())
            .unwrap_or_default();
        if !linked.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(linked, format!("http://{first_admin}/"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_shows_the_cells_peers_provide_in_the_dht() {
    let (first, admin) = node_with_dashboard(&[]).await;
    // It announces its cells in the DHTs; the first node, a LAN DHT server, keeps
    // the provider records.
    let second = Node::start(&["--bootstrap", &first.tcp.to_string()]).await;
    let state_path = format!("/api/state?token={TOKEN}");
    let mut entry = serde_json::Value::Null;
    // Provider records are read every 10 s: bounded by a few rounds.
    for _ in 0..600 {
        let state: serde_json::Value =
            serde_json::from_str(&body_of(admin, &state_path).await).unwrap();
        entry = known(&state, &second.peer.to_string())
            .cloned()
            .unwrap_or_default();
        if entry["provides"].as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let provides = entry["provides"]
        .as_array()
        .unwrap_or_else(|| panic!("no provider records: {entry}"));
    for cell in ["/ww/calc/0.1.0", "/ww/echo/0.1.0", "/ww/sha256/0.1.0"] {
        assert!(provides.iter().any(|c| c == cell), "{cell}: {entry}");
    }
    assert!(
        entry["found_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "provider-record"),
        "{entry}"
    );
}

/// Chromium, installed from Debian's package when missing (as `.ci/run` does on a
/// fresh machine; needs root).
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    if !path.exists() {
        // A fresh machine may have no package lists yet; CI runs as root.
        let apt = |args: &[&str]| {
            std::process::Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|status| status.success())
        };
        let installed = apt(&["install", "-y", "chromium"])
            || (apt(&["update"]) && apt(&["install", "-y", "chromium"]));
        assert!(
            installed && path.exists(),
            "this test needs Debian's chromium; installing it failed (run as root, or `apt-get install chromium`)"
        );
    }
    path
}

/// Opens `url` in headless Chromium, lets the page run for `budget` of virtual time,
/// and returns the DOM it then has; with `screenshot`, also saves a PNG there.
async fn chromium_dom(url: &str, budget: Duration, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1250",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let output = command.arg(url).kill_on_drop(true).output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("chromium took too long")
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The texts of the cells of the table row whose `attribute` is `value`.
fn row(dom: &str, attribute: &str, value: &str) -> Option<Vec<String>> {
    let start = dom.find(&format!("{attribute}=\"{value}\""))?;
    let end = start + dom[start..].find("</tr>")?;
    let mut cells = Vec::new();
    let mut rest = &dom[start..end];
    while let Some(open) = rest.find("<td") {
        let body = &rest[open..];
        let text_start = body.find('>')? + 1;
        let text_end = body.find("</td>")?;
        cells.push(body[text_start..text_end].to_string());
        rest = &body[text_end..];
    }
    Some(cells)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_sees_cells_failures_and_peers_in_chromium() {
    let (node, admin) = node_with_dashboard(&[]).await;
    // Two client peers: echo streams from both, a trap from the second.
    let (alice, bob) = (Client::new().unwrap(), Client::new().unwrap());
    for client in [&alice, &bob] {
        let peer = client.connect(&node.tcp).await.unwrap();
        for _ in 0..3 {
            assert_eq!(request(client, peer, ECHO, b"hey").await.unwrap(), b"hey");
        }
    }
    let (_, outcome) = outcome_of(&bob, node.peer, b"", "/test/trap/1").await;
    crate::support::assert_failed(&outcome, "trapped");
    // Another node joins through this one: the cluster shows it and its cells.
    // It has a dashboard too: the cluster links to it.
    let other_admin = free_local_addr().to_string();
    let other = Node::start(&[
        "--bootstrap",
        &node.tcp.to_string(),
        "--admin",
        &other_admin,
    ])
    .await;
    // Identify and ping have run once every peer shows an agent and an RTT.
    for _ in 0..400 {
        let state: serde_json::Value =
            serde_json::from_str(&body_of(admin, &format!("/api/state?token={TOKEN}")).await)
                .unwrap();
        let peers = state["peers"].as_array().unwrap();
        let told = state["cluster"].as_array().unwrap().iter().any(|k| {
            k["peer_id"] == other.peer.to_string()
                && !k["cells"].is_null()
                && !k["dashboard"].is_null()
        });
        // The node's history has a few seconds for the sparkline to start from.
        let history = state["history"]["echo"].as_array().map_or(0, Vec::len);
        if peers.len() == 3
            && told
            && history >= 4
            && peers
                .iter()
                .all(|p| !p["agent"].is_null() && !p["rtt_ms"].is_null())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More traffic while the browser watches, so its feed has counts to update.
    let traffic = {
        let (alice, peer) = (alice.clone(), node.peer);
        tokio::spawn(async move {
            // Until aborted at the end of the test (bounded all the same).
            for _ in 0..6000 {
                let _ = request(&alice, peer, ECHO, b"more").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // `updates=3`: the page closes its feed after three snapshots, so that the
    // browser's virtual time (which waits for open requests) runs out.
    let url = format!("http://{admin}/?token={TOKEN}&updates=3");
    let dom = chromium_dom(&url, Duration::from_secs(4), None).await;
    // What the server put in the page, before the feed: the counts must have risen.
    let initial = dom
        .split("id=\"initial-state\" type=\"application/json\">")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .expect("the embedded first snapshot");
    let initial: serde_json::Value = serde_json::from_str(initial).unwrap();
    let completed_at_load = cell(&initial, "echo")["completed"].as_u64().unwrap();
    let echo = row(&dom, "data-cell", "echo").unwrap_or_else(|| panic!("no echo row:\n{dom}"));
    assert_eq!(echo[0], "echo");
    assert_eq!(echo[1], "/ww/echo/0.1.0");
    let completed: u64 = echo[8].parse().unwrap_or_else(|_| panic!("{echo:?}"));
    assert!(completed >= 6, "{echo:?}");
    assert!(
        completed > completed_at_load,
        "the feed never raised echo's count ({completed_at_load} at load): {echo:?}"
    );
    // The sparkline starts from the node's own history, not from the page's three
    // snapshots.
    let points = echo[7]
        .split("points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map_or(0, |points| points.split_whitespace().count());
    assert!(points > 3, "the sparkline has {points} points: {}", echo[7]);
    let trap = row(&dom, "data-cell", "trap").expect("a trap row");
    assert_eq!(trap[9], "1", "trap's failed count: {trap:?}");
    let failure = row(&dom, "class", "failure").expect("a failure row");
    assert_eq!(failure[1], "trap");
    assert!(failure[3].starts_with("trapped"), "{failure:?}");
    assert_eq!(failure[4], bob.local_peer_id().to_string());
    for client in [&alice, &bob] {
        let peer = row(&dom, "data-peer", &client.local_peer_id().to_string())
            .unwrap_or_else(|| panic!("peer missing:\n{dom}"));
        assert_eq!(peer[1], "inbound");
        assert_eq!(peer[3], "direct · tcp");
        assert!(peer[4].ends_with(" ms"), "{peer:?}");
        assert_ne!(peer[5], "–", "no agent: {peer:?}");
    }
    let known = row(&dom, "data-known", &other.peer.to_string())
        .unwrap_or_else(|| panic!("the other node is not in the cluster:\n{dom}"));
    assert!(known[1].contains("connection"), "{known:?}");
    assert_eq!(known[2], "yes");
    for cell in ["/ww/calc/0.1.0", "/ww/echo/0.1.0", "/ww/sha256/0.1.0"] {
        assert!(
            known[4].split(' ').any(|c| c == cell),
            "{cell} not in {known:?}"
        );
    }
    assert!(!known[4].contains("+status"), "{known:?}");
    assert!(
        known[5].starts_with("<a ")
            && known[5].contains(&format!("href=\"http://{other_admin}/\"")),
        "no link to the other node's dashboard: {known:?}"
    );
    // The live feed ran in the browser: the header counts its snapshots.
    let updates = dom
        .split("data-updates=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(updates, Some(3), "the feed did not update the page:\n{dom}");
    println!(
        "echo completed: {completed_at_load} in the page as served, {completed} after the feed"
    );

    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    chromium_dom(&url, Duration::from_secs(3), Some(&screenshot)).await;
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
    println!("screenshot: {}", screenshot.display());
    traffic.abort();
}

/// Prints (asserts nothing about) the node's CPU under `ww bench` load with and
/// without open dashboards, and the feed's bytes per second.
#[tokio::test(flavor = "multi_thread")]
async fn what_an_open_dashboard_costs() {
    let (node, admin) = node_with_dashboard(&[]).await;
    let pid = node.child.id().unwrap();
    let tcp = node.tcp.to_string();
    let bench = || {
        let args = [
            "bench",
            &tcp,
            "/ww/echo/0.1.0",
            "--duration",
            "4",
            "--concurrency",
            "16",
            "--bytes",
            "64",
            "--connections",
            "2",
        ];
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = ww(&args, b"").await;
            assert!(ok, "{err}");
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let measure = |label: &'static str| {
        let bench = bench();
        async move {
            let before = cpu_ticks(pid);
            let started = std::time::Instant::now();
            let report = bench.await;
            let ticks = cpu_ticks(pid) - before;
            let cpu = ticks as f64 / 100.0 / started.elapsed().as_secs_f64();
            let streams: f64 = report
                .split_whitespace()
                .skip_while(|word| *word != "streams")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(f64::NAN);
            // Clock ticks are 10 ms.
            let per_1k = ticks as f64 * 10.0 / streams * 1000.0;
            println!(
                "{label}: node CPU {:.0}% of one core, {per_1k:.0} ms per 1000 streams ({streams} streams)",
                cpu * 100.0
            );
            per_1k
        }
    };
    let without = measure("no dashboard").await;
    let mut feeds = Vec::new();
    for _ in 0..4 {
        feeds.push(Feed::open(admin).await);
    }
    let reading = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut feed = feeds.pop().unwrap();
        let mut others = feeds;
        let mut snapshots = 0;
        while started.elapsed() < Duration::from_secs(4) {
            if feed.next().await.is_none() {
                break;
            }
            snapshots += 1;
            for other in &mut others {
                let _ = other.next().await;
            }
        }
        (feed.bytes, snapshots, started.elapsed())
    });
    let with = measure("4 dashboards open").await;
    let (bytes, snapshots, elapsed) = reading.await.unwrap();
    println!(
        "node CPU per stream, with/without: {:.2}; one feed: {snapshots} snapshots, {:.0} bytes/s",
        with / without,
        bytes as f64 / elapsed.as_secs_f64()
    );
}
