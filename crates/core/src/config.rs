//! herald's configuration: a TOML file plus `HERALD__…` environment overrides, validated on load.
//!
//! ```toml
//! [kafka]                                  # any librdkafka property, passed straight through
//! bootstrap.servers = "127.0.0.1:9092"
//!
//! [[route]]
//! name = "stdout"
//! topics = ["pipeline.stage.events"]
//! filter = { event = "STAGE_COMPLETE", status = ["SUCCESS", "FAILED"] }
//! dead_letter_topic = "herald.dlq"
//! sink = { type = "stdout" }
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use crate::filter::Filter;
pub use herald_kafka::KafkaProperties;

/// Prefix of environment variables that override the file; `__` separates keys, e.g.
/// `HERALD__KAFKA__SASL_PASSWORD=…` sets `[kafka] sasl.password`.
pub const ENV_PREFIX: &str = "HERALD";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// librdkafka properties shared by every Kafka client herald makes (consumers, the
    /// dead-letter producer, `publish`, `wait`). Default: `bootstrap.servers = "127.0.0.1:9092"`.
    #[serde(default)]
    pub kafka: KafkaProperties,
    /// Settings of the process as a whole.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The admin HTTP API (metrics, health, routes). Off unless `listen` is set.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The live status board on the admin API (`GET /board`). Off unless `topics` is set.
    #[serde(default)]
    pub board: BoardConfig,
    /// Where the expectations are evaluated, and how (`[expectations]`).
    #[serde(default)]
    pub expectations: ExpectationsConfig,
    /// Stages that must happen: by a schedule, or within a time after an upstream stage. A
    /// miss publishes `STAGE_LATE` (and `STAGE_MISSING`) events. Written `[[expect]]`.
    #[serde(default, rename = "expect")]
    pub expect: Vec<ExpectConfig>,
    /// The routes: each moves events from Kafka topics to one sink. Written `[[route]]`.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// The sources: each turns writes to a database table into Kafka stage events. Written
    /// `[[source]]`, with `name`, `type` (e.g. `"postgres"`) and that source's settings.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceSpec>,
}

impl Config {
    /// Loads and validates `path`, applying `HERALD__…` environment overrides.
    ///
    /// `${NAME}` and `${NAME:-default}` in the file are replaced by environment variables first,
    /// so secrets inside `[[route]]` tables (which `HERALD__…` cannot reach) stay out of the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
        let text = interpolate_env(&text, |name| std::env::var(name).ok()).map_err(|(line, message)| {
            ConfigError::Invalid { path: path.to_owned(), key: format!("line {line}"), message }
        })?;
        let raw = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .add_source(config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__"))
            .build()
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_raw(raw, path)
    }

