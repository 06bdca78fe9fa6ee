//! The status board's endpoints: the page, its state as JSON, and its live stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream::{self, StreamExt};
use herald_board::{Board, Snapshot, Update};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The page, its style and its script, all served from here (nothing from elsewhere, which is
/// what the content security policy allows; an inline script would need it loosened).
const PAGE: &str = include_str!("board.html");
const STYLE: &str = include_str!("board.css");
const SCRIPT: &str = include_str!("board.js");

#[derive(Clone)]
struct BoardState {
    board: Arc<Board>,
    /// Ends the live streams on shutdown, so open pages do not hold the server up.
    stop: CancellationToken,
    /// One permit per live stream: at most `max_event_streams`.
    streams: Arc<Semaphore>,
}

/// `/board` (with `/board/board.css` and `/board/board.js`), `/board/state` and
/// `/board/events` over `board`, with at most `max_streams` live streams.
pub(crate) fn router(board: Arc<Board>, max_streams: usize, stop: CancellationToken) -> Router {
    Router::new()
        .route("/board", get(|| async { asset("text/html; charset=utf-8", PAGE) }))
        .route("/board/board.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/board/board.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/board/state", get(state))
        .route("/board/events", get(events))
        .with_state(BoardState { board, stop, streams: Arc::new(Semaphore::new(max_streams)) })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn state(State(state): State<BoardState>) -> Json<Snapshot> {
    Json(state.board.snapshot())
}

fn snapshot_event(board: &Board) -> Event {
    Event::default()
        .event("snapshot")
        .json_data(board.snapshot())
        .unwrap_or_else(|_| Event::default().comment("unencodable snapshot"))
}

/// A snapshot, then each changed cell and each periodic reconcile's time. A stream that falls behind the board's buffer ends (the
/// page reconnects and starts from a new snapshot), so a client that does not read holds at
/// most that buffer; when `max_event_streams` are open, `503` with `Retry-After`.
async fn events(State(state): State<BoardState>) -> Response {
    let Ok(permit) = Arc::clone(&state.streams).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            "too many live board streams open (admin.max_event_streams)\n",
        )
            .into_response();
    };
    // Subscribe before taking the snapshot: a change in between is sent twice, never lost.
    let updates = state.board.subscribe();
    let first = snapshot_event(&state.board);
    let changes = stream::unfold((updates, permit), |(mut updates, permit)| async move {
        let update = match updates.recv().await {
            Ok(update) => update,
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "A board stream fell behind; ending it so the page starts anew.");
                return None;
            }
            Err(RecvError::Closed) => return None,
        };
        let event = match &update {
            Update::Cell(cell) => Event::default().event("cell").json_data(cell),
            Update::Reconciled(at) => Event::default().event("reconciled").json_data(at),
        }
        .unwrap_or_else(|_| Event::default().comment("unencodable update"));
        Some((Ok::<_, Infallible>(event), (updates, permit)))
    });
    let stop = state.stop.clone();
    let stream =
        stream::once(async move { Ok(first) }).chain(changes).take_until(async move { stop.cancelled().await });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
