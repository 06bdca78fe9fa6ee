//! Sources as plug-ins, the same shape as sinks: a source crate describes its kind once
//! ([`SourcePlugin`]), and the binary registers it with one line
//! (`&Registered::<MySourceConfig>::NEW`) in a list of [`SourceFactory`]s that `herald check
//! --offline`, `check`, `migrate` and `run` all go through.
//!
//! A source lives here rather than in herald-sdk because it publishes to Kafka: it is handed
//! the `[kafka]` properties and its metrics.

use async_trait::async_trait;
pub use herald_sdk::Registered;
use herald_sdk::{parse_settings, BoxError, FactoryError};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use herald_config::Invalid;
use herald_kafka::KafkaProperties;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use crate::config::SinkSpec;
use crate::observe::SourceMetrics;

/// A source: its name and kind, and its settings left for that source's own typed config.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    /// Unique name, used in logs, the transactional id and the cursor's key.
    pub name: String,
    /// The source kind, from `type`, e.g. `"postgres"`.
    pub kind: String,
    /// Every other key of the `[[source]]` table.
    pub settings: serde_json::Map<String, Value>,
    /// The config file it was read from, set by whoever loaded it: the commands a source prints
    /// (the ways forward after a lost capture) name it with `--config`, so they run as printed.
    pub config_file: Option<std::path::PathBuf>,
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let SinkSpec { kind, mut settings } = SinkSpec::deserialize(deserializer)?;
        let name = match settings.remove("name") {
            Some(Value::String(name)) => name,
            Some(other) => return Err(de::Error::custom(format!("`name` must be a string, not {other}"))),
            None => return Err(de::Error::missing_field("name")),
        };
        Ok(Self { name, kind, settings, config_file: None })
    }
}

/// Checks the `[[source]]` tables' names: unique; letters, digits, `-`, `_`, `.`.
pub fn validate_sources(sources: &[SourceSpec]) -> Result<(), Invalid> {
    let mut names = std::collections::BTreeSet::new();
    for (i, source) in sources.iter().enumerate() {
        let valid = !source.name.is_empty()
            && source.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(Invalid::new(
                format!("source[{i}].name"),
                format!("`{}` must be non-empty letters, digits, `-`, `_` or `.`", source.name),
            ));
        }
        if !names.insert(source.name.as_str()) {
            return Err(Invalid::new(
                format!("source[{i}].name"),
                format!("source name `{}` is used twice", source.name),
            ));
        }
    }
    Ok(())
}

/// Something a source holds alone: two sources claiming the same resource are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The resource, e.g. ``replication slot `herald_orders` ``.
    pub resource: String,
    /// How to tell two sources apart, e.g. ``set `slot` on one of them``.
    pub hint: String,
}

/// One configured source: changes somewhere else become stage events on Kafka.
#[async_trait]
pub trait Source: Send + Sync {
    /// What it holds alone (a replication slot, a publication). Default: nothing.
    fn claims(&self) -> Vec<Claim> {
        Vec::new()
    }

    /// The settings that say where its change capture is installed and where its position is
    /// kept (for Postgres: the database, table, schema, capture mode, slot, publication and
    /// offsets topic), as `(setting, value)` pairs. A reload cannot move an installed capture,
    /// so it refuses a change of any of these (values are compared, never shown: the
    /// database URL holds a password). Default: none.
    fn capture_settings(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The topics it writes, for `herald migrate` to create when missing. Default: none.
    fn topics(&self) -> Vec<herald_kafka::TopicSpec> {
        Vec::new()
    }

    /// Connects and checks what it reads, changing nothing; says what it found. A capture lost
    /// since the source's position in Kafka is an error, as it would be at the start.
    async fn check(&self, kafka: &KafkaProperties) -> Result<String, BoxError>;

    /// Installs what it needs where it reads (idempotent); says what it did. A capture that
    /// was lost since the source's position in Kafka is refused, not installed again.
    async fn migrate(&self, kafka: &KafkaProperties) -> Result<String, BoxError>;

    /// Removes what it installed, and forgets its position in Kafka, once it is taken out of
    /// service; whether there was anything.
    async fn retire(&self, kafka: &KafkaProperties) -> Result<bool, BoxError>;

    /// Publishes until `cancel`; transient failures are its own to retry, an error ends it.
    async fn run(
        &self,
        kafka: &KafkaProperties,
        metrics: SourceMetrics,
        cancel: CancellationToken,
    ) -> Result<(), BoxError>;
}

/// One source kind: its settings type, read from the rest of a `[[source]]` table (use
/// `deny_unknown_fields`), is the plug-in.
pub trait SourcePlugin: DeserializeOwned + Send + Sync + 'static {
    /// The `type` that selects it in a `[[source]]` table.
    const KIND: &'static str;

    /// Checks what the types cannot, without connecting. Errors name the setting. The registry
    /// calls it once, before `build`.
    fn validate(&self) -> Result<(), BoxError> {
        Ok(())
    }

    /// The source named `name`, built once from these (validated) settings, read from
    /// `config_file` (for the commands it prints): a value that owns what the source does, the
    /// settings staying plain data. Connects only when used; an error says which setting.
    fn build(self, name: &str, config_file: Option<&std::path::Path>) -> Result<Box<dyn Source>, BoxError>;
}

/// A source kind as the binary uses it: a `[[source]]` table in, a source out.
pub trait SourceFactory: Send + Sync {
    /// The `type` it answers to.
    fn kind(&self) -> &'static str;
    /// Parses and checks the table's settings without connecting, and builds the source.
    fn build(&self, spec: &SourceSpec) -> Result<Box<dyn Source>, FactoryError>;
}

impl<P: SourcePlugin> SourceFactory for Registered<P> {
    fn kind(&self) -> &'static str {
        P::KIND
    }

    fn build(&self, spec: &SourceSpec) -> Result<Box<dyn Source>, FactoryError> {
        let config: P = parse_settings(&spec.settings)?;
        config.validate().map_err(FactoryError::Invalid)?;
        config.build(&spec.name, spec.config_file.as_deref()).map_err(FactoryError::Invalid)
    }
}