    /// Parses and validates configuration text, as if it had been read from `origin`.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|source| ConfigError::Read { path: origin.to_owned(), source })?;
        Self::from_raw(raw, origin)
    }

    fn from_raw(raw: config::Config, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(raw).map_err(|err| ConfigError::Invalid {
            path: path.to_owned(),
            key: display_path(&err.path().to_string()),
            message: err.into_inner().to_string(),
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Invalid { path: path.to_owned(), key, message })?;
        Ok(config)
    }

    /// Checks what types alone cannot: names, ranges, regexes. Returns the offending key.
    fn validate(&self) -> Result<(), (String, String)> {
        let mut names = BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = |field: &str| format!("route[{i}].{field}");
            if route.name.is_empty()
                || !route.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err((
                    at("name"),
                    format!("`{}` must be non-empty letters, digits, `-`, `_` or `.`", route.name),
                ));
            }
            if !names.insert(route.name.as_str()) {
                return Err((at("name"), format!("route name `{}` is used twice", route.name)));
            }
            if route.topics.is_empty() {
                return Err((at("topics"), "at least one topic (or a `^regex`) is required".into()));
            }
            for topic in &route.topics {
                if let Some(pattern) = topic.strip_prefix('^') {
                    Regex::new(pattern)
                        .map_err(|err| (at("topics"), format!("`{topic}` is not a valid regex: {err}")))?;
                } else if topic.is_empty() {
                    return Err((at("topics"), "topic names cannot be empty".into()));
                }
            }
            if route.dead_letter_topic.as_deref().is_some_and(|dlq| route.topics.iter().any(|t| t == dlq)) {
                return Err((at("dead_letter_topic"), "the dead-letter topic cannot be one the route reads".into()));
            }
            if let Some(max_events) = route.batch.max_events.filter(|n| !(1..=100_000).contains(n)) {
                return Err((at("batch.max_events"), format!("{max_events} is out of range 1..=100000")));
            }
            if route.retry.initial_backoff.is_zero() || route.retry.initial_backoff > route.retry.max_backoff {
                return Err((at("retry"), "need 0 < initial_backoff <= max_backoff".into()));
            }
            if route.sink.kind.is_empty() {
                return Err((at("sink.type"), "the sink type is required, e.g. \"stdout\"".into()));
            }
        }
        let mut source_names = BTreeSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let valid = !source.name.is_empty()
                && source.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err((
                    format!("source[{i}].name"),
                    format!("`{}` must be non-empty letters, digits, `-`, `_` or `.`", source.name),
                ));
            }
            if !source_names.insert(source.name.as_str()) {
                return Err((format!("source[{i}].name"), format!("source name `{}` is used twice", source.name)));
            }
        }
        if let Some(listen) = self.admin.listen {
            if !listen.ip().is_loopback() && !self.admin.allow_remote {
                return Err((
                    "admin.listen".into(),
                    format!("{listen} is reachable from other machines; set `admin.allow_remote = true` to mean it"),
                ));
            }
        }
        if !self.board.topics.is_empty() {
            if self.admin.listen.is_none() {
                return Err(("board.topics".into(), "the board is served by the admin API: set `admin.listen`".into()));
            }
            if self.board.topics.iter().any(|topic| topic.is_empty() || topic.starts_with('^')) {
                return Err(("board.topics".into(), "topic names, not empty and not `^regex` patterns".into()));
            }
        }
        if self.runtime.progress_interval.is_zero() {
            return Err(("runtime.progress_interval".into(), "must be greater than zero, e.g. \"10s\"".into()));
        }
        Ok(())
    }

    /// The route called `name`, if any.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|route| route.name == name)
    }
}

/// Replaces `${NAME}` / `${NAME:-default}` with `lookup(NAME)`; `$${` stands for a literal `${`.
/// Errors carry the 1-based line.
fn interpolate_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            if rest[..start].ends_with('$') {
                out.push_str(&rest[..start - 1]);
                out.push_str("${");
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                return Err((number + 1, "`${` without a closing `}`".into()));
            };
            let inner = &rest[start + 2..start + end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((number + 1, format!("`${{{inner}}}` is not a variable name")));
            }
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err((
                        number + 1,
                        format!(
                            "environment variable `{name}` is not set (write `${{{name}:-default}}` for a default)"
                        ),
                    ))
                }
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// serde_path_to_error writes `route[0].sink` as `route[0].sink`, and `.` for the root.
fn display_path(path: &str) -> String {
    if path == "." || path.is_empty() {
        "(top level)".into()
    } else {
        path.to_owned()
    }
}

/// Why a configuration cannot be used. Every variant names the file; `Invalid` also the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the config crate reported.
        #[source]
        source: config::ConfigError,
    },
    /// A key has a wrong, missing or unknown value.
    #[error("{}: `{key}`: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `route[0].batch.max_events`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The admin HTTP API: `/metrics`, `/health/live`, `/health/ready`, `/routes`,
/// `POST /routes/{name}/pause|resume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to serve on, e.g. `"127.0.0.1:9464"` (port 0: any free port, logged at start).
    /// Default: no admin API.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// Allow `listen` on an address other machines can reach. Default `false`: the API has no
    /// authentication, so it binds to loopback unless told otherwise.
    #[serde(default)]
    pub allow_remote: bool,
}

/// How `[[expect]]` rules are evaluated.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
    crate::event::STAGE_COMPLETE.into()
}

/// The status board: the latest event of every (source, stage) read from `topics`, served by
/// the admin API as a live page (`/board`), JSON (`/board/state`) and a server-sent event stream
/// (`/board/events`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    /// Topics of stage events to show, e.g. `["pipeline.stage.events"]`. Default: none (no
    /// board). Read with no consumer group and nothing committed.
    #[serde(default)]
    pub topics: Vec<String>,
    /// How far back the board starts reading when herald starts. Default `"24h"`.
    #[serde(default = "default_board_since", with = "humantime_serde")]
    pub since: Duration,
}

