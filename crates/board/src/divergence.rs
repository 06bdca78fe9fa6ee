//! Two boards side by side: a status table's latest row per (source, stage) against a topic's
//! latest event, for `herald reconcile`. They agree when every pair is on both sides with the
//! same event, status, instant and record count; everything else is a divergence, said in
//! which direction, so a team has evidence before it switches a poller off or retires a table.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use herald_sdk::printable::printable;
use serde::Serialize;

use crate::cells::{Cell, Snapshot};
use crate::text::age;

/// How one (source, stage) differs between the table and the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// In the table, not in the topic.
    TableOnly,
    /// In the topic, not in the table.
    TopicOnly,
    /// Both, the table's latest newer.
    TableNewer,
    /// Both, the topic's latest newer.
    TopicNewer,
    /// Both, at the same instant, but not the same (status, event or records).
    Differs,
}

impl Verdict {
    /// The verdict in words, as `herald reconcile` and the board say it.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::TableOnly => "only in the table",
            Verdict::TopicOnly => "only in the topic",
            Verdict::TableNewer => "the table is newer",
            Verdict::TopicNewer => "the topic is newer",
            Verdict::Differs => "same instant, different",
        }
    }
}

/// One (source, stage) on which the two sides disagree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// The source.
    pub source: String,
    /// The stage.
    pub stage: String,
    /// How they differ.
    pub verdict: Verdict,
    /// The table's latest, when it has one.
    pub table: Option<Cell>,
    /// The topic's latest, when it has one.
    pub topic: Option<Cell>,
}

/// Which fields besides the instant are compared: a table that does not keep a field cannot
/// differ on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compared {
    /// The event name (`STAGE_COMPLETE`).
    pub event: bool,
    /// The status.
    pub status: bool,
    /// The record count.
    pub records: bool,
}

impl Compared {
    /// Every field.
    pub const ALL: Compared = Compared { event: true, status: true, records: true };
}

/// Every (source, stage) on which `table` and `topic` disagree, by source then stage. Only
/// what a reader acts on counts: the instant (to the microsecond, Postgres's precision), and
/// the event, status and records as `fields` says (not the timestamp's spelling, nor fields
/// beyond these).
pub fn compare(table: &Snapshot, topic: &Snapshot, fields: Compared) -> Vec<Divergence> {
    let key = |cell: &Cell| (cell.source.clone(), cell.stage.clone());
    type Sides<'a> = (Option<&'a Cell>, Option<&'a Cell>);
    let mut pairs: BTreeMap<(String, String), Sides<'_>> = BTreeMap::new();
    for cell in &table.cells {
        pairs.entry(key(cell)).or_default().0 = Some(cell);
    }
    for cell in &topic.cells {
        pairs.entry(key(cell)).or_default().1 = Some(cell);
    }
    pairs
        .into_iter()
        .filter_map(|((source, stage), (table, topic))| {
            let verdict = match (table, topic) {
                (Some(_), None) => Verdict::TableOnly,
                (None, Some(_)) => Verdict::TopicOnly,
                (Some(a), Some(b)) if instant_order(a, b).is_gt() => Verdict::TableNewer,
                (Some(a), Some(b)) if instant_order(a, b).is_lt() => Verdict::TopicNewer,
                (Some(a), Some(b)) if !agrees(a, b, fields) => Verdict::Differs,
                _ => return None,
            };
            Some(Divergence { source, stage, verdict, table: table.cloned(), topic: topic.cloned() })
        })
        .collect()
}

/// Whether `table` and `topic` say the same of a pair: one instant, and the same event,
/// status and records as `fields` says.
pub fn agrees(table: &Cell, topic: &Cell, fields: Compared) -> bool {
    instant_order(table, topic).is_eq()
        && !((fields.event && table.event != topic.event)
            || (fields.status && table.status != topic.status)
            || (fields.records && table.records != topic.records))
}

