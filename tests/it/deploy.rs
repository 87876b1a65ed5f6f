//! Cells that move: `ww deploy`, `ww undeploy` and `ww cells` against real `ww run`
//! nodes that trust a deployer (`--deployer`) and cap components
//! (`--max-component`).

use std::path::Path;

use ww::content::ContentId;
use ww::net::client::Client;

use crate::support::*;
use crate::swap::Versioned;

/// The protocol the tests deploy on.
const DEPLOYED: &str = "/test/deployed/1";

/// A fresh deployer identity file in `dir`, and its peer ID (through `ww id`).
async fn deployer(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name).display().to_string();
    let (ok, out, err) = ww(&["id", "--identity", &path], b"").await;
    assert!(ok, "{err}");
    (path, String::from_utf8(out).unwrap().trim().to_string())
}

/// Runs `ww deploy FILE --protocol DEPLOYED --to NODE --identity IDENTITY`; returns
/// (success, stdout lines, stderr).
async fn deploy(file: &Path, node: &Node, identity: &str) -> (bool, Vec<String>, String) {
    let to = node.tcp.to_string();
    let file = file.to_str().unwrap();
    let args = [
        "deploy",
        file,
        "--protocol",
        DEPLOYED,
        "--to",
        &to,
        "--identity",
        identity,
    ];
    let (ok, out, err) = ww(&args, b"").await;
    let lines = String::from_utf8_lossy(&out)
        .lines()
        .map(String::from)
        .collect();
    (ok, lines, err)
}

/// `ww dial NODE PROTOCOL` with `input`; (success, output, stderr).
async fn dial(node: &Node, protocol: &str, input: &[u8]) -> (bool, Vec<u8>, String) {
    ww(&["dial", &node.tcp.to_string(), protocol], input).await
}

/// Asserts that `node` still serves its built-in echo cell.
async fn serves_on(node: &Node) {
    let (ok, out, err) = dial(node, "/ww/echo/0.1.0", b"still here").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"still here");
}

#[tokio::test]
async fn a_deployed_cell_answers_and_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, me) = deployer(dir.path(), "me.key").await;
    let node = Node::start(&["--deployer", &me]).await;
    let cell = test_cell("fresh");
    let id = ContentId::of(&std::fs::read(&cell).unwrap());

    let (ok, out, err) = deploy(&cell, &node, &identity).await;
    assert!(ok, "{err}");
    assert_eq!(out[0], id.to_string());
    assert!(
        out[1].starts_with(&format!("{}  deployed {id} (granted: memory ", node.peer)),
        "{out:?}"
    );

    // The fresh cell writes how often `run` ran in its instance, then echoes.
    let (ok, answer, err) = dial(&node, DEPLOYED, b"hello").await;
    assert!(ok, "{err}");
    assert_eq!(answer, b"1\nhello");

    let (ok, table, err) = ww(&["cells", &node.tcp.to_string()], b"").await;
    assert!(ok, "{err}");
    let table = String::from_utf8(table).unwrap();
    let row = table.lines().find(|line| line.starts_with(DEPLOYED));
    let row = row.unwrap_or_else(|| panic!("{DEPLOYED} not listed:\n{table}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        fields[1..4],
        [&id.to_string(), "connection", "deployed"],
        "{row}"
    );

    let (ok, stats, err) = ww(&["stats", &node.tcp.to_string()], b"").await;
    assert!(ok, "{err}");
    let stats = String::from_utf8(stats).unwrap();
    assert!(
        stats.contains(&format!("cell {DEPLOYED} {id} 0\n")),
        "{stats}"
    );
}

#[tokio::test]
async fn a_peer_that_is_not_a_deployer_is_refused_and_the_node_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_, trusted) = deployer(dir.path(), "trusted.key").await;
    let (stranger, _) = deployer(dir.path(), "stranger.key").await;
    let node = Node::start(&["--deployer", &trusted]).await;

    let (ok, out, err) = deploy(&test_cell("fresh"), &node, &stranger).await;
    assert!(!ok, "a refusal fails the command");
    assert!(
        out[1].starts_with(&format!("{}  refused: ", node.peer)),
        "{out:?}"
    );
    assert!(err.contains("1 of 1 nodes did not deploy"), "{err}");

    let (ok, _, err) = dial(&node, DEPLOYED, b"x").await;
    assert!(!ok, "nothing was deployed");
    assert!(err.contains("does not serve"), "{err}");
    serves_on(&node).await;
}

