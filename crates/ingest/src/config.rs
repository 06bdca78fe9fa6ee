//! `[ingest]`: where the ingest listener listens, who may post to it, how much it takes, and how
//! an OpenLineage run becomes a stage event.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use herald_config::Invalid;
use herald_sdk::LineageMapping;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The ingest listener: `POST /api/v1/lineage` (an OpenLineage RunEvent, as the OpenLineage
/// clients' HTTP transport sends it) and `POST /events` (stage events, one or NDJSON), each
/// published to Kafka and answered `200` once Kafka acknowledged all of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Address to listen on, e.g. `"127.0.0.1:9470"` (port 0: any free port, logged at start).
    /// Default: no ingest listener.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Allow `listen` on an address other machines can reach. Default `false`. Needs a token.
    #[serde(default)]
    pub allow_remote: bool,
    /// The topic events are published to. Default `"pipeline.stage.events"`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// A bearer token every request must carry (`Authorization: Bearer <token>`, the OpenLineage
    /// client's `api_key`), e.g. `"${HERALD_INGEST_TOKEN}"`. Required when `listen` is reachable
    /// from other machines. Never printed. Default: none.
    #[serde(default)]
    pub token: Option<SecretString>,
    /// The token read from a file (its first line), e.g. a mounted secret; instead of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Largest request body, in bytes, and largest it may become once a gzip body is inflated
    /// (a small gzip body cannot inflate into gigabytes); a larger one gets `413`. Default
    /// `4194304` (4 MiB: an OpenLineage event with column lineage runs to hundreds of KiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most stage events in one `POST /events` request; more get `413`. Default `10000`.
    #[serde(default = "default_max_events_per_request")]
    pub max_events_per_request: usize,
    /// Most events published per second, over all requests; a request beyond it gets `429` with
    /// `Retry-After`, and nothing of it is published. Default: no limit.
    #[serde(default)]
    pub max_events_per_second: Option<NonZeroU32>,
    /// Longest a request waits for Kafka to acknowledge its events before it is answered `503`.
    /// Keep it under the clients' own timeout (the OpenLineage Python client's is 5 s). Default
    /// `"4s"`.
    #[serde(default = "default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Most connections open at once; at the cap a new connection closes the oldest. Default `64`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How an OpenLineage run becomes a stage event: templates for `source` (default
    /// `"{job.namespace}"`) and `stage` (default `"{job.name}"`). Written `[ingest.openlineage]`.
    #[serde(default)]
    pub openlineage: LineageMapping,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: None,
            allow_remote: false,
            topic: default_topic(),
            token: None,
            token_file: None,
            max_body_bytes: default_max_body_bytes(),
            max_events_per_request: default_max_events_per_request(),
            max_events_per_second: None,
            publish_timeout: default_publish_timeout(),
            max_connections: default_max_connections(),
            openlineage: LineageMapping::default(),
        }
    }
}

/// Every setting compared, the token by value (it prints redacted): a reload tells a changed
/// token from no change.
impl PartialEq for IngestConfig {
    fn eq(&self, other: &Self) -> bool {
        let token = |ingest: &IngestConfig| ingest.token.as_ref().map(|token| token.expose_secret().to_owned());
        self.listen == other.listen
            && self.allow_remote == other.allow_remote
            && self.topic == other.topic
            && token(self) == token(other)
            && self.token_file == other.token_file
            && self.max_body_bytes == other.max_body_bytes
            && self.max_events_per_request == other.max_events_per_request
            && self.max_events_per_second == other.max_events_per_second
            && self.publish_timeout == other.publish_timeout
            && self.max_connections == other.max_connections
            && self.openlineage == other.openlineage
    }
}

fn default_topic() -> String {
    "pipeline.stage.events".into()
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_max_events_per_request() -> usize {
    10_000
}

fn default_publish_timeout() -> Duration {
    Duration::from_secs(4)
}

fn default_max_connections() -> usize {
    64
}

impl IngestConfig {
    /// Checks what the types cannot: a `listen` other machines can reach needs `allow_remote`
    /// and a token; one token source; limits above zero; a mapping of known fields.
    pub fn validate(&self) -> Result<(), Invalid> {
        herald_http::Exposure {
            section: "ingest",
            listen: self.listen,
            allow_remote: self.allow_remote,
            token: self.token.as_ref(),
            token_file: self.token_file.is_some(),
        }
        .check()?;
        if self.topic.trim().is_empty() {
            return Err(Invalid::new("ingest.topic", "must name a topic"));
        }
        if self.max_body_bytes == 0 || self.max_events_per_request == 0 || self.max_connections == 0 {
            return Err(Invalid::new(
                "ingest",
                "`max_body_bytes`, `max_events_per_request` and `max_connections` must be at least 1",
            ));
        }
        if self.publish_timeout.is_zero() {
            return Err(Invalid::new("ingest.publish_timeout", "must be greater than zero"));
        }
        self.openlineage.check().map_err(|(setting, why)| Invalid::new(format!("ingest.openlineage.{setting}"), why))
    }

    /// The token, read from `token_file` when that is where it is. `herald run` and `herald
    /// check` both call this.
    pub fn resolve_token(&self) -> Result<Option<SecretString>, std::io::Error> {
        if let Some(path) = &self.token_file {
            return herald_http::read_token_file(path, "ingest.token_file").map(Some);
        }
        Ok(self.token.as_ref().map(|token| SecretString::from(token.expose_secret().trim().to_owned())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ingest(text: &str) -> IngestConfig {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_listener_stays_on_loopback_unless_allowed_and_guarded() {
        assert!(ingest(r#"{"listen": "127.0.0.1:9470"}"#).validate().is_ok());
        let err = ingest(r#"{"listen": "0.0.0.0:9470", "allow_remote": true}"#).validate().unwrap_err().to_string();
        assert!(err.contains("ingest.listen") && err.contains("ingest.token"), "{err}");
    }

    #[test]
    fn limits_tokens_and_the_mapping_are_checked() {
        for (bad, key) in [
            (r#"{"token": "short"}"#, "ingest.token"),
            (r#"{"token": "0123456789abcdef0123", "token_file": "/x"}"#, "ingest.token"),
            (r#"{"max_body_bytes": 0}"#, "ingest"),
            (r#"{"publish_timeout": "0s"}"#, "ingest.publish_timeout"),
            (r#"{"topic": " "}"#, "ingest.topic"),
            (r#"{"openlineage": {"source": "{job.nmae}"}}"#, "ingest.openlineage.source"),
        ] {
            let err = ingest(bad).validate().unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        assert!(serde_json::from_str::<IngestConfig>(r#"{"max_events_per_second": 0}"#).is_err());
        assert!(serde_json::from_str::<IngestConfig>(r#"{"lisen": "127.0.0.1:1"}"#).is_err());
        let defaults = IngestConfig::default();
        assert_eq!(
            (defaults.topic.as_str(), defaults.publish_timeout),
            ("pipeline.stage.events", Duration::from_secs(4))
        );
    }
}
