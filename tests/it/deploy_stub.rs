//! `ww deploy`, `ww undeploy` and `ww cells` (real processes) against a stub node in
//! this process that speaks `net::manage`'s wire: the CLI's side end to end, whatever
//! a real node's handlers do. `deploy.rs` runs the same commands against `ww run`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use ww::content::ContentId;
use ww::limits::Limits;
use ww::net::control::Control;
use ww::net::manage::{self, CellListing, DeployAnswer, DeployRequest, Op};
use ww::net::{BehaviourEvent, NetOptions, build_swarm, discovery};

use crate::support::*;

/// Every request a stub took, with its component.
type Taken = Mutex<Vec<(DeployRequest, Option<Vec<u8>>)>>;

/// A swarm on 127.0.0.1 that takes deployments from `deployers` (up to `max_size`
/// bytes), records them, and lists one cell.
struct Stub {
    addr: Multiaddr,
    peer: PeerId,
    /// Every request taken, with its component.
    taken: Arc<Taken>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    async fn start(deployers: Vec<PeerId>, max_size: u64, bootstrap: Option<&Stub>) -> Stub {
        let options = NetOptions {
            bootstrap: bootstrap.map(|b| b.addr.clone()).into_iter().collect(),
            ..NetOptions::default()
        };
        let protocols = vec![manage::DEPLOY_PROTOCOL, manage::CELLS_PROTOCOL];
        let mut swarm = build_swarm(Keypair::generate_ed25519(), protocols, &options).unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let peer = *swarm.local_peer_id();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address.with_p2p(peer).unwrap();
            }
        };
        discovery::join(&mut swarm, &options.bootstrap);
        let taken = Arc::new(Mutex::new(Vec::new()));
        let record = taken.clone();
        let task = tokio::spawn(async move {
            let mut control = Control::default();
            loop {
                let event = swarm.select_next_some().await;
                control.on_event(&mut swarm, &event);
                if let SwarmEvent::Behaviour(BehaviourEvent::Router(inbound)) = event {
                    let (deployers, record) = (deployers.clone(), record.clone());
                    tokio::spawn(async move {
                        let mut stream = inbound.stream;
                        if inbound.protocol == manage::CELLS_PROTOCOL {
                            let _ = manage::send_listing(&mut stream, &[listing()]).await;
                            return;
                        }
                        let answer = if deployers.contains(&inbound.peer) {
                            take(&mut stream, max_size, &record).await
                        } else {
                            // Refused before reading a byte: the stream is reset under
                            // the deployer's writes.
                            let reason = format!("{} is not a deployer here", inbound.peer);
                            DeployAnswer::Refused { reason }
                        };
                        let _ = manage::send_answer(&mut stream, &answer).await;
                    });
                }
            }
        });
        Stub {
            addr,
            peer,
            taken,
            task,
        }
    }
}

/// Reads one request and answers it as a node would, recording what it took.
async fn take(stream: &mut libp2p::Stream, max_size: u64, record: &Taken) -> DeployAnswer {
    let (request, component) = match manage::read_request(stream, max_size).await {
        Ok(taken) => taken,
        Err(error) => {
            return DeployAnswer::Refused {
                reason: error.to_string(),
            };
        }
    };
    record.lock().unwrap().push((request.clone(), component));
    match request.op {
        Op::Deploy => DeployAnswer::Deployed {
            protocol: request.protocol,
            content: request.content.unwrap(),
            granted: request.limits.apply(Limits::DEFAULT),
            dial: request.dial,
            replaced: Some(ContentId::of(b"v1")),
        },
        Op::Undeploy => DeployAnswer::Undeployed {
            protocol: request.protocol,
            content: ContentId::of(b"v1"),
        },
    }
}

fn listing() -> CellListing {
    CellListing {
        protocol: "/test/stub/1".into(),
        content: ContentId::of(b"v1"),
        kind: "connection".into(),
        source: "deployed".into(),
        live: 2,
        since_unix_s: 0,
    }
}

/// A fresh deployer identity file in `dir`, and its peer ID (through `ww id`).
async fn deployer(dir: &Path, name: &str) -> (String, PeerId) {
    let path = dir.join(name).display().to_string();
    let (ok, out, err) = ww(&["id", "--identity", &path], b"").await;
    assert!(ok, "{err}");
    let peer = String::from_utf8(out).unwrap().trim().parse().unwrap();
    (path, peer)
}

