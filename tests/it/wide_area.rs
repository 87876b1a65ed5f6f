//! A wide-area cluster in the lab (see `lab`): nodes spread over three simulated
//! regions, and a client in the farthest one asking for a cell every node serves.
//!
//! Regions and their one-way delay to the core: eu 15 ms, us 25 ms, ap 40 ms; every
//! host is 5 ms from its region's router. Round trips are therefore 20 ms inside a
//! region and, between regions, eu–us 100 ms, eu–ap 130 ms, us–ap 150 ms. Node 0 (in
//! eu) is the bootstrap node. No flag is set but `--autonat-private`, which the lab
//! needs since its addresses are not global: on the internet, AutoNAT's default does
//! the same, and without a confirmed external address a node's provider records are
//! not found in the WAN DHT (which the lab showed).

use std::time::{Duration, Instant};

use crate::lab::{Lab, LabNode, Site};
use crate::support::{PATIENCE, WW};

/// The regions: name and one-way delay from its router to the core.
const REGIONS: [(&str, u64); 3] = [("eu", 15), ("us", 25), ("ap", 40)];
/// One-way delay from a host to its region's router.
const HOST: Duration = Duration::from_millis(5);
/// The region the client asks from.
const CLIENT_REGION: usize = 2;
const ECHO: &str = "/ww/echo/0.1.0";

/// `n` nodes, node `i` in region `i % 3`, and a client host in [`CLIENT_REGION`].
struct Cluster {
    /// Each node with the index of its region.
    nodes: Vec<(usize, LabNode)>,
    client: Site,
    bootstrap: String,
    _lab: Lab,
}

impl Cluster {
    /// Starts the cluster and waits until the client finds all `n` providers of echo;
    /// `None` if labs cannot run here (said why).
    async fn start(n: usize) -> Option<Cluster> {
        let mut lab = Lab::new()?;
        let mut regions: Vec<_> = REGIONS
            .iter()
            .map(|(name, delay)| lab.region(name, Duration::from_millis(*delay)))
            .collect();
        let mut nodes = Vec::new();
        let mut bootstrap = String::new();
        for i in 0..n {
            let region = i % REGIONS.len();
            let host = lab.host_behind(&mut regions[region], &format!("n{i}"), HOST);
            // No DHT flag: node 0 serves the WAN DHT once AutoNAT confirms it.
            let node = if i == 0 {
                LabNode::start(&host, &["tcp"], &["--autonat-private"]).await
            } else {
                let args = ["--autonat-private", "--bootstrap", &bootstrap];
                LabNode::start(&host, &["tcp"], &args).await
            };
            if i == 0 {
                bootstrap = node.addr("tcp").to_string();
            }
            nodes.push((region, node));
        }
        let client = lab.host_behind(&mut regions[CLIENT_REGION], "client", HOST);
        let cluster = Cluster {
            nodes,
            client,
            bootstrap,
            _lab: lab,
        };
        let (mut found, mut warned) = (String::new(), String::new());
        for _ in 0..60 {
            (_, found, warned) = cluster.run(&["find", ECHO]).await;
            if found.lines().count() == n {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let missing: Vec<String> = cluster
            .nodes
            .iter()
            .filter(|(_, node)| !found.contains(&node.peer.to_string()))
            .map(|(region, node)| {
                let log = node.log();
                let said = |what: &str| {
                    let last = log.lines().rfind(|l| l.contains(what));
                    last.unwrap_or("").to_string()
                };
                let region = REGIONS[*region].0;
                let (reachability, mode) = (said("reachability"), said("DHT mode changed"));
                let announcing = said("announc");
                format!(
                    "{} in {region}: {reachability} | {mode} | {announcing}",
                    node.peer
                )
            })
            .collect();
        assert!(
            missing.is_empty(),
            "the client should find all {n} providers; missing:\n{}\nww find said: {warned}",
            missing.join("\n")
        );
        Some(cluster)
    }

    /// Runs `ww args --bootstrap B` at the client (stdin `hi`, ww's logs at info for
    /// `ww::dial`); the time it took, stdout and stderr.
    async fn run(&self, args: &[&str]) -> (Duration, String, String) {
        let started = Instant::now();
        let output = self
            .client
            .command(WW)
            .env("RUST_LOG", "warn,ww::dial=info")
            .args(args)
            .args(["--bootstrap", &self.bootstrap])
            .stdin(std::process::Stdio::null())
            .output();
        let output = tokio::time::timeout(PATIENCE, output)
            .await
            .unwrap()
            .unwrap();
        let took = started.elapsed();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (took, text(&output.stdout), text(&output.stderr))
    }

    /// The region of the node with peer ID `peer`.
    fn region_of(&self, peer: &str) -> &'static str {
        let (region, _) = self
            .nodes
            .iter()
            .find(|(_, node)| node.peer.to_string() == peer)
            .unwrap_or_else(|| panic!("no node {peer}"));
        REGIONS[*region].0
    }
}

/// What one `ww dial --any` said: the peer it took, its RTT, and every provider's RTT.
struct Choice {
    peer: String,
    rtt_ms: f64,
    ranked_ms: Vec<f64>,
}

fn choice(stderr: &str) -> Choice {
    let line = stderr
        .lines()
        .find(|l| l.contains("dialing a provider"))
        .unwrap_or_else(|| panic!("no choice logged: {stderr}"));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    let ms = |text: &str| text.trim_end_matches("ms").parse::<f64>().ok();
    let ranked_ms = field("ranked=")
        .split(',')
        .filter_map(|entry| ms(entry.split_once('=')?.1))
        .collect();
    Choice {
        peer: field("peer="),
        rtt_ms: ms(&field("rtt=")).unwrap_or(f64::NAN),
        ranked_ms,
    }
}

/// `ww dial --any` with `hi` on stdin, through the echo cell.
async fn dial_any(cluster: &Cluster) -> (Duration, Choice) {
    let started = Instant::now();
    let mut child = cluster
        .client
        .command(WW)
        .env("RUST_LOG", "warn,ww::dial=info")
        .args(["dial", "--any", ECHO, "--bootstrap", &cluster.bootstrap])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hi").await.unwrap();
    }
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(output.stdout, b"hi");
    (took, choice(&stderr))
}

