/*!
herald-admin: the HTTP API operators use, what Kafka Connect's REST API gives them.

| endpoint | answer |
|---|---|
| `GET /metrics` | Prometheus text: per route consumed, delivered, skipped, dead-lettered, retried, batch write latency, lag per partition; per source events published, transactions, backlog and rows held in `herald_changes` |
| `GET /health/live` | `200` while the process serves; never needs the token |
| `GET /health/ready` | `200` when every route reaches Kafka and its sink, else `503` with what does not |
| `GET /routes` | each route: status, assigned partitions, lag, counters, last error, last event time |
| `GET /sources` | each source: status (`standby`, `active`, `retrying`), last error and since when it has been stuck, events published, transactions, backlog (captured, not yet published), rows held in `herald_changes` (trigger capture), WAL its slot holds back (WAL capture) |
| `POST /routes/{name}/pause`, `/resume` | stop or restart consuming, keeping the group membership |
| `POST /reload` | re-read the config: `200` with what changed (only changed routes restart, and failed ones start again), or `422` with why it was refused (the old config runs on) |
| `POST /routes/{name}/restart`, `POST /sources/{name}/restart` | stop the route or source if it runs and start it again from the running config: a `failed` one whose cause was fixed comes back; `200`, or `422` with why not |
| `GET /routes/{name}/tap` | each message the route handles, live, as server-sent events: `tapped` (topic, partition, offset, `outcome` — `delivered`, `skipped`, `dead_lettered` or `retried` — the error, the payload) and `missed` (messages a slow client did not get: a fast route is sampled, never slowed); `?limit=N` ends after N, `?rate=N` sends at most N a second (default 1,000); needs the token whenever one is set |
| `GET /routes/{name}/offsets` | where the route resumes, per topic-partition (its sink's stored offsets where it keeps them, else its group's), the log's ends, the lag, the next event's time: `herald offsets show --json` |
| `PATCH /routes/{name}/offsets` | move where a **paused or stopped** route resumes (`{"to_earliest": true}`, `{"to_latest": true}`, `{"to_time": "2026-12-07T10:00:00Z"}` or `{"to_offset": {"topic": …, "partition": 0, "offset": 6}}`, and `"dry_run"`): a paused route leaves its group, is moved and starts again paused; `200` with before → after, `422` when it runs (pause it first) or another process runs it |
| `POST /routes/{name}/redrive` | `herald redrive` of the route (body, all optional: `{"since": "2h", "filter": {"source": "OrdersDB"}, "dry_run": true}`): `200` with the report per error class once done, `422` with why not |
| `GET /board` | the status board (when `[board] topics` is set): a live page, one row per source, one column per stage |
| `GET /board/state` | the board as JSON: `stages` (`[board] stages` first, then first-seen order), `cells` (latest event per source and stage, with `diverged` marks) and `reconciled_at` |
| `GET /board/events` | the board live, as server-sent events: a `snapshot`, then a `cell` per change and a `reconciled` per periodic reconcile |

What keeps it safe (module `guard`, `serve`):
- a change (`POST`) is taken only from the API's own origin: a `Host` that names this server, an
  `Origin` (when sent) equal to it, and no simple-form body, so no web page can pause a route;
- with `[admin] token` (or `token_file`), a change needs `Authorization: Bearer <token>`, and
  with `auth = "all"` every request but `/health/live` does (the scheme `Bearer` in any case);
  beyond loopback a token is required;
- connections are capped (`max_connections`), headers must arrive within `header_timeout`, a
  connection idle for `idle_timeout` is closed, live board streams are capped
  (`max_event_streams`) and one that falls behind is ended (the page reconnects and gets a
  fresh snapshot), so slow or idle clients cannot take memory or file descriptors from the sinks;
- every answer carries `Content-Security-Policy` (this server only, no framing),
  `X-Content-Type-Options: nosniff` and `X-Frame-Options: DENY`.

It shows no configuration, hence no secrets.
*/
#![deny(missing_docs)]

mod board_page;
mod config;
mod guard;
mod tap;

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

pub use config::{AdminConfig, AuthScope};

