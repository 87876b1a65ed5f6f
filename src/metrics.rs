//! What a node counts: streams accepted, refused, completed and failed per cell (with
//! the reason), live instances, instantiation and stream times, bytes each way, plus
//! libp2p's own metrics. Exposed in the Prometheus text format by [`crate::admin`];
//! the totals also answer `ww stats`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

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

/// The first bucket bound of `ww_stream_seconds`, in seconds; each next bound doubles.
const STREAM_BUCKET_START: f64 = 1e-3;
/// How many finite buckets `ww_stream_seconds` has: 1 ms … ~9 h.
const STREAM_BUCKETS: usize = 25;
/// How many failures [`Metrics::recent_failures`] keeps.
pub const RECENT_FAILURES: usize = 50;

/// One cell's counts, kept beside the Prometheus families so that the dashboard can
/// read them without encoding the registry: plain atomics, one more map lookup per
/// stream.
#[derive(Debug, Default)]
struct CellCounts {
    accepted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Stream times, in the same buckets as `ww_stream_seconds` (not cumulative); the
    /// last counts those over the largest bound.
    stream_buckets: [AtomicU64; STREAM_BUCKETS + 1],
}

/// One cell's counts as the dashboard shows them.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct CellSummary {
    /// Streams admitted to an instance.
    pub accepted: u64,
    /// Instances that finished cleanly.
    pub completed: u64,
    /// Instances that failed.
    pub failed: u64,
    /// Streams refused before an instance was created.
    pub refused: u64,
    /// Bytes received from peers.
    pub bytes_in: u64,
    /// Bytes sent to peers.
    pub bytes_out: u64,
    /// The median stream time in seconds, estimated from the buckets (see
    /// [`quantile`]); `None` before the first stream ends.
    pub p50_s: Option<f64>,
    /// The 99th percentile stream time in seconds, estimated likewise.
    pub p99_s: Option<f64>,
}

/// A failed or refused stream, as [`Metrics::recent_failures`] remembers it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailureNote {
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The cell's name.
    pub cell: String,
    /// The kind, as the metrics label it (`trap`, `cpu`, `not_allowed`…).
    pub kind: &'static str,
    /// The reason in words, as the peer was told.
    pub reason: String,
    /// The peer whose stream it was, when known.
    pub peer: Option<String>,
}

