//! The Redis sink: each batch one pipelined `MULTI`/`EXEC`.

use std::collections::HashMap;

use async_trait::async_trait;
use herald_sdk::{BoxError, Escaping, Rejection, Sink, SinkError, SinkRecord, WriteOutcome};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{cmd, Pipeline};
use secrecy::ExposeSecret;

use crate::config::{LatestKeyConfig, PublishConfig, RedisSinkConfig, StreamConfig};
use crate::error::RedisSinkError;

/// For each pair `KEYS[2i-1]`, `KEYS[2i]` (a latest key and its rank key): sets the key to its
/// event unless the rank key ranks the stored event newer. `ARGV[1]` is a TTL in ms (0 for none),
/// then per pair three values: the event JSON, its event time in µs, its Kafka offset. One call
/// per batch: a script call costs far more than the few commands inside it.
const SET_IF_NEWER: &str = r"
local ttl = tonumber(ARGV[1])
local written = 0
for pair = 0, #KEYS / 2 - 1 do
  local key, rank_key = KEYS[pair * 2 + 1], KEYS[pair * 2 + 2]
  local value, nts, noff = ARGV[pair * 3 + 2], tonumber(ARGV[pair * 3 + 3]), tonumber(ARGV[pair * 3 + 4])
  local newer = true
  local rank = redis.call('GET', rank_key)
  if rank then
    local ts, off = string.match(rank, '^(%-?%d+):(%-?%d+)$')
    ts, off = tonumber(ts), tonumber(off)
    if ts and (nts < ts or (nts == ts and noff < off)) then newer = false end
  end
  if newer then
    local new_rank = ARGV[pair * 3 + 3] .. ':' .. ARGV[pair * 3 + 4]
    if ttl > 0 then
      redis.call('SET', key, value, 'PX', ttl)
      redis.call('SET', rank_key, new_rank, 'PX', ttl)
    else
      redis.call('SET', key, value)
      redis.call('SET', rank_key, new_rank)
    end
    written = written + 1
  end
end
return written
";

/// Most latest keys in one script call, which keeps its argument list modest.
const KEYS_PER_SCRIPT_CALL: usize = 1000;

/// The suffix of the companion key holding the rank of a latest key's event.
pub(crate) const RANK_SUFFIX: &str = "#rank";

pub(crate) struct RedisSink {
    connection: ConnectionManager,
    publish: Option<PublishConfig>,
    latest_key: Option<LatestKeyConfig>,
    stream: Option<StreamConfig>,
    script_sha: String,
    /// How values are written into each template (see [`escapings`]).
    escaping: Escapings,
}

/// The key encoding of each template: in values, `%`, control characters and the punctuation
/// the template itself uses are percent-encoded, so two events share a key, channel or stream
/// only if their values are equal; in latest keys `#` too, so no key can end like another's
/// [`RANK_SUFFIX`].
pub(crate) struct Escapings {
    latest_key: Escaping,
    channel: Escaping,
    stream: Escaping,
}

