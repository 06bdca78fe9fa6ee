//! `[expectations]` (how rules are evaluated) and each `[[expect]]` rule, as written; the rules
//! are checked by compiling them (`rules.rs`).

use std::time::Duration;

use serde::Deserialize;

/// How `[[expect]]` rules are evaluated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectationsConfig {
    /// The topic stage events are read from and alerts published to. Default
    /// `"pipeline.stage.events"`.
    #[serde(default = "default_expect_topic")]
    pub topic: String,
    /// The evaluator's consumer group: processes with the same group share the sources, each
    /// alerting for the sources whose partitions it holds. Default `"herald.expect"`.
    #[serde(default = "default_expect_group")]
    pub group_id: String,
    /// The compacted topic that keeps the evaluator's state, written in the same Kafka
    /// transaction as its alerts and offsets. Default `"<group_id>.state"`.
    #[serde(default)]
    pub state_topic: Option<String>,
    /// How the topic's producers map a source (the key) to a partition, so the owner of a
    /// source that never published is known: `"consistent_random"` (default: librdkafka's, so
    /// `herald publish` and Python's confluent-kafka) or `"murmur2_random"` (the Java client's).
    #[serde(default)]
    pub partitioner: Partitioner,
}

impl Default for ExpectationsConfig {
    fn default() -> Self {
        Self {
            topic: default_expect_topic(),
            group_id: default_expect_group(),
            state_topic: None,
            partitioner: Partitioner::default(),
        }
    }
}

impl ExpectationsConfig {
    /// The state topic's name.
    pub fn state_topic(&self) -> String {
        self.state_topic.clone().unwrap_or_else(|| format!("{}.state", self.group_id))
    }
}

fn default_expect_topic() -> String {
    "pipeline.stage.events".into()
}

fn default_expect_group() -> String {
    "herald.expect".into()
}

/// A keyed message's partition, as a producer's partitioner picks it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// librdkafka's default: CRC-32 of the key.
    #[default]
    ConsistentRandom,
    /// The Java client's default: murmur2 of the key.
    Murmur2Random,
}

/// One `[[expect]]` rule: a stage that must succeed for each of some sources, by a schedule
/// (`by`) or within a time after an upstream stage succeeded (`after` + `within`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectConfig {
    /// Unique name, carried by its alerts as `rule`. Example: `"bronze-by-six"`.
    pub name: String,
    /// The stage that must succeed, e.g. `"bronze_ingest"`.
    pub stage: String,
    /// The sources it must succeed for. Required with `by`; with `after`, default: every source
    /// whose upstream stage succeeds.
    #[serde(default)]
    pub sources: Vec<String>,
    /// A schedule of deadlines, cron syntax with optional seconds, e.g. `"0 6 * * *"` (06:00
    /// every day) or `"*/30 * * * * *"` (every 30 s).
    #[serde(default)]
    pub by: Option<String>,
    /// The time zone of `by`, e.g. `"Europe/Berlin"`. Default `"UTC"`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// With `by`: how long before a deadline a success counts for it. Default: since the
    /// previous deadline.
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// The upstream stage, e.g. `"bronze_ingest"`: this stage must follow it for the same source.
    #[serde(default)]
    pub after: Option<String>,
    /// With `after`: how soon after the upstream success, e.g. `"30m"`.
    #[serde(default, with = "humantime_serde")]
    pub within: Option<Duration>,
    /// How long after the deadline the miss becomes `STAGE_MISSING` and the window closes.
    /// Default: the next deadline (with `by`), 24 h (with `after`).
    #[serde(default, with = "humantime_serde")]
    pub missing_after: Option<Duration>,
    /// The event that counts, with status `SUCCESS`. Default `"STAGE_COMPLETE"`.
    #[serde(default = "default_expect_event")]
    pub event: String,
}

fn default_expect_event() -> String {
    herald_sdk::event::STAGE_COMPLETE.into()
}
