//! Sink kinds as plug-ins: a sink crate's config type is its plug-in ([`SinkPlugin`]: its kind,
//! how it is checked, how it builds a sink), and the binary registers it with one line
//! (`&Registered::<MySinkConfig>::NEW`) in a list of [`SinkFactory`]s that `herald check
//! --offline`, `check`, `migrate` and `run` all go through. The registry parses and validates the
//! settings once per call; `build` and `migrate` get them validated.

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::sink::{BoxError, Sink};

/// A route's sink settings: every key of its `sink` table but `type`.
pub type Settings = Map<String, Value>;

/// Why a sink is being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `herald run`: create what the sink needs (tables), then deliver.
    Run,
    /// `herald check`: connect and verify, change nothing.
    Check,
}

/// What a sink is told about the route it serves.
#[derive(Debug, Clone, Copy)]
pub struct SinkContext<'a> {
    /// The route's name: for logs and for naming connections (`herald/<route>`).
    pub route: &'a str,
    /// The route's Kafka consumer group: a sink that stores offsets with its data keys them by
    /// it.
    pub consumer_group: &'a str,
    /// Why the sink is being built.
    pub purpose: Purpose,
}

impl SinkContext<'static> {
    /// A context for a sink built outside a route: tests, benchmarks.
    pub const STANDALONE: SinkContext<'static> =
        SinkContext { route: "standalone", consumer_group: "herald.standalone", purpose: Purpose::Run };
}

