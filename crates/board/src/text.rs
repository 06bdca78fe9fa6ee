//! The board as a terminal table, for `herald status`.

use chrono::{DateTime, Utc};

use crate::board::Snapshot;

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
    rows.push(std::iter::once("SOURCE".to_owned()).chain(snapshot.stages.iter().cloned()).collect());
    for source in sources {
        let mut row = vec![source.to_owned()];
        for stage in &snapshot.stages {
            let cell = snapshot.cells.iter().find(|cell| cell.source == source && &cell.stage == stage);
            row.push(match cell {
                Some(cell) => format!("{} {}", cell.status, age(cell.at, now)),
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
        let line: Vec<String> =
            row.iter().zip(&widths).map(|(text, width)| format!("{text:<width$}", width = *width)).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

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
            board.apply(&herald_core::StageEvent::from_json(json.as_bytes()).unwrap());
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
}
