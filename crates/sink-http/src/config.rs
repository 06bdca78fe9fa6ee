//! Settings of the HTTP sink.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use herald_sdk::{BoxError, Sink, SinkContext, SinkPlugin, Template};
use secrecy::SecretString;
use serde::Deserialize;

use crate::client::Client;
use crate::error::HttpSinkError;
use crate::shape::BodyTemplate;
use crate::sink::HttpSink;

/// `sink = { type = "http", url = "https://hooks.example/{source}", … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where to POST, a template over event fields, e.g. `"https://hooks.example/stages/{source}"`.
    /// Each value is percent-encoded as one URL component (a `/`, `?`, `&` or `#` in a value
    /// never adds a segment or a parameter). An event missing a field the URL needs, with a
    /// value of `.` or `..`, or whose URL is longer than 16 KiB goes to the dead-letter topic.
    pub url: Template,
    /// A URL herald GETs to check the endpoint is up (`herald check`, and before giving up a
    /// record that keeps failing alone): 2xx means up. Default: a `HEAD` of the URL's origin
    /// (`https://hooks.example/`), where any answer but 429 or 5xx means up.
    #[serde(default)]
    pub health_url: Option<String>,
    /// Redirects: `"none"` (default): a 3xx answer is not followed and the events go to the
    /// dead-letter topic with it, since following would send them elsewhere than configured;
    /// `"same_origin"`: a 307 or 308 to the same scheme, host and port is followed, with the
    /// same method and body. 301, 302 and 303 are never followed: the client would re-send the
    /// POST as a GET without its body, and the events would count as delivered.
    #[serde(default)]
    pub follow_redirects: FollowRedirects,
    /// `"array"` (default): one request per URL per batch, its body a JSON array of the events;
    /// `"event"`: one request per event, its body the event.
    #[serde(default)]
    pub body: BodyMode,
    /// Extra request headers, e.g. `{ Authorization = "Bearer ${HOOK_TOKEN}" }` (the config
    /// loader fills `${…}` from the environment). Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sign each body with HMAC-SHA256 under this secret, in `signature_header` as
    /// `sha256=<hex>`, so the receiver can check the request came from herald. Default: unsigned.
    #[serde(default)]
    pub hmac_secret: Option<SecretString>,
    /// The signature's header. Default `"X-Herald-Signature"`.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Longest wait for an answer before the request counts as failed (and is retried).
    /// Default `"10s"`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The body in the receiver's own shape: a table whose strings are `{field}` templates, e.g.
    /// `{ asset_id = 7, extra = { source = "{source}", records = "{records}" } }` for Airflow's
    /// asset events. A string that is exactly one field takes that field's JSON value (a number
    /// stays a number); any other string stays a string; the structure is the table's whatever
    /// the values hold. An event missing a field it names goes to the dead-letter topic. With
    /// `body = "array"` the body is an array of these. Default: the stage event itself.
    #[serde(default)]
    pub body_template: Option<BodyTemplate>,
    /// `"json"` (default): the body is the stage event (or an array of them) as JSON;
    /// `"cloudevents"`: each event is wrapped in a CloudEvents 1.0 envelope, structured mode
    /// (`application/cloudevents+json`, or `application/cloudevents-batch+json` for an array).
    #[serde(default)]
    pub format: BodyFormat,
    /// The CloudEvents `source` attribute, a URI reference naming this producer. Default `"herald"`.
    #[serde(default = "default_cloudevents_source")]
    pub cloudevents_source: String,
    /// A PEM file of CA certificates trusted besides the system's roots, for endpoints with a
    /// private CA. Default: the system's roots only.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How many requests may be in flight at once; events of one source (the Kafka key) still
    /// go one request after another, in order. Default 1: every request in batch order.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// What a request's body looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// The stage event as it is.
    #[default]
    Json,
    /// A CloudEvents 1.0 envelope with the stage event as its `data`.
    CloudEvents,
}