impl Default for BoardConfig {
    fn default() -> Self {
        Self { topics: Vec::new(), since: default_board_since() }
    }
}

fn default_board_since() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// How often `herald run` logs one progress line per route (events/s, lag, errors), and
    /// asks each route's consumer for its lag and whether Kafka answers (for `/metrics`,
    /// `/routes` and readiness). Default `"10s"`.
    #[serde(default = "default_progress_interval", with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Memory the routes' consumers may fill with messages fetched ahead, in MiB, split evenly
    /// between routes: each gets at most 16 MiB per partition and at least 1 MiB (librdkafka's
    /// `queued.max.messages.kbytes`, which a route's `[kafka]` setting overrides). Default `64`.
    #[serde(default = "default_prefetch_budget_mb")]
    pub prefetch_budget_mb: usize,
}

fn default_prefetch_budget_mb() -> usize {
    64
}

impl RuntimeConfig {
    /// One route's prefetch limit per partition, in KiB, when `routes` share the budget.
    pub fn prefetch_kbytes(&self, routes: usize) -> usize {
        (self.prefetch_budget_mb.saturating_mul(1024) / routes.max(1)).clamp(1024, 16 * 1024)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { progress_interval: default_progress_interval(), prefetch_budget_mb: default_prefetch_budget_mb() }
    }
}

fn default_progress_interval() -> Duration {
    Duration::from_secs(10)
}

/// One route: Kafka topics → filter → batches → one sink, in its own consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in logs, metrics, dead-letter headers and the default group id.
    /// Letters, digits, `-`, `_`, `.`. Example: `"orders-to-postgres"`.
    pub name: String,
    /// Topics to read. A name starting with `^` is a regex, e.g. `"^pipeline\\..*"`.
    pub topics: Vec<String>,
    /// Kafka consumer group. Default `"herald.<name>"`: each route consumes independently, so a slow
    /// or failing sink never holds back another route. Processes sharing a group share partitions.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where a new consumer group starts: `"earliest"` (default: nothing already in the topic is
    /// missed) or `"latest"`. Ignored once the group has committed offsets.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Which events the route delivers; the others are skipped (and their offsets committed).
    /// Each key is an event field; a string must equal the field, a list must contain it.
    /// Example: `{ event = "STAGE_COMPLETE", status = ["SUCCESS", "FAILED"] }`. Default: all.
    #[serde(default)]
    pub filter: Filter,
    /// How events are grouped into sink writes.
    #[serde(default)]
    pub batch: BatchConfig,
    /// How transient sink failures are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Topic that receives messages the route can never deliver (not JSON, not a stage event,
    /// rejected by the sink), with `__connect.errors.*` headers saying why and where from. Created
    /// if missing. Without one, such a message stops the route with an error instead of being skipped.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Messages larger than this are not stage events: they go to the dead-letter topic
    /// unparsed. Default `1048576` (1 MiB); stage events are a few hundred bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The sink: `type` picks the kind (e.g. `"stdout"`), the other keys are that sink's settings.
    pub sink: SinkSpec,
}

impl RouteConfig {
    /// The consumer group id: `group_id`, or `herald.<name>`.
    pub fn group_id(&self) -> String {
        self.group_id.clone().unwrap_or_else(|| format!("herald.{}", self.name))
    }
}

/// Where a consumer group with no committed offsets starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest message still in the topic.
    #[default]
    Earliest,
    /// Only messages produced after the group first joins.
    Latest,
}

impl StartFrom {
    /// The librdkafka `auto.offset.reset` value.
    pub fn as_offset_reset(self) -> &'static str {
        match self {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        }
    }
}

/// Batching, the way a Kafka consumer's poll does it: a batch takes every event already fetched,
/// up to `max_events`, so it is small when traffic is light (no added latency) and grows by itself
/// when the sink is the bottleneck. `max_wait` adds a linger for more.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one sink write, 1..=100000. Default: the sink's own
    /// ([`crate::sink::Sink::default_max_events`]: 5000 for Postgres, 500 for the others).
    #[serde(default)]
    pub max_events: Option<usize>,
    /// How long a batch lingers for more events once those already fetched are taken, counted
    /// from its first event; it never lingers past `max_events`. Default `"0ms"`: write at once.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_events: None, max_wait: default_max_wait() }
    }
}

