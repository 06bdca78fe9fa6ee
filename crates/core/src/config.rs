//! The route runtime's configuration: `[runtime]` and each `[[route]]`, with the checks the
//! types cannot make. The other sections belong to the features that read them (`[kafka]` to
//! herald-kafka, `[admin]`, `[board]`, expectations to their crates, `[[source]]` to the source
//! contract); the binary composes them into one file.
//!
//! ```toml
//! [[route]]
//! name = "stdout"
//! topics = ["pipeline.stage.events"]
//! filter = { event = "STAGE_COMPLETE", status = ["SUCCESS", "FAILED"] }
//! dead_letter_topic = "herald.dlq"
//! sink = { type = "stdout" }
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use herald_config::Invalid;
use regex::Regex;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use crate::filter::Filter;

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// How often `herald run` asks each route's consumer for its lag and whether Kafka answers
    /// (for `/metrics`, `/routes` and readiness), and logs a progress line (events/s, lag,
    /// errors) for each route where something moved. Default `"10s"`.
    #[serde(default = "default_progress_interval", with = "humantime_serde")]
    pub progress_interval: Duration,
    /// How often an idle route (nothing read, lag and errors unchanged) still logs its progress
    /// line, to show it is alive. Default `"5m"`: 288 lines a day per idle route, not 8,640.
    #[serde(default = "default_idle_progress_interval", with = "humantime_serde")]
    pub idle_progress_interval: Duration,
    /// Memory the routes' consumers may fill with messages fetched ahead, in MiB, split evenly
    /// between routes: each gets at most 16 MiB per partition and at least 1 MiB (librdkafka's
    /// `queued.max.messages.kbytes`, which a route's `[kafka]` setting overrides). Default `64`.
    #[serde(default = "default_prefetch_budget_mb")]
    pub prefetch_budget_mb: usize,
    /// This process's stable name among the processes that share a config, for Kafka's static
    /// group membership (KIP-345): each route's consumer joins as `group.instance.id =
    /// "<instance_id>.<route>"`, so a herald restarted after a crash (SIGKILL, OOM) gets its
    /// partitions back at once instead of waiting out the dead member's `session.timeout.ms`
    /// (45 s by default). Give every process its own, stable across restarts: a StatefulSet's
    /// pod name, a systemd instance name, e.g. `"${HOSTNAME}"`; two running processes with one
    /// `instance_id` fence each other. The trade-off: a static member leaves its group only when
    /// its session ends, so a process stopped for good (scaled down) holds its partitions for
    /// `session.timeout.ms` before they move. Letters, digits, `.`, `_`, `-`. Default: none
    /// (dynamic membership).
    #[serde(default)]
    pub instance_id: Option<String>,
}

fn default_prefetch_budget_mb() -> usize {
    64
}

impl RuntimeConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.progress_interval.is_zero() {
            return Err(Invalid::new("runtime.progress_interval", "must be greater than zero, e.g. \"10s\""));
        }
        if self.idle_progress_interval.is_zero() {
            return Err(Invalid::new("runtime.idle_progress_interval", "must be greater than zero, e.g. \"5m\""));
        }
        if let Some(instance) = &self.instance_id {
            let valid = !instance.is_empty()
                && instance.len() <= 200
                && instance.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(Invalid::new(
                    "runtime.instance_id",
                    "must be 1 to 200 letters, digits, `.`, `_` or `-` (Kafka's group.instance.id)",
                ));
            }
        }
        Ok(())
    }

    /// One route's prefetch limit per partition, in KiB, when `routes` share the budget.
    pub fn prefetch_kbytes(&self, routes: usize) -> usize {
        (self.prefetch_budget_mb.saturating_mul(1024) / routes.max(1)).clamp(1024, 16 * 1024)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            progress_interval: default_progress_interval(),
            idle_progress_interval: default_idle_progress_interval(),
            prefetch_budget_mb: default_prefetch_budget_mb(),
            instance_id: None,
        }
    }
}

fn default_idle_progress_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_progress_interval() -> Duration {
    Duration::from_secs(10)
}