/// Which redirects the sink follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowRedirects {
    /// None: a 3xx answer dead-letters the events.
    #[default]
    None,
    /// 307 and 308 within the same origin.
    SameOrigin,
}

/// The most requests a route may have in flight.
const MAX_CONCURRENCY: usize = 256;

/// How events become request bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyMode {
    /// One request per URL per batch: a JSON array.
    #[default]
    Array,
    /// One request per event.
    Event,
}

fn default_signature_header() -> String {
    "X-Herald-Signature".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_cloudevents_source() -> String {
    "herald".into()
}

fn default_concurrency() -> usize {
    1
}

impl HttpSinkConfig {
    /// What [`SinkPlugin::validate`] checks, as this crate's error.
    fn check(&self) -> Result<(), HttpSinkError> {
        for name in self.headers.keys().chain(std::iter::once(&self.signature_header)) {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(HttpSinkError::Config { key: "headers", reason: format!("`{name}` is not a header name") });
            }
        }
        if self.timeout.is_zero() {
            return Err(HttpSinkError::Config { key: "timeout", reason: "must be greater than zero".into() });
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(HttpSinkError::Config {
                key: "concurrency",
                reason: format!("must be between 1 and {MAX_CONCURRENCY}, not {}", self.concurrency),
            });
        }
        if self.body_template.is_some() && self.format == BodyFormat::CloudEvents {
            return Err(HttpSinkError::Config {
                key: "body_template",
                reason: "shapes the body itself: leave `format` at \"json\"".into(),
            });
        }
        if self.cloudevents_source.is_empty() {
            return Err(HttpSinkError::Config { key: "cloudevents_source", reason: "must not be empty".into() });
        }
        if let Some(path) = &self.ca_file {
            crate::client::read_ca_file(path)?;
        }
        if let Some(health) = &self.health_url {
            reqwest::Url::parse(health)
                .map_err(|err| HttpSinkError::Config { key: "health_url", reason: format!("`{health}`: {err}") })?;
        }
        Ok(())
    }

    /// The sink these settings describe, which [`SinkPlugin::validate`] has checked (the
    /// registry does that once): builds the client, reading `ca_file`.
    pub fn sink(&self) -> Result<Box<dyn Sink>, HttpSinkError> {
        Ok(Box::new(HttpSink::new(self.clone(), Client::new(self)?)))
    }
}

/// The settings are the plug-in; the binary registers the kind as
/// `&herald_sdk::Registered::<herald_sink_http::HttpSinkConfig>::NEW`.
#[async_trait::async_trait]
impl SinkPlugin for HttpSinkConfig {
    const KIND: &'static str = crate::KIND;

    fn fields_named(&self) -> Vec<(&'static str, String)> {
        let body = self.body_template.iter().flat_map(BodyTemplate::fields).map(|field| ("body_template", field));
        self.url.fields().map(|field| ("url", field.to_owned())).chain(body).collect()
    }

    /// Checks the settings without connecting; reads `ca_file` to check it is a PEM bundle.
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
    fn defaults_and_bad_settings() {
        let config: HttpSinkConfig = serde_json::from_str(r#"{"url": "http://h/{source}"}"#).unwrap();
        assert_eq!(config.body, BodyMode::Array);
        assert_eq!(config.signature_header, "X-Herald-Signature");
        SinkPlugin::validate(&config).unwrap();
        let bad: HttpSinkConfig =
            serde_json::from_str(r#"{"url": "http://h/", "headers": {"bad header": "x"}}"#).unwrap();
        assert!(SinkPlugin::validate(&bad).unwrap_err().to_string().contains("bad header"));
        assert!(serde_json::from_str::<HttpSinkConfig>(r#"{"url": "http://h/", "verb": "PUT"}"#).is_err());
        assert!(serde_json::from_str::<HttpSinkConfig>(r#"{"url": "http://h/{unclosed"}"#).is_err());
    }
}
