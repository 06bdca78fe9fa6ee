//! Helpers of the Postgres source's end-to-end tests (both capture modes).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::*;

pub const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

pub async fn pool() -> PgPool {
    PgPoolOptions::new().max_connections(4).connect(URL).await.unwrap_or_else(|err| {
        panic!("no Postgres at {URL} ({err}): start the test services with `scripts/services up`")
    })
}

/// A greenfield schema of the test's own (herald migrate creates the tables), and its name.
pub async fn greenfield(pool: &PgPool) -> String {
    let schema = unique("src").replace('-', "_");
    let config = TempConfig::new(&format!(
        "[[route]]\nname = \"m\"\ntopics = [\"x\"]\n[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\n"
    ));
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = pool;
    schema
}

pub fn source_config(name: &str, schema: &str, topic: &str, extra: &str) -> String {
    format!(
        r#"
{kafka}

[[source]]
name = "{name}"
type = "postgres"
url = "{URL}"
schema = "{schema}"
topic = "{topic}"
offsets_topic = "{topic}.offsets"
poll_interval = "1s"
{extra}
"#,
        kafka = kafka_section()
    )
}

pub async fn insert(pool: &PgPool, schema: &str, source: &str, stage: &str, status: &str, records: i64) {
    sqlx::query(&format!("INSERT INTO {schema}.pipeline_status (event, stage, source, records, status) VALUES ('STAGE_COMPLETE', $1, $2, $3, $4)"))
        .bind(stage)
        .bind(source)
        .bind(records)
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
}

/// Reads `topic` with `read_committed` until `count` messages arrived, then a little longer to
/// catch any extra.
pub fn read_committed(topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut messages = Vec::new();
    let mut quiet_since = None;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(result) => {
                messages.push(result.unwrap().detach());
                quiet_since = None;
            }
            None if messages.len() >= count => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    return messages;
                }
            }
            None => {}
        }
        assert!(Instant::now() < deadline, "only {} of {count} messages on {topic}", messages.len());
    }
}

pub fn json(message: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(message.payload().unwrap()).unwrap()
}
