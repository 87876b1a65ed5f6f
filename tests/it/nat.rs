//! NAT traversal in the lab (see `lab`): two nodes, each behind a NAT router of its
//! own, and a relay on the internet. Started with ordinary flags — the relay with
//! `--relay`, the others with `--bootstrap` it, all with `--autonat-private` since
//! every lab address is in a non-global range — they must find out they are private,
//! reserve on the relay by themselves, reach each other's cells through it, and,
//! where the NATs allow it, upgrade to a direct connection (DCUtR).

use std::time::Duration;

use serde_json::Value;

use crate::lab::{Lab, LabNode, Nat, PORT, Site};
use crate::support::eventually;

const FORWARD: &str = "/ww/forward/0.1.0";

/// One-way delays of the lab's links: each host to its router, each router to the
/// core, the relay to the core.
const HOST: Duration = Duration::from_millis(5);
const ROUTER: Duration = Duration::from_millis(20);
const RELAY: Duration = Duration::from_millis(50);

/// The least round trip on the direct path between A and B (host, router, core,
/// router, host, and back), and on the relayed one (through the relay and back).
const DIRECT_RTT: Duration = Duration::from_millis(2 * (5 + 20 + 20 + 5));
const RELAYED_RTT: Duration = Duration::from_millis(2 * (5 + 20 + 50 + 50 + 20 + 5));

/// The lab: relay R on the internet, A and B each behind a router NATing with `nat`.
struct World {
    r: LabNode,
    a: LabNode,
    b: LabNode,
    b_router: Site,
    /// `tcp` or `quic`: what every node listens on.
    transport: &'static str,
    _lab: Lab,
}

impl Drop for World {
    /// A failed test shows the end of each node's log.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, node) in [("R", &self.r), ("A", &self.a), ("B", &self.b)] {
                let log = node.log();
                let tail: Vec<&str> = log.lines().rev().take(200).collect();
                eprintln!("--- {name}'s log, last lines:");
                tail.iter().rev().for_each(|line| eprintln!("{line}"));
            }
        }
    }
}

/// Builds the lab and starts R, B and A on `transport` ("tcp" or "quic"); `None`
/// if labs cannot run here (said why).
async fn world(transport: &'static str, nat: Nat) -> Option<World> {
    let mut lab = Lab::new()?;
    let relay = lab.public_host("r", RELAY);
    let mut a_router = lab.router("ra", nat, ROUTER);
    let mut b_router = lab.router("rb", nat, ROUTER);
    let a = lab.host_behind(&mut a_router, "a", HOST);
    let b = lab.host_behind(&mut b_router, "b", HOST);

    let r = LabNode::start(&relay, &[transport], &["--relay", "--autonat-private"]).await;
    let bootstrap = r.addr(transport).to_string();
    let common = ["--autonat-private", "--bootstrap", &bootstrap];
    let b = LabNode::start(&b, &[transport], &common).await;
    let forward = format!("{FORWARD}=builtin:forward");
    let mut args = common.to_vec();
    args.extend(["--cell", &forward, "--grant-dial", FORWARD]);
    let a = LabNode::start(&a, &[transport], &args).await;
    Some(World {
        r,
        a,
        b,
        b_router: b_router.site,
        transport,
        _lab: lab,
    })
}

