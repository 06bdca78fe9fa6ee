//! The `[kafka]` table: librdkafka properties every client herald makes starts from.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::config::ClientConfig;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

/// librdkafka properties, passed through unchanged.
///
/// Written in TOML either quoted (`"security.protocol" = "SASL_SSL"`), as dotted keys
/// (`security.protocol = "SASL_SSL"`, which TOML nests), or with `_` for `.`
/// (`security_protocol`, the form environment overrides take: librdkafka names have no `_`).
/// Values may be strings, numbers or booleans. Properties whose name mentions a password,
/// secret or key are never printed.
///
/// One sub-table is herald's, not librdkafka's: `[kafka.topic_defaults]`, how the topics herald
/// writes are created when missing (`partitions`, `replication_factor`; default: the broker's).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperties {
    props: BTreeMap<String, String>,
    topic_defaults: TopicDefaults,
}

/// `[kafka.topic_defaults]`: how herald creates the topics it writes (its sources' and
/// expectations' output, dead-letter topics, offsets and state topics) when they are missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDefaults {
    /// Partitions of an events or dead-letter topic. Default: the broker's `num.partitions`.
    /// (Offsets topics have one; a state topic has as many as the events topic it follows.)
    #[serde(default)]
    pub partitions: Option<i32>,
    /// Replicas of each partition. Default: the broker's `default.replication.factor`.
    #[serde(default)]
    pub replication_factor: Option<i32>,
}

impl KafkaProperties {
    /// The properties, by librdkafka name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.props.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// One property.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.props.get(name).map(String::as_str)
    }

    /// Sets a property, e.g. from a command-line flag.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.props.insert(name.to_owned(), value.into());
    }

    /// How the topics herald writes are created.
    pub fn topic_defaults(&self) -> TopicDefaults {
        self.topic_defaults
    }

    /// The brokers, for messages to people.
    pub fn bootstrap_servers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or("127.0.0.1:9092")
    }

    /// Whether a property holds a secret and must not be printed.
    pub fn is_secret(name: &str) -> bool {
        ["password", "secret", "key", "token", "jaas"].iter().any(|word| name.contains(word))
            && !name.ends_with(".location")
    }

    fn insert_flattened(&mut self, prefix: &str, value: Value) -> Result<(), String> {
        let name = prefix.replace('_', ".");
        match value {
            Value::Object(table) => {
                for (key, value) in table {
                    self.insert_flattened(&format!("{prefix}.{key}"), value)?;
                }
            }
            Value::String(s) => {
                self.props.insert(name, s);
            }
            Value::Number(n) => {
                self.props.insert(name, n.to_string());
            }
            Value::Bool(b) => {
                self.props.insert(name, b.to_string());
            }
            Value::Null | Value::Array(_) => {
                return Err(format!("`{name}` must be a string, number or boolean"));
            }
        }
        Ok(())
    }
}

impl Default for KafkaProperties {
    fn default() -> Self {
        let mut props = BTreeMap::new();
        props.insert("bootstrap.servers".to_owned(), "127.0.0.1:9092".to_owned());
        Self { props, topic_defaults: TopicDefaults::default() }
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.props {
            if Self::is_secret(name) {
                map.entry(name, &"<redacted>");
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

impl<'de> Deserialize<'de> for KafkaProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let table = serde_json::Map::<String, Value>::deserialize(deserializer)?;
        let mut props = KafkaProperties::default();
        // A `HERALD__KAFKA__BOOTSTRAP_SERVERS` override arrives as `bootstrap_servers` beside the
        // file's `bootstrap.servers` (a nested table to TOML): the underscore forms go last, so
        // the override wins whatever order the map keeps.
        let (underscored, dotted): (Vec<_>, Vec<_>) = table.into_iter().partition(|(key, _)| key.contains('_'));
        for (key, value) in dotted.into_iter().chain(underscored) {
            if key == "topic_defaults" {
                props.topic_defaults = TopicDefaults::deserialize(value)
                    .map_err(|err| de::Error::custom(format!("`topic_defaults`: {err}")))?;
                continue;
            }
            props.insert_flattened(&key, value).map_err(de::Error::custom)?;
        }
        Ok(props)
    }
}

/// A client config holding every `[kafka]` property, ready for role-specific settings.
///
/// One default differs from librdkafka's, and `[kafka]` may set it back:
/// `enable.metrics.push = false`. librdkafka pushes client metrics to brokers that ask for them
/// (KIP-714), and for that keeps about 40 histograms per client, some 0.4 MiB, whether a broker
/// asks or not: 18 MiB of 55 for 50 idle routes. herald's own metrics are served on `/metrics`.
pub fn client_config(props: &KafkaProperties) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("enable.metrics.push", "false");
    for (name, value) in props.iter() {
        config.set(name, value);
    }
    config
}

/// A producer config for messages herald must not lose or duplicate on retry:
/// `acks=all` and idempotence, on top of the `[kafka]` properties.
pub fn reliable_producer_config(props: &KafkaProperties) -> ClientConfig {
    let mut config = client_config(props);
    config.set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "5");
    config
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn topic_defaults_are_herald_s_and_never_reach_librdkafka() {
        let table = serde_json::json!({
            "bootstrap.servers": "b:9092",
            "topic_defaults": { "partitions": 6, "replication_factor": 3 },
        });
        let props: KafkaProperties = serde_json::from_value(table).unwrap();
        assert_eq!(props.topic_defaults(), TopicDefaults { partitions: Some(6), replication_factor: Some(3) });
        assert!(props.iter().all(|(name, _)| !name.contains("topic")), "{props:?}");
        let wrong = serde_json::json!({ "topic_defaults": { "partitons": 6 } });
        let err = serde_json::from_value::<KafkaProperties>(wrong).unwrap_err().to_string();
        assert!(err.contains("topic_defaults") && err.contains("partitons"), "{err}");
    }

    #[test]
    fn client_metrics_push_is_off_unless_the_kafka_table_turns_it_on() {
        let mut props = KafkaProperties::default();
        props.set("bootstrap.servers", "127.0.0.1:9092");
        let config = client_config(&props);
        assert_eq!(config.get("enable.metrics.push"), Some("false"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        props.set("enable.metrics.push", "true");
        assert_eq!(client_config(&props).get("enable.metrics.push"), Some("true"));
    }
}
