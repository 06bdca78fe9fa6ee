//! The Redis sink keeps herald's sink promises (herald_sdk::conformance): its latest keys are
//! newest-wins, against the real Redis of `scripts/services up`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use herald_sdk::conformance::{self, Harness, Replay};
use herald_sdk::{BoxError, Sink, SinkError, SinkRecord};
use herald_sink_redis::RedisSinkConfig;
use rand::Rng;
use redis::AsyncCommands;

const URL: &str = "redis://127.0.0.1:6379";

/// Latest keys `<prefix>:<source>:<lane>`: an event without `lane` cannot name its key.
struct RedisHarness {
    prefix: String,
}

impl RedisHarness {
    fn config(&self, url: &str) -> RedisSinkConfig {
        serde_json::from_value(serde_json::json!({
            "url": url,
            "latest_key": { "key": format!("{}:{{source}}:{{lane}}", self.prefix), "ttl": "1h" },
            "connect_timeout": "1s",
            "response_timeout": "1s",
        }))
        .unwrap()
    }
}

#[async_trait]
impl Harness for RedisHarness {
    fn replay(&self) -> Replay {
        Replay::NewestWins
    }

    async fn sink(&mut self) -> Result<Box<dyn Sink>, BoxError> {
        Ok(self.config(URL).sink()?)
    }

    async fn write_unreachable(&mut self, batch: &[SinkRecord]) -> Option<Result<(), SinkError>> {
        Some(match self.config("redis://127.0.0.1:1").sink() {
            Ok(mut sink) => sink.write(batch).await.map(drop),
            Err(err) => Err(err.into()),
        })
    }

    fn refused(&self, mut record: SinkRecord) -> Option<SinkRecord> {
        record.event.edit(|event| drop(event.extra.remove("lane")));
        Some(record)
    }

    async fn delivered(&mut self) -> Result<Vec<i64>, BoxError> {
        let mut redis = redis::Client::open(URL)?.get_multiplexed_async_connection().await.unwrap_or_else(|err| {
            panic!("no Redis at {URL} ({err}): start the test services with `scripts/services up`")
        });
        // Every latest key under the prefix (hostile values make keys of their own), not the
        // rank keys beside them.
        let keys: Vec<String> = redis.keys(format!("{}:*", self.prefix)).await?;
        let mut held = Vec::new();
        for key in keys.iter().filter(|key| !key.ends_with("#rank")) {
            let stored: String = redis.get(key).await?;
            let event: serde_json::Value = serde_json::from_str(&stored)?;
            held.push(event["records"].as_i64().ok_or("no records field")?);
        }
        Ok(held)
    }
}

#[tokio::test]
async fn the_latest_keys_keep_every_promise_newest_wins() {
    let mut harness = RedisHarness { prefix: format!("conf-{}", rand::rng().random_range(0..u64::MAX)) };
    conformance::check(&mut harness).await.unwrap();
}
