//! Settings of the Redis sink.

use std::time::Duration;

use herald_sdk::{BoxError, Sink, SinkContext, SinkPlugin, Template};
use secrecy::SecretString;
use serde::Deserialize;

use crate::error::RedisSinkError;
use crate::sink::RedisSink;

/// `sink = { type = "redis", url = "redis://…", publish = {}, latest_key = {}, stream = {} }`:
/// at least one of `publish`, `latest_key`, `stream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// `redis://[user:password@]host:6379[/db]`, or `rediss://…` for TLS. Never printed.
    pub url: SecretString,
    /// Publish each event on a channel.
    #[serde(default)]
    pub publish: Option<PublishConfig>,
    /// Keep the newest event per key.
    #[serde(default)]
    pub latest_key: Option<LatestKeyConfig>,
    /// Append each event to a stream.
    #[serde(default)]
    pub stream: Option<StreamConfig>,
    /// How long to wait for a connection. Default `"5s"`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for Redis to answer a batch before it counts as failed (and is retried).
    /// Default `"10s"`.
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
}

/// `publish = { channel = "pipeline.{source}.{stage}" }`.
///
/// In every template here (channels, latest keys, stream keys), a value is written with `%`,
/// control characters and the punctuation the template itself uses percent-encoded (`%3A` for
/// `:`), so the pair (`a`, `b:c`) and the pair (`a:b`, `c`) never share a key or a channel.
/// Values without those characters are written as they are. Two fields must be separated by
/// such punctuation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Channel template. Default `"pipeline.stage.events"`.
    #[serde(default = "default_channel")]
    pub channel: Template,
}

/// `latest_key = { key = "pipeline:status:{source}:{stage}", ttl = "7d" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatestKeyConfig {
    /// Key template. Default `"pipeline:status:{source}:{stage}"`.
    #[serde(default = "default_latest_key")]
    pub key: Template,
    /// Expire the key this long after its last update. Default: never.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// An event dated more than this ahead of herald's clock goes to the dead-letter topic
    /// (with its publish and stream entry), since it would stay "newest" over every real event
    /// after it: a year-9999 timestamp would pin the key forever. Default `"1h"`.
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
}

fn default_max_clock_skew() -> Duration {
    herald_sdk::DEFAULT_MAX_CLOCK_SKEW
}

/// `stream = { key = "pipeline:events", max_len = 100000 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Stream key template. Default `"pipeline:events"`.
    #[serde(default = "default_stream_key")]
    pub key: Template,
    /// Trim the stream to about this many entries (`MAXLEN ~`). Default `100000`; `0` never trims.
    #[serde(default = "default_max_len")]
    pub max_len: u64,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(10)
}

fn template(text: &str) -> Template {
    // The defaults are literals checked by the unit test below.
    Template::parse(text).unwrap_or_else(|_| unreachable!("default templates parse"))
}

fn default_channel() -> Template {
    template("pipeline.stage.events")
}

fn default_latest_key() -> Template {
    template("pipeline:status:{source}:{stage}")
}

fn default_stream_key() -> Template {
    template("pipeline:events")
}

fn default_max_len() -> u64 {
    100_000
}

impl RedisSinkConfig {
    /// What [`SinkPlugin::validate`] checks, as this crate's error.
    fn check(&self) -> Result<(), RedisSinkError> {
        if self.publish.is_none() && self.latest_key.is_none() && self.stream.is_none() {
            return Err(RedisSinkError::Config(
                "enable at least one of `publish`, `latest_key`, `stream` (e.g. `publish = {}`)".into(),
            ));
        }
        crate::sink::escapings(self).map(drop)
    }

    /// The sink these settings describe, which [`SinkPlugin::validate`] has checked (the
    /// registry does that once). Connects lazily: a Redis that is down at start is
    /// retried like one that goes down later.
    pub fn sink(&self) -> Result<Box<dyn Sink>, RedisSinkError> {
        Ok(Box::new(RedisSink::new(self)?))
    }
}

/// The settings are the plug-in; the binary registers the kind as
/// `&herald_sdk::Registered::<herald_sink_redis::RedisSinkConfig>::NEW`.
#[async_trait::async_trait]
impl SinkPlugin for RedisSinkConfig {
    const KIND: &'static str = crate::KIND;

    fn fields_named(&self) -> Vec<(&'static str, String)> {
        let templates = [
            self.publish.as_ref().map(|publish| ("publish.channel", &publish.channel)),
            self.latest_key.as_ref().map(|latest| ("latest_key.key", &latest.key)),
            self.stream.as_ref().map(|stream| ("stream.key", &stream.key)),
        ];
        templates
            .into_iter()
            .flatten()
            .flat_map(|(setting, template)| template.fields().map(move |field| (setting, field.to_owned())))
            .collect()
    }

    fn validate(&self) -> Result<(), BoxError> {
        Ok(self.check()?)
    }

    async fn build(&self, _context: SinkContext<'_>) -> Result<Box<dyn Sink>, BoxError> {
        Ok(self.sink()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_at_least_one_output_is_required() {
        let config: RedisSinkConfig =
            serde_json::from_str(r#"{"url":"redis://127.0.0.1","publish":{},"latest_key":{},"stream":{}}"#).unwrap();
        assert_eq!(config.publish.unwrap().channel.as_str(), "pipeline.stage.events");
        assert_eq!(config.latest_key.unwrap().key.as_str(), "pipeline:status:{source}:{stage}");
        assert_eq!(config.stream.unwrap().max_len, 100_000);
        let none: RedisSinkConfig = serde_json::from_str(r#"{"url":"redis://127.0.0.1"}"#).unwrap();
        assert!(none.validate().is_err());
        assert!(serde_json::from_str::<RedisSinkConfig>(r#"{"url":"x","publish":{"channel":"a{b"}}"#).is_err());
    }
}
