//! Reading the events topics into a board, for as long as herald runs.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_kafka::reader::TopicReader;
use herald_kafka::KafkaProperties;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cells::Board;

/// The wait before reading again after Kafka failed.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Reads `topics` from `since` ago into `board` until `cancel`. Kafka failures are logged and
/// the reading starts over (the board keeps what it has; events read again change nothing).
pub async fn follow(
    board: Arc<Board>,
    props: KafkaProperties,
    topics: Vec<String>,
    since: Duration,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        let from = Utc::now() - chrono::Duration::from_std(since).unwrap_or(chrono::Duration::days(1));
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            result = read(&board, &props, &topics, from) => result,
        };
        if let Err(err) = result {
            warn!(error = %herald_sdk::error_chain(&err).join(": "), "The status board cannot read its topics; trying again.");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY_AFTER) => {}
        }
    }
}

async fn read(
    board: &Board,
    props: &KafkaProperties,
    topics: &[String],
    from: chrono::DateTime<Utc>,
) -> Result<(), herald_kafka::reader::HistoryError> {
    let mut reader = TopicReader::open(props, topics, from, "board").await?;
    info!(topics = ?topics, since = %from, "Status board reading.");
    loop {
        if let Some(event) = reader.next().await?.and_then(|read| read.event) {
            board.apply(&event);
        }
    }
}
