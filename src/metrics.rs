//! What a node counts: streams accepted, refused, completed and failed per cell (with
//! the reason), live instances, instantiation and stream times, bytes each way, plus
//! libp2p's own metrics. Exposed in the Prometheus text format by [`crate::admin`];
//! the totals also answer `ww stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a cell.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellLabel {
    /// The cell's name (its config key, built-in name or file stem).
    pub cell: String,
}

/// Labels naming what a cell serves now: its protocol and its component's CID. The
/// counters stay labelled by cell name alone, so a new version continues their series;
/// join on `cell` to see them by CID.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellInfoLabel {
    /// The cell's name, as in [`CellLabel`].
    pub cell: String,
    /// The protocol it is served on.
    pub protocol: String,
    /// Its component's CID.
    pub content: String,
}

/// Labels naming a cell and why a stream was refused or failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    cell: String,
    reason: String,
}

/// Builds histograms with the buckets for one kind of duration.
#[derive(Clone)]
struct Buckets {
    start: f64,
    count: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, 2.0, self.count))
    }
}

/// Node-wide totals, cheap to read.
#[derive(Debug, Default)]
pub struct Totals {
    /// Instances alive right now.
    pub live: AtomicU64,
    /// Instances that finished cleanly.
    pub succeeded: AtomicU64,
    /// Instances that failed.
    pub failed: AtomicU64,
    /// Streams refused before an instance was created.
    pub refused: AtomicU64,
}

/// Every metric of a node, and the registry they are encoded from.
pub struct Metrics {
    registry: Registry,
    totals: Totals,
    accepted: Family<CellLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    completed: Family<CellLabel, Counter>,
    failed: Family<ReasonLabel, Counter>,
    live: Family<CellLabel, Gauge>,
    instantiate_seconds: Family<CellLabel, Histogram, Buckets>,
    stream_seconds: Family<CellLabel, Histogram, Buckets>,
    bytes_in: Family<CellLabel, Counter>,
    bytes_out: Family<CellLabel, Counter>,
    cells: Family<CellInfoLabel, Gauge>,
    /// libp2p's swarm, identify and ping metrics.
    pub libp2p: libp2p::metrics::Metrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, registered under the `ww_` and `libp2p_` prefixes.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let libp2p = libp2p::metrics::Metrics::new(&mut registry);
        let metrics = Self {
            totals: Totals::default(),
            accepted: Family::default(),
            refused: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            live: Family::default(),
            // 10 µs … ~5 s, and 1 ms … ~9 h.
            instantiate_seconds: Family::new_with_constructor(Buckets {
                start: 1e-5,
                count: 20,
            }),
            stream_seconds: Family::new_with_constructor(Buckets {
                start: 1e-3,
                count: 25,
            }),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            cells: Family::default(),
            libp2p,
            registry,
        };
        metrics.register()
    }

    fn register(mut self) -> Self {
        let ww = self.registry.sub_registry_with_prefix("ww");
        ww.register(
            "streams_accepted",
            "Streams admitted to an instance",
            self.accepted.clone(),
        );
        ww.register(
            "streams_refused",
            "Streams refused before an instance was created",
            self.refused.clone(),
        );
        ww.register(
            "streams_completed",
            "Instances that finished cleanly",
            self.completed.clone(),
        );
        ww.register(
            "streams_failed",
            "Instances that failed",
            self.failed.clone(),
        );
        ww.register("instances_live", "Instances alive now", self.live.clone());
        ww.register(
            "instantiate_seconds",
            "Time to create an instance",
            self.instantiate_seconds.clone(),
        );
        ww.register(
            "stream_seconds",
            "Time from admission to the end of a stream",
            self.stream_seconds.clone(),
        );
        ww.register(
            "bytes_in",
            "Bytes received from peers",
            self.bytes_in.clone(),
        );
        ww.register("bytes_out", "Bytes sent to peers", self.bytes_out.clone());
        ww.register(
            "cell_info",
            "1 for each cell served now, by protocol and component CID",
            self.cells.clone(),
        );
        self
    }

    /// Records that `cell` is served now (as `ww_cell_info`).
    pub fn cell_served(&self, cell: CellInfoLabel) {
        self.cells.get_or_create(&cell).set(1);
    }

    /// Records that `cell` is no longer served.
    pub fn cell_withdrawn(&self, cell: &CellInfoLabel) {
        self.cells.remove(cell);
    }

    /// Node-wide totals.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Instances of `cell` alive now.
    pub fn live(&self, cell: &CellLabel) -> i64 {
        self.live.get_or_create(cell).get()
    }

    /// A stream was admitted and its instance is starting.
    pub fn started(&self, cell: &CellLabel) {
        self.accepted.get_or_create(cell).inc();
        self.live.get_or_create(cell).inc();
        self.totals.live.fetch_add(1, Ordering::Relaxed);
    }

    /// An instance was created in `elapsed`.
    pub fn instantiated(&self, cell: &CellLabel, elapsed: Duration) {
        self.instantiate_seconds
            .get_or_create(cell)
            .observe(elapsed.as_secs_f64());
    }

    /// An instance ended: `failure` is `None` on success, else the failure's kind.
    pub fn ended(
        &self,
        cell: &CellLabel,
        failure: Option<&'static str>,
        elapsed: Duration,
        bytes: (u64, u64),
    ) {
        self.live.get_or_create(cell).dec();
        self.totals.live.fetch_sub(1, Ordering::Relaxed);
        self.stream_seconds
            .get_or_create(cell)
            .observe(elapsed.as_secs_f64());
        self.bytes_in.get_or_create(cell).inc_by(bytes.0);
        self.bytes_out.get_or_create(cell).inc_by(bytes.1);
        match failure {
            None => {
                self.completed.get_or_create(cell).inc();
                self.totals.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Some(reason) => {
                let labels = ReasonLabel {
                    cell: cell.cell.clone(),
                    reason: reason.into(),
                };
                self.failed.get_or_create(&labels).inc();
                self.totals.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A stream for `cell` was refused for a reason of kind `reason`.
    pub fn refused(&self, cell: &CellLabel, reason: &'static str) {
        let labels = ReasonLabel {
            cell: cell.cell.clone(),
            reason: reason.into(),
        };
        self.refused.get_or_create(&labels).inc();
        self.totals.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_cell_and_reason() {
        let metrics = Metrics::new();
        let echo = CellLabel {
            cell: "echo".into(),
        };
        metrics.started(&echo);
        metrics.instantiated(&echo, Duration::from_micros(40));
        metrics.ended(&echo, Some("cpu"), Duration::from_millis(3), (5, 7));
        metrics.refused(&echo, "node_busy");
        let text = metrics.encode();
        for line in [
            "ww_streams_accepted_total{cell=\"echo\"} 1",
            "ww_streams_failed_total{cell=\"echo\",reason=\"cpu\"} 1",
            "ww_streams_refused_total{cell=\"echo\",reason=\"node_busy\"} 1",
            "ww_instances_live{cell=\"echo\"} 0",
            "ww_bytes_out_total{cell=\"echo\"} 7",
            "ww_instantiate_seconds_count{cell=\"echo\"} 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
        assert_eq!(metrics.totals().failed.load(Ordering::Relaxed), 1);
    }
}
