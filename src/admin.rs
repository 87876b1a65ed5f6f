//! The admin HTTP endpoint (off unless `--admin ADDR`): `/healthz`, `/metrics` in the
//! Prometheus text format, and `/status` as JSON. Bind it to loopback or a private
//! network: it tells anyone who asks what the node runs.
//!
//! Clients cannot hold its resources: at most [`MAX_CONNECTIONS`] connections are
//! served at once (more are accepted and closed at once, so they cost no file
//! descriptor and wait in no backlog), each must send its request headers within
//! [`HEADER_READ_TIMEOUT`] in at most [`MAX_BUFFER_BYTES`], and none stays open
//! longer than [`CONNECTION_LIFETIME`], however slowly it reads or idles.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
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

/// What `/status` reports, kept current by the node's event loop.
#[derive(Debug, Default, Clone, Serialize)]
pub struct NetworkView {
    /// This node's peer ID.
    pub peer_id: String,
    /// Full listen addresses, ending in `/p2p/<peer-id>`.
    pub listen: Vec<String>,
    /// Peers with at least one connection.
    pub connected_peers: usize,
}

/// A served cell, as `/status` lists it.
#[derive(Debug, Clone, Serialize)]
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
}

/// Binds `addr` and serves the endpoint in a background task until the process ends
/// or the returned handle is aborted.
pub async fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    network: Arc<RwLock<NetworkView>>,
    cells: CellsView,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the admin endpoint to {addr}"))?;
    let state = AppState {
        metrics,
        network,
        cells,
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .with_state(state);
    tracing::info!(%addr, "admin endpoint listening");
    Ok(tokio::spawn(serve(listener, app)))
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
        let service = TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(TokioIo::new(socket), service);
        connections.spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
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
    axum::Json(Status {
        network,
        live_instances,
        cells,
    })
}
