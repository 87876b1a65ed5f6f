//! Cells named by their content: `--cell PROTOCOL=CID` fetched from the nodes that
//! provide it, verified, compiled and served; the code exchange's refusals.

use libp2p::StreamProtocol;
use ww::content::ContentId;
use ww::net::client::Client;

use crate::support::{Node, dht_node, pattern, request, run_fails, test_cell};

/// The CID of the built-in echo cell, which every default node serves.
fn echo_cid() -> ContentId {
    ContentId::of(ww::cell::builtin::find("echo").unwrap().wasm)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_fetches_a_cell_by_its_cid_from_a_provider_and_serves_it() {
    let provider = dht_node(None, &[]).await;
    let cid = echo_cid().to_string();
    let protocol = StreamProtocol::new("/test/echo-by-cid/1");
    let flag = format!("{protocol}={cid}");
    let fetcher = dht_node(Some(&provider), &["--cell", &flag]).await;
    let fetched = fetcher.wait_logged("component fetched").await;
    assert!(
        fetched.contains(&format!("provider={}", provider.peer)),
        "fetched from the provider: {fetched}"
    );
    let loaded = fetcher.wait_logged("cell loaded").await;
    assert!(loaded.contains(&format!("content={cid}")), "{loaded}");

    let client = Client::new().unwrap();
    client.connect(&fetcher.tcp).await.unwrap();
    let data = pattern(300_000, 7);
    let answer = request(&client, fetcher.peer, protocol, &data)
        .await
        .unwrap();
    assert!(answer == data, "byte-exact echo through the fetched cell");

    // The fetcher keeps what it fetched, checked against its name.
    let kept = std::fs::read(fetcher.dir.path().join("content").join(&cid)).unwrap();
    assert_eq!(ContentId::of(&kept), echo_cid());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_nobody_provides_stops_the_node_with_the_reason() {
    let seed = dht_node(None, &[]).await;
    // Bytes no node holds: a test cell's, plus a custom section, so no other test's
    // node provides them.
    let mut bytes = std::fs::read(test_cell("nap")).unwrap();
    bytes.extend_from_slice(b"\x00\x08\x07unheard");
    let cid = ContentId::of(&bytes).to_string();
    let seed_addr = seed.tcp.to_string();
    let flag = format!("/test/nobody/1={cid}");
    let stderr = run_fails(&["--bootstrap", &seed_addr, "--cell", &flag]).await;
    assert!(
        stderr.contains(&format!("cannot fetch {cid}")) && stderr.contains("no node provides it"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_whose_only_provider_is_gone_names_it_in_the_failure() {
    let seed = dht_node(None, &[]).await;
    let cell = test_cell("nap");
    let flag = format!("/test/nap/1={}", cell.display());
    let provider = dht_node(Some(&seed), &["--cell", &flag]).await;
    let cid = ContentId::of(&std::fs::read(&cell).unwrap()).to_string();
    // The seed holds the provider's record once the provider has announced it.
    let client = Client::with_bootstrap(vec![seed.tcp.clone()]).unwrap();
    crate::support::eventually("the provider's record", || async {
        let found = client.content_providers(&cid.parse().unwrap()).await.ok()?;
        found.iter().any(|p| p.peer == provider.peer).then_some(())
    })
    .await;
    let gone = provider.peer;
    drop(provider);

    let seed_addr = seed.tcp.to_string();
    let flag = format!("/test/nap-by-cid/1={cid}");
    let stderr = run_fails(&["--bootstrap", &seed_addr, "--cell", &flag]).await;
    assert!(stderr.contains(&format!("cannot fetch {cid}")), "{stderr}");
    assert!(
        stderr.contains(&gone.to_string()),
        "names the provider: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cid_in_the_store_is_served_without_asking_anyone() {
    let Node { mut child, dir, .. } = Node::start(&[]).await;
    child.kill().await.unwrap();
    let cid = echo_cid().to_string();
    // The same data directory (the identity's), no bootstrap, no other node.
    let identity = dir.path().join("identity.key");
    let flag = format!("/test/stored/1={cid}");
    let again = Node::start_with_identity(dir, &identity, &["--cell", &flag]).await;
    let log = again.wait_logged("cell loaded").await;
    assert!(log.contains("origin=\"content\""), "{log}");
}