/// One route: Kafka topics → filter → batches → one sink, in its own consumer group.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// A key that is no event field (nor one of `extra_fields`) is a config error.
    #[serde(default)]
    pub filter: Filter,
    /// Fields beyond the stage event's own (`event`, `stage`, `source`, `status`,
    /// `timestamp`, `records`) that this route's events carry and its filter, templates or
    /// column mappings name, e.g. `["run_id", "rule"]`. Naming an undeclared field is a config
    /// error (with the nearest field as a suggestion), since it would match nothing. Default: none.
    #[serde(default)]
    pub extra_fields: Vec<String>,
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
    /// What the route's topics hold: `"stage_events"` (default), or `"openlineage"`: the run
    /// events the OpenLineage Kafka transport writes (Airflow, dbt, Spark, …), each mapped to a
    /// stage event before the filter and the sink see it, as the ingest listener maps them. An
    /// OpenLineage event of no run (a `DatasetEvent`, a `JobEvent`) is skipped; one that cannot
    /// be read goes to the dead-letter topic.
    #[serde(default)]
    pub input: Input,
    /// With `input = "openlineage"`: templates for the stage event's `source` (default
    /// `"{job.namespace}"`) and `stage` (default `"{job.name}"`). Written `[route.openlineage]`.
    #[serde(default)]
    pub openlineage: Option<herald_sdk::LineageMapping>,
    /// The sink: `type` picks the kind (e.g. `"stdout"`), the other keys are that sink's settings.
    pub sink: SinkSpec,
    /// Set by `herald redrive`, never read from the file: which messages the route delivers,
    /// and where it stops.
    #[serde(skip)]
    pub only: Option<std::sync::Arc<Only>>,
}

/// A one-off run over a window of a topic (`herald redrive`): only the chosen messages are
/// delivered, the route skips the others (as its filter would), and no offset past the window's
/// end is stored, so what arrived after the window is left for the next run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Only {
    /// The (partition, offset) of each message to deliver.
    pub chosen: BTreeSet<(i32, i64)>,
    /// Per partition, one past the window's last offset.
    pub ends: std::collections::BTreeMap<i32, i64>,
}

impl RouteConfig {
    /// The consumer group id: `group_id`, or `herald.<name>`.
    pub fn group_id(&self) -> String {
        self.group_id.clone().unwrap_or_else(|| format!("herald.{}", self.name))
    }

    /// How an OpenLineage event becomes a stage event, when the route reads OpenLineage.
    pub(crate) fn lineage(&self) -> Option<std::borrow::Cow<'_, herald_sdk::LineageMapping>> {
        match (self.input, &self.openlineage) {
            (Input::StageEvents, _) => None,
            (Input::OpenLineage, Some(mapping)) => Some(std::borrow::Cow::Borrowed(mapping)),
            (Input::OpenLineage, None) => Some(std::borrow::Cow::Owned(herald_sdk::LineageMapping::default())),
        }
    }
}

/// What a route's topics hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// Stage events (JSON), as the seed's producer, `herald publish` and herald's source write them.
    #[default]
    StageEvents,
    /// OpenLineage events (JSON), as the OpenLineage Kafka transport writes them.
    #[serde(rename = "openlineage")]
    OpenLineage,
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one sink write, 1..=100000. Default: the sink's own
    /// ([`herald_sdk::sink::Sink::default_max_events`]: 5000 for Postgres, 500 for the others).
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    /// The sink kind, from `type`, e.g. `"stdout"`.
    pub kind: String,
    /// Every other key of the `sink` table.
    pub settings: serde_json::Map<String, Value>,
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

