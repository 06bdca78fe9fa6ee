//! The harness itself, end to end against the test services (`scripts/services up`): short runs
//! whose rows must account for every event sent. Numbers are not checked; timing claims live in
//! docs/benchmarks.md, not in tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

/// The herald binary next to this harness's own, built by `cargo test --workspace`.
fn herald() -> PathBuf {
    let herald = PathBuf::from(env!("CARGO_BIN_EXE_herald-bench")).with_file_name("herald");
    assert!(
        herald.exists(),
        "{} is missing: run `cargo test --workspace` or `cargo build --bin herald`",
        herald.display()
    );
    herald
}

/// Runs `herald-bench <args>` and returns its table rows, split into trimmed cells.
fn bench(args: &[&str]) -> Vec<Vec<String>> {
    let output =
        Command::new(env!("CARGO_BIN_EXE_herald-bench")).arg("--herald").arg(herald()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "herald-bench {args:?} failed (start the test services with `scripts/services up`):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .skip(2) // header and separator
        .map(|line| line.trim_matches('|').split('|').map(|cell| cell.trim().to_owned()).collect())
        .collect()
}

#[test]
fn a_latency_run_sees_every_event_and_reports_percentiles_in_order() {
    let rows = bench(&["latency", "stdout", "--rate", "200", "--duration", "2s"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row[0], "stdout latency");
    assert_eq!(row[1], "400", "events sent");
    let ms: Vec<f64> = row[5..9].iter().map(|cell| cell.parse().unwrap()).collect();
    assert!(ms.windows(2).all(|pair| pair[0] <= pair[1]), "p50 <= p95 <= p99 <= max: {ms:?}");
    assert!(row[9].parse::<f64>().unwrap() > 0.0, "peak RSS measured: {row:?}");
}

#[test]
fn the_polling_baseline_reports_herald_and_both_pollers_on_the_same_events() {
    let rows = bench(&["baseline", "--rate", "5", "--duration", "4s"]);
    let names: Vec<&str> = rows.iter().map(|row| row[0].as_str()).collect();
    assert_eq!(names, ["herald → Redis subscriber", "poll pipeline_status every 1s", "poll pipeline_status every 5s"]);
    for row in &rows {
        assert_eq!(row[1], "20", "every reader saw all 20 events: {row:?}");
    }
    assert!(rows[1][11].contains("queries/s"), "{:?}", rows[1]);
}

#[test]
fn a_failover_run_writes_every_lost_event_once_and_reports_both_rows() {
    // The measure itself checks that the promoted server ends with every event once.
    let rows = bench(&["failover", "--lost", "300", "--rounds", "1"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0][0].starts_with("failover: endpoint moved"), "{:?}", rows[0]);
    assert!(rows[1][11].contains("failover / drain"), "{:?}", rows[1]);
    for row in &rows {
        assert_eq!(row[1], "300", "{row:?}");
    }
}

#[test]
fn a_recovery_run_replays_and_redrives_every_event_and_reports_each_beside_the_drain() {
    // The measure itself checks that the table ends with every event three times and that the
    // redrive sent back every dead letter.
    let rows = bench(&["recovery", "--events", "300", "--rounds", "1"]);
    assert_eq!(rows.len(), 7, "{rows:?}");
    assert!(rows[2][0].starts_with("replay:") && rows[2][11].contains("replay / drain"), "{:?}", rows[2]);
    assert!(rows[4][0].starts_with("redrive:") && rows[4][11].contains("redrive / drain"), "{:?}", rows[4]);
    for row in &rows {
        assert_eq!(row[1], "300", "{row:?}");
    }
}

#[test]
fn a_tap_run_drains_every_event_with_and_without_a_tap_and_the_tap_shows_some() {
    let rows = bench(&["tap", "--events", "2000", "--rounds", "1"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[1][0].contains("herald tap"), "{:?}", rows[1]);
    assert!(rows[1][11].contains("the tap printed") && !rows[1][11].contains("printed 0 "), "{:?}", rows[1]);
}

#[test]
fn an_ingest_run_reports_latency_for_each_arm_and_throughput_beside_kcat() {
    let rows = bench(&["ingest", "--events", "2000", "--rounds", "1"]);
    assert_eq!(rows.len(), 7, "{rows:?}");
    // 300 requests, 300 producer sends and 15 processes, each with percentiles.
    assert_eq!([&rows[0][1], &rows[1][1], &rows[2][1]], ["300", "300", "15"], "{rows:?}");
    assert!(rows[..3].iter().all(|row| row[7] != "–"), "{rows:?}");
    assert!(rows[3..].iter().all(|row| row[3] != "–" && row[11].contains("× kcat")), "{rows:?}");
}

#[test]
fn a_source_burst_run_sees_every_row_in_both_modes_beside_both_floors() {
    let rows = bench(&["source-burst", "--rows", "500", "--rounds", "1"]);
    assert_eq!(rows.len(), 7, "{rows:?}");
    for row in &rows {
        assert_eq!(row[1], "500", "{row:?}");
        assert_ne!(row[3], "–", "a rate for every run: {row:?}");
    }
    assert!(rows[0][11].contains("herald peak RSS") && rows[2][11].contains("× the slower floor"), "{rows:?}");
}

#[test]
fn a_source_overhead_run_times_single_row_and_bulk_writers_under_every_arm() {
    let rows = bench(&["source-overhead", "--rows", "30", "--bulk-rows", "400", "--rounds", "1"]);
    assert_eq!(rows.len(), 12, "six arms, two writers: {rows:?}");
    assert_eq!(rows.iter().filter(|row| row[0].contains("one INSERT … SELECT")).count(), 6, "{rows:?}");
    assert!(rows.iter().any(|row| row[0].contains("row-level trigger")), "{rows:?}");
    for row in &rows {
        assert_ne!(row[3], "–", "a rate for every run: {row:?}");
        assert!(row[11].contains("all published"), "{row:?}");
    }
}
