/*!
herald-expect: alerts for the stage events that did **not** arrive.

`[[expect]]` rules say a stage must succeed for some sources by a schedule ("`bronze_ingest` by
06:00 Europe/Berlin every day") or within a time after its upstream stage ("`silver` within
30 min of `bronze_ingest`, same source"). When a deadline passes without the `SUCCESS`, herald
publishes an ordinary stage event, `STAGE_LATE`, keyed by source, to the events topic; when the
window closes, `STAGE_MISSING`; a success after `STAGE_LATE` gives `STAGE_RECOVERED`. Routes then
carry alerts anywhere, like any event.

The one decision to know: **exactly one alert per miss, with Kafka as the only state.** The
evaluator reads the events topic in its own consumer group, so each source belongs to the process
holding its partition; each pair's state lives in a compacted state topic, written in the same
Kafka transaction as the alerts and the consumer offsets (fenced by group generation, KIP-447),
so a crash, a restart or a rebalance neither loses nor doubles an alert.

Layout: `rules.rs` (compiling `[[expect]]`), `engine.rs` (the evaluation, no Kafka),
`partition.rs` (which process owns a source), `evaluator.rs` (the Kafka side), `error.rs`.
*/
#![deny(missing_docs)]

mod config;
mod engine;
mod error;
mod evaluator;
mod partition;
mod rules;

pub use config::{ExpectConfig, ExpectationsConfig, Partitioner};
pub use engine::{Alert, AlertKind, Due, Engine, PairKey, PairState, STAGE_LATE, STAGE_MISSING, STAGE_RECOVERED};
pub use error::ExpectError;
pub use evaluator::run;
pub use partition::partition_of;
pub use rules::{compile, validate, Rule, Trigger};
