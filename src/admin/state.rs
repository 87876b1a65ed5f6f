//! The JSON the dashboard consumes (`GET /api/state`, and each snapshot of the feed):
//! the node, its cells with their counts, the recent failures, the connected peers and
//! the cluster (every peer the node knows of, and the cells each serves), built from
//! the metrics and the views the node keeps current.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::{CellInfo, NetworkView};
use crate::metrics::{CellLabel, CellSummary, FailureNote, Metrics};

/// One connection to a peer, as the node's event loop sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectionView {
    /// `inbound` (the peer dialed) or `outbound` (this node dialed).
    pub direction: &'static str,
    /// The peer's address on this connection.
    pub address: String,
    /// Its transport: `tcp`, `quic` or `other`.
    pub transport: &'static str,
    /// Whether it runs through a relay (`/p2p-circuit`) rather than directly.
    pub relayed: bool,
    /// The last round trip ping measured on this connection, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// A connected peer, as the node's event loop keeps it.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    /// Its open connections, by libp2p's connection ID.
    pub connections: BTreeMap<String, ConnectionView>,
    /// The last round-trip time ping measured, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The agent it announced through identify.
    pub agent: Option<String>,
    /// Its inbound streams being served now (cells, stats, code…), shared with the
    /// streams' tasks.
    pub streams: Arc<AtomicU64>,
}

/// A peer this node knows of, connected or not, as the node's event loop keeps it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClusterPeer {
    /// How it was found: `wan-dht`, `lan-dht`, `mdns`, `connection`,
    /// `provider-record`.
    pub found_by: BTreeSet<&'static str>,
    /// Addresses it is known at (the first few).
    pub addresses: Vec<String>,
    /// The cells it serves, as it said in identify (the protocols it accepts that are
    /// neither a node protocol nor a cell's `+status`/`+call` variant); `None` until it
    /// has told this node.
    pub cells: Option<Vec<String>>,
    /// Its dashboard's URL (`http://IP:PORT/`, built here from the address the peer
    /// itself told, see `node::dashboards`), if it has one a viewer of this node can
    /// open.
    pub dashboard: Option<String>,
    /// The cells it provides according to the DHT provider records this node holds
    /// (for the cell protocols this node knows of: its own and those peers named).
    pub provides: Vec<String>,
}

/// A peer of the cluster, as the dashboard shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterState {
    /// Its peer ID.
    pub peer_id: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// How it was found, where it is, what it serves.
    #[serde(flatten)]
    pub known: ClusterPeer,
}

/// The node's own facts, as the dashboard shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeState {
    /// This node's peer ID.
    pub peer_id: String,
    /// The ww version.
    pub version: &'static str,
    /// Seconds since the admin endpoint started (with the node).
    pub uptime_s: u64,
    /// Full listen addresses, relayed ones included.
    pub listen: Vec<String>,
    /// Addresses confirmed as reachable from outside.
    pub external: Vec<String>,
    /// AutoNAT's verdict: `unknown`, `private` or `public (<address>)`.
    pub nat: String,
    /// The relays holding a reservation for this node (it is reachable through them).
    pub relays: Vec<String>,
    /// The WAN DHT's mode: `client` or `server`.
    pub dht_mode: String,
    /// Peers in the WAN DHT's routing table.
    pub dht_wan_peers: usize,
    /// Peers in the LAN DHT's routing table.
    pub dht_lan_peers: usize,
    /// Instances alive now, all cells together.
    pub live_instances: u64,
    /// Peers with at least one connection.
    pub connected_peers: usize,
}

/// A served cell with its counts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CellState {
    /// What the node serves: name, protocol, CID, kind, source, since.
    #[serde(flatten)]
    pub info: CellInfo,
    /// Live instances of every version of the cell.
    pub live_instances: i64,
    /// Its counts since the node started, with stream-time quantiles.
    #[serde(flatten)]
    pub counts: CellSummary,
}

/// A connected peer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerState {
    /// Its peer ID.
    pub peer_id: String,
    /// Its connections: direction, address, relayed or direct.
    pub connections: Vec<ConnectionView>,
    /// The last ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// What it announced as its agent.
    pub agent: Option<String>,
    /// Its inbound streams being served now.
    pub open_streams: u64,
}

/// Everything the dashboard shows, at one moment.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct State {
    /// The node itself.
    pub node: NodeState,
    /// The cells served now, by name.
    pub cells: Vec<CellState>,
    /// The most recent failures and refusals, newest first.
    pub failures: Vec<FailureNote>,
    /// The connected peers, by peer ID.
    pub peers: Vec<PeerState>,
    /// Every peer the node knows of, by peer ID.
    pub cluster: Vec<ClusterState>,
    /// Each cell's streams per second over the last minutes, oldest first (see
    /// [`super::history`]): in the page and `/api/state`, not in every feed snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<BTreeMap<String, Vec<f64>>>,
}

