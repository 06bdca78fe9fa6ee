//! The Redis sink: each batch one pipelined `MULTI`/`EXEC`.

use async_trait::async_trait;
use herald_core::{Rejection, Sink, SinkError, SinkRecord, WriteOutcome};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{cmd, Pipeline};
use secrecy::ExposeSecret;

use crate::config::{LatestKeyConfig, PublishConfig, RedisSinkConfig, StreamConfig};
use crate::error::RedisSinkError;

/// Sets `KEYS[1]` to `ARGV[1]` unless `KEYS[2]` ranks the stored event newer than this one
/// (`ARGV[2]` event time in µs, then `ARGV[3]` Kafka offset); `ARGV[4]` is a TTL in ms, 0 for none.
const SET_IF_NEWER: &str = r"
local rank = redis.call('GET', KEYS[2])
if rank then
  local ts, off = string.match(rank, '^(%-?%d+):(%-?%d+)$')
  local nts, noff = tonumber(ARGV[2]), tonumber(ARGV[3])
  ts, off = tonumber(ts), tonumber(off)
  if ts and (nts < ts or (nts == ts and noff < off)) then return 0 end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  redis.call('SET', KEYS[2], ARGV[2] .. ':' .. ARGV[3], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2] .. ':' .. ARGV[3])
end
return 1
";

/// The suffix of the companion key holding the rank of a latest key's event.
pub(crate) const RANK_SUFFIX: &str = "#rank";

pub(crate) struct RedisSink {
    connection: ConnectionManager,
    publish: Option<PublishConfig>,
    latest_key: Option<LatestKeyConfig>,
    stream: Option<StreamConfig>,
    script_sha: String,
}

impl RedisSink {
    pub(crate) fn new(config: &RedisSinkConfig) -> Result<Self, RedisSinkError> {
        let client = redis::Client::open(config.url.expose_secret()).map_err(RedisSinkError::Url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Self {
            connection,
            publish: config.publish.clone(),
            latest_key: config.latest_key.clone(),
            stream: config.stream.clone(),
            script_sha: redis::Script::new(SET_IF_NEWER).get_hash().to_owned(),
        })
    }

    /// Adds one event's commands to the transaction, or says why it cannot be delivered.
    fn add_event(
        &self,
        pipe: &mut Pipeline,
        record: &SinkRecord,
        json: &str,
    ) -> Result<(), herald_core::template::MissingField> {
        // Render every template first, so an event is added whole or not at all.
        let latest = self.latest_key.as_ref().map(|c| c.key.render(&record.event)).transpose()?;
        let channel = self.publish.as_ref().map(|c| c.channel.render(&record.event)).transpose()?;
        let stream = self.stream.as_ref().map(|c| c.key.render(&record.event)).transpose()?;
        if let (Some(key), Some(config)) = (latest, &self.latest_key) {
            let ttl_ms = config.ttl.map_or(0, |ttl| ttl.as_millis().max(1));
            pipe.cmd("EVALSHA")
                .arg(&self.script_sha)
                .arg(2)
                .arg(&key)
                .arg(format!("{key}{RANK_SUFFIX}"))
                .arg(json)
                .arg(record.event.timestamp.instant().timestamp_micros())
                .arg(record.offset)
                .arg(ttl_ms.to_string())
                .ignore();
        }
        if let Some(channel) = channel {
            pipe.cmd("PUBLISH").arg(channel).arg(json).ignore();
        }
        if let (Some(key), Some(config)) = (stream, &self.stream) {
            let command = pipe.cmd("XADD").arg(key);
            if config.max_len > 0 {
                command.arg("MAXLEN").arg("~").arg(config.max_len);
            }
            command
                .arg("*")
                .arg("event")
                .arg(json)
                .arg("topic")
                .arg(&record.topic)
                .arg("partition")
                .arg(record.partition)
                .arg("offset")
                .arg(record.offset)
                .ignore();
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        let _: String = cmd("PING").query_async(&mut self.connection).await.map_err(RedisSinkError::from)?;
        Ok(())
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        let mut outcome = WriteOutcome::all_accepted();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (index, record) in batch.iter().enumerate() {
            let json = record.event.to_json();
            if let Err(missing) = self.add_event(&mut pipe, record, &json) {
                outcome.rejected.push(Rejection { index, error: Box::new(missing) });
            }
        }
        if outcome.rejected.len() == batch.len() {
            return Ok(outcome);
        }
        if self.latest_key.is_some() {
            // Loaded before every batch: a restarted Redis has forgotten it, and this costs one
            // short round trip. A restart between the two drops the connection, failing EXEC.
            let _: String = cmd("SCRIPT")
                .arg("LOAD")
                .arg(SET_IF_NEWER)
                .query_async(&mut self.connection)
                .await
                .map_err(RedisSinkError::from)?;
        }
        let () = pipe.query_async(&mut self.connection).await.map_err(RedisSinkError::from)?;
        Ok(outcome)
    }
}