/// The escapings of `config`'s templates; the error names a template whose fields cannot be
/// told apart.
pub(crate) fn escapings(config: &RedisSinkConfig) -> Result<Escapings, RedisSinkError> {
    let escaping = |template: Option<&herald_sdk::Template>, also: &str, key: &str| match template {
        Some(template) => template.key_escaping(also).map_err(|err| RedisSinkError::Config(format!("`{key}`: {err}"))),
        None => Ok(Escaping::NONE),
    };
    Ok(Escapings {
        latest_key: escaping(config.latest_key.as_ref().map(|c| &c.key), "#", "latest_key.key")?,
        channel: escaping(config.publish.as_ref().map(|c| &c.channel), "", "publish.channel")?,
        stream: escaping(config.stream.as_ref().map(|c| &c.key), "", "stream.key")?,
    })
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
            escaping: escapings(config)?,
        })
    }

    /// One event's rendered templates, or why it cannot be delivered. Rendered all at once, so
    /// an event is written whole or not at all.
    /// A newest-wins key refuses an event dated too far ahead, which would pin it.
    fn render(&self, record: &SinkRecord) -> Result<Rendered, BoxError> {
        let event = &record.event;
        if let Some(config) = &self.latest_key {
            herald_sdk::check_clock_skew(event.instant(), config.max_clock_skew)?;
        }
        let escaping = &self.escaping;
        Ok(Rendered {
            latest_key: self.latest_key.as_ref().map(|c| c.key.render_with(event, &escaping.latest_key)).transpose()?,
            channel: self.publish.as_ref().map(|c| c.channel.render_with(event, &escaping.channel)).transpose()?,
            stream: self.stream.as_ref().map(|c| c.key.render_with(event, &escaping.stream)).transpose()?,
        })
    }

    /// The latest-key updates of a batch: one script call per `KEYS_PER_SCRIPT_CALL` keys. Only
    /// the newest event of each key in the batch is sent (same rank as the script's: event time,
    /// then offset, the later one on a tie), which is what the script would keep anyway.
    fn add_latest_keys(
        &self,
        pipe: &mut Pipeline,
        batch: &[SinkRecord],
        jsons: &[std::borrow::Cow<'_, str>],
        rendered: &[Option<Rendered>],
    ) {
        let Some(config) = &self.latest_key else { return };
        let rank = |index: usize| (batch[index].event.instant().timestamp_micros(), batch[index].offset);
        let mut newest: HashMap<&str, usize> = HashMap::new();
        for (index, item) in rendered.iter().enumerate() {
            let Some(key) = item.as_ref().and_then(|r| r.latest_key.as_deref()) else { continue };
            newest
                .entry(key)
                .and_modify(|kept| {
                    if rank(index) >= rank(*kept) {
                        *kept = index;
                    }
                })
                .or_insert(index);
        }
        let mut winners: Vec<(&str, usize)> = newest.into_iter().collect();
        winners.sort_unstable_by_key(|&(_, index)| index);
        let ttl_ms = config.ttl.map_or(0, |ttl| ttl.as_millis().max(1));
        for chunk in winners.chunks(KEYS_PER_SCRIPT_CALL) {
            let command = pipe.cmd("EVALSHA").arg(&self.script_sha).arg(chunk.len() * 2);
            for (key, _) in chunk {
                command.arg(*key).arg(format!("{key}{RANK_SUFFIX}"));
            }
            command.arg(ttl_ms.to_string());
            for &(_, index) in chunk {
                let (micros, offset) = rank(index);
                command.arg(jsons[index].as_ref()).arg(micros).arg(offset);
            }
            command.ignore();
        }
    }

    /// One event's publish and stream append.
    fn add_event(&self, pipe: &mut Pipeline, record: &SinkRecord, json: &str, rendered: &Rendered) {
        if let Some(channel) = &rendered.channel {
            pipe.cmd("PUBLISH").arg(channel).arg(json).ignore();
        }
        if let (Some(key), Some(config)) = (&rendered.stream, &self.stream) {
            let command = pipe.cmd("XADD").arg(key);
            if config.max_len > 0 {
                command.arg("MAXLEN").arg("~").arg(config.max_len);
            }
            command
                .arg("*")
                .arg("event")
                .arg(json)
                .arg("topic")
                .arg(&*record.topic)
                .arg("partition")
                .arg(record.partition)
                .arg("offset")
                .arg(record.offset)
                .ignore();
        }
    }
}

/// The rendered templates of one event.
struct Rendered {
    latest_key: Option<String>,
    channel: Option<String>,
    stream: Option<String>,
}

#[async_trait]
impl Sink for RedisSink {
    /// Fields are read only through the record's event accessors, templates and
    /// `json_line`, straight from the payload: the runtime need not parse events.
    fn reads_fields(&self) -> bool {
        false
    }

    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        let _: String = cmd("PING").query_async(&mut self.connection).await.map_err(RedisSinkError::from)?;
        Ok(())
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        let mut outcome = WriteOutcome::all_accepted();
        let jsons: Vec<std::borrow::Cow<'_, str>> = batch.iter().map(SinkRecord::json_line).collect();
        let rendered: Vec<Option<Rendered>> = batch
            .iter()
            .enumerate()
            .map(|(index, record)| match self.render(record) {
                Ok(rendered) => Some(rendered),
                Err(error) => {
                    outcome.rejected.push(Rejection { index, error });
                    None
                }
            })
            .collect();
        // One transaction: the latest keys are updated before any subscriber hears of the batch.
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.add_latest_keys(&mut pipe, batch, &jsons, &rendered);
        for ((record, json), rendered) in batch.iter().zip(&jsons).zip(&rendered) {
            if let Some(rendered) = rendered {
                self.add_event(&mut pipe, record, json, rendered);
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