#[tokio::test]
async fn oversize_and_malformed_components_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, me) = deployer(dir.path(), "me.key").await;
    let node = Node::start(&["--deployer", &me, "--max-component", "16KiB"]).await;

    // Over the cap: refused before the bytes, with the sizes.
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, pattern(1 << 20, 3)).unwrap();
    let (ok, out, _) = deploy(&big, &node, &identity).await;
    assert!(!ok);
    assert!(
        out[1].contains("refused: ") && out[1].contains("16384"),
        "{out:?}"
    );

    // Under the cap but not a component, and a component of the wrong world.
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, pattern(4096, 5)).unwrap();
    let wrong_world = dir.path().join("no-run.wasm");
    std::fs::copy(test_cell("no-run"), &wrong_world).unwrap();
    for file in [garbage, wrong_world] {
        let (ok, out, _) = deploy(&file, &node, &identity).await;
        assert!(!ok, "{}", file.display());
        let refused = out[1].split_once("refused: ");
        let reason = refused.unwrap_or_else(|| panic!("{out:?}")).1;
        assert!(
            reason.contains("component"),
            "a reason for {}: {reason}",
            file.display()
        );
    }
    serves_on(&node).await;
}

#[tokio::test]
async fn undeploy_stops_serving_the_cell() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, me) = deployer(dir.path(), "me.key").await;
    let node = Node::start(&["--deployer", &me]).await;
    let cell = test_cell("fresh");
    let id = ContentId::of(&std::fs::read(&cell).unwrap());
    let (ok, _, err) = deploy(&cell, &node, &identity).await;
    assert!(ok, "{err}");

    let to = node.tcp.to_string();
    let args = ["undeploy", DEPLOYED, "--to", &to, "--identity", &identity];
    let (ok, out, err) = ww(&args, b"").await;
    assert!(ok, "{err}");
    let expected = format!("{}  undeployed {DEPLOYED} ({id})\n", node.peer);
    assert_eq!(String::from_utf8(out).unwrap(), expected);

    let (ok, _, err) = dial(&node, DEPLOYED, b"x").await;
    assert!(!ok && err.contains("does not serve"), "{err}");
    // Undeploying again: nothing is there.
    let (ok, out, _) = ww(&args, b"").await;
    assert!(!ok);
    assert!(String::from_utf8_lossy(&out).contains("refused: "));
    serves_on(&node).await;
}

/// Deploys `file` on DEPLOYED to `node` and returns the command's stdout lines.
async fn deployed(file: &Path, node: &Node, identity: &str) -> Vec<String> {
    let (ok, out, err) = deploy(file, node, identity).await;
    assert!(ok, "{err}\n{out:?}");
    out
}

/// Milliseconds at the 99th percentile of `times`.
fn p99_ms(times: &mut [std::time::Duration]) -> f64 {
    times.sort();
    let at = (times.len() * 99 / 100).min(times.len() - 1);
    times[at].as_secs_f64() * 1e3
}

