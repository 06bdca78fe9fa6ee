//! The board as a terminal table, for `herald status`. Sources, stages and statuses come from
//! producers: each is shown through `herald_sdk::printable` (controls escaped, long values cut),
//! so no value can rewrite the operator's terminal or break the table.

use chrono::{DateTime, Utc};

use herald_sdk::printable::printable;

use crate::cells::Snapshot;

/// A short age: `45s`, `12m`, `3h`, `2d`.
pub fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - at).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// One row per source, one column per stage (first-seen order); each cell the latest status
/// and its age, `-` where a source has no event of that stage.
pub fn render_table(snapshot: &Snapshot, now: DateTime<Utc>) -> String {
    let mut sources: Vec<&str> = snapshot.cells.iter().map(|cell| cell.source.as_str()).collect();
    sources.dedup();
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(sources.len() + 1);
    let shown = |value: &str| printable(value, MAX_CELL_CHARS).into_owned();
    rows.push(std::iter::once("SOURCE".to_owned()).chain(snapshot.stages.iter().map(|stage| shown(stage))).collect());
    for source in sources {
        let mut row = vec![shown(source)];
        for stage in &snapshot.stages {
            let cell = snapshot.cells.iter().find(|cell| cell.source == source && &cell.stage == stage);
            row.push(match cell {
                Some(cell) => format!("{} {}", shown(&cell.status), age(cell.at, now)),
                None => "-".to_owned(),
            });
        }
        rows.push(row);
    }
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|column| rows.iter().map(|row| row.get(column).map_or(0, |text| text.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, (text, width)) in row.iter().zip(&widths).enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            // Padded by hand: a format width past u16::MAX panics.
            line.push_str(text);
            line.extend(std::iter::repeat_n(' ', width.saturating_sub(text.chars().count())));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The most characters of a source, stage or status a cell shows; longer ones are cut, saying
/// by how much.
const MAX_CELL_CHARS: usize = 48;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Board;

    #[test]
    fn a_row_per_source_a_column_per_stage_with_status_and_age() {
        let board = Board::new();
        for (source, stage, status, second) in [
            ("OrdersDB", "bronze", "SUCCESS", 0),
            ("OrdersDB", "silver", "RUNNING", 30),
            ("Payments", "bronze", "FAILED", 50),
        ] {
            let json = format!(
                r#"{{"event":"STAGE_COMPLETE","stage":"{stage}","source":"{source}","timestamp":"2026-12-01T10:00:{second:02}","status":"{status}"}}"#
            );
            board.apply(&herald_sdk::StageEvent::from_json(json.as_bytes()).unwrap());
        }
        let now = "2026-12-01T11:00:40Z".parse::<DateTime<Utc>>().unwrap();
        let table = render_table(&board.snapshot(), now);
        assert_eq!(
            table,
            "SOURCE    bronze      silver\n\
             OrdersDB  SUCCESS 1h  RUNNING 1h\n\
             Payments  FAILED 59m  -\n"
        );
        assert_eq!(age(now, now), "0s");
        assert_eq!(age(now - chrono::Duration::days(3), now), "3d");
    }

    #[test]
    fn hostile_values_neither_panic_nor_reach_the_terminal_raw() {
        let board = Board::new();
        let long = "L".repeat(65_536);
        for (source, stage) in [(long.as_str(), "bronze"), ("evil\u{1b}]0;owned\u{7}\u{1b}[2J\r", "s\u{9b}31m")] {
            let mut event = herald_sdk::StageEvent::from_json(
                br#"{"event":"STAGE_COMPLETE","stage":"x","source":"x","timestamp":"2026-12-01T10:00:00","status":"SUCCESS"}"#,
            )
            .unwrap();
            event.source = source.to_owned();
            event.stage = stage.to_owned();
            board.apply(&event);
        }
        let now = "2026-12-01T11:00:40Z".parse::<DateTime<Utc>>().unwrap();
        let table = render_table(&board.snapshot(), now);
        assert!(!table.chars().any(|c| c.is_control() && c != '\n'), "{table:?}");
        assert!(table.contains("evil\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\r"), "{table}");
        assert!(table.contains("… (65488 more characters)"), "cut, saying so");
        assert!(table.lines().all(|line| line.chars().count() < 400), "{table}");
    }
}