/// Builds the dashboard's state from the node's metrics, its network view and the
/// cells it serves; `uptime` is how long it has run.
pub fn snapshot(
    metrics: &Metrics,
    network: &NetworkView,
    mut cells: Vec<CellInfo>,
    uptime: Duration,
) -> State {
    cells.sort_by(|a, b| a.name.cmp(&b.name));
    let cells = cells
        .into_iter()
        .map(|info| {
            let label = CellLabel {
                cell: info.name.clone(),
            };
            CellState {
                live_instances: metrics.live(&label),
                counts: metrics.summary(&label),
                info,
            }
        })
        .collect();
    let peers = network
        .peers
        .iter()
        .map(|(peer, view)| PeerState {
            peer_id: peer.clone(),
            connections: view.connections.values().cloned().collect(),
            rtt_ms: view.rtt_ms,
            agent: view.agent.clone(),
            open_streams: view.streams.load(Ordering::Relaxed),
        })
        .collect();
    let cluster = network
        .cluster
        .iter()
        .map(|(peer, known)| ClusterState {
            peer_id: peer.clone(),
            connected: network.peers.contains_key(peer),
            known: known.clone(),
        })
        .collect();
    State {
        node: NodeState {
            peer_id: network.peer_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: uptime.as_secs(),
            listen: network.listen.clone(),
            external: network.external.clone(),
            nat: network.nat.clone(),
            relays: network.relays.iter().cloned().collect(),
            dht_mode: network.dht_mode.clone(),
            dht_wan_peers: network.dht_wan_peers,
            dht_lan_peers: network.dht_lan_peers,
            live_instances: metrics.totals().live.load(Ordering::Relaxed),
            connected_peers: network.connected_peers,
        },
        cells,
        failures: metrics.recent_failures(),
        peers,
        cluster,
        history: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_info() -> CellInfo {
        CellInfo {
            name: "echo".into(),
            protocol: "/ww/echo/0.1.0".into(),
            content: "bafkreiecho".into(),
            kind: "connection",
            source: "builtin",
            since_unix_s: 7,
        }
    }

    #[test]
    fn the_state_joins_cells_counts_failures_and_peers() {
        let metrics = Metrics::new();
        let echo = CellLabel {
            cell: "echo".into(),
        };
        metrics.started(&echo);
        metrics.ended(&echo, None, Duration::from_millis(2), (4, 4));
        metrics.started(&echo);
        metrics.ended(&echo, Some("trap"), Duration::from_millis(2), (1, 0));
        metrics.note_failure(&echo, "trap", "trapped: boom".into(), Some("12D3K".into()));
        metrics.started(&echo);
        let mut network = NetworkView {
            peer_id: "12D3Self".into(),
            listen: vec!["/ip4/127.0.0.1/tcp/1/p2p/12D3Self".into()],
            connected_peers: 1,
            nat: "unknown".into(),
            dht_mode: "client".into(),
            ..NetworkView::default()
        };
        let peer = PeerView {
            rtt_ms: Some(0.5),
            agent: Some("ww/0.1.0".into()),
            ..PeerView::default()
        };
        peer.streams.fetch_add(2, Ordering::Relaxed);
        let mut peer = peer;
        peer.connections.insert(
            "3".into(),
            ConnectionView {
                direction: "inbound",
                address: "/ip4/127.0.0.1/tcp/5".into(),
                transport: "tcp",
                relayed: false,
                rtt_ms: Some(0.5),
            },
        );
        network.peers.insert("12D3K".into(), peer);

        let state = snapshot(
            &metrics,
            &network,
            vec![echo_info()],
            Duration::from_secs(9),
        );
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["node"]["peer_id"], "12D3Self");
        assert_eq!(json["node"]["uptime_s"], 9);
        assert_eq!(json["node"]["live_instances"], 1);
        assert_eq!(json["node"]["version"], env!("CARGO_PKG_VERSION"));
        let cell = &json["cells"][0];
        assert_eq!(cell["name"], "echo");
        assert_eq!(cell["protocol"], "/ww/echo/0.1.0");
        assert_eq!(cell["content"], "bafkreiecho");
        assert_eq!(cell["kind"], "connection");
        assert_eq!(cell["source"], "builtin");
        assert_eq!(cell["live_instances"], 1);
        assert_eq!(cell["accepted"], 3);
        assert_eq!(cell["completed"], 1);
        assert_eq!(cell["failed"], 1);
        assert_eq!(cell["bytes_in"], 5);
        let p50 = cell["p50_s"].as_f64().unwrap();
        assert!(0.001 < p50 && p50 <= 0.002, "{p50}");
        let failure = &json["failures"][0];
        assert_eq!(failure["cell"], "echo");
        assert_eq!(failure["kind"], "trap");
        assert_eq!(failure["reason"], "trapped: boom");
        assert_eq!(failure["peer"], "12D3K");
        let peer = &json["peers"][0];
        assert_eq!(peer["peer_id"], "12D3K");
        assert_eq!(peer["rtt_ms"], 0.5);
        assert_eq!(peer["agent"], "ww/0.1.0");
        assert_eq!(peer["open_streams"], 2);
        assert_eq!(peer["connections"][0]["direction"], "inbound");
        assert_eq!(peer["connections"][0]["relayed"], false);
        assert_eq!(peer["connections"][0]["rtt_ms"], 0.5);
        assert_eq!(peer["connections"][0]["transport"], "tcp");
    }

    #[test]
    fn a_cell_without_streams_has_no_quantiles() {
        let state = snapshot(
            &Metrics::new(),
            &NetworkView::default(),
            vec![echo_info()],
            Duration::ZERO,
        );
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["cells"][0]["accepted"], 0);
        assert!(json["cells"][0]["p50_s"].is_null());
        assert_eq!(json["failures"], serde_json::json!([]));
    }
}