/// Waits until `node` knows it is private and holds a reservation on `relay`.
async fn reserved(node: &LabNode, relay: &LabNode) {
    let relay = relay.peer.to_string();
    eventually(
        &format!("{} private and reserved", node.site.netns),
        || async {
            let state = node.state().await;
            let nat = state["node"]["nat"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let relays = &state["node"]["relays"];
            let reserved = relays
                .as_array()
                .is_some_and(|r| r.iter().any(|p| *p == relay));
            (nat == "private" && reserved).then_some(())
        },
    )
    .await;
}

/// Calls B's echo cell through A's `forward` cell, from inside A's namespace. A call
/// made just after B reserved may find no address of B yet (B's relayed address is
/// on its way into the DHT), so an "unreachable" dial is tried again, a bounded
/// number of times.
async fn echo_through_a(world: &World, text: &str) -> String {
    let a = match world.transport {
        "tcp" => format!("/ip4/127.0.0.1/tcp/{PORT}/p2p/{}", world.a.peer),
        _ => format!("/ip4/127.0.0.1/udp/{PORT}/quic-v1/p2p/{}", world.a.peer),
    };
    let input = format!("{} /ww/echo/0.1.0\n{text}", world.b.peer);
    for _ in 0..40 {
        let (ok, stdout, stderr) = world
            .a
            .site
            .ww(&["dial", &a, FORWARD], input.as_bytes())
            .await;
        if ok {
            return String::from_utf8(stdout).unwrap();
        }
        assert!(stderr.contains("unreachable"), "{stderr}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("B stayed unreachable from A")
}

/// A's connections to B, as its dashboard JSON lists them.
async fn connections_to_b(world: &World) -> Vec<Value> {
    let state = world.a.state().await;
    let b = world.b.peer.to_string();
    state["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|peer| peer["peer_id"] == b.as_str())
        .map(|peer| peer["connections"].as_array().unwrap().clone())
        .unwrap_or_default()
}

async fn hole_punch(transport: &'static str) {
    let Some(world) = world(transport, Nat::EndpointIndependent).await else {
        return;
    };
    reserved(&world.b, &world.r).await;
    reserved(&world.a, &world.r).await;

    assert_eq!(echo_through_a(&world, "hello").await, "hello");

    // DCUtR upgrades the relayed connection: a direct one from B's router's address
    // appears, and its round trip is the direct path's.
    let router = format!("/ip4/{}/", world.b_router.ip);
    let direct = eventually("a direct connection from A to B", || async {
        connections_to_b(&world)
            .await
            .into_iter()
            .find(|c| c["relayed"] == false && c["rtt_ms"].is_number())
    })
    .await;
    let address = direct["address"].as_str().unwrap();
    assert!(
        address.starts_with(&router),
        "A's direct connection to B should come through B's router ({router}): {direct}"
    );
    assert_eq!(direct["transport"], transport);
    // Packets cannot beat the links' delays, and none that went through the relay
    // could come back faster than the relayed path's delays allow.
    let rtt = Duration::from_secs_f64(direct["rtt_ms"].as_f64().unwrap() / 1000.0);
    assert!(
        rtt >= DIRECT_RTT,
        "{rtt:?} is below the direct path's delays"
    );
    assert!(
        rtt < RELAYED_RTT,
        "{rtt:?}: not the direct path (the relayed one takes at least {RELAYED_RTT:?})"
    );
    eprintln!(
        "{transport}: direct RTT {rtt:?} (links: direct ≥ {DIRECT_RTT:?}, relayed ≥ {RELAYED_RTT:?})"
    );
    // Calls now take the direct connection.
    assert_eq!(echo_through_a(&world, "again").await, "again");
}

#[tokio::test]
async fn behind_two_nats_a_reaches_b_through_the_relay_and_dcutr_makes_it_direct_over_tcp() {
    hole_punch("tcp").await;
}

#[tokio::test]
async fn behind_two_nats_a_reaches_b_through_the_relay_and_dcutr_makes_it_direct_over_quic() {
    hole_punch("quic").await;
}

/// Waits until `node`'s log has `text`.
async fn logged(node: &LabNode, text: &str) {
    eventually(
        &format!("{text:?} in {}'s log", node.site.netns),
        || async { node.log().contains(text).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn behind_symmetric_nats_hole_punching_fails_cleanly_and_calls_stay_relayed() {
    let Some(world) = world("tcp", Nat::Symmetric).await else {
        return;
    };
    reserved(&world.b, &world.r).await;
    reserved(&world.a, &world.r).await;

    assert_eq!(echo_through_a(&world, "hello").await, "hello");
    // Each NAT gives every connection a port of its own, so the addresses the two
    // exchange through the relay lead nowhere: DCUtR gives up, and says so.
    logged(&world.b, "hole punching failed").await;
    assert_eq!(echo_through_a(&world, "still here").await, "still here");

    let (code, body) = world.a.site.http_get(world.a.admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reachability"], "relayed", "{status}");
    assert_eq!(
        status["paths"][world.b.peer.to_string()],
        "relayed",
        "{status}"
    );
    let direct: Vec<Value> = connections_to_b(&world)
        .await
        .into_iter()
        .filter(|c| c["relayed"] == false)
        .collect();
    assert!(direct.is_empty(), "no direct path can exist: {direct:?}");
}

/// `ww dial --any` from a client in one region, with a provider in its region and one
/// across the world: it must take the near one, by the round trips it measured.
#[tokio::test]
async fn dial_any_takes_the_provider_with_the_shortest_round_trip() {
    let Some(mut lab) = Lab::new() else {
        return;
    };
    const NEAR: Duration = Duration::from_millis(5);
    const FAR: Duration = Duration::from_millis(60);
    let hub = lab.public_host("hub", NEAR);
    let near = lab.public_host("near", NEAR);
    let far = lab.public_host("far", FAR);
    let client = lab.public_host("client", NEAR);
    let only = "/lab/echo/1";
    let cell = format!("{only}=builtin:echo");

    // No DHT flag anywhere: the hub serves the WAN DHT once AutoNAT confirms it.
    let hub = LabNode::start(&hub, &["tcp"], &["--autonat-private"]).await;
    let bootstrap = hub.addr("tcp").to_string();
    let args = [
        "--autonat-private",
        "--bootstrap",
        &bootstrap,
        "--cell",
        &cell,
    ];
    // The far one starts first, so "first found" and "closest" differ at least in
    // start order.
    let far = LabNode::start(&far, &["tcp"], &args).await;
    let near = LabNode::start(&near, &["tcp"], &args).await;

    let chosen = eventually("dial --any through both providers", || async {
        let mut command = client.command(crate::support::WW);
        let output = command
            .env("RUST_LOG", "warn,ww::dial=info")
            .args(["dial", "--any", only, "--bootstrap", &bootstrap])
            .stdin(std::process::Stdio::piped())
            .output();
        let output = tokio::time::timeout(crate::support::PATIENCE, output)
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        // Both providers ranked (each measured), or try again: the far one may not
        // have announced itself yet.
        let ranked = stderr
            .lines()
            .find(|l| l.contains("dialing a provider"))?
            .to_string();
        let measured = [&near, &far].iter().all(|node| {
            ranked.contains(&format!("{}=", node.peer))
                && !ranked.contains(&format!("{}=?", node.peer))
        });
        (output.status.success() && measured).then_some(ranked)
    })
    .await;
    eprintln!("{chosen}");
    assert!(
        chosen.contains(&format!("peer={}", near.peer)),
        "the provider 2×{NEAR:?} away should be taken over the one 2×{FAR:?} away: {chosen}"
    );
}
