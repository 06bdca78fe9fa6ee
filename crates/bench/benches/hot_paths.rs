//! Micro-benchmarks of herald-core's per-event hot paths, on the seed producer's stage event.
//!
//! What is measured:
//! - `parse`: [`StageEvent::from_json`] on the seed event, and on one with unknown fields to keep.
//! - `filter`: [`Filter::matches`] (exact `event` plus a list on `stage`), passing and failing.
//! - `template`: [`Template::render`] of `pipeline.{stage}.{source}` (parsed once), and the parse itself.
//! - `to_json`: [`StageEvent::to_json`], what the stdout sink does per event.
//! - `batch_build`: the route worker's per-batch work before the sink write (as in `route.rs`'s
//!   `settle`): 500 serialized events from several sources and partitions are size-checked, parsed,
//!   filtered, and the passing ones collected as [`SinkRecord`]s. `parsed/500` parses each event
//!   (what a sink gets that reads events whole); `indexed/500` validates and indexes it (what the
//!   Postgres, Redis and SNS sinks get), and the filter reads the fields from the payload.
//!
//! Run with `cargo bench -p herald-bench --bench hot_paths`; for a quick look on a busy machine,
//! `cargo bench -p herald-bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3`.
//! A benchmark name after `--` (e.g. `-- batch_build`) runs only the matching ones.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_core::filter::Filter;
use herald_sdk::event::{EventTimestamp, StageEvent};
use herald_sdk::sink::{LazyEvent, SinkRecord};
use herald_sdk::template::Template;

/// The seed producer's message, byte for byte as it writes it.
const SEED: &str = r#"{"event":"STAGE_COMPLETE","stage":"bronze_ingest","source":"OrdersDB","records":14823,"timestamp":"2026-11-26T10:15:00.123456","status":"SUCCESS"}"#;

/// The seed message with fields herald does not know, which it must keep in order.
const WITH_EXTRA: &str = r#"{"event":"STAGE_COMPLETE","stage":"bronze_ingest","source":"OrdersDB","records":14823,"timestamp":"2026-11-26T10:15:00.123456","status":"SUCCESS","run_id":"r-20261126-0042","attempt":2,"env":"prod","meta":{"host":"etl-7","tags":["nightly","orders"]}}"#;

/// A route filter as an operator writes it: `filter = { event = "STAGE_COMPLETE", stage = [...] }`.
const FILTER: &str = r#"{"event":"STAGE_COMPLETE","stage":["bronze_ingest","silver_transform","gold_publish"]}"#;

/// How many messages one batch holds (the route's default `batch.max_events`).
const BATCH: usize = 500;

/// The route's default `max_message_bytes`.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

fn seed_event() -> StageEvent {
    StageEvent::from_json(SEED.as_bytes()).unwrap()
}

fn filter() -> Filter {
    serde_json::from_str(FILTER).unwrap()
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, json) in [("seed", SEED), ("with_extra_fields", WITH_EXTRA)] {
        group.throughput(Throughput::Bytes(json.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), json.as_bytes(), |b, bytes| {
            b.iter(|| StageEvent::from_json(black_box(bytes)).unwrap());
        });
    }
    group.finish();
}

/// What a sink that reads no field (stdout) has done instead of the parse: the same rules,
/// nothing kept.
fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    for (name, json) in [("seed", SEED), ("with_extra_fields", WITH_EXTRA)] {
        group.throughput(Throughput::Bytes(json.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), json, |b, text| {
            b.iter(|| StageEvent::validate(black_box(text)).unwrap());
        });
    }
    group.finish();
}

/// An event's timestamp alone, in the forms producers write: the seed's offset-less ISO, RFC 3339
/// with an offset (both read by hand), and a space for the `T` (left to chrono).
fn timestamp(c: &mut Criterion) {
    let mut group = c.benchmark_group("timestamp");
    group.throughput(Throughput::Elements(1));
    for (name, text) in [
        ("seed", "2026-11-26T10:15:00.123456"),
        ("offset", "2026-11-26T10:15:00.123456+01:00"),
        ("space", "2026-11-26 10:15:00.123456"),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(name), text, |b, text| {
            b.iter(|| EventTimestamp::parse(black_box(text)).unwrap());
        });
    }
    group.finish();
}

fn filter_matches(c: &mut Criterion) {
    let filter = filter();
    let passing = seed_event();
    // Same event from a stage the route does not deliver: `event` matches, `stage` does not,
    // so both conditions are evaluated, as for a passing event.
    let failing = StageEvent { stage: "quarantine".to_owned(), ..seed_event() };
    assert!(filter.matches(&passing) && !filter.matches(&failing));

    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements(1));
    for (name, event) in [("match", &passing), ("no_match", &failing)] {
        group.bench_with_input(BenchmarkId::from_parameter(name), event, |b, event| {
            b.iter(|| filter.matches(black_box(event)));
        });
    }
    group.finish();
}

