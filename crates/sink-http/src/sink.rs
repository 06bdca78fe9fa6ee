//! The HTTP sink: a batch becomes requests; requests become lanes that keep each source's order.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use herald_sdk::{Rejection, Sink, SinkError, SinkRecord, WriteOutcome};

use crate::client::Client;
use crate::config::{BodyFormat, BodyMode, HttpSinkConfig};
use crate::error::HttpSinkError;

/// POSTs batches; see the crate docs for what each answer means.
pub(crate) struct HttpSink {
    config: HttpSinkConfig,
    client: Client,
}

/// One request to make: its URL and the indexes of its records in the batch, in batch order.
struct Request {
    url: String,
    indexes: Vec<usize>,
}

impl HttpSink {
    pub(crate) fn new(config: HttpSinkConfig, client: Client) -> Self {
        Self { config, client }
    }

    /// The batch's requests in first-appearance order of their URL (`array`) or of their event
    /// (`event`), and the records whose URL cannot be rendered.
    fn plan(&self, batch: &[SinkRecord]) -> (Vec<Request>, Vec<Rejection>) {
        let mut requests: Vec<Request> = Vec::new();
        let mut rejected = Vec::new();
        let mut by_url: HashMap<String, usize> = HashMap::new();
        for (index, record) in batch.iter().enumerate() {
            let url = match self.config.url.render(&record.event) {
                Ok(url) => url,
                Err(missing) => {
                    rejected.push(Rejection { index, error: Box::new(missing) });
                    continue;
                }
            };
            match self.config.body {
                BodyMode::Event => requests.push(Request { url, indexes: vec![index] }),
                BodyMode::Array => match by_url.get(&url) {
                    Some(&position) => requests[position].indexes.push(index),
                    None => {
                        by_url.insert(url.clone(), requests.len());
                        requests.push(Request { url, indexes: vec![index] });
                    }
                },
            }
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

    /// The body of one request.
    fn body(&self, records: &[&SinkRecord]) -> String {
        let one = |record: &SinkRecord| match self.config.format {
            BodyFormat::Json => record.event.to_json(),
            BodyFormat::CloudEvents => cloud_event(record, &self.config.cloudevents_source),
        };
        match self.config.body {
            BodyMode::Event => records.first().map(|record| one(record)).unwrap_or_default(),
            BodyMode::Array => {
                let events: Vec<String> = records.iter().map(|record| one(record)).collect();
                format!("[{}]", events.join(","))
            }
        }
    }

    /// Sends a lane's requests one after another. A refusal rejects that request's records and
    /// the lane goes on; any other failure stops the lane (and the batch is retried).
    async fn send_lane(&self, batch: &[SinkRecord], lane: Vec<Request>) -> Result<Vec<Rejection>, HttpSinkError> {
        let mut rejected = Vec::new();
        for Request { url, indexes } in lane {
            let records: Vec<&SinkRecord> = indexes.iter().map(|&index| &batch[index]).collect();
            let body = self.body(&records);
            match self.client.post(&url, body.into_bytes(), &idempotency_key(&records)).await {
                Ok(()) => {}
                Err(HttpSinkError::Refused { status, excerpt }) => {
                    tracing::warn!(url = %url, status, events = indexes.len(), "The endpoint refused events; they go to the dead-letter topic.");
                    for index in indexes {
                        let error = HttpSinkError::Refused { status, excerpt: excerpt.clone() };
                        rejected.push(Rejection { index, error: Box::new(error) });
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(rejected)
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
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        // A webhook has no side-effect-free call: POSTing a probe would deliver a fake event.
        Ok(())
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        let (requests, mut rejected) = self.plan(batch);
        let lanes = self.lanes(batch, requests);
        let this = &*self;
        let mut answers = stream::iter(lanes.into_iter().map(|lane| this.send_lane(batch, lane)))
            .buffer_unordered(this.config.concurrency.max(1));
        while let Some(answer) = answers.next().await {
            // The whole batch is retried: requests already answered are sent again, with the
            // same idempotency keys. Dropping `answers` abandons the lanes still in flight.
            rejected.extend(answer?);
        }
        rejected.sort_by_key(|rejection| rejection.index);
        Ok(WriteOutcome { rejected, unfinished: None })
    }
}
