//! The dashboard: the page at `/` (one embedded HTML file with its own small script
//! and style, no external asset), `/api/state` (the JSON it shows, see [`state`]) and
//! `/api/events`, the live feed it updates from.
//!
//! The feed costs one snapshot per [`FEED_INTERVAL`] however many dashboards are
//! open: a ticker builds the state, serializes it and frames it as a server-sent
//! event once, into a `watch` channel; every open feed sends the same bytes (a
//! reference-counted `Bytes`, not a copy). With no feed open the ticker builds
//! nothing; it only samples the cells' accepted counts for their
//! [`history`](super::history), which the page and `/api/state` carry (the feed's
//! snapshots do not). A slow reader only ever misses snapshots: the channel holds
//! the latest.
//!
//! At most [`MAX_FEEDS`] feeds are open at once (each also holds one of the
//! endpoint's connections); more get 503. A feed ends itself after [`FEED_LIFETIME`],
//! and the page's `EventSource` reconnects; its connection is exempt from the
//! endpoint's 30-second lifetime for that long.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, IntoResponse, Response};
use tokio::sync::{Semaphore, watch};

use super::history::History;
use super::state::{self, State as DashboardState};
use super::{AppState, FeedLease};

/// How often the feed sends a snapshot, at most.
pub const FEED_INTERVAL: Duration = Duration::from_secs(1);
/// Feeds open at once, at most.
pub const MAX_FEEDS: usize = 16;
/// How long one feed lasts before it ends and the page reconnects.
pub const FEED_LIFETIME: Duration = Duration::from_secs(600);
/// How long the page waits before reconnecting a feed that ended, in milliseconds
/// (the SSE `retry` field).
const RECONNECT_MS: u32 = 1000;

/// The page, with `{{STATE}}` where the first snapshot goes.
const PAGE: &str = include_str!("dashboard.html");

/// The live feed's shared parts: the latest framed snapshot and the feed budget.
#[derive(Clone)]
pub(super) struct Feed {
    /// The latest snapshot as one SSE frame; replaced every tick while anyone listens.
    frames: watch::Sender<Bytes>,
    /// One permit per open feed.
    slots: Arc<Semaphore>,
}

impl Feed {
    pub(super) fn new() -> Self {
        Feed {
            frames: watch::Sender::new(Bytes::new()),
            slots: Arc::new(Semaphore::new(MAX_FEEDS)),
        }
    }
}

