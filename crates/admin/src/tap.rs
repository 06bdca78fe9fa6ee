//! `GET /routes/{name}/tap`: each message the route handles with its outcome, live, as
//! server-sent events — what `herald tap` prints.
//!
//! Bounded like the board's streams: at most `max_event_streams` taps at once (more get `503`),
//! each with a buffer of its own that the route never waits on, and at most `?rate=N` messages
//! a second (default 1,000). What does not fit, in the buffer or the rate, is counted and sent as
//! a `missed` event: the tap of a fast route is a sample. Payloads are shown, so a tap needs the token whenever
//! one is set (the guard treats it as a change).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream::{self, StreamExt};
use herald_core::tap::TapWatch;
use herald_core::Observer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Messages a tap holds for a client that reads slowly.
const TAP_BUFFER: usize = 256;

/// How often a tap with nothing to send says how many it missed, if that changed.
const MISSED_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct TapState {
    observer: Arc<Observer>,
    stop: CancellationToken,
    streams: Arc<Semaphore>,
}

/// `/routes/{name}/tap`, with at most `max_streams` taps open at once.
pub(crate) fn router(observer: Arc<Observer>, max_streams: usize, stop: CancellationToken) -> Router {
    Router::new().route("/routes/{name}/tap", get(tap)).with_state(TapState {
        observer,
        stop,
        streams: Arc::new(Semaphore::new(max_streams)),
    })
}

/// Messages a tap sends a second unless `?rate=N` says otherwise; what a person can follow, and
/// what keeps the tap of a fast route cheap.
const DEFAULT_RATE: u32 = 1_000;
/// The most `?rate=N` may ask.
const MAX_RATE: u32 = 20_000;

/// `?limit=N` (end the stream after N messages) and `?rate=N` (at most N a second, default
/// 1,000, at most 20,000). `Err` names what is wrong.
fn query_of(uri: &Uri) -> Result<(Option<u64>, u32), String> {
    let (mut limit, mut rate) = (None, DEFAULT_RATE);
    let Some(query) = uri.query() else { return Ok((limit, rate)) };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", value)) => {
                limit = Some(value.parse::<u64>().map_err(|_| format!("limit must be a count, not `{value}`"))?)
            }
            Some(("rate", value)) => {
                rate = value
                    .parse::<u32>()
                    .ok()
                    .filter(|rate| (1..=MAX_RATE).contains(rate))
                    .ok_or_else(|| format!("rate must be 1 to {MAX_RATE} messages a second, not `{value}`"))?
            }
            _ => return Err(format!("unknown query parameter `{pair}` (the tap takes `limit=N` and `rate=N`)")),
        }
    }
    Ok((limit, rate))
}

/// A tap's stream as it unfolds: the route's watch, messages left to send, missed count last sent.
struct Tapping {
    watch: TapWatch,
    left: Option<u64>,
    missed_sent: u64,
    _permit: OwnedSemaphorePermit,
}

/// A `tapped` event per message (`Tapped` as JSON), and a `missed` event (`{"missed": N}`, the
/// total so far) whenever messages did not fit the buffer.
async fn tap(State(state): State<TapState>, Path(name): Path<String>, uri: Uri) -> Response {
    let (limit, rate) = match query_of(&uri) {
        Ok(query) => query,
        Err(why) => return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": why }))).into_response(),
    };
    let Some(route) = state.observer.routes().into_iter().find(|route| route.name == name) else {
        return (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": format!("no route `{name}`") })))
            .into_response();
    };
    let Ok(permit) = Arc::clone(&state.streams).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            "too many live streams open (admin.max_event_streams)\n",
        )
            .into_response();
    };
    let tapping =
        Tapping { watch: route.tap.watch(TAP_BUFFER, Some(rate)), left: limit, missed_sent: 0, _permit: permit };
    let events = stream::unfold(tapping, |mut tapping| async move {
        if tapping.left == Some(0) {
            return None;
        }
        loop {
            let missed = tapping.watch.missed();
            if missed > tapping.missed_sent {
                tapping.missed_sent = missed;
                let event = Event::default().event("missed").json_data(serde_json::json!({ "missed": missed }));
                return Some((Ok::<_, Infallible>(unencodable(event)), tapping));
            }
            tokio::select! {
                tapped = tapping.watch.recv() => {
                    let tapped = tapped?;
                    tapping.left = tapping.left.map(|left| left.saturating_sub(1));
                    let event = Event::default().event("tapped").json_data(&tapped);
                    return Some((Ok(unencodable(event)), tapping));
                }
                () = tokio::time::sleep(MISSED_EVERY) => {}
            }
        }
    });
    let stop = state.stop.clone();
    let events = events.take_until(async move { stop.cancelled().await });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

fn unencodable(event: Result<Event, axum::Error>) -> Event {
    event.unwrap_or_else(|_| Event::default().comment("unencodable"))
}