fn default_max_message_bytes() -> usize {
    1024 * 1024
}

fn default_max_wait() -> Duration {
    Duration::ZERO
}

/// Retry of transient sink failures: exponential backoff with full jitter, the same records
/// again, so order is kept; only what a write left unfinished is written again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay. Default `"200ms"`.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay. Default `"30s"`.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Retries before the route gives up and herald exits with an error. Default: none, retry
    /// forever (nothing is skipped; a supervisor sees the lag grow instead).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// A record that fails alone this many times in a row, with a retriable error, while the
    /// sink otherwise answers (its healthcheck passes, and a record after it is accepted where
    /// the sink allows writing past it), is poison: it goes to the dead-letter topic with its
    /// last error and the rest flows. A batch that keeps failing is split in halves to find
    /// such a record. While the destination itself is down, nothing is dead-lettered. Default
    /// `8` (about 50 s of trying at the default backoff); `0` never gives a record up.
    #[serde(default = "default_poison_after")]
    pub poison_after: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_retries: None,
            poison_after: default_poison_after(),
        }
    }
}

fn default_poison_after() -> u32 {
    8
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

/// A route's sink: its kind, and its settings left for that sink's own typed config to read.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// The sink kind, from `type`, e.g. `"stdout"`.
    pub kind: String,
    /// Every other key of the `sink` table.
    pub settings: serde_json::Map<String, Value>,
}

impl SinkSpec {
    /// Reads the settings into a sink's config type. The error names the offending key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, SinkSettingsError> {
        let value = Value::Object(self.settings.clone());
        serde_path_to_error::deserialize(value).map_err(|err| SinkSettingsError {
            key: display_path(&err.path().to_string()),
            message: err.into_inner().to_string(),
        })
    }
}

impl<'de> Deserialize<'de> for SinkSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut settings = serde_json::Map::<String, Value>::deserialize(deserializer)?;
        let kind = match settings.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(other) => return Err(de::Error::custom(format!("`type` must be a string, not {other}"))),
            None => return Err(de::Error::missing_field("type")),
        };
        Ok(Self { kind, settings })
    }
}

/// A source: its name and kind, and its settings left for that source's own typed config.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Unique name, used in logs, the transactional id and the cursor's key.
    pub name: String,
    /// The source kind, from `type`, e.g. `"postgres"`.
    pub kind: String,
    /// Every other key of the `[[source]]` table.
    pub settings: serde_json::Map<String, Value>,
}

impl SourceSpec {
    /// Reads the settings into a source's config type. The error names the offending key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, SinkSettingsError> {
        SinkSpec { kind: self.kind.clone(), settings: self.settings.clone() }.parse()
    }
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let SinkSpec { kind, mut settings } = SinkSpec::deserialize(deserializer)?;
        let name = match settings.remove("name") {
            Some(Value::String(name)) => name,
            Some(other) => return Err(de::Error::custom(format!("`name` must be a string, not {other}"))),
            None => return Err(de::Error::missing_field("name")),
        };
        Ok(Self { name, kind, settings })
    }
}

/// A sink's settings do not fit its config type.
#[derive(Debug, thiserror::Error)]
#[error("sink setting `{key}`: {message}")]
pub struct SinkSettingsError {
    /// The key inside the sink table.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    const MINIMAL: &str = r#"
        [[route]]
        name = "stdout"
        topics = ["pipeline.stage.events"]
        sink = { type = "stdout" }
    "#;

