//! The Postgres source as a plug-in (its settings type is); the binary registers it as
//! `&herald_core::source::Registered::<herald_source_postgres::PostgresSourceConfig>::NEW`.

use async_trait::async_trait;
use herald_core::observe::SourceMetrics;
use herald_core::source::{Claim, Source, SourcePlugin};
use herald_kafka::KafkaProperties;
use herald_sdk::BoxError;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::config::{Capture, PostgresSourceConfig};
use crate::error::SourceError;
use crate::instance::PostgresSource;

impl SourcePlugin for PostgresSourceConfig {
    const KIND: &'static str = crate::KIND;

    fn validate(&self) -> Result<(), BoxError> {
        Ok(self.check_settings()?)
    }

    fn build(self, name: &str, config_file: Option<&std::path::Path>) -> Result<Box<dyn Source>, BoxError> {
        Ok(Box::new(PostgresSource::new(name, self, config_file)?))
    }
}

impl PostgresSource {
    /// `err`, with the commands it prints naming the config file.
    fn with_config(&self, err: SourceError) -> BoxError {
        match err {
            SourceError::CaptureLost { source_name, what, since, .. } => {
                Box::new(SourceError::CaptureLost { source_name, what, since, config: self.config_flag.clone() })
            }
            other => Box::new(other),
        }
    }
}

#[async_trait]
impl Source for PostgresSource {
    fn claims(&self) -> Vec<Claim> {
        if self.config.capture != Capture::Wal {
            // Trigger capture: sources of one table share the capture by design.
            return Vec::new();
        }
        vec![
            Claim {
                resource: format!("replication slot `{}`", self.config.slot_name(&self.name)),
                hint: "set `slot` on one of them".into(),
            },
            Claim {
                resource: format!("publication `{}`", self.config.publication_name(&self.name)),
                hint: "set `publication` on one of them".into(),
            },
        ]
    }

    fn capture_settings(&self) -> Vec<(&'static str, String)> {
        let config = &self.config;
        let mut settings = vec![
            ("url", config.url.expose_secret().to_owned()),
            ("schema", config.schema.clone()),
            ("table", config.table.clone().unwrap_or_default()),
            ("capture", format!("{:?}", config.capture)),
            ("offsets_topic", config.offsets_topic.clone()),
        ];
        if config.capture == Capture::Wal {
            settings.push(("slot", config.slot_name(&self.name)));
            settings.push(("publication", config.publication_name(&self.name)));
        }
        settings
    }

    fn topics(&self) -> Vec<herald_kafka::TopicSpec> {
        self.topics()
    }

    async fn check(&self, kafka: &KafkaProperties) -> Result<String, BoxError> {
        PostgresSource::check(self, kafka).await.map_err(|err| self.with_config(err))
    }

    async fn migrate(&self, kafka: &KafkaProperties) -> Result<String, BoxError> {
        PostgresSource::migrate(self, kafka).await.map_err(|err| self.with_config(err))?;
        Ok(match self.config.capture {
            Capture::Trigger => "change capture installed (trigger)".into(),
            Capture::Wal => format!(
                "change capture installed (publication `{}`, slot `{}`)",
                self.config.publication_name(&self.name),
                self.config.slot_name(&self.name)
            ),
        })
    }

    async fn retire(&self, kafka: &KafkaProperties) -> Result<bool, BoxError> {
        self.drop_source(kafka).await.map_err(|err| self.with_config(err))
    }

    async fn run(
        &self,
        kafka: &KafkaProperties,
        metrics: SourceMetrics,
        cancel: CancellationToken,
    ) -> Result<(), BoxError> {
        PostgresSource::run(self, kafka, metrics, cancel).await.map_err(|err| self.with_config(err))
    }
}
