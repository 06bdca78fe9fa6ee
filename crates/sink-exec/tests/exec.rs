//! The exec sink running real programs (`sh` scripts the tests write), in both modes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use async_trait::async_trait;
use herald_sdk::conformance::{self, Harness, Replay};
use herald_sdk::{BoxError, Sink, SinkError, SinkRecord};
use herald_sink_exec::ExecSinkConfig;

/// A scratch directory of the test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-exec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sink(settings: serde_json::Value) -> Box<dyn Sink> {
    serde_json::from_value::<ExecSinkConfig>(settings).unwrap().sink().unwrap()
}

/// Appends each event it is given to `$OUT`; refuses (exit 1) an event without `lane`.
const PER_EVENT: &str = r#"event=$(cat); case "$event" in *'"lane"'*) printf '%s\n' "$event" >> "$OUT";; *) echo "no lane in this event" >&2; exit 1;; esac"#;

/// Appends every line to `$OUT` and answers `ok` at each batch's end.
const STREAM: &str = r#"while IFS= read -r line; do if [ "$line" = "--" ]; then echo ok; else printf '%s\n' "$line" >> "$OUT"; fi; done"#;

struct ExecHarness {
    out: PathBuf,
    script: &'static str,
    mode: &'static str,
}

impl ExecHarness {
    fn settings(&self, script: &str) -> serde_json::Value {
        serde_json::json!({
            "command": ["sh", "-c", script],
            "mode": self.mode,
            "env": { "OUT": self.out.to_str().unwrap() },
            "timeout": "5s",
        })
    }
}

#[async_trait]
impl Harness for ExecHarness {
    fn replay(&self) -> Replay {
        Replay::AtLeastOnce
    }

    async fn sink(&mut self) -> Result<Box<dyn Sink>, BoxError> {
        Ok(sink(self.settings(self.script)))
    }

    async fn write_unreachable(&mut self, batch: &[SinkRecord]) -> Option<Result<(), SinkError>> {
        // A program that is there but cannot take the events now.
        let busy = if self.mode == "stream" {
            r#"while IFS= read -r line; do [ "$line" = "--" ] && echo retry; done"#
        } else {
            "exit 75"
        };
        Some(sink(self.settings(busy)).write(batch).await.map(drop))
    }

    fn refused(&self, mut record: SinkRecord) -> Option<SinkRecord> {
        if self.mode == "stream" {
            // A stream answers for the whole batch.
            return None;
        }
        record.event.edit(|event| drop(event.extra.remove("lane")));
        Some(record)
    }

    async fn flaky(&mut self, every: usize) -> Option<Result<Box<dyn Sink>, BoxError>> {
        if self.mode == "stream" {
            // One answer per batch: nothing partial to report.
            return None;
        }
        // Every `every`th run asks to be tried again (75), counted in a file beside the output.
        let count = self.out.with_extension("count");
        let script = format!(
            r#"n=$(( $(cat "{count}" 2>/dev/null || echo 0) + 1 )); echo $n > "{count}"; [ $(( n % {every} )) -eq 0 ] && exit 75; {PER_EVENT}"#,
            count = count.display()
        );
        Some(Ok(sink(self.settings(&script))))
    }

    async fn delivered(&mut self) -> Result<Vec<i64>, BoxError> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|line| Ok(serde_json::from_str::<serde_json::Value>(line)?["records"].as_i64().ok_or("no records")?))
            .collect()
    }
}

#[tokio::test]
async fn a_command_per_event_keeps_every_promise() {
    let out = scratch("per-event").join("events.ndjson");
    conformance::check(&mut ExecHarness { out, script: PER_EVENT, mode: "per_event" }).await.unwrap();
}

#[tokio::test]
async fn a_stream_command_keeps_every_promise() {
    let out = scratch("stream").join("events.ndjson");
    conformance::check(&mut ExecHarness { out, script: STREAM, mode: "stream" }).await.unwrap();
}

#[tokio::test]
async fn event_fields_reach_the_program_as_variables_and_never_as_code() {
    let dir = scratch("env");
    let out = dir.join("seen");
    let pwned = dir.join("pwned");
    let mut sink = sink(serde_json::json!({
        "command": ["sh", "-c", r#"printf '%s|%s|%s|%s|%s\n' "$HERALD_SOURCE" "$HERALD_STAGE" "$HERALD_STATUS" "$HERALD_RECORDS" "$HERALD_OFFSET" >> "$OUT""#],
        "env": { "OUT": out.to_str().unwrap() },
    }));
    let mut record = conformance::record(7);
    record.event.edit(|event| event.source = format!("$(touch {}); `touch {}`", pwned.display(), pwned.display()));
    sink.write(&[record]).await.unwrap();
    let seen = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        seen.trim(),
        format!("$(touch {p}); `touch {p}`|conformance|SUCCESS|7|7", p = pwned.display()),
        "the value arrives as it is"
    );
    assert!(!pwned.exists(), "no event value is ever run");
}

