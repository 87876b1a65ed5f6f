//! The admin HTTP endpoint (off unless `--admin ADDR`): `/healthz`, `/metrics` in the
//! Prometheus text format, and `/status` as JSON. Bind it to loopback or a private
//! network: it tells anyone who asks what the node runs.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::metrics::{CellLabel, Metrics};

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
#[derive(Debug, Clone)]
pub struct CellInfo {
    /// Its name (the metrics label).
    pub name: String,
    /// Its protocol ID.
    pub protocol: String,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    network: Arc<RwLock<NetworkView>>,
    cells: Arc<[CellInfo]>,
}

/// Binds `addr` and serves the endpoint in a background task until the process ends
/// or the returned handle is aborted.
pub async fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    network: Arc<RwLock<NetworkView>>,
    cells: Vec<CellInfo>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the admin endpoint to {addr}"))?;
    let state = AppState {
        metrics,
        network,
        cells: cells.into(),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .with_state(state);
    tracing::info!(%addr, "admin endpoint listening");
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "admin endpoint stopped");
        }
    }))
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
    name: String,
    protocol: String,
    live_instances: i64,
}

async fn status(State(state): State<AppState>) -> axum::Json<Status> {
    let network = state
        .network
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let cells = state
        .cells
        .iter()
        .map(|cell| CellStatus {
            name: cell.name.clone(),
            protocol: cell.protocol.clone(),
            live_instances: state.metrics.live(&CellLabel {
                cell: cell.name.clone(),
            }),
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
