//! The periodic reconcile of `herald run`: every `[reconcile] every`, each Postgres source and
//! Postgres sink route is compared (never repaired); the gauge `herald_reconcile_divergent`
//! says how many pairs differ, and the board marks them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_board::{Board, Divergence, Mark, TableSide, Verdict};
use herald_config::Invalid;
use herald_core::Observer;
use herald_kafka::KafkaProperties;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::round::{reconcile, Subject};

/// `[reconcile]`: the periodic reconcile of `herald run`. Off unless `every` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// How often to compare every Postgres source's and Postgres sink route's table with its
    /// topic, e.g. `"15m"`. Default: never.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// The window compared. Default `"24h"`.
    #[serde(default = "default_since", with = "humantime_serde")]
    pub since: Duration,
    /// Longest one comparison may read its topic. Default `"120s"`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self { every: None, since: default_since(), timeout: default_timeout() }
    }
}

impl ReconcileConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.every.is_some_and(|every| every < Duration::from_secs(1)) {
            return Err(Invalid::new(
                "reconcile.every",
                "must be at least 1s (each round reads the tables and topics)",
            ));
        }
        if self.since.is_zero() || self.timeout.is_zero() {
            return Err(Invalid::new("reconcile", "`since` and `timeout` must be greater than zero"));
        }
        Ok(())
    }
}

fn default_since() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_timeout() -> Duration {
    Duration::from_secs(120)
}

/// Compares each of `subjects` every `config.every` until `stop`: read-only, one at a time.
/// A comparison that fails is logged and leaves the gauge as it was; the next round tries again.
pub async fn run_periodically(
    kafka: KafkaProperties,
    subjects: Vec<Subject>,
    config: ReconcileConfig,
    observer: Arc<Observer>,
    board: Option<Arc<Board>>,
    stop: CancellationToken,
) {
    let Some(every) = config.every.filter(|_| !subjects.is_empty()) else { return };
    info!(subjects = subjects.len(), every = ?every, "Periodic reconcile on.");
    loop {
        for subject in &subjects {
            let label = subject.label();
            let since = chrono::Utc::now() - chrono::Duration::from_std(config.since).unwrap_or(chrono::Duration::MAX);
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = reconcile(&kafka, subject, since, config.timeout, false) => outcome,
            };
            match outcome {
                Ok(report) => {
                    observer
                        .reconcile_divergent(&label)
                        .set(i64::try_from(report.divergences.len() + report.unreadable.len()).unwrap_or(i64::MAX));
                    if !report.divergences.is_empty() {
                        warn!(subject = %label, divergent = report.divergences.len(), pairs = report.pairs, "Table and topic differ; `herald reconcile` lists the pairs.");
                    }
                    if let Some(board) = &board {
                        let marks: BTreeMap<(String, String), Mark> = report
                            .divergences
                            .iter()
                            .map(|d| ((d.source.clone(), d.stage.clone()), mark(&label, d)))
                            .collect();
                        board.mark_diverged(&label, marks);
                    }
                }
                Err(err) => {
                    warn!(subject = %label, error = %err, "Periodic reconcile failed; trying again next round.")
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// How the board shows divergence `d` found by `by`: the verdict, which side is newer, and the
/// table's own value (the board shows the topic's).
fn mark(by: &str, d: &Divergence) -> Mark {
    let newer = match d.verdict {
        Verdict::TableNewer => "table",
        Verdict::TopicNewer => "topic",
        Verdict::TableOnly | Verdict::TopicOnly | Verdict::Differs => "neither",
    };
    let table = d.table.as_ref().map(|cell| TableSide {
        event: cell.event.clone(),
        status: cell.status.clone(),
        records: cell.records,
        timestamp: cell.timestamp.clone(),
    });
    Mark { by: by.to_owned(), verdict: d.verdict.describe().to_owned(), newer, table }
}