/// Samples the cells' history (see [`super::history`]) every [`FEED_INTERVAL`], and
/// builds, serializes and publishes a snapshot then while a feed is open. Runs until
/// aborted.
pub(super) async fn tick(app: AppState) {
    let mut ticks = tokio::time::interval(FEED_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sampled = tokio::time::Instant::now();
    loop {
        let now = ticks.tick().await;
        let accepted = app.metrics.accepted_by_cell();
        lock(&app.history).sample(accepted, now.duration_since(sampled));
        sampled = now;
        if app.feed.frames.receiver_count() == 0 {
            continue;
        }
        let json = serde_json::to_string(&current(&app)).expect("the state serializes");
        app.feed.frames.send_replace(frame(&json));
    }
}

/// One SSE frame carrying `json` (one line: serde_json escapes newlines).
fn frame(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

/// The state now.
fn current(app: &AppState) -> DashboardState {
    let network = app
        .network
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    state::snapshot(&app.metrics, &network, (app.cells)(), app.started.elapsed())
}

/// The state now, with the cells' history.
fn with_history(app: &AppState) -> DashboardState {
    let mut state = current(app);
    state.history = Some(lock(&app.history).rates());
    state
}

fn lock(history: &std::sync::Mutex<History>) -> std::sync::MutexGuard<'_, History> {
    history.lock().unwrap_or_else(|e| e.into_inner())
}

/// `GET /api/state`: the state now, with the cells' history, as JSON.
pub(super) async fn api_state(State(app): State<AppState>) -> axum::Json<DashboardState> {
    axum::Json(with_history(&app))
}

/// `GET /`: the page, with the state now (and the cells' history) embedded so it
/// shows something before the feed's first snapshot.
pub(super) async fn page(State(app): State<AppState>) -> Html<String> {
    let json = serde_json::to_string(&with_history(&app)).expect("the state serializes");
    // Inside <script>, "</" could end the element; JSON allows "<\/" for it.
    Html(PAGE.replace("{{STATE}}", &json.replace("</", "<\\/")))
}

/// `GET /api/events`: the live feed, one snapshot per tick, for [`FEED_LIFETIME`].
pub(super) async fn events(
    State(app): State<AppState>,
    Extension(lease): Extension<FeedLease>,
) -> Response {
    let Ok(slot) = app.feed.slots.clone().try_acquire_owned() else {
        let busy = "too many dashboards open; try again later\n";
        return (StatusCode::SERVICE_UNAVAILABLE, busy).into_response();
    };
    lease.mark();
    let frames = app.feed.frames.subscribe();
    let ends = tokio::time::Instant::now() + FEED_LIFETIME;
    let retry = Bytes::from(format!("retry: {RECONNECT_MS}\n\n"));
    let first = futures::stream::once(async move { Ok::<_, Infallible>(retry) });
    // The slot is held as long as the stream lives.
    let snapshots = futures::stream::unfold((frames, slot), move |(mut frames, slot)| async move {
        match tokio::time::timeout_at(ends, frames.changed()).await {
            Ok(Ok(())) => {
                let frame = frames.borrow_and_update().clone();
                Some((Ok(frame), (frames, slot)))
            }
            _ => None,
        }
    });
    let body = Body::from_stream(futures::StreamExt::chain(first, snapshots));
    let headers = [
        (CONTENT_TYPE, "text/event-stream"),
        (CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

    use super::*;
    use crate::admin::CellsView;
    use crate::metrics::Metrics;

    /// Opens a feed on `addr` and returns its lines.
    async fn open_feed(
        addr: std::net::SocketAddr,
    ) -> tokio::io::Lines<BufReader<tokio::net::TcpStream>> {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        BufReader::new(socket).lines()
    }

    /// A response's status line.
    async fn status_line(lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>) -> String {
        lines.next_line().await.unwrap().unwrap()
    }

    /// The next snapshot's uptime on a feed.
    async fn next_uptime(lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>) -> u64 {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("a snapshot in time")
                .unwrap()
                .expect("an open feed");
            if let Some(json) = line.strip_prefix("data: ") {
                let state: serde_json::Value = serde_json::from_str(json).unwrap();
                return state["node"]["uptime_s"].as_u64().unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn open_feeds_share_one_snapshot_per_tick_and_none_builds_without_them() {
        // Each snapshot lists the cells once: counting the calls counts the builds.
        let builds = Arc::new(AtomicUsize::new(0));
        let cells: CellsView = {
            let builds = builds.clone();
            Arc::new(move || {
                builds.fetch_add(1, Ordering::SeqCst);
                Vec::new()
            })
        };
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let (_, endpoint) = super::super::spawn(addr, None, metrics, Arc::default(), cells)
            .await
            .unwrap();
        tokio::time::sleep(3 * FEED_INTERVAL).await;
        assert_eq!(builds.load(Ordering::SeqCst), 0, "built with no feed open");

        const FEEDS: usize = 4;
        const SNAPSHOTS: usize = 3;
        let mut feeds = Vec::new();
        for _ in 0..FEEDS {
            feeds.push(open_feed(addr).await);
        }
        let mut seen = BTreeSet::new();
        for feed in &mut feeds {
            for _ in 0..SNAPSHOTS {
                seen.insert(next_uptime(feed).await);
            }
        }
        let built = builds.load(Ordering::SeqCst);
        // Built per feed, there would be FEEDS × SNAPSHOTS builds at least; shared,
        // one per tick: the distinct snapshots seen, and a tick either side.
        assert!(built <= seen.len() + 2, "{built} builds for {seen:?}");
        assert!(built < FEEDS * SNAPSHOTS, "{built} builds");
        endpoint.abort();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn feeds_beyond_the_cap_get_503_until_one_closes() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cells: CellsView = Arc::new(Vec::new);
        let metrics = Arc::new(Metrics::new());
        let (_, endpoint) = super::super::spawn(addr, None, metrics, Arc::default(), cells)
            .await
            .unwrap();
        let mut feeds = Vec::new();
        for _ in 0..MAX_FEEDS {
            let mut feed = open_feed(addr).await;
            assert!(status_line(&mut feed).await.starts_with("HTTP/1.1 200"));
            feeds.push(feed);
        }
        let mut extra = open_feed(addr).await;
        assert!(status_line(&mut extra).await.starts_with("HTTP/1.1 503"));
        // A closed feed's slot comes back once the endpoint notices (at its next
        // snapshot at the latest).
        drop(feeds.pop());
        let mut reopened = false;
        for _ in 0..50 {
            let mut feed = open_feed(addr).await;
            if status_line(&mut feed).await.starts_with("HTTP/1.1 200") {
                reopened = true;
                break;
            }
            tokio::time::sleep(FEED_INTERVAL / 5).await;
        }
        assert!(reopened, "the closed feed's slot never came back");
        endpoint.abort();
    }
}