/// Opens short echo streams one after another until `stop`, timing each.
async fn short_streams(
    client: &Client,
    peer: libp2p::PeerId,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<std::time::Duration> {
    let protocol = libp2p::StreamProtocol::new(DEPLOYED);
    let mut times = Vec::new();
    while !stop.is_cancelled() {
        let started = std::time::Instant::now();
        let stream = Versioned::open(client, peer, protocol.clone()).await;
        stream.finish(b"x").await;
        times.push(started.elapsed());
    }
    times
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swap_under_load_fails_no_stream_and_each_finishes_on_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, me) = deployer(dir.path(), "me.key").await;
    let node = Node::start(&["--deployer", &me]).await;
    let v1 = test_cell("version-1");
    let v2 = test_cell("version-2");
    deployed(&v1, &node, &identity).await;
    let client = Client::new().unwrap();
    client.connect(&node.tcp).await.unwrap();
    let protocol = libp2p::StreamProtocol::new(DEPLOYED);

    // Short streams one after another, first without a swap, then across one.
    let load = |client: Client| {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(short_streams_owned(client, node.peer, stop.clone()));
        (stop, task)
    };
    let (stop, quiet) = load(client.clone());
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop.cancel();
    let mut quiet = quiet.await.unwrap();

    // 100 streams held open across the swap, from 4 peers (a peer may run 64 at
    // once by default).
    let mut in_flight = Vec::new();
    for _ in 0..4 {
        let holder = Client::new().unwrap();
        holder.connect(&node.tcp).await.unwrap();
        for _ in 0..25 {
            in_flight.push((
                holder.clone(),
                Versioned::open(&holder, node.peer, protocol.clone()).await,
            ));
        }
    }
    let (stop, across) = load(client.clone());
    let out = deployed(&v2, &node, &identity).await;
    let id1 = ContentId::of(&std::fs::read(&v1).unwrap());
    assert!(out[1].ends_with(&format!("replacing {id1}")), "{out:?}");
    let after = Versioned::open(&client, node.peer, protocol.clone()).await;
    assert_eq!(
        after.version, "v2",
        "a stream after the swap gets version 2"
    );
    after.finish(b"after").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    stop.cancel();
    let mut across = across.await.unwrap();

    for (i, (_holder, stream)) in in_flight.into_iter().enumerate() {
        assert_eq!(stream.version, "v1", "in flight before the swap: version 1");
        stream.finish(&pattern(4096, i as u64)).await;
    }
    let stats = node.wait_idle(&client).await;
    assert_eq!((stats.failed, stats.refused), (0, 0), "{stats:?}");
    eprintln!(
        "swap under load: short streams p99 {:.2} ms without a swap ({} streams), {:.2} ms across one ({} streams); 100 held streams finished on v1",
        p99_ms(&mut quiet),
        quiet.len(),
        p99_ms(&mut across),
        across.len()
    );
}

async fn short_streams_owned(
    client: Client,
    peer: libp2p::PeerId,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<std::time::Duration> {
    short_streams(&client, peer, stop).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_serves_its_deployed_cells_without_asking_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, me) = deployer(dir.path(), "me.key").await;
    let node = Node::start(&["--deployer", &me]).await;
    deployed(&test_cell("version-2"), &node, &identity).await;
    let Node {
        mut child,
        dir: data,
        ..
    } = node;
    child.kill().await.unwrap();

    // The same identity, so the same data directory; no deployer this time.
    let key = data.path().join("identity.key");
    let again = Node::start_with_identity(data, &key, &[]).await;
    let loaded = again.wait_logged("origin=\"deployed\"").await;
    assert!(loaded.contains(DEPLOYED), "{loaded}");
    let client = Client::new().unwrap();
    client.connect(&again.tcp).await.unwrap();
    let stream = Versioned::open(&client, again.peer, libp2p::StreamProtocol::new(DEPLOYED)).await;
    assert_eq!(stream.version, "v2");
    stream.finish(b"back").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_records_follow_deploy_and_undeploy() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, me) = deployer(dir.path(), "me.key").await;
    let node = Node::start(&["--deployer", &me]).await;
    let bootstrap = node.tcp.to_string();
    let find = || async {
        let (ok, out, err) = ww(&["find", DEPLOYED, "--bootstrap", &bootstrap], b"").await;
        (ok, String::from_utf8(out).unwrap(), err)
    };
    deployed(&test_cell("version-1"), &node, &identity).await;
    eventually("the deployed cell's provider record", || async {
        let (ok, out, _) = find().await;
        (ok && out.contains(&node.peer.to_string())).then_some(())
    })
    .await;

    let to = node.tcp.to_string();
    let args = ["undeploy", DEPLOYED, "--to", &to, "--identity", &identity];
    let (ok, _, err) = ww(&args, b"").await;
    assert!(ok, "{err}");
    eventually("the provider record withdrawn", || async {
        let (_, out, _) = find().await;
        (!out.contains(&node.peer.to_string())).then_some(())
    })
    .await;
}