fn lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn deploy_sends_the_component_and_prints_what_was_granted() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, me) = deployer(dir.path(), "me.key").await;
    let stub = Stub::start(vec![me], 1 << 20, None).await;
    let cell = test_cell("fresh");
    let component = std::fs::read(&cell).unwrap();
    let id = ContentId::of(&component);
    let args = [
        "deploy",
        cell.to_str().unwrap(),
        "--protocol",
        "/test/deployed/1",
        "--to",
        &stub.addr.to_string(),
        "--identity",
        &identity,
        "--memory-mb",
        "128",
        "--dial-any",
    ];
    let (ok, out, err) = ww(&args, b"").await;
    assert!(ok, "{err}");
    let out = lines(&out);
    assert_eq!(out[0], id.to_string(), "the CID first");
    let granted = "memory 128 MiB, cpu 10000 ms, wall none, instances 1000, dial any";
    let old = ContentId::of(b"v1");
    assert_eq!(
        out[1],
        format!(
            "{}  deployed {id} (granted: {granted}), replacing {old}",
            stub.peer
        )
    );
    let taken = stub.taken.lock().unwrap();
    let [(request, Some(bytes))] = &taken[..] else {
        panic!("expected one deploy, got {taken:?}")
    };
    assert_eq!(bytes, &component, "byte-exact");
    assert_eq!(request.protocol, "/test/deployed/1");
    assert_eq!(request.limits.memory_mb, Some(128));
    assert_eq!(request.limits.cpu_ms, None, "only what was asked for");
}

#[tokio::test]
async fn a_refusal_reaches_the_deployer_even_mid_transfer_and_fails_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let (me, my_peer) = deployer(dir.path(), "me.key").await;
    let (stranger, _) = deployer(dir.path(), "stranger.key").await;
    // A component far over the stub's 1 KiB cap and the streams' windows: the stub
    // answers and resets while the deployer is still writing.
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, pattern(4 << 20, 1)).unwrap();
    let stub = Stub::start(vec![my_peer], 1024, None).await;
    let to = stub.addr.to_string();
    let big = big.to_str().unwrap();
    for (identity, reason) in [
        (&stranger, "is not a deployer here".to_string()),
        (
            &me,
            format!(
                "the component is {} bytes, over this node's cap of 1024",
                4 << 20
            ),
        ),
    ] {
        let args = [
            "deploy",
            big,
            "--protocol",
            "/p/1",
            "--to",
            &to,
            "--identity",
            identity,
        ];
        let (ok, out, err) = ww(&args, b"").await;
        assert!(!ok, "a refusal fails the command");
        let out = lines(&out);
        assert!(
            out[1].starts_with(&format!("{}  refused: ", stub.peer)),
            "{out:?}"
        );
        assert!(out[1].ends_with(&reason), "{out:?}");
        assert!(err.contains("1 of 1 nodes did not deploy"), "{err}");
    }
    assert!(stub.taken.lock().unwrap().is_empty());
}

#[tokio::test]
async fn deploy_all_reaches_every_node_in_the_dht_and_undeploy_too() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, me) = deployer(dir.path(), "me.key").await;
    let first = Stub::start(vec![me], 1 << 20, None).await;
    let second = Stub::start(vec![me], 1 << 20, Some(&first)).await;
    let third = Stub::start(vec![me], 1 << 20, Some(&second)).await;
    let file = dir.path().join("c.wasm");
    std::fs::write(&file, b"not checked by the stub").unwrap();
    let bootstrap = first.addr.to_string();
    let mut expected = [first.peer, second.peer, third.peer].map(|p| p.to_string());
    expected.sort();
    // Bounded: the stubs' routing tables fill in as their joins complete.
    let file = file.to_str().unwrap();
    let deploy = [
        "deploy",
        file,
        "--protocol",
        "/p/1",
        "--all",
        "--bootstrap",
        &bootstrap,
        "--identity",
        &identity,
    ];
    eventually("a deploy to all three stubs", || async {
        let (ok, out, err) = ww(&deploy, b"").await;
        assert!(ok, "{err}");
        let mut peers: Vec<String> = lines(&out)[1..]
            .iter()
            .map(|line| line.split_whitespace().next().unwrap().to_string())
            .collect();
        peers.sort();
        (peers == expected).then_some(())
    })
    .await;

    let undeploy = [
        "undeploy",
        "/p/1",
        "--to",
        &third.addr.to_string(),
        "--identity",
        &identity,
    ];
    let (ok, out, err) = ww(&undeploy, b"").await;
    assert!(ok, "{err}");
    let old = ContentId::of(b"v1");
    assert_eq!(
        lines(&out),
        [format!("{}  undeployed /p/1 ({old})", third.peer)]
    );
    let taken = third.taken.lock().unwrap();
    assert!(matches!(taken.last(), Some((request, None)) if request.op == Op::Undeploy));
}

#[tokio::test]
async fn cells_prints_the_listing_as_a_table() {
    let stub = Stub::start(Vec::new(), 0, None).await;
    let (ok, out, err) = ww(&["cells", &stub.addr.to_string()], b"").await;
    assert!(ok, "{err}");
    let out = lines(&out);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].starts_with("PROTOCOL      CID"), "{out:?}");
    let cid = ContentId::of(b"v1");
    assert!(
        out[1].starts_with(&format!("/test/stub/1  {cid}  connection  deployed  2")),
        "{out:?}"
    );
    assert!(
        out[1].ends_with('h'),
        "a cell since 1970 is days old: {out:?}"
    );
}
