//! `herald publish`: the seed's `publish_stage_complete`, from a shell step.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use herald_kafka::{client_config, reliable_producer_config};
use herald_sdk::event::STAGE_COMPLETE;
use herald_sdk::{EventTimestamp, StageEvent};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::Value;

use super::KafkaArgs;

/// How soon a topic the broker does not have fails a publish.
const MISSING_TOPIC_AFTER: Duration = Duration::from_secs(2);

/// Arguments of `herald publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The data source (also the Kafka key), e.g. `OrdersDB`.
    #[arg(long)]
    pub source: String,
    /// The stage that finished, e.g. `bronze_ingest`.
    #[arg(long)]
    pub stage: String,
    /// Records processed.
    #[arg(long)]
    pub records: Option<i64>,
    /// The outcome.
    #[arg(long, default_value = "SUCCESS")]
    pub status: String,
    /// The event name.
    #[arg(long, default_value = STAGE_COMPLETE)]
    pub event: String,
    /// The event time (ISO 8601); default now, in UTC.
    #[arg(long, value_parser = parse_timestamp)]
    pub timestamp: Option<EventTimestamp>,
    /// An extra field, `name=value` (value read as JSON when it parses, else as text). Repeatable.
    #[arg(long = "field", value_name = "NAME=VALUE", value_parser = parse_field)]
    pub fields: Vec<(String, Value)>,
    /// Give up if the broker has not acknowledged within this time.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Use an idempotent producer: no duplicate even if a retry follows a lost acknowledgement,
    /// at ~50 ms more per call (the producer id is asked for first).
    #[arg(long)]
    pub idempotent: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

fn parse_timestamp(text: &str) -> Result<EventTimestamp, String> {
    EventTimestamp::parse(text).map_err(|err| err.to_string())
}

fn parse_field(text: &str) -> Result<(String, Value), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    if ["event", "stage", "source", "records", "timestamp", "status"].contains(&name) {
        return Err(format!("`{name}` has its own flag: --{name}"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}

pub async fn publish(args: PublishArgs) -> Result<ExitCode> {
    let event = StageEvent {
        event: args.event,
        stage: args.stage,
        source: args.source,
        records: args.records,
        timestamp: args.timestamp.unwrap_or_else(EventTimestamp::now),
        status: args.status,
        extra: args.fields.into_iter().collect(),
    };
    let props = args.kafka.properties()?;
    let topic = args.kafka.publish_topic();
    // One message from a short-lived process: `acks=all` (the write is on every in-sync
    // replica before this returns), as the seed's Python producer does. Idempotence costs a
    // round trip for the producer id (see `nudge_producer_id`). It only guards against the
    // duplicate a retry after a lost acknowledgement can write; `--idempotent` asks for it.
    let mut config = if args.idempotent {
        reliable_producer_config(&props)
    } else {
        let mut config = client_config(&props);
        config.set("acks", "all").set("enable.idempotence", "false").set("linger.ms", "0");
        config
    };
    let producer: FutureProducer = config
        .set("message.timeout.ms", args.timeout.as_millis().max(1).to_string())
        // A topic the broker does not have fails the message after this long, not after the
        // whole timeout: librdkafka's default (30 s) allows for a topic still being created.
        .set("topic.metadata.propagation.max.ms", args.timeout.min(MISSING_TOPIC_AFTER).as_millis().max(1).to_string())
        .create()
        .context("cannot create the Kafka producer")?;
    if args.idempotent {
        nudge_producer_id(&producer, &topic, args.timeout);
    }
    let payload = event.to_json();
    let record = FutureRecord::to(&topic).key(event.key()).payload(&payload);
    let delivery = producer.send(record, args.timeout).await.map_err(|(err, _)| {
        let (topic, brokers) = (&topic, props.bootstrap_servers());
        if matches!(
            err.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition)
        ) {
            return anyhow!(
                "topic `{topic}` does not exist at {brokers}; create it with `herald migrate` (for the topics a \
                 herald config writes) or your cluster's tools, e.g. `kafka-topics.sh --bootstrap-server {brokers} \
                 --create --topic {topic}`"
            );
        }
        anyhow!(err).context(format!("publishing to `{topic}` at {brokers} failed"))
    })?;
    println!("{payload}");
    eprintln!("published to {}[{}]@{}", topic, delivery.partition, delivery.offset);
    // The event is acknowledged (`acks=all`) and nothing else was queued: there is nothing left
    // to flush. Tearing the client down would only wait for its threads to wind down (~85 ms of
    // a ~110 ms publish); the process exits without it.
    std::mem::forget(producer);
    Ok(ExitCode::SUCCESS)
}

/// Gets an idempotent producer its producer id as soon as a broker is up. librdkafka asks for
/// the id when the first metadata arrives, which is while the bootstrap connection is being
/// replaced by the broker's own, finds no broker up, and retries on a fixed 500 ms timer; it
/// also asks again on every later metadata answer. A metadata request made now is answered
/// once the broker's own connection is up, and the id is asked for then. On a thread of its
/// own that nothing waits for.
fn nudge_producer_id(producer: &FutureProducer, topic: &str, timeout: Duration) {
    let (producer, topic) = (producer.clone(), topic.to_owned());
    std::thread::spawn(move || {
        use rdkafka::producer::Producer;
        let _ = producer.client().fetch_metadata(Some(&topic), timeout);
    });
}
