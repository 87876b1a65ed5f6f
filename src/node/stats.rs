//! The stats handler: `/ww/stats/0.1.0` answers with the node's counters, one
//! `name value` pair per line (`live`, `succeeded`, `failed`, `refused`), then one
//! `cell PROTOCOL CID LIVE` line per cell served now, then closes.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;
use futures::{AsyncWriteExt as _, FutureExt as _};

use super::Handler;
use super::cells::Cells;
use crate::metrics::Metrics;
use crate::net::router::InboundStream;

/// Serves the stats protocol from the node's metrics and cells.
pub(super) struct Stats {
    pub(super) metrics: Arc<Metrics>,
    pub(super) cells: Arc<Cells>,
}

impl Handler for Stats {
    fn accept(&self, inbound: InboundStream, _closing: bool) -> BoxFuture<'static, ()> {
        let totals = self.metrics.totals();
        let mut text = format!(
            "live {}\nsucceeded {}\nfailed {}\nrefused {}\n",
            totals.live.load(Ordering::Relaxed),
            totals.succeeded.load(Ordering::Relaxed),
            totals.failed.load(Ordering::Relaxed),
            totals.refused.load(Ordering::Relaxed),
        );
        for cell in self.cells.list() {
            let _ = writeln!(
                text,
                "cell {} {} {}",
                cell.protocol,
                cell.content,
                cell.live()
            );
        }
        send_stats(inbound.stream, text).boxed()
    }
}

async fn send_stats(mut stream: libp2p::Stream, stats: String) {
    let sent = async {
        stream.write_all(stats.as_bytes()).await?;
        stream.close().await
    };
    if let Err(error) = sent.await {
        tracing::debug!(%error, "stats not delivered");
    }
}
