//! The HTTP sink: a batch becomes requests; requests become lanes that keep each source's order.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use herald_sdk::printable::{printable, LOG_CHARS};
use herald_sdk::{Escaping, Rejection, Sink, SinkError, SinkRecord, WriteOutcome};

use crate::client::Client;
use crate::config::{BodyFormat, BodyMode, HttpSinkConfig};
use crate::error::HttpSinkError;

/// POSTs batches; see the crate docs for what each answer means.
pub(crate) struct HttpSink {
    config: HttpSinkConfig,
    client: Client,
    /// Values in the URL are URL components.
    escaping: Escaping,
    /// The URL's origin (`https://host:port/`) when the template fixes it: the healthcheck's
    /// default target.
    origin: Option<String>,
}

/// The longest URL a request may have: past this, servers answer 414 or the client cannot
/// make the request at all, so the event is refused before it is sent.
const MAX_URL_BYTES: usize = 16 * 1024;

/// What one lane of requests came to.
#[derive(Default)]
struct LaneResult {
    rejected: Vec<Rejection>,
    /// The records of the request that failed and of the lane's requests after it.
    unfinished: Vec<usize>,
    error: Option<HttpSinkError>,
}

/// `https://host:port/` when the template's text fixes the scheme, host and port.
fn origin_of(template: &herald_sdk::Template) -> Option<String> {
    let source = template.as_str();
    let literal = &source[..source.find('{').unwrap_or(source.len())];
    let host_start = literal.find("://")? + 3;
    let host_end = match literal[host_start..].find(['/', '?', '#']) {
        Some(end) => host_start + end,
        None if literal.len() == source.len() => literal.len(),
        None => return None,
    };
    let url = reqwest::Url::parse(&literal[..host_end]).ok()?;
    Some(format!("{}/", url.origin().ascii_serialization()))
}

/// One request to make: its URL and the indexes of its records in the batch, in batch order.
struct Request {
    url: String,
    indexes: Vec<usize>,
    /// With `body_template`: each record's body, rendered when the request was planned.
    shaped: Vec<String>,
}

impl HttpSink {
    pub(crate) fn new(config: HttpSinkConfig, client: Client) -> Self {
        let origin = origin_of(&config.url);
        Self { config, client, escaping: Escaping::url_component(), origin }
    }

    /// The URL of one record: its values encoded as URL components, and checked to be a URL a
    /// request can be made to. The error refuses the record.
    fn url(&self, record: &SinkRecord) -> Result<String, herald_sdk::BoxError> {
        let url = self.config.url.render_with(&record.event, &self.escaping)?;
        if url.len() > MAX_URL_BYTES {
            let reason = format!("{} bytes long, more than the {MAX_URL_BYTES} a request may have", url.len());
            return Err(Box::new(HttpSinkError::BadUrl { reason }));
        }
        if let Err(err) = reqwest::Url::parse(&url) {
            let reason = format!("not a URL once filled in ({err})");
            return Err(Box::new(HttpSinkError::BadUrl { reason }));
        }
        Ok(url)
    }

    /// The batch's requests in first-appearance order of their URL (`array`) or of their event
    /// (`event`), and the records whose URL cannot be rendered.
    fn plan(&self, batch: &[SinkRecord]) -> (Vec<Request>, Vec<Rejection>) {
        let mut requests: Vec<Request> = Vec::new();
        let mut rejected = Vec::new();
        let mut by_url: HashMap<String, usize> = HashMap::new();
        for (index, record) in batch.iter().enumerate() {
            let shaped = match &self.config.body_template {
                None => None,
                Some(template) => match template.render(&record.event) {
                    Ok(body) => Some(body),
                    Err(error) => {
                        rejected.push(Rejection { index, error: Box::new(error) });
                        continue;
                    }
                },
            };
            let url = match self.url(record) {
                Ok(url) => url,
                Err(error) => {
                    rejected.push(Rejection { index, error });
                    continue;
                }
            };
            let position = match (self.config.body, by_url.get(&url)) {
                (BodyMode::Array, Some(&position)) => position,
                (mode, _) => {
                    if mode == BodyMode::Array {
                        by_url.insert(url.clone(), requests.len());
                    }
                    requests.push(Request { url, indexes: Vec::new(), shaped: Vec::new() });
                    requests.len() - 1
                }
            };
            requests[position].indexes.push(index);
            requests[position].shaped.extend(shaped);
        }
        (requests, rejected)
    }

    /// Requests grouped into lanes that may run side by side: with `concurrency = 1` one lane
    /// (batch order); otherwise one lane per URL (`array`: each holds its events in batch
    /// order) or per source (`event`: a source's events one after another).
    fn lanes(&self, batch: &[SinkRecord], requests: Vec<Request>) -> Vec<Vec<Request>> {
        if self.config.concurrency <= 1 {
            return vec![requests];
        }
        let mut lanes: Vec<Vec<Request>> = Vec::new();
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        for request in requests {
            let key = match self.config.body {
                BodyMode::Array => None,
                BodyMode::Event => request.indexes.first().map(|&index| batch[index].event.source.as_str()),
            };
            match key.and_then(|key| by_key.get(key)) {
                Some(&lane) => lanes[lane].push(request),
                None => {
                    if let Some(key) = key {
                        by_key.insert(key, lanes.len());
                    }
                    lanes.push(vec![request]);
                }
            }
        }
        lanes
    }

