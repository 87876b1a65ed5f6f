//! The admin HTTP endpoint (off unless `--admin ADDR`): `/healthz`, `/metrics` in the
//! Prometheus text format, `/status` as JSON, and the dashboard ([`dashboard`]): the
//! page at `/`, its JSON at `/api/state` and its live feed at `/api/events`. Bind it
//! to loopback or a private network: it tells anyone who asks what the node runs.
//!
//! With a token (`--admin-token`, required when the address is not loopback), every
//! request must carry it, as `Authorization: Bearer TOKEN` or `?token=TOKEN` (for
//! the page and its feed, which a browser opens by URL); others get 401. The
//! comparison takes the same time whatever the token's bytes.
//!
//! Clients cannot hold its resources: at most [`MAX_CONNECTIONS`] connections are
//! served at once (more are accepted and closed at once, so they cost no file
//! descriptor and wait in no backlog), each must send its request headers within
//! [`HEADER_READ_TIMEOUT`] in at most [`MAX_BUFFER_BYTES`], and none stays open
//! longer than [`CONNECTION_LIFETIME`], however slowly it reads or idles — except a
//! connection carrying a live feed, which may stay [`dashboard::FEED_LIFETIME`]
//! longer (feeds are few: [`dashboard::MAX_FEEDS`]).

pub mod dashboard;
pub mod history;
pub mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics::{CellLabel, Metrics};

/// Admin connections served at once, at most: plenty for a scraper and a few
/// people; each costs a file descriptor and up to [`MAX_BUFFER_BYTES`] of buffer.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's line and headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open, whatever it does: keep-alive idling,
/// reading a response slowly, or sending nothing at all.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// A connection's read buffer, at most; a request's line and headers must fit.
pub const MAX_BUFFER_BYTES: usize = 16 * 1024;
/// How long to wait after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What `/status` and the dashboard report about the network, kept current by the
/// node's event loop. `/status` shows the first three fields.
#[derive(Debug, Default, Clone, Serialize)]
pub struct NetworkView {
    /// This node's peer ID.
    pub peer_id: String,
    /// Full listen addresses, ending in `/p2p/<peer-id>`.
    pub listen: Vec<String>,
    /// Peers with at least one connection.
    pub connected_peers: usize,
    /// Addresses confirmed as reachable from outside.
    #[serde(skip)]
    pub external: Vec<String>,
    /// AutoNAT's verdict, in words.
    #[serde(skip)]
    pub nat: String,
    /// The WAN DHT's mode, `client` or `server`.
    #[serde(skip)]
    pub dht_mode: String,
    /// Peers in the WAN DHT's routing table.
    #[serde(skip)]
    pub dht_wan_peers: usize,
    /// Peers in the LAN DHT's routing table.
    #[serde(skip)]
    pub dht_lan_peers: usize,
    /// The connected peers, by peer ID.
    #[serde(skip)]
    pub peers: BTreeMap<String, state::PeerView>,
    /// Every peer the node knows of (DHTs, mDNS, connections), by peer ID.
    #[serde(skip)]
    pub cluster: BTreeMap<String, state::ClusterPeer>,
    /// The relays holding a reservation for this node, by peer ID.
    #[serde(skip)]
    pub relays: std::collections::BTreeSet<String>,
}

/// A served cell, as `/status` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CellInfo {
    /// Its name (the metrics label).
    pub name: String,
    /// Its protocol ID.
    pub protocol: String,
    /// Its component's CID.
    pub content: String,
    /// How it reaches its stream: `connection` or `stdio`.
    pub kind: &'static str,
    /// Where its component came from: `builtin`, `file`, `content` or `deployed`.
    pub source: &'static str,
    /// When this version began to be served, in seconds since the Unix epoch.
    pub since_unix_s: u64,
}

/// The cells served now; the set changes while the node runs.
pub type CellsView = Arc<dyn Fn() -> Vec<CellInfo> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    network: Arc<RwLock<NetworkView>>,
    cells: CellsView,
    /// When the endpoint started (with the node): the dashboard's uptime.
    started: Instant,
    feed: dashboard::Feed,
    /// Each cell's recent streams per second, sampled by the dashboard's ticker.
    history: Arc<std::sync::Mutex<history::History>>,
}

/// Marks the connection it is attached to as carrying a live feed, which may then
/// outlive [`CONNECTION_LIFETIME`] (by [`dashboard::FEED_LIFETIME`] at most).
#[derive(Clone, Default)]
struct FeedLease(Arc<AtomicBool>);