/// One sink kind: its settings type, read from a route's `sink` table (use
/// `deny_unknown_fields`), is the plug-in.
#[async_trait]
pub trait SinkPlugin: DeserializeOwned + Send + Sync + 'static {
    /// The `type` that selects it in a route's `sink` table.
    const KIND: &'static str;

    /// Checks what the types cannot (ranges, identifiers, combinations) without connecting.
    /// Errors name the setting. The registry calls it once, before `build` or `migrate`.
    fn validate(&self) -> Result<(), BoxError> {
        Ok(())
    }

    /// The event fields its settings name (templates, column mappings), each with the setting
    /// that names it, e.g. `("url", "source")`: the route checks each is an event field or one
    /// of its `extra_fields`. Default: none.
    fn fields_named(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Builds a sink from validated settings: connects, and for [`Purpose::Run`] creates what
    /// it needs.
    async fn build(&self, context: SinkContext<'_>) -> Result<Box<dyn Sink>, BoxError>;

    /// Creates or updates what the sink needs (tables) for `herald migrate`; says what it
    /// migrated, or `None` when the kind has nothing to migrate.
    async fn migrate(&self, context: SinkContext<'_>) -> Result<Option<String>, BoxError> {
        let _ = context;
        Ok(None)
    }
}

/// A sink kind as the binary uses it: settings in, sinks out, whatever the kind.
#[async_trait]
pub trait SinkFactory: Send + Sync {
    /// The `type` it answers to.
    fn kind(&self) -> &'static str;
    /// Parses and checks `settings` without connecting.
    fn validate(&self, settings: &Settings) -> Result<(), FactoryError>;
    /// Parses `settings` and lists the event fields they name, as [`SinkPlugin::fields_named`].
    fn fields_named(&self, settings: &Settings) -> Result<Vec<(&'static str, String)>, FactoryError>;
    /// Parses `settings` and builds a sink.
    async fn build(&self, settings: &Settings, context: SinkContext<'_>) -> Result<Box<dyn Sink>, FactoryError>;
    /// Parses `settings` and migrates; what was migrated, if anything.
    async fn migrate(&self, settings: &Settings, context: SinkContext<'_>) -> Result<Option<String>, FactoryError>;
}

/// A plug-in registered as a factory: `&Registered::<MySinkConfig>::NEW` for a [`SinkPlugin`]
/// (and likewise for herald-core's source plug-ins).
pub struct Registered<P>(PhantomData<fn() -> P>);

impl<P> Registered<P> {
    /// The registration, usable in a `static` list.
    pub const NEW: Self = Self(PhantomData);
}

impl<P: SinkPlugin> Registered<P> {
    /// The settings parsed and validated: once per call of the factory.
    fn config(settings: &Settings) -> Result<P, FactoryError> {
        let config: P = parse_settings(settings)?;
        config.validate().map_err(FactoryError::Invalid)?;
        Ok(config)
    }
}

#[async_trait]
impl<P: SinkPlugin> SinkFactory for Registered<P> {
    fn kind(&self) -> &'static str {
        P::KIND
    }

    fn validate(&self, settings: &Settings) -> Result<(), FactoryError> {
        Self::config(settings).map(drop)
    }

    fn fields_named(&self, settings: &Settings) -> Result<Vec<(&'static str, String)>, FactoryError> {
        Self::config(settings).map(|config| config.fields_named())
    }

    async fn build(&self, settings: &Settings, context: SinkContext<'_>) -> Result<Box<dyn Sink>, FactoryError> {
        let config = Self::config(settings)?;
        config.build(context).await.map_err(FactoryError::Sink)
    }

    async fn migrate(&self, settings: &Settings, context: SinkContext<'_>) -> Result<Option<String>, FactoryError> {
        let config = Self::config(settings)?;
        config.migrate(context).await.map_err(FactoryError::Sink)
    }
}

/// Why a factory could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    /// A setting does not fit the kind's settings type.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The settings parse but are not valid together.
    #[error(transparent)]
    Invalid(BoxError),
    /// Building (connecting, migrating) failed.
    #[error(transparent)]
    Sink(BoxError),
}

/// Settings that do not fit a settings type: which key, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("setting `{key}`: {message}")]
pub struct SettingsError {
    /// The key inside the sink or source table, e.g. `table.columns`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// Reads `settings` into a typed config; the error names the offending key.
pub fn parse_settings<T: DeserializeOwned>(settings: &Settings) -> Result<T, SettingsError> {
    serde_path_to_error::deserialize(Value::Object(settings.clone())).map_err(|err| {
        let path = err.path().to_string();
        SettingsError {
            key: if path == "." || path.is_empty() { "(top level)".into() } else { path },
            message: err.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{SinkError, SinkRecord, WriteOutcome};

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EchoConfig {
        level: u8,
    }

    struct EchoSink;

    #[async_trait]
    impl Sink for EchoSink {
        async fn healthcheck(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        async fn write(&mut self, _batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
            Ok(WriteOutcome::default())
        }
    }

    #[async_trait]
    impl SinkPlugin for EchoConfig {
        const KIND: &'static str = "echo";
        fn validate(&self) -> Result<(), BoxError> {
            if self.level > 3 {
                return Err("sink setting `level`: at most 3".into());
            }
            Ok(())
        }
        async fn build(&self, _context: SinkContext<'_>) -> Result<Box<dyn Sink>, BoxError> {
            Ok(Box::new(EchoSink))
        }
    }

    static REGISTRY: &[&dyn SinkFactory] = &[&Registered::<EchoConfig>::NEW];

    fn settings(json: &str) -> Settings {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_registered_plugin_parses_validates_and_names_the_key() {
        let factory = REGISTRY[0];
        assert_eq!(factory.kind(), "echo");
        assert!(factory.validate(&settings(r#"{"level": 2}"#)).is_ok());
        let unknown = factory.validate(&settings(r#"{"level": 2, "colour": "red"}"#)).unwrap_err();
        assert!(unknown.to_string().contains("colour"), "{unknown}");
        let wrong = factory.validate(&settings(r#"{"level": "high"}"#)).unwrap_err();
        assert!(wrong.to_string().starts_with("setting `level`"), "{wrong}");
        let invalid = factory.validate(&settings(r#"{"level": 9}"#)).unwrap_err();
        assert!(invalid.to_string().contains("at most 3"), "{invalid}");
    }
}
