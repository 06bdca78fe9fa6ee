//! The HTTP sink: a batch becomes requests, in the batch's order.

use async_trait::async_trait;
use herald_sdk::{Rejection, Sink, SinkError, SinkRecord, WriteOutcome};

use crate::client::Client;
use crate::config::{BodyMode, HttpSinkConfig};
use crate::error::HttpSinkError;

/// POSTs batches; see the crate docs for what each answer means.
pub(crate) struct HttpSink {
    config: HttpSinkConfig,
    client: Client,
}

impl HttpSink {
    pub(crate) fn new(config: HttpSinkConfig, client: Client) -> Self {
        Self { config, client }
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

#[async_trait]
impl Sink for HttpSink {
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        // A webhook has no side-effect-free call: POSTing a probe would deliver a fake event.
        Ok(())
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        let mut outcome = WriteOutcome::default();
        // Requests in first-appearance order of their URL, each with its records in batch order.
        let mut requests: Vec<(String, Vec<usize>)> = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let url = match self.config.url.render(&record.event) {
                Ok(url) => url,
                Err(missing) => {
                    outcome.rejected.push(Rejection { index, error: Box::new(missing) });
                    continue;
                }
            };
            match self.config.body {
                BodyMode::Event => requests.push((url, vec![index])),
                BodyMode::Array => match requests.iter_mut().find(|(existing, _)| *existing == url) {
                    Some((_, indexes)) => indexes.push(index),
                    None => requests.push((url, vec![index])),
                },
            }
        }
        for (url, indexes) in requests {
            let records: Vec<&SinkRecord> = indexes.iter().map(|&index| &batch[index]).collect();
            let body = match self.config.body {
                BodyMode::Event => records.first().map(|record| record.event.to_json()).unwrap_or_default(),
                BodyMode::Array => {
                    let events: Vec<String> = records.iter().map(|record| record.event.to_json()).collect();
                    format!("[{}]", events.join(","))
                }
            };
            match self.client.post(&url, body.into_bytes(), &idempotency_key(&records)).await {
                Ok(()) => {}
                Err(HttpSinkError::Refused { status, excerpt }) => {
                    tracing::warn!(url = %url, status, events = indexes.len(), "The endpoint refused events; they go to the dead-letter topic.");
                    for index in indexes {
                        let error = HttpSinkError::Refused { status, excerpt: excerpt.clone() };
                        outcome.rejected.push(Rejection { index, error: Box::new(error) });
                    }
                }
                // The whole batch is retried: requests already answered are sent again, with
                // the same idempotency keys.
                Err(err) => return Err(err.into()),
            }
        }
        outcome.rejected.sort_by_key(|rejection| rejection.index);
        Ok(outcome)
    }
}