impl FeedLease {
    fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_feed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Binds `addr` and serves the endpoint in a background task until the process ends
/// or the returned handle is aborted; returns the address bound (its port chosen if
/// `addr`'s is 0) with the handle. With a `token`, every request must carry it.
pub async fn spawn(
    addr: SocketAddr,
    token: Option<String>,
    metrics: Arc<Metrics>,
    network: Arc<RwLock<NetworkView>>,
    cells: CellsView,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the admin endpoint to {addr}"))?;
    let addr = listener
        .local_addr()
        .context("the admin endpoint's bound address")?;
    let state = AppState {
        metrics,
        network,
        cells,
        started: Instant::now(),
        feed: dashboard::Feed::new(),
        history: Arc::default(),
    };
    let ticker = tokio::spawn(dashboard::tick(state.clone()));
    let token: Option<Arc<str>> = token.map(Into::into);
    let app = Router::new()
        .route("/", get(dashboard::page))
        .route("/api/state", get(dashboard::api_state))
        .route("/api/events", get(dashboard::events))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(token, authorize));
    tracing::info!(%addr, "admin endpoint listening");
    let task = tokio::spawn(async move {
        // Aborting this task drops the ticker's handle, which does not stop it.
        let _ticker = AbortOnDrop(ticker);
        serve(listener, app).await
    });
    Ok((addr, task))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lets a request through if no token is set or it carries the token; answers 401
/// otherwise.
async fn authorize(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    if presented(&request).is_some_and(|given| tokens_match(given, &token)) {
        return next.run(request).await;
    }
    let headers = [(WWW_AUTHENTICATE, "Bearer")];
    let body = "a token is required: Authorization: Bearer TOKEN, or ?token=TOKEN\n";
    (StatusCode::UNAUTHORIZED, headers, body).into_response()
}

/// The token a request carries: its `Authorization: Bearer` header's, else its
/// `token` query parameter's.
fn presented(request: &Request) -> Option<&str> {
    let header = request.headers().get(AUTHORIZATION);
    if let Some(bearer) = header.and_then(|value| value.to_str().ok()) {
        return bearer.strip_prefix("Bearer ").map(str::trim);
    }
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// Whether `given` is `token`, compared in constant time (for equal lengths).
fn tokens_match(given: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// Accepts connections and serves each in a task of its own, within the caps above.
/// Aborting this future aborts every connection it serves.
async fn serve(listener: TcpListener, app: Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUFFER_BYTES);
    let mut connections = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while connections.try_join_next().is_some() {}
        let (socket, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "admin endpoint: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "admin endpoint: too many connections; closing this one");
            continue;
        };
        let lease = FeedLease::default();
        let service = TowerToHyperService::new(app.clone().layer(Extension(lease.clone())));
        let connection = http.serve_connection(TokioIo::new(socket), service);
        connections.spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            let mut served = tokio::time::timeout(CONNECTION_LIFETIME, connection.as_mut()).await;
            if served.is_err() && lease.is_feed() {
                // The feed ends itself within FEED_LIFETIME of its start.
                let feed = dashboard::FEED_LIFETIME;
                served = tokio::time::timeout(feed, connection).await;
            }
            match served {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%remote, %error, "admin connection failed"),
                Err(_) => tracing::debug!(%remote, "admin connection open too long; closed"),
            }
        });
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(CONTENT_TYPE, content_type)], state.metrics.encode())
}

#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    network: NetworkView,
    /// How others reach this node: `public` (AutoNAT confirmed an address),
    /// `relayed` (found private, reachable through a relay reservation), `private`
    /// (found private, no reservation yet) or `unknown` (not tested yet).
    reachability: &'static str,
    /// How this node is connected to each peer: `direct` if any connection to it is,
    /// else `relayed`.
    paths: BTreeMap<String, &'static str>,
    live_instances: u64,
    cells: Vec<CellStatus>,
}

#[derive(Serialize)]
struct CellStatus {
    #[serde(flatten)]
    cell: CellInfo,
    /// Live instances of every version of the cell.
    live_instances: i64,
}

async fn status(State(state): State<AppState>) -> axum::Json<Status> {
    let network = state
        .network
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let cells = (state.cells)()
        .into_iter()
        .map(|cell| CellStatus {
            live_instances: state.metrics.live(&CellLabel {
                cell: cell.name.clone(),
            }),
            cell,
        })
        .collect();
    let live_instances = state
        .metrics
        .totals()
        .live
        .load(std::sync::atomic::Ordering::Relaxed);
    let reachability = match network.nat.as_str() {
        "private" if !network.relays.is_empty() => "relayed",
        "private" => "private",
        public if public.starts_with("public") => "public",
        _ => "unknown",
    };
    let paths = network
        .peers
        .iter()
        .map(|(peer, view)| {
            let direct = view.connections.values().any(|c| !c.relayed);
            (peer.clone(), if direct { "direct" } else { "relayed" })
        })
        .collect();
    axum::Json(Status {
        network,
        reachability,
        paths,
        live_instances,
        cells,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, authorization: Option<&str>) -> Request {
        let mut request = Request::builder().uri(uri);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        request.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_query() {
        assert_eq!(presented(&request("/", Some("Bearer abc"))), Some("abc"));
        assert_eq!(presented(&request("/?a=1&token=abc", None)), Some("abc"));
        assert_eq!(
            presented(&request("/api/events?token=abc", None)),
            Some("abc")
        );
        assert_eq!(presented(&request("/", Some("Basic abc"))), None);
        assert_eq!(presented(&request("/?tokens=abc", None)), None);
        assert_eq!(presented(&request("/", None)), None);
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abd", "abc"));
        assert!(!tokens_match("ab", "abc"));
        assert!(!tokens_match("", "abc"));
    }
}