    #[test]
    fn minimal_route_gets_documented_defaults() {
        let config = load(MINIMAL).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.group_id(), "herald.stdout");
        assert_eq!(route.start_from, StartFrom::Earliest);
        assert_eq!(route.batch.max_events, None, "the sink's own default");
        assert_eq!(route.batch.max_wait, Duration::ZERO);
        assert_eq!(route.retry.max_retries, None);
        assert_eq!(route.sink.kind, "stdout");
        assert_eq!(config.kafka.bootstrap_servers(), "127.0.0.1:9092");
    }

    #[test]
    fn kafka_properties_accept_quoted_dotted_and_underscore_names() {
        let config = load(
            r#"
            [kafka]
            "bootstrap.servers" = "broker:9093"
            security.protocol = "SASL_SSL"
            sasl_mechanism = "SCRAM-SHA-512"
            sasl.password = "hunter2"
            message.max.bytes = 2000000
            enable.ssl.certificate.verification = false
            "#,
        )
        .unwrap();
        let props: BTreeMap<_, _> = config.kafka.iter().collect();
        assert_eq!(props["bootstrap.servers"], "broker:9093");
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(props["message.max.bytes"], "2000000");
        assert_eq!(props["enable.ssl.certificate.verification"], "false");
        let printed = format!("{:?}", config.kafka);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }

    #[test]
    fn unknown_key_names_file_key_and_problem() {
        let err = load(&MINIMAL.replace("topics =", "colour = \"red\"\ntopics =")).unwrap_err().to_string();
        assert!(err.starts_with("test.toml: `route[0]"), "{err}");
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = load(&format!("{MINIMAL}\nbatch = {{ max_events = \"lots\" }}")).unwrap_err().to_string();
        assert!(err.contains("route[0].batch.max_events"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = load(&format!("{MINIMAL}\nbatch = {{ max_wait = \"soon\" }}")).unwrap_err().to_string();
        assert!(err.contains("route[0].batch.max_wait"), "{err}");
    }

    #[test]
    fn missing_sink_type_is_reported() {
        let err = load(&MINIMAL.replace("type = \"stdout\"", "pretty = true")).unwrap_err().to_string();
        assert!(err.contains("route[0].sink") && err.contains("type"), "{err}");
    }

    #[test]
    fn duplicate_route_names_and_bad_regex_are_rejected() {
        let twice = format!("{MINIMAL}{MINIMAL}");
        assert!(load(&twice).unwrap_err().to_string().contains("used twice"));
        let bad_regex = MINIMAL.replace("\"pipeline.stage.events\"", "\"^pipeline(\"");
        let err = load(&bad_regex).unwrap_err().to_string();
        assert!(err.contains("route[0].topics") && err.contains("regex"), "{err}");
    }

    #[test]
    fn out_of_range_batch_is_rejected() {
        let err = load(&format!("{MINIMAL}\nbatch = {{ max_events = 0 }}")).unwrap_err().to_string();
        assert!(err.contains("route[0].batch.max_events") && err.contains("out of range"), "{err}");
    }

    #[test]
    fn sink_settings_are_left_for_the_sink() {
        let config = load(&MINIMAL.replace("type = \"stdout\"", "type = \"stdout\", pretty = true")).unwrap();
        assert_eq!(config.routes[0].sink.settings.get("pretty"), Some(&Value::Bool(true)));
    }

    #[test]
    fn environment_variables_are_interpolated_with_defaults_and_escapes() {
        let lookup = |name: &str| (name == "PG_PASSWORD").then(|| "s3cret".to_string());
        let text = "url = \"postgres://u:${PG_PASSWORD}@${PG_HOST:-localhost}/db\"\nliteral = \"$${NOT_A_VAR}\"\n";
        assert_eq!(
            interpolate_env(text, lookup).unwrap(),
            "url = \"postgres://u:s3cret@localhost/db\"\nliteral = \"${NOT_A_VAR}\"\n"
        );
        let err = interpolate_env("a = 1\nb = \"${MISSING}\"\n", lookup).unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("`MISSING` is not set"), "{}", err.1);
        assert!(interpolate_env("x = \"${unterminated\"", lookup).is_err());
    }

    #[test]
    fn the_admin_api_stays_on_loopback_unless_allowed() {
        assert!(load(&format!("[admin]\nlisten = \"127.0.0.1:9464\"\n{MINIMAL}")).is_ok());
        let err = load(&format!("[admin]\nlisten = \"0.0.0.0:9464\"\n{MINIMAL}")).unwrap_err().to_string();
        assert!(err.contains("admin.listen") && err.contains("allow_remote"), "{err}");
        assert!(load(&format!("[admin]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n{MINIMAL}")).is_ok());
    }

    #[test]
    fn not_toml_is_a_read_error_naming_the_file() {
        let err = load("[[route]\nname=").unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("test.toml"));
    }
}