/// What the admin API asks the process to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Re-read the config (`POST /reload`).
    Reload,
    /// Stop route `name` if it runs and start it again from the running config (`POST
    /// /routes/{name}/restart`): a failed route whose cause was fixed comes back.
    RestartRoute(String),
    /// The same for source `name` (`POST /sources/{name}/restart`).
    RestartSource(String),
    /// Where route `name` resumes, per topic-partition, as JSON (`GET /routes/{name}/offsets`).
    Offsets(String),
    /// Move where a paused or stopped route resumes (`PATCH /routes/{name}/offsets`); the
    /// answer is what moved, as JSON.
    ResetOffsets {
        /// The route.
        route: String,
        /// Where to.
        to: herald_offsets::ResetTo,
        /// Only say what would move.
        dry_run: bool,
    },
    /// Send route `route`'s dead letters back through it (`POST /routes/{name}/redrive`); the
    /// answer is the report, as JSON.
    Redrive {
        /// The route.
        route: String,
        /// Only letters that died within this long.
        since: Option<std::time::Duration>,
        /// Only letters whose event has each of these field values.
        filter: Vec<(String, String)>,
        /// Only count what would go back.
        dry_run: bool,
    },
}

/// Where the admin API sends a [`Control`] request; the answer is what was done, or why not.
pub type ControlRequests = tokio::sync::mpsc::Sender<(Control, tokio::sync::oneshot::Sender<Result<String, String>>)>;

/// The admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound (taken, or not this machine's).
    #[error("cannot serve the admin API on {address}")]
    Bind {
        /// The address in `[admin] listen`.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `[admin] token_file` could not be read.
    #[error("cannot read admin.token_file")]
    Token(#[source] std::io::Error),
}

/// Binds `address` (`[admin] listen`), then returns the address bound (a port of 0 picks a free
/// one) and the future that serves until `stop` is cancelled, within `config`'s bounds and
/// rules. With a `board`, also serves the status board.
pub async fn bind(
    address: SocketAddr,
    config: &AdminConfig,
    observer: Arc<Observer>,
    board: Option<Arc<Board>>,
    control: Option<ControlRequests>,
    stop: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = ()>), AdminError> {
    let token = config.resolve_token().map_err(AdminError::Token)?;
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|source| AdminError::Bind { address, source })?;
    let bound = listener.local_addr().map_err(|source| AdminError::Bind { address, source })?;
    info!(address = %bound, token = token.is_some(), "Admin API listening.");
    let mut app = router(Arc::clone(&observer)).merge(tap::router(observer, config.max_event_streams, stop.clone()));
    if let Some(board) = board {
        app = app.merge(board_page::router(board, config.max_event_streams, stop.clone()));
    }
    if let Some(control) = control {
        app = app.merge(
            Router::new()
                .route("/reload", post(reload_config))
                .route("/routes/{name}/restart", post(restart_route))
                .route("/sources/{name}/restart", post(restart_source))
                .route("/routes/{name}/offsets", get(route_offsets).patch(reset_route_offsets))
                .route("/routes/{name}/redrive", post(redrive))
                .with_state(control),
        );
    }
    let guard = guard::Guard::new(bound, token, config.auth);
    let app = app.layer(axum::middleware::from_fn_with_state(guard, guard::guard));
    let limits = herald_http::Limits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        name: "admin API",
    };
    Ok((bound, herald_http::serve(listener, app, limits, stop)))
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

/// Sends `request` and waits for its answer.
async fn ask(control: &ControlRequests, request: Control) -> Result<String, String> {
    let (answer, outcome) = tokio::sync::oneshot::channel();
    match control.send((request, answer)).await {
        Ok(()) => outcome.await.unwrap_or_else(|_| Err("herald is stopping".into())),
        Err(_) => Err("herald is stopping".into()),
    }
}

async fn reload_config(State(control): State<ControlRequests>) -> Response {
    match ask(&control, Control::Reload).await {
        Ok(changed) => (StatusCode::OK, Json(serde_json::json!({ "reloaded": changed }))).into_response(),
        Err(why) => (StatusCode::UNPROCESSABLE_ENTITY, Json(serde_json::json!({ "error": why }))).into_response(),
    }
}

async fn restart_route(State(control): State<ControlRequests>, Path(name): Path<String>) -> Response {
    restarted(ask(&control, Control::RestartRoute(name)).await)
}

async fn restart_source(State(control): State<ControlRequests>, Path(name): Path<String>) -> Response {
    restarted(ask(&control, Control::RestartSource(name)).await)
}

async fn route_offsets(State(control): State<ControlRequests>, Path(name): Path<String>) -> Response {
    json_answer(ask(&control, Control::Offsets(name)).await)
}

