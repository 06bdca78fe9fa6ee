/*!
herald-admin: the HTTP API operators use, what Kafka Connect's REST API gives them.

| endpoint | answer |
|---|---|
| `GET /metrics` | Prometheus text: per route consumed, delivered, skipped, dead-lettered, retried, batch write latency, lag per partition; per source events published, transactions, backlog and rows held in `herald_changes` |
| `GET /health/live` | `200` while the process serves |
| `GET /health/ready` | `200` when every route reaches Kafka and its sink, else `503` with what does not |
| `GET /routes` | each route: status, assigned partitions, lag, counters, last error, last event time |
| `GET /sources` | each source: status (`standby`, `active`, `retrying`), last error and since when it has been stuck, events published, transactions, backlog (captured, not yet published), rows held in `herald_changes` (trigger capture), WAL its slot holds back (WAL capture) |
| `POST /routes/{name}/pause`, `/resume` | stop or restart consuming, keeping the group membership |
| `GET /board` | the status board (when `[board] topics` is set): a live page, one row per source, one column per stage |
| `GET /board/state` | the board as JSON: `stages` (first-seen order) and `cells` (latest event per source and stage) |
| `GET /board/events` | the board live, as server-sent events: a `snapshot`, then a `cell` per change |

The one decision to know: the API has no authentication, so the config refuses to bind it beyond
loopback without `admin.allow_remote = true`. It shows no configuration, hence no secrets.
*/
#![deny(missing_docs)]

mod board;
mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_board::Board;
use herald_core::Observer;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::AdminConfig;

/// The admin server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the admin API on {address}")]
pub struct AdminError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `address`, then returns the address bound (a port of 0 picks a free one) and the
/// future that serves until `stop` is cancelled. With a `board`, also serves the status board.
pub async fn bind(
    address: SocketAddr,
    observer: Arc<Observer>,
    board: Option<Arc<Board>>,
    stop: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = Result<(), std::io::Error>>), AdminError> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| AdminError { address, source })?;
    let bound = listener.local_addr().map_err(|source| AdminError { address, source })?;
    info!(address = %bound, "Admin API listening.");
    let mut app = router(observer);
    if let Some(board) = board {
        app = app.merge(board::router(board, stop.clone()));
    }
    Ok((bound, async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await }))
}

/// The API's routes over `observer` (the board's are added by [`bind`]).
pub fn router(observer: Arc<Observer>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .route("/routes", get(routes))
        .route("/sources", get(sources))
        .route("/routes/{name}/pause", post(pause))
        .route("/routes/{name}/resume", post(resume))
        .with_state(observer)
}

async fn metrics(State(observer): State<Arc<Observer>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], observer.render()).into_response()
}

async fn ready(State(observer): State<Arc<Observer>>) -> Response {
    match observer.readiness() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "ready": true }))).into_response(),
        Err(problems) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "ready": false, "problems": problems })))
                .into_response()
        }
    }
}

/// One route in `GET /routes`.
#[derive(Debug, Serialize)]
struct RouteView {
    name: String,
    #[serde(flatten)]
    state: herald_core::observe::RouteState,
    lag: Option<i64>,
    consumed: u64,
    delivered: u64,
    skipped: u64,
    dead_lettered: u64,
    retries: u64,
}

async fn routes(State(observer): State<Arc<Observer>>) -> Json<Vec<RouteView>> {
    Json(
        observer
            .routes()
            .iter()
            .map(|route| {
                let lag = route.lag.load(Ordering::Relaxed);
                RouteView {
                    name: route.name.clone(),
                    state: route.state(),
                    lag: (lag >= 0).then_some(lag),
                    consumed: route.consumed.get(),
                    delivered: route.delivered.get(),
                    skipped: route.skipped.get(),
                    dead_lettered: route.dead_lettered.get(),
                    retries: route.retries.get(),
                }
            })
            .collect(),
    )
}

/// One source in `GET /sources`.
#[derive(Debug, Serialize)]
struct SourceView {
    name: String,
    #[serde(flatten)]
    state: herald_core::observe::SourceState,
    published: u64,
    transactions: u64,
    backlog: i64,
    capture_rows: i64,
    retained_wal_bytes: i64,
}

async fn sources(State(observer): State<Arc<Observer>>) -> Json<Vec<SourceView>> {
    Json(
        observer
            .sources()
            .into_iter()
            .map(|(name, metrics)| SourceView {
                name,
                state: metrics.state(),
                published: metrics.published.get(),
                transactions: metrics.transactions.get(),
                backlog: metrics.backlog.get(),
                capture_rows: metrics.capture_rows.get(),
                retained_wal_bytes: metrics.retained_wal_bytes.get(),
            })
            .collect(),
    )
}

async fn pause(State(observer): State<Arc<Observer>>, Path(name): Path<String>) -> Response {
    set_paused(&observer, &name, true)
}

async fn resume(State(observer): State<Arc<Observer>>, Path(name): Path<String>) -> Response {
    set_paused(&observer, &name, false)
}

fn set_paused(observer: &Observer, name: &str, paused: bool) -> Response {
    match observer.routes().into_iter().find(|route| route.name == name) {
        Some(route) => {
            route.set_paused(paused);
            info!(route = name, paused, "Route pause state changed by the admin API.");
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "route": name, "paused": paused }))).into_response()
        }
        None => {
            (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": format!("no route `{name}`") }))).into_response()
        }
    }
}
