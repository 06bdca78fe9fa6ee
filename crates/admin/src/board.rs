//! The status board's endpoints: the page, its state as JSON, and its live stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use herald_board::{Board, Snapshot};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// The page: one self-contained file (no scripts, fonts or styles from elsewhere).
const PAGE: &str = include_str!("board.html");

#[derive(Clone)]
struct BoardState {
    board: Arc<Board>,
    /// Ends the live streams on shutdown, so open pages do not hold the server up.
    stop: CancellationToken,
}

/// `/board`, `/board/state` and `/board/events` over `board`.
pub(crate) fn router(board: Arc<Board>, stop: CancellationToken) -> Router {
    Router::new()
        .route("/board", get(page))
        .route("/board/state", get(state))
        .route("/board/events", get(events))
        .with_state(BoardState { board, stop })
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE).into_response()
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

/// A snapshot, then each changed cell; a new snapshot when this stream fell behind.
async fn events(State(state): State<BoardState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before taking the snapshot: a change in between is sent twice, never lost.
    let updates = state.board.subscribe();
    let first = snapshot_event(&state.board);
    let board = Arc::clone(&state.board);
    let changes = stream::unfold((updates, board), |(mut updates, board)| async move {
        let event = match updates.recv().await {
            Ok(cell) => Event::default()
                .event("cell")
                .json_data(&cell)
                .unwrap_or_else(|_| Event::default().comment("unencodable cell")),
            Err(RecvError::Lagged(_)) => snapshot_event(&board),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), (updates, board)))
    });
    let stop = state.stop.clone();
    let stream =
        stream::once(async move { Ok(first) }).chain(changes).take_until(async move { stop.cancelled().await });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
