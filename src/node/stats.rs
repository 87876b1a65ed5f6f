//! The stats handler: `/ww/stats/0.1.0` answers with the node's counters, one
//! `name value` pair per line (`live`, `succeeded`, `failed`, `refused`), then closes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;
use futures::{AsyncWriteExt as _, FutureExt as _};

use super::Handler;
use crate::metrics::Metrics;
use crate::net::router::InboundStream;

/// Serves the stats protocol from the node's metrics.
pub(super) struct Stats(pub(super) Arc<Metrics>);

impl Handler for Stats {
    fn accept(&self, inbound: InboundStream, _closing: bool) -> BoxFuture<'static, ()> {
        let totals = self.0.totals();
        let text = format!(
            "live {}\nsucceeded {}\nfailed {}\nrefused {}\n",
            totals.live.load(Ordering::Relaxed),
            totals.succeeded.load(Ordering::Relaxed),
            totals.failed.load(Ordering::Relaxed),
            totals.refused.load(Ordering::Relaxed),
        );
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
