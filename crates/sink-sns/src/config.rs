//! Settings of the SNS sink, and the client they make.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sns::config::Credentials;
use herald_sdk::{BoxError, Sink, SinkContext, SinkPlugin, Template};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::error::SnsSinkError;
use crate::sink::SnsSink;

/// `sink = { type = "sns", topic_arn = "arn:aws:sns:…", … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnsSinkConfig {
    /// The topic every event goes to, unless `topic_by` picks another. Required unless
    /// `topic_by` maps every value it meets. A name ending in `.fifo` is a FIFO topic.
    #[serde(default)]
    pub topic_arn: Option<String>,
    /// Choose the topic per event from a field, e.g.
    /// `{ field = "source", topics = { OrdersDB = "arn:…:orders" } }`; other values go to `topic_arn`.
    #[serde(default)]
    pub topic_by: Option<TopicRouting>,
    /// AWS region. Default: from the environment (`AWS_REGION`, profile), else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override, e.g. `"http://127.0.0.1:4566"` for the local emulator or LocalStack.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Static credentials (e.g. for an emulator). Default: the AWS default credential chain
    /// (environment, profile, web identity, container or instance role). Never printed.
    #[serde(default)]
    pub access_key_id: Option<SecretString>,
    /// The secret for `access_key_id`. Never printed.
    #[serde(default)]
    pub secret_access_key: Option<SecretString>,
    /// Message body template. Default: the event JSON.
    #[serde(default)]
    pub message: Option<Template>,
    /// Subject template (for email subscribers), e.g. `"{stage} of {source}: {status}"`.
    /// Default: none.
    #[serde(default)]
    pub subject: Option<Template>,
    /// Message attributes: event field → `"String"` or `"Number"`. Default: `event`, `source`,
    /// `stage`, `status` as `String`. An event lacking a field simply lacks that attribute.
    #[serde(default = "default_attributes")]
    pub attributes: BTreeMap<String, AttributeType>,
    /// Give up on one SNS call after this long (and retry). Default `"10s"`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Routes events to topics by the value of one field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRouting {
    /// The event field whose value picks the topic.
    pub field: String,
    /// Field value → topic ARN.
    pub topics: BTreeMap<String, String>,
}

/// The SNS data type of a message attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AttributeType {
    /// Text; filter policies match exact values and prefixes.
    String,
    /// A number; filter policies can match ranges.
    Number,
}

impl AttributeType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AttributeType::String => "String",
            AttributeType::Number => "Number",
        }
    }
}

fn default_attributes() -> BTreeMap<String, AttributeType> {
    ["event", "source", "stage", "status"].into_iter().map(|name| (name.to_owned(), AttributeType::String)).collect()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl SnsSinkConfig {
    /// Checks the settings without calling AWS.
    fn check(&self) -> Result<(), SnsSinkError> {
        let invalid = |reason: &str| Err(SnsSinkError::Config(reason.to_owned()));
        match (&self.topic_arn, &self.topic_by) {
            (None, None) => return invalid("set `topic_arn`, `topic_by`, or both"),
            (_, Some(routing)) if routing.topics.is_empty() => return invalid("`topic_by.topics` maps no value"),
            _ => {}
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return invalid("`access_key_id` and `secret_access_key` go together");
        }
        for arn in self.topics() {
            if !arn.starts_with("arn:") || arn.split(':').count() != 6 {
                return Err(SnsSinkError::Config(format!(
                    "`{arn}` is not a topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
                )));
            }
        }
        if self.attributes.len() > 10 {
            return invalid("SNS allows at most 10 message attributes");
        }
        Ok(())
    }

    /// Every topic the settings name.
    pub fn topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = self.topic_arn.iter().map(String::as_str).collect();
        if let Some(routing) = &self.topic_by {
            topics.extend(routing.topics.values().map(String::as_str));
        }
        topics.sort_unstable();
        topics.dedup();
        topics
    }

    /// The SNS client these settings describe.
    pub(crate) async fn client(&self) -> aws_sdk_sns::Client {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder().operation_timeout(self.timeout).connect_timeout(Duration::from_secs(3)).build(),
        );
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(key), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                key.expose_secret(),
                secret.expose_secret(),
                None,
                None,
                "herald-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_sns::config::Builder::from(&shared);
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        aws_sdk_sns::Client::from_conf(builder.build())
    }

    /// The sink these settings describe, which [`SinkPlugin::validate`] has checked (the
    /// registry does that once).
    pub async fn sink(&self) -> Result<Box<dyn Sink>, SnsSinkError> {
        Ok(Box::new(SnsSink::new(self.clone(), self.client().await)))
    }
}

/// The settings are the plug-in; the binary registers the kind as
/// `&herald_sdk::Registered::<herald_sink_sns::SnsSinkConfig>::NEW`.
#[async_trait::async_trait]
impl SinkPlugin for SnsSinkConfig {
    const KIND: &'static str = crate::KIND;

    fn fields_named(&self) -> Vec<(&'static str, String)> {
        let templates = [self.message.as_ref().map(|t| ("message", t)), self.subject.as_ref().map(|t| ("subject", t))];
        let mut fields: Vec<(&'static str, String)> = templates
            .into_iter()
            .flatten()
            .flat_map(|(setting, template)| template.fields().map(move |field| (setting, field.to_owned())))
            .collect();
        fields.extend(self.attributes.keys().map(|field| ("attributes", field.clone())));
        fields.extend(self.topic_by.iter().map(|routing| ("topic_by.field", routing.field.clone())));
        fields
    }

    fn validate(&self) -> Result<(), BoxError> {
        Ok(self.check()?)
    }

    async fn build(&self, _context: SinkContext<'_>) -> Result<Box<dyn Sink>, BoxError> {
        Ok(self.sink().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let config: SnsSinkConfig =
            serde_json::from_str(r#"{"topic_arn":"arn:aws:sns:us-east-1:000000000000:events"}"#).unwrap();
        config.validate().unwrap();
        assert_eq!(config.attributes.keys().collect::<Vec<_>>(), ["event", "source", "stage", "status"]);
        let bad = [
            r#"{}"#,
            r#"{"topic_arn":"events"}"#,
            r#"{"topic_arn":"arn:aws:sns:us-east-1:0:a","access_key_id":"x"}"#,
            r#"{"topic_by":{"field":"source","topics":{}}}"#,
        ];
        for text in bad {
            assert!(serde_json::from_str::<SnsSinkConfig>(text).unwrap().validate().is_err(), "{text}");
        }
        assert!(serde_json::from_str::<SnsSinkConfig>(r#"{"topic_arn":"a","attributes":{"x":"Binary"}}"#).is_err());
    }
}