/// Which cell is newer. Postgres keeps microseconds, rounding: instants less than one apart
/// are the same.
fn instant_order(a: &Cell, b: &Cell) -> std::cmp::Ordering {
    let apart = (a.at - b.at).num_nanoseconds().unwrap_or(i64::MAX);
    if apart.abs() < 1000 {
        std::cmp::Ordering::Equal
    } else {
        apart.cmp(&0)
    }
}

/// The divergences as a terminal table, one row each, values escaped and cut as `herald
/// status` shows them.
pub fn render_divergences(divergences: &[Divergence], now: DateTime<Utc>) -> String {
    let side = |cell: &Option<Cell>| match cell {
        Some(cell) => {
            let records = cell.records.map_or_else(String::new, |n| format!(" ({n})"));
            format!("{} {}{records}", printable(&cell.status, 24), age(cell.at, now))
        }
        None => "-".to_owned(),
    };
    let mut rows =
        vec![["SOURCE".to_owned(), "STAGE".to_owned(), "TABLE".to_owned(), "TOPIC".to_owned(), String::new()]];
    for divergence in divergences {
        rows.push([
            printable(&divergence.source, 48).into_owned(),
            printable(&divergence.stage, 48).into_owned(),
            side(&divergence.table),
            side(&divergence.topic),
            divergence.verdict.describe().to_owned(),
        ]);
    }
    let widths: Vec<usize> =
        (0..5).map(|column| rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, text) in row.iter().enumerate() {
            line.push_str(text);
            line.extend(std::iter::repeat_n(' ', widths[column].saturating_sub(text.chars().count()) + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Board;

    fn board(events: &[(&str, &str, &str, &str, Option<i64>)]) -> Snapshot {
        let board = Board::new();
        for (source, stage, status, time, records) in events {
            let mut json = serde_json::json!({
                "event": "STAGE_COMPLETE", "stage": stage, "source": source, "status": status,
                "timestamp": format!("2026-12-01T{time}"),
            });
            if let Some(records) = records {
                json["records"] = (*records).into();
            }
            board.apply(&herald_sdk::StageEvent::from_json(json.to_string().as_bytes()).unwrap());
        }
        board.snapshot()
    }

    #[test]
    fn every_kind_of_divergence_is_named_and_agreement_is_empty() {
        let table = board(&[
            ("A", "bronze", "SUCCESS", "10:00:00", Some(5)),
            ("B", "bronze", "SUCCESS", "10:05:00", None),
            ("C", "bronze", "SUCCESS", "10:00:00", None),
            ("D", "bronze", "FAILED", "10:00:00", None),
            ("E", "bronze", "SUCCESS", "10:00:00", None),
        ]);
        let topic = board(&[
            ("A", "bronze", "SUCCESS", "10:00:00Z", Some(5)),
            ("B", "bronze", "SUCCESS", "10:00:00", None),
            ("C", "bronze", "SUCCESS", "10:01:00", None),
            ("D", "bronze", "SUCCESS", "10:00:00", None),
            ("F", "bronze", "SUCCESS", "10:00:00", None),
        ]);
        let verdicts: Vec<(String, Verdict)> =
            compare(&table, &topic, Compared::ALL).into_iter().map(|d| (d.source, d.verdict)).collect();
        assert_eq!(
            verdicts,
            [
                ("B".into(), Verdict::TableNewer),
                ("C".into(), Verdict::TopicNewer),
                ("D".into(), Verdict::Differs),
                ("E".into(), Verdict::TableOnly),
                ("F".into(), Verdict::TopicOnly),
            ],
            "A agrees: the same instant spelt two ways"
        );
        assert!(compare(&table, &table, Compared::ALL).is_empty());
        let without_status = Compared { status: false, ..Compared::ALL };
        assert!(compare(&table, &topic, without_status).iter().all(|d| d.verdict != Verdict::Differs));
        let now = "2026-12-01T11:00:00Z".parse().unwrap();
        let text = render_divergences(&compare(&table, &topic, Compared::ALL), now);
        assert!(text.starts_with("SOURCE  STAGE") && text.contains("only in the table"), "{text}");
    }
}