/// The body of `PATCH /routes/{name}/offsets`: one of the `to_*` fields, as
/// `herald offsets reset` takes them, and `dry_run`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    #[serde(default)]
    to_earliest: bool,
    #[serde(default)]
    to_latest: bool,
    to_time: Option<chrono::DateTime<chrono::Utc>>,
    to_offset: Option<OffsetTarget>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OffsetTarget {
    topic: String,
    partition: i32,
    offset: i64,
}

async fn reset_route_offsets(
    State(control): State<ControlRequests>,
    Path(name): Path<String>,
    body: Result<Json<ResetBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let refuse = |why: String| (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": why }))).into_response();
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return refuse(format!("the body is not a reset: {rejection}")),
    };
    let chosen = [body.to_earliest, body.to_latest, body.to_time.is_some(), body.to_offset.is_some()];
    if chosen.iter().filter(|chosen| **chosen).count() != 1 {
        return refuse("give exactly one of to_earliest, to_latest, to_time, to_offset".to_owned());
    }
    let to = match (body.to_time, body.to_offset) {
        _ if body.to_earliest => herald_offsets::ResetTo::Earliest,
        _ if body.to_latest => herald_offsets::ResetTo::Latest,
        (Some(at), _) => herald_offsets::ResetTo::Time(at),
        (None, Some(OffsetTarget { topic, partition, offset })) => {
            herald_offsets::ResetTo::Offset { topic, partition, offset }
        }
        (None, None) => return refuse("give exactly one of to_earliest, to_latest, to_time, to_offset".to_owned()),
    };
    json_answer(ask(&control, Control::ResetOffsets { route: name, to, dry_run: body.dry_run }).await)
}

/// The body of `POST /routes/{name}/redrive` (all optional): `since` (`"2h"`), `filter`
/// (`{"source": "OrdersDB"}`), `dry_run`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    #[serde(default, with = "humantime_serde")]
    since: Option<std::time::Duration>,
    #[serde(default)]
    filter: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    dry_run: bool,
}

async fn redrive(
    State(control): State<ControlRequests>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: RedriveBody = if body.iter().all(u8::is_ascii_whitespace) {
        RedriveBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(err) => {
                let why = format!(
                    "the body is not a redrive ({{\"since\": \"2h\", \"filter\": {{…}}, \"dry_run\": true}}): {err}"
                );
                return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": why }))).into_response();
            }
        }
    };
    let request = Control::Redrive {
        route: name,
        since: body.since,
        filter: body.filter.into_iter().collect(),
        dry_run: body.dry_run,
    };
    json_answer(ask(&control, request).await)
}

/// `200` with the answer (JSON text), or `422` with why not.
fn json_answer(outcome: Result<String, String>) -> Response {
    match outcome {
        Ok(json) => match serde_json::from_str::<serde_json::Value>(&json) {
            Ok(value) => (StatusCode::OK, Json(value)).into_response(),
            Err(_) => (StatusCode::OK, json).into_response(),
        },
        Err(why) => (StatusCode::UNPROCESSABLE_ENTITY, Json(serde_json::json!({ "error": why }))).into_response(),
    }
}