fn template(c: &mut Criterion) {
    const TEXT: &str = "pipeline.{stage}.{source}";
    let template = Template::parse(TEXT).unwrap();
    let event = seed_event();
    assert_eq!(template.render(&event).unwrap(), "pipeline.bronze_ingest.OrdersDB");

    let mut group = c.benchmark_group("template");
    group.throughput(Throughput::Elements(1));
    group.bench_function("render", |b| b.iter(|| template.render(black_box(&event)).unwrap()));
    group.bench_function("parse", |b| b.iter(|| Template::parse(black_box(TEXT)).unwrap()));
    group.finish();
}

fn to_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("to_json");
    for (name, json) in [("seed", SEED), ("with_extra_fields", WITH_EXTRA)] {
        let event = StageEvent::from_json(json.as_bytes()).unwrap();
        // Both events re-serialize to exactly what was read.
        assert_eq!(event.to_json(), json);
        group.throughput(Throughput::Bytes(json.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &event, |b, event| {
            b.iter(|| black_box(event).to_json());
        });
    }
    group.finish();
}

/// A Kafka message as the worker sees it: payload and coordinates.
struct Message {
    /// The payload as the route holds it: shared text, checked as UTF-8 when copied.
    payload: std::sync::Arc<str>,
    topic: std::sync::Arc<str>,
    partition: i32,
    offset: i64,
}

/// A batch of `BATCH` messages from several sources over 3 partitions; one in ten is from a stage
/// the filter skips, one in eight carries extra fields.
fn batch() -> Vec<Message> {
    (0..BATCH)
        .map(|i| Message {
            payload: payload(i).into(),
            topic: "pipeline.events".into(),
            partition: (i % 3) as i32,
            offset: 40_000 + i as i64,
        })
        .collect()
}

/// The `i`th message of the batch.
fn payload(i: usize) -> String {
    const SOURCES: [&str; 6] = ["OrdersDB", "UsersDB", "PaymentsDB", "InventoryDB", "ShippingDB", "CatalogDB"];
    const STAGES: [&str; 3] = ["bronze_ingest", "silver_transform", "gold_publish"];
    let source = SOURCES[i % SOURCES.len()];
    let stage = if i % 10 == 9 { "quarantine" } else { STAGES[i % STAGES.len()] };
    let extra = if i % 8 == 7 { r#","run_id":"r-20261126-0042","attempt":2"# } else { "" };
    let (records, minute, second, micros) = (1000 + i * 37, i / 60 % 60, i % 60, i * 1013 % 1_000_000);
    format!(
        r#"{{"event":"STAGE_COMPLETE","stage":"{stage}","source":"{source}","records":{records},"timestamp":"2026-11-26T10:{minute:02}:{second:02}.{micros:06}","status":"SUCCESS"{extra}}}"#
    )
}

/// The worker's loop up to the sink write: size check, parse (or validate and index), filter,
/// collect the records.
fn build_records(messages: &[Message], filter: &Filter, parse: bool) -> Vec<SinkRecord> {
    let mut records = Vec::with_capacity(messages.len());
    for message in messages {
        if message.payload.len() > MAX_MESSAGE_BYTES {
            continue;
        }
        let event = if parse {
            let Ok(event) = StageEvent::from_json_str(&message.payload) else { continue };
            LazyEvent::from(event)
        } else {
            let Ok(event) = LazyEvent::validated(std::sync::Arc::clone(&message.payload)) else { continue };
            event
        };
        if filter.matches(&event) {
            records.push(SinkRecord {
                event,
                topic: std::sync::Arc::clone(&message.topic),
                partition: message.partition,
                offset: message.offset,
                origin: None,
                raw: Some(std::sync::Arc::clone(&message.payload)),
            });
        }
    }
    records
}

fn batch_build(c: &mut Criterion) {
    let messages = batch();
    let filter = filter();
    let mut group = c.benchmark_group("batch_build");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, parse) in [("parsed", true), ("indexed", false)] {
        let built = build_records(&messages, &filter, parse);
        assert_eq!(built.len(), BATCH - BATCH / 10);
        assert!(built.iter().all(|record| record.event.is_parsed() == parse), "{name}: the filter reads no more");
        group.bench_function(BenchmarkId::new(name, BATCH), |b| {
            b.iter(|| build_records(black_box(&messages), black_box(&filter), parse));
        });
    }
    group.finish();
}

criterion_group!(benches, parse, validate, timestamp, filter_matches, template, to_json, batch_build);
criterion_main!(benches);
