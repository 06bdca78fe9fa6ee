/*!
herald-sink-redis: stage events into Redis, for listeners, pollers and catch-up readers.

Per route, any combination of three outputs:
- **publish**: `PUBLISH` to a channel templated from event fields (`pipeline.{source}.{stage}`),
  so `PSUBSCRIBE` patterns work. Pub/sub drops messages nobody is listening for.
- **latest key**: `SET` a key (`pipeline:status:{source}:{stage}`) to the event JSON, with an
  optional TTL, for pollers that read keys instead of a table. A Lua script compares the event
  timestamp, then the Kafka offset, with a `<key>#rank` companion key, so an older or replayed
  event never overwrites a newer one.
- **stream**: `XADD` to a stream with approximate `MAXLEN`, so a reader that was offline catches up.

The one decision to know: **a batch is one `MULTI`/`EXEC` transaction, pipelined in one round
trip**: it applies whole or not at all, and within it each event's key update runs before its
`PUBLISH`, so a subscriber that sees the message finds the key already updated. Delivery is
at-least-once: if the connection dies after `EXEC` ran but before its reply, the retry publishes
those events again (stream entries carry `topic`/`partition`/`offset` for readers that dedupe);
keys are unaffected thanks to the rank check.

Layout: `config.rs` (settings), `sink.rs` (the batch), `error.rs` (retry classification).
*/
#![deny(missing_docs)]

mod config;
mod error;
mod sink;

pub use config::{LatestKeyConfig, PublishConfig, RedisSinkConfig, StreamConfig};
pub use error::RedisSinkError;

/// The `type` that selects this sink in a route's `sink` table.
pub const KIND: &str = "redis";