/// `200` with what restarted, or `422` with why not.
fn restarted(outcome: Result<String, String>) -> Response {
    match outcome {
        Ok(done) => (StatusCode::OK, Json(serde_json::json!({ "restarted": done }))).into_response(),
        Err(why) => (StatusCode::UNPROCESSABLE_ENTITY, Json(serde_json::json!({ "error": why }))).into_response(),
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::{Read, Write};

    use super::*;

    /// A real server on a free loopback port, with `config`'s rules.
    async fn serving(config: &str) -> (SocketAddr, CancellationToken) {
        let config: AdminConfig = serde_json::from_str(config).unwrap();
        let stop = CancellationToken::new();
        let address = "127.0.0.1:0".parse().unwrap();
        let (bound, serve) = bind(address, &config, Observer::new().unwrap(), None, None, stop.clone()).await.unwrap();
        tokio::spawn(serve);
        (bound, stop)
    }

    /// Sends `head` (request line and headers, without the blank line) and returns the status
    /// and the whole answer.
    async fn send(address: SocketAddr, head: String) -> (u16, String) {
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            write!(stream, "{head}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
            (status, answer)
        })
        .await
        .unwrap()
    }

    const TOKEN: &str = "a-token-of-some-length-0123";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_needs_this_origin_no_form_and_the_token() {
        let (address, stop) = serving(&format!(r#"{{"token": "{TOKEN}"}}"#)).await;
        let host = format!("Host: {address}");
        let bearer = format!("Authorization: Bearer {TOKEN}");
        let pause = "POST /routes/r/pause HTTP/1.1";
        // No route `r` exists: 404 means every rule let the request through.
        let cases = [
            (format!("{pause}\r\n{host}\r\n{bearer}"), 404),
            (format!("{pause}\r\nHost: localhost:{}\r\n{bearer}", address.port()), 404),
            (
                format!("{pause}\r\n{host}\r\n{bearer}\r\nOrigin: http://{address}\r\nContent-Type: application/json"),
                404,
            ),
            (format!("{pause}\r\n{host}"), 401),
            (format!("{pause}\r\n{host}\r\nAuthorization: Bearer {TOKEN}x"), 401),
            (format!("{pause}\r\n{host}\r\nAuthorization: {TOKEN}"), 401),
            (format!("{pause}\r\nHost: evil.example\r\n{bearer}"), 403),
            (format!("{pause}\r\nHost: evil.example:{}\r\n{bearer}", address.port()), 403),
            (format!("{pause}\r\n{host}\r\n{bearer}\r\nOrigin: http://evil.example"), 403),
            (format!("{pause}\r\n{host}\r\n{bearer}\r\nOrigin: null"), 403),
            (format!("{pause}\r\n{host}\r\n{bearer}\r\nContent-Type: text/plain;charset=UTF-8"), 415),
            (format!("{pause}\r\n{host}\r\n{bearer}\r\nContent-Type: application/x-www-form-urlencoded"), 415),
            (format!("{pause}\r\n{host}\r\n{bearer}\r\nContent-Type: Multipart/Form-Data; boundary=x"), 415),
            // Reading needs no token with the default `auth = "changes"`.
            ("GET /routes HTTP/1.1\r\nHost: evil.example".to_owned(), 200),
        ];
        for (request, expected) in cases {
            let (status, answer) = send(address, request.clone()).await;
            assert_eq!(status, expected, "{request}\n→ {answer}");
            assert!(answer.contains("x-content-type-options: nosniff"), "{answer}");
            assert!(answer.contains("frame-ancestors 'none'"), "{answer}");
        }
        let (_, refused) = send(address, format!("{pause}\r\n{host}")).await;
        assert!(refused.contains("www-authenticate: Bearer") && !refused.contains(TOKEN), "{refused}");
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_auth_all_every_request_needs_the_token() {
        let (address, stop) = serving(&format!(r#"{{"token": "{TOKEN}", "auth": "all"}}"#)).await;
        let host = format!("Host: {address}");
        // Liveness says nothing but "up": a container's health check reads it without a token.
        assert_eq!(send(address, format!("GET /health/live HTTP/1.1\r\n{host}")).await.0, 200);
        let lower = format!("GET /routes HTTP/1.1\r\n{host}\r\nAuthorization: bearer {TOKEN}");
        assert_eq!(send(address, lower).await.0, 200, "the scheme is case-insensitive");
        for path in ["/metrics", "/health/ready", "/routes", "/sources"] {
            assert_eq!(send(address, format!("GET {path} HTTP/1.1\r\n{host}")).await.0, 401, "{path}");
            let authorized = format!("GET {path} HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {TOKEN}");
            assert_eq!(send(address, authorized).await.0, 200, "{path}");
        }
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_connection_cap_the_oldest_connection_gives_way() {
        let (address, stop) = serving(r#"{"max_connections": 4, "header_timeout": "30s"}"#).await;
        // Four clients connect and say nothing; the fifth is still answered.
        let idle: Vec<_> = (0..4).map(|_| std::net::TcpStream::connect(address).unwrap()).collect();
        let (status, _) = send(address, format!("GET /health/live HTTP/1.1\r\nHost: {address}")).await;
        assert_eq!(status, 200);
        // The oldest was closed to make room: reading it ends at once.
        let mut oldest = idle.into_iter().next().unwrap();
        oldest.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        assert_eq!(oldest.read(&mut [0; 16]).unwrap(), 0, "the oldest connection was closed");
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_sends_no_headers_is_cut_off() {
        let (address, stop) = serving(r#"{"header_timeout": "1s"}"#).await;
        let mut slow = std::net::TcpStream::connect(address).unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x").unwrap();
        slow.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        let mut answer = Vec::new();
        // hyper answers 408, or closes; either way the connection ends (a read timeout fails).
        let started = std::time::Instant::now();
        let ended = slow.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(ended.is_ok(), "still open after {:?}: {ended:?}", started.elapsed());
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
        stop.cancel();
    }
}
