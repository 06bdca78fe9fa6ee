//! The configuration file, composed from the sections each crate owns: `[kafka]`
//! (herald-kafka), `[runtime]` and `[[route]]` (herald-core), `[[source]]` (herald-core's
//! source contract, each kind's settings in its crate), `[admin]` (herald-admin), `[board]`
//! (herald-board), `[ingest]` (herald-ingest), `[expectations]` and `[[expect]]` (herald-expect), `[reconcile]`
//! (herald-reconcile). Loading (`${VAR}`,
//! `HERALD__…` overrides, errors naming file and key) is herald-config's; this file only puts
//! the sections together and asks each to check itself.

use std::path::Path;

use herald_admin::AdminConfig;
use herald_board::BoardConfig;
use herald_config::{ConfigError, Invalid};
use herald_core::{RouteConfig, RuntimeConfig, SourceSpec};
use herald_expect::{ExpectConfig, ExpectationsConfig};
use herald_ingest::IngestConfig;
use herald_kafka::KafkaProperties;
use herald_reconcile::ReconcileConfig;
use serde::Deserialize;

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
    /// The ingest listener: OpenLineage run events and stage events over HTTP, published to
    /// Kafka (`POST /api/v1/lineage`, `POST /events`). Off unless `listen` is set.
    #[serde(default)]
    pub ingest: IngestConfig,
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
    /// The periodic reconcile of every Postgres source and Postgres sink route (the metric
    /// `herald_reconcile_divergent`, the board's marks). Off unless `every` is set.
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// The routes: each moves events from Kafka topics to one sink. Written `[[route]]`.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// The sources: each turns writes to a database table into Kafka stage events. Written
    /// `[[source]]`, with `name`, `type` (e.g. `"postgres"`) and that source's settings.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceSpec>,
}

impl Config {
    /// Loads and validates `path`, with `${VAR}` interpolation and `HERALD__…` overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        herald_config::load(path, Config::validate).map(|config| config.read_from(path))
    }

    /// [`Config::load`] for a reload: the file is read until two reads 100 ms apart agree (at
    /// most 2 s), so a file caught mid-write is never taken for the whole.
    pub fn load_settled(path: &Path) -> Result<Self, ConfigError> {
        let (settle, patience) = (std::time::Duration::from_millis(100), std::time::Duration::from_secs(2));
        herald_config::load_settled(path, settle, patience, Config::validate).map(|config| config.read_from(path))
    }

    /// This config, its sources told which file it came from (for the commands they print).
    fn read_from(mut self, path: &Path) -> Self {
        for spec in &mut self.sources {
            spec.config_file = Some(path.to_owned());
        }
        self
    }

    /// Why `herald run` would have nothing to do with this config, if it would not: no route,
    /// source, expectation or board. `run` refuses such a file and a reload refuses it too (a
    /// file read while an editor was writing it is often empty).
    pub fn nothing_to_run(&self, path: &Path) -> Option<String> {
        let idle = self.routes.is_empty()
            && self.sources.is_empty()
            && self.board.topics.is_empty()
            && self.expect.is_empty()
            && self.ingest.listen.is_none();
        idle.then(|| {
            format!(
                "{}: no [[route]], [[source]], [[expect]], [board] topics or [ingest] listen are configured, so there \
                 is nothing to run",
                path.display()
            )
        })
    }

    /// Parses and validates configuration text, as if read from `origin`.
    #[cfg(test)]
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Config = herald_config::from_toml(text, origin)?;
        config.validate().map_err(|invalid| ConfigError::in_file(origin, invalid))?;
        Ok(config)
    }

    /// Each section checks itself; the first problem, with its key.
    fn validate(&self) -> Result<(), Invalid> {
        self.runtime.validate()?;
        herald_core::config::validate_routes(&self.routes)?;
        for (i, route) in self.routes.iter().enumerate() {
            crate::registry::check_sink_fields(route)
                .map_err(|(setting, reason)| Invalid::new(format!("route[{i}].{setting}"), reason))?;
        }
        herald_core::source::validate_sources(&self.sources)?;
        self.admin.validate()?;
        self.ingest.validate()?;
        self.board.validate(self.admin.listen.is_some())?;
        self.reconcile.validate()?;
        herald_expect::validate(&self.expect)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use proptest::prelude::*;

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
    fn every_section_has_its_default() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(config.kafka.bootstrap_servers(), "127.0.0.1:9092");
        assert_eq!(config.routes.len(), 1);
        assert!(config.admin.listen.is_none() && config.board.topics.is_empty() && config.expect.is_empty());
        assert_eq!(config.expectations.topic, "pipeline.stage.events");
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
        assert!(!printed.contains("hunter2") && printed.contains("<redacted>"), "{printed}");
    }

    #[test]
    fn each_sections_checks_run_on_load_and_name_the_key() {
        let err = load(&format!("{MINIMAL}{MINIMAL}")).unwrap_err().to_string();
        assert!(err.starts_with("test.toml: `route[1].name`") && err.contains("used twice"), "{err}");
        let err = load(&format!("[admin]\nlisten = \"0.0.0.0:9464\"\n{MINIMAL}")).unwrap_err().to_string();
        assert!(err.contains("admin.listen") && err.contains("allow_remote"), "{err}");
        let err = load(&format!("[board]\ntopics = [\"t\"]\n{MINIMAL}")).unwrap_err().to_string();
        assert!(err.contains("board.topics") && err.contains("admin.listen"), "{err}");
        let err = load("[[expect]]\nname = \"r\"\nstage = \"s\"\nsources = [\"A\"]\nby = \"not cron\"").unwrap_err();
        assert!(err.to_string().contains("expect[0].by"), "{err}");
        let err = load("[runtime]\nprogress_interval = \"0s\"").unwrap_err().to_string();
        assert!(err.contains("runtime.progress_interval"), "{err}");
        let err = load("[[source]]\nname = \"bad name\"\ntype = \"postgres\"").unwrap_err().to_string();
        assert!(err.contains("source[0].name"), "{err}");
    }

    proptest! {
        #[test]
        fn the_config_loader_never_panics(text in "[\\[\\]a-z_.=\" 0-9{},\n]{0,200}") {
            let _ = load(&text);
        }
    }
}