/// Checks the `[[route]]` tables as the types cannot: names (unique; letters, digits, `-`, `_`,
/// `.`), topics and regexes, ranges, the retry bounds. The error names the key.
pub fn validate_routes(routes: &[RouteConfig]) -> Result<(), Invalid> {
    let mut names = BTreeSet::new();
    for (i, route) in routes.iter().enumerate() {
        let at = |field: &str| format!("route[{i}].{field}");
        if route.name.is_empty()
            || !route.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Invalid::new(
                at("name"),
                format!("`{}` must be non-empty letters, digits, `-`, `_` or `.`", route.name),
            ));
        }
        if !names.insert(route.name.as_str()) {
            return Err(Invalid::new(at("name"), format!("route name `{}` is used twice", route.name)));
        }
        if route.topics.is_empty() {
            return Err(Invalid::new(at("topics"), "at least one topic (or a `^regex`) is required"));
        }
        for topic in &route.topics {
            if let Some(pattern) = topic.strip_prefix('^') {
                Regex::new(pattern)
                    .map_err(|err| Invalid::new(at("topics"), format!("`{topic}` is not a valid regex: {err}")))?;
            } else if topic.is_empty() {
                return Err(Invalid::new(at("topics"), "topic names cannot be empty"));
            }
        }
        if route.dead_letter_topic.as_deref().is_some_and(|dlq| route.topics.iter().any(|t| t == dlq)) {
            return Err(Invalid::new(at("dead_letter_topic"), "the dead-letter topic cannot be one the route reads"));
        }
        if let Some(max_events) = route.batch.max_events.filter(|n| !(1..=100_000).contains(n)) {
            return Err(Invalid::new(at("batch.max_events"), format!("{max_events} is out of range 1..=100000")));
        }
        if route.retry.initial_backoff.is_zero() || route.retry.initial_backoff > route.retry.max_backoff {
            return Err(Invalid::new(at("retry"), "need 0 < initial_backoff <= max_backoff"));
        }
        if route.sink.kind.is_empty() {
            return Err(Invalid::new(at("sink.type"), "the sink type is required, e.g. \"stdout\""));
        }
        for field in route.filter.fields() {
            herald_sdk::check_field(field, &route.extra_fields)
                .map_err(|reason| Invalid::new(at(&format!("filter.{field}")), reason))?;
        }
        if let Some(mapping) = &route.openlineage {
            if route.input != Input::OpenLineage {
                return Err(Invalid::new(at("openlineage"), "is read only with `input = \"openlineage\"`"));
            }
            mapping.check().map_err(|(setting, why)| Invalid::new(at(&format!("openlineage.{setting}")), why))?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    //! Routes from TOML, for the runtime's unit tests.
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;

    #[derive(Deserialize)]
    struct Routes {
        route: Vec<RouteConfig>,
    }

    /// The routes of `text`, validated.
    pub(crate) fn routes(text: &str) -> Result<Vec<RouteConfig>, herald_config::ConfigError> {
        let path = Path::new("test.toml");
        let routes: Routes = herald_config::from_toml(text, path)?;
        validate_routes(&routes.route).map_err(|invalid| herald_config::ConfigError::in_file(path, invalid))?;
        Ok(routes.route)
    }

    /// The one route of `text`.
    pub(crate) fn route(text: &str) -> RouteConfig {
        routes(text).unwrap().remove(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::testing::routes;
    use super::*;

    const MINIMAL: &str = r#"
        [[route]]
        name = "stdout"
        topics = ["pipeline.stage.events"]
        sink = { type = "stdout" }
    "#;

    #[test]
    fn minimal_route_gets_documented_defaults() {
        let route = &routes(MINIMAL).unwrap()[0];
        assert_eq!(route.group_id(), "herald.stdout");
        assert_eq!(route.start_from, StartFrom::Earliest);
        assert_eq!(route.batch.max_events, None, "the sink's own default");
        assert_eq!(route.batch.max_wait, Duration::ZERO);
        assert_eq!(route.retry.max_retries, None);
        assert_eq!(route.retry.poison_after, 8);
        assert_eq!(route.sink.kind, "stdout");
    }

    #[test]
    fn unknown_key_names_file_key_and_problem() {
        let err = routes(&MINIMAL.replace("topics =", "colour = \"red\"\ntopics =")).unwrap_err().to_string();
        assert!(err.starts_with("test.toml: `route[0]"), "{err}");
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn wrong_types_and_bad_durations_name_the_key() {
        let err = routes(&format!("{MINIMAL}\nbatch = {{ max_events = \"lots\" }}")).unwrap_err().to_string();
        assert!(err.contains("route[0].batch.max_events"), "{err}");
        let err = routes(&format!("{MINIMAL}\nbatch = {{ max_wait = \"soon\" }}")).unwrap_err().to_string();
        assert!(err.contains("route[0].batch.max_wait"), "{err}");
    }

    #[test]
    fn missing_sink_type_is_reported() {
        let err = routes(&MINIMAL.replace("type = \"stdout\"", "pretty = true")).unwrap_err().to_string();
        assert!(err.contains("route[0].sink") && err.contains("type"), "{err}");
    }

    #[test]
    fn duplicate_route_names_bad_regexes_and_out_of_range_batches_are_rejected() {
        let twice = format!("{MINIMAL}{MINIMAL}");
        assert!(routes(&twice).unwrap_err().to_string().contains("used twice"));
        let bad_regex = MINIMAL.replace("\"pipeline.stage.events\"", "\"^pipeline(\"");
        let err = routes(&bad_regex).unwrap_err().to_string();
        assert!(err.contains("route[0].topics") && err.contains("regex"), "{err}");
        let err = routes(&format!("{MINIMAL}\nbatch = {{ max_events = 0 }}")).unwrap_err().to_string();
        assert!(err.contains("route[0].batch.max_events") && err.contains("out of range"), "{err}");
    }

    #[test]
    fn sink_settings_are_left_for_the_sink() {
        let routes = routes(&MINIMAL.replace("type = \"stdout\"", "type = \"stdout\", pretty = true")).unwrap();
        assert_eq!(routes[0].sink.settings.get("pretty"), Some(&Value::Bool(true)));
    }
}