#[tokio::test]
async fn across_regions_the_client_finds_every_provider_and_dials_one_in_its_region() {
    let Some(cluster) = Cluster::start(6).await else {
        return;
    };
    let (_, out, _) = cluster.run(&["find", ECHO, "--rtt"]).await;
    assert_eq!(out.lines().count(), 6, "{out}");
    let (_, choice) = dial_any(&cluster).await;
    // Two of the six are in the client's region, 20 ms away; the others 130 ms or
    // more: no provider elsewhere can measure closer.
    assert_eq!(
        cluster.region_of(&choice.peer),
        REGIONS[CLIENT_REGION].0,
        "took a provider {} ms away; ranked {:?}",
        choice.rtt_ms,
        choice.ranked_ms
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Prints how long `ww find` and `ww dial --any` take from the client at N = 10 and
/// N = 30, and the round trip of the provider `dial --any` takes against the median
/// of all providers' (what a provider taken regardless of distance costs).
#[tokio::test]
#[ignore = "heavy: 40 namespaces and ww processes; run by hand, it prints numbers"]
async fn wide_area_find_and_dial_any_times() {
    let sizes = std::env::var("WW_WIDE_AREA_SIZES").unwrap_or("10,30".into());
    for n in sizes.split(',').map(|n| n.parse().unwrap()) {
        let Some(cluster) = Cluster::start(n).await else {
            return;
        };
        let (mut find, mut any, mut chosen, mut all) = (vec![], vec![], vec![], vec![]);
        let mut regions = Vec::new();
        for _ in 0..7 {
            let (took, out, _) = cluster.run(&["find", ECHO]).await;
            assert_eq!(out.lines().count(), n);
            find.push(took.as_secs_f64() * 1000.0);
            let (took, choice) = dial_any(&cluster).await;
            any.push(took.as_secs_f64() * 1000.0);
            chosen.push(choice.rtt_ms);
            all.push(median(choice.ranked_ms.clone()));
            regions.push(cluster.region_of(&choice.peer));
        }
        println!(
            "N={n}: find {:.0} ms, dial --any {:.0} ms (medians of 7, process start included); \
             provider taken: RTT {:.1} ms (regions {regions:?}); median provider RTT {:.1} ms",
            median(find),
            median(any),
            median(chosen),
            median(all),
        );
    }
}