/// The `q`-quantile (0 ≤ q ≤ 1) of the durations counted in `buckets` — counts per
/// bucket, not cumulative, the `i`th bucket holding durations in
/// `(start·2^(i-1), start·2^i]` and the last those over every bound — the way
/// Prometheus's `histogram_quantile` estimates it: find the bucket that holds the
/// rank `q·total` and interpolate linearly inside it (from 0 for the first bucket).
/// A rank in the overflow bucket answers the largest bound. `None` if empty.
pub fn quantile(buckets: &[u64], start: f64, q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let finite = buckets.len().saturating_sub(1);
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate().take(finite) {
        let upper = start * 2f64.powi(i as i32);
        if count > 0 && (below + count) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { upper / 2.0 };
            let within = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * within);
        }
        below += count;
    }
    Some(start * 2f64.powi(finite as i32 - 1))
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
    /// Each cell's counts, for the dashboard.
    counts: RwLock<HashMap<String, Arc<CellCounts>>>,
    /// The last [`RECENT_FAILURES`] failures and refusals, oldest first.
    recent_failures: Mutex<VecDeque<FailureNote>>,
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
                start: STREAM_BUCKET_START,
                count: STREAM_BUCKETS as u16,
            }),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            cells: Family::default(),
            counts: RwLock::default(),
            recent_failures: Mutex::new(VecDeque::with_capacity(RECENT_FAILURES)),
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

    /// `cell`'s counts, created on first use.
    fn counts(&self, cell: &CellLabel) -> Arc<CellCounts> {
        if let Some(counts) = self
            .counts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cell.cell)
        {
            return counts.clone();
        }
        let mut counts = self.counts.write().unwrap_or_else(|e| e.into_inner());
        counts.entry(cell.cell.clone()).or_default().clone()
    }

    /// `cell`'s counts so far, with its stream-time quantiles.
    pub fn summary(&self, cell: &CellLabel) -> CellSummary {
        let counts = self.counts(cell);
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let buckets: Vec<u64> = counts.stream_buckets.iter().map(get).collect();
        CellSummary {
            accepted: get(&counts.accepted),
            completed: get(&counts.completed),
            failed: get(&counts.failed),
            refused: get(&counts.refused),
            bytes_in: get(&counts.bytes_in),
            bytes_out: get(&counts.bytes_out),
            p50_s: quantile(&buckets, STREAM_BUCKET_START, 0.5),
            p99_s: quantile(&buckets, STREAM_BUCKET_START, 0.99),
        }
    }

    /// Each cell's streams accepted so far, by cell name (every cell counted since
    /// the node started): a few atomic loads, for the dashboard's history.
    pub fn accepted_by_cell(&self) -> Vec<(String, u64)> {
        let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|(cell, counts)| (cell.clone(), counts.accepted.load(Ordering::Relaxed)))
            .collect()
    }

    /// Remembers a failed or refused stream of `cell`, forgetting the oldest beyond
    /// [`RECENT_FAILURES`].
    pub fn note_failure(
        &self,
        cell: &CellLabel,
        kind: &'static str,
        reason: String,
        peer: Option<String>,
    ) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64);
        let note = FailureNote {
            at_unix_ms,
            cell: cell.cell.clone(),
            kind,
            reason,
            peer,
        };
        let mut recent = self
            .recent_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_FAILURES {
            recent.pop_front();
        }
        recent.push_back(note);
    }

    /// The last [`RECENT_FAILURES`] failures and refusals, newest first.
    pub fn recent_failures(&self) -> Vec<FailureNote> {
        let recent = self
            .recent_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().cloned().collect()
    }

    /// A stream was admitted and its instance is starting.
    pub fn started(&self, cell: &CellLabel) {
        self.counts(cell).accepted.fetch_add(1, Ordering::Relaxed);
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
        let counts = self.counts(cell);
        counts.bytes_in.fetch_add(bytes.0, Ordering::Relaxed);
        counts.bytes_out.fetch_add(bytes.1, Ordering::Relaxed);
        counts.stream_buckets[stream_bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
        let outcome = match failure {
            None => &counts.completed,
            Some(_) => &counts.failed,
        };
        outcome.fetch_add(1, Ordering::Relaxed);
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

    /// A stream of `peer` for `cell` was refused for a reason of kind `reason`; `why`
    /// says it in words (`refused: …`), as the recent failures note it.
    pub fn refused(&self, cell: &CellLabel, reason: &'static str, why: String, peer: String) {
        self.counts(cell).refused.fetch_add(1, Ordering::Relaxed);
        self.note_failure(cell, reason, why, Some(peer));
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

/// The index in [`CellCounts::stream_buckets`] of a stream that took `elapsed`: the
/// first bucket whose bound is at least `elapsed`, as the Prometheus histogram files it.
fn stream_bucket(elapsed: Duration) -> usize {
    let seconds = elapsed.as_secs_f64();
    (0..STREAM_BUCKETS)
        .find(|&i| seconds <= STREAM_BUCKET_START * 2f64.powi(i as i32))
        .unwrap_or(STREAM_BUCKETS)
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
        metrics.refused(
            &echo,
            "node_busy",
            "refused: node busy".into(),
            "12D3".into(),
        );
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

    #[test]
    fn quantiles_interpolate_within_buckets() {
        // Bounds 1, 2, 4, 8 (and an overflow bucket).
        assert_eq!(quantile(&[0, 0, 0, 0, 0], 1.0, 0.5), None);
        // 10 in (0, 1]: the median is halfway through it.
        assert_eq!(quantile(&[10, 0, 0, 0, 0], 1.0, 0.5), Some(0.5));
        // 5 in (0, 1] and 5 in (2, 4]: the 99th percentile is near 4.
        let p99 = quantile(&[5, 0, 5, 0, 0], 1.0, 0.99).unwrap();
        assert!((p99 - 3.96).abs() < 1e-9, "{p99}");
        // Everything over the last bound: the largest bound.
        assert_eq!(quantile(&[0, 0, 0, 0, 3], 1.0, 0.5), Some(8.0));
    }

    #[test]
    fn summaries_and_recent_failures_follow_the_streams() {
        let metrics = Metrics::new();
        let echo = CellLabel {
            cell: "echo".into(),
        };
        for ms in [1, 3, 3, 3] {
            metrics.started(&echo);
            metrics.ended(&echo, None, Duration::from_millis(ms), (2, 3));
        }
        metrics.started(&echo);
        metrics.ended(&echo, Some("trap"), Duration::from_millis(3), (0, 0));
        metrics.note_failure(&echo, "trap", "trapped: boom".into(), Some("12D3".into()));
        metrics.refused(
            &echo,
            "not_allowed",
            "refused: not allowed".into(),
            "12D3Koo".into(),
        );
        let summary = metrics.summary(&echo);
        assert_eq!(
            (
                summary.accepted,
                summary.completed,
                summary.failed,
                summary.refused
            ),
            (5, 4, 1, 1)
        );
        assert_eq!((summary.bytes_in, summary.bytes_out), (8, 12));
        // 1 ms in the first bucket (≤ 1 ms), four in (2 ms, 4 ms].
        let p50 = summary.p50_s.unwrap();
        assert!(0.002 < p50 && p50 <= 0.004, "{p50}");
        let recent = metrics.recent_failures();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].reason, "refused: not allowed");
        assert_eq!(recent[0].peer.as_deref(), Some("12D3Koo"));
        assert_eq!(recent[1].reason, "trapped: boom");
        assert_eq!(recent[1].peer.as_deref(), Some("12D3"));
        for i in 0..RECENT_FAILURES {
            metrics.note_failure(&echo, "cpu", format!("n{i}"), None);
        }
        let recent = metrics.recent_failures();
        assert_eq!(recent.len(), RECENT_FAILURES);
        assert_eq!(recent[0].reason, format!("n{}", RECENT_FAILURES - 1));
    }
}