    /// The body of one request: its records' bodies as `body_template` shaped them (`shaped`),
    /// or the events as JSON or CloudEvents.
    fn body(&self, records: &[&SinkRecord], shaped: Vec<String>) -> String {
        let one = |record: &SinkRecord| match self.config.format {
            BodyFormat::Json => record.event.to_json(),
            BodyFormat::CloudEvents => cloud_event(record, &self.config.cloudevents_source),
        };
        let mut bodies: Vec<String> = if self.config.body_template.is_some() {
            shaped
        } else {
            records.iter().map(|record| one(record)).collect()
        };
        match self.config.body {
            BodyMode::Event => bodies.pop().unwrap_or_default(),
            BodyMode::Array => format!("[{}]", bodies.join(",")),
        }
    }

    /// Sends a lane's requests one after another. A refusal rejects that request's records and
    /// the lane goes on; any other failure stops the lane, leaving that request's records and
    /// the rest of the lane unfinished (the requests before it are done).
    async fn send_lane(&self, batch: &[SinkRecord], lane: Vec<Request>) -> LaneResult {
        let mut result = LaneResult::default();
        let mut requests = lane.into_iter();
        while let Some(Request { url, indexes, shaped }) = requests.next() {
            let records: Vec<&SinkRecord> = indexes.iter().map(|&index| &batch[index]).collect();
            let body = self.body(&records, shaped);
            match self.client.post(&url, body.into_bytes(), &idempotency_key(&records)).await {
                Ok(()) => {}
                Err(err) if err.is_retriable() => {
                    result.unfinished.extend(indexes);
                    result.unfinished.extend(requests.flat_map(|request| request.indexes));
                    result.error = Some(err);
                    break;
                }
                Err(err) => {
                    tracing::warn!(
                        url = %printable(&url, LOG_CHARS), events = indexes.len(), error = %err,
                        "The endpoint refused events; they go to the dead-letter topic."
                    );
                    let reason = err.to_string();
                    for index in indexes {
                        result.rejected.push(Rejection { index, error: reason.clone().into() });
                    }
                }
            }
        }
        result
    }
}

/// `<topic>-<partition>-<offset>` of the first record, `-<offset>` of the last, and the count:
/// the same records give the same key on every retry and replay.
fn idempotency_key(records: &[&SinkRecord]) -> String {
    match (records.first(), records.last()) {
        (Some(first), Some(last)) => {
            format!("{}-{}-{}-{}-{}", first.topic, first.partition, first.offset, last.offset, records.len())
        }
        _ => String::new(),
    }
}

/// A CloudEvents 1.0 envelope (structured mode) around a stage event.
#[derive(serde::Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    /// The record's Kafka coordinates: a replay repeats the id, so a receiver dedupes on
    /// (`source`, `id`) as the spec intends.
    id: String,
    source: &'a str,
    /// `herald.stage.<event>`, e.g. `herald.stage.STAGE_COMPLETE`.
    #[serde(rename = "type")]
    kind: String,
    /// The stage event's source (its Kafka key).
    subject: &'a str,
    /// The stage event's timestamp in RFC 3339 (a timestamp without offset is UTC).
    time: String,
    datacontenttype: &'static str,
    data: &'a herald_sdk::StageEvent,
}

fn cloud_event(record: &SinkRecord, source: &str) -> String {
    let event = &record.event;
    let envelope = CloudEvent {
        specversion: "1.0",
        id: format!("{}-{}-{}", record.topic, record.partition, record.offset),
        source,
        kind: format!("herald.stage.{}", event.event),
        subject: &event.source,
        time: event.timestamp.instant().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        datacontenttype: "application/json",
        data: event,
    };
    // Strings and a StageEvent (which serializes infallibly) cannot fail to serialize.
    serde_json::to_string(&envelope).unwrap_or_default()
}

#[async_trait]
impl Sink for HttpSink {
    /// POSTing a probe would deliver a fake event: `health_url` is asked instead, or else the
    /// origin answers a `HEAD`.
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        Ok(self.client.health(self.config.health_url.as_deref(), self.origin.as_deref()).await?)
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        let (requests, mut rejected) = self.plan(batch);
        let lanes = self.lanes(batch, requests);
        let this = &*self;
        let mut answers = stream::iter(lanes.into_iter().map(|lane| this.send_lane(batch, lane)))
            .buffer_unordered(this.config.concurrency.max(1));
        let (mut unfinished, mut error) = (Vec::new(), None);
        while let Some(lane) = answers.next().await {
            // Every lane runs to its end or its first failure: what was answered is done, and
            // only the rest is sent again.
            rejected.extend(lane.rejected);
            unfinished.extend(lane.unfinished);
            error = error.or(lane.error);
        }
        rejected.sort_by_key(|rejection| rejection.index);
        match error {
            Some(error) => WriteOutcome::partial(batch.len(), rejected, unfinished, Box::new(error)),
            None => Ok(WriteOutcome { rejected, unfinished: None }),
        }
    }
}