#[tokio::test]
async fn a_refused_event_carries_the_exit_code_and_stderr_and_a_hung_program_is_killed_and_retried() {
    let mut refusing = sink(serde_json::json!({ "command": ["sh", "-c", "echo 'tenant unknown' >&2; exit 3"] }));
    let outcome = refusing.write(&[conformance::record(1)]).await.unwrap();
    let reason = outcome.rejected[0].error.to_string();
    assert!(reason.contains("exited with 3") && reason.contains("tenant unknown"), "{reason}");

    let mut hung = sink(serde_json::json!({ "command": ["sleep", "30"], "timeout": "200ms" }));
    let err = hung.write(&[conformance::record(1)]).await.unwrap_err();
    assert!(err.is_retriable());
    assert!(herald_sdk::error_chain(&err).join(": ").contains("did not finish"), "{err}");

    let mut missing = sink(serde_json::json!({ "command": ["/nonexistent/program"] }));
    let err = missing.write(&[conformance::record(1)]).await.unwrap_err();
    assert!(!err.is_retriable(), "a program that cannot start stops the route: {err}");
}

#[tokio::test]
async fn a_stream_without_acknowledgements_feeds_cat() {
    let out = scratch("cat").join("events.ndjson");
    let mut sink = sink(serde_json::json!({
        "command": ["sh", "-c", r#"exec cat >> "$OUT""#],
        "mode": "stream",
        "ack": "none",
        "env": { "OUT": out.to_str().unwrap() },
    }));
    let batch: Vec<SinkRecord> = (0..1000).map(conformance::record).collect();
    for chunk in batch.chunks(100) {
        sink.write(chunk).await.unwrap();
    }
    sink.close().await.unwrap();
    let lines: Vec<i64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["records"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, (0..1000).collect::<Vec<_>>(), "every event, in order, once close returned");
}

#[tokio::test]
async fn an_event_no_process_can_take_is_refused_alone_and_the_next_runs() {
    let out = scratch("unpassable").join("seen");
    let mut sink = sink(serde_json::json!({
        "command": ["sh", "-c", r#"printf '%s\n' "$HERALD_SOURCE" >> "$OUT""#],
        "env": { "OUT": out.to_str().unwrap() },
    }));
    // A NUL in a value (valid JSON: "\u0000"), and a value larger than a process's environment.
    let hostile = ["Orders\u{0}DB", &"x".repeat(1 << 20)].map(str::to_owned);
    for (seq, source) in hostile.iter().enumerate() {
        let mut bad = conformance::record(seq as i64 * 2);
        bad.event.edit(|event| event.source = source.clone());
        let mut next = conformance::record(seq as i64 * 2 + 1);
        next.event.edit(|event| event.source = format!("next{seq}"));
        let outcome = sink.write(&[bad, next]).await.expect("the route goes on");
        let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
        assert_eq!(rejected, [0], "only the event at fault");
        let reason = herald_sdk::error_chain(outcome.rejected[0].error.as_ref()).join(": ");
        assert!(reason.contains("cannot be passed"), "{reason}");
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "next0\nnext1\n");
}

#[tokio::test]
async fn a_per_event_retry_runs_only_the_events_not_yet_done() {
    let dir = scratch("partial");
    let (out, flag) = (dir.join("seen"), dir.join("busy-once"));
    // The third event asks to be tried later, once.
    let script = r#"if [ "$HERALD_RECORDS" = 2 ] && [ ! -e "$FLAG" ]; then touch "$FLAG"; exit 75; fi; printf '%s\n' "$HERALD_RECORDS" >> "$OUT""#;
    let mut sink = sink(serde_json::json!({
        "command": ["sh", "-c", script],
        "env": { "OUT": out.to_str().unwrap(), "FLAG": flag.to_str().unwrap() },
    }));
    let batch: Vec<SinkRecord> = (0..5).map(conformance::record).collect();
    let outcome = sink.write(&batch).await.unwrap();
    let unfinished = outcome.unfinished.expect("the rest is left for later");
    assert_eq!(unfinished.indexes, [2, 3, 4]);
    let rest: Vec<SinkRecord> = unfinished.indexes.iter().map(|&i| batch[i].clone()).collect();
    let outcome = sink.write(&rest).await.unwrap();
    assert!(outcome.unfinished.is_none() && outcome.rejected.is_empty());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "0\n1\n2\n3\n4\n", "each event once, in order");
}
