/*!
herald-sink-sns: stage events to AWS SNS topics, for cloud functions and queues that subscribe.

Each event becomes one SNS message: the event JSON (or a template) as the body, an optional
subject, and **message attributes** from event fields (`event`, `source`, `stage`, `status` by
default) so subscribers can filter with SNS filter policies. The topic is fixed per route or
chosen per event from a field. Batches go out with `PublishBatch` (≤ 10 entries, ≤ 256 KiB).

The one decision to know: **FIFO topics get a `MessageDeduplicationId` derived from the Kafka
topic, partition and offset** (and `MessageGroupId` = the Kafka key, the source), so a batch
re-sent after a crash or a retry is dropped by SNS inside its 5-minute deduplication window —
where an id minted per attempt would change on every retry. Standard topics are at-least-once.

Layout: `config.rs` (settings, client; the plug-in), `sink.rs` (batching, partial failures,
what SNS would refuse), `classify.rs` (which SDK errors are retriable, the entry's fault or
fatal), `error.rs`.
*/
#![deny(missing_docs)]

mod classify;
mod config;
mod error;
mod sink;

pub use config::{AttributeType, SnsSinkConfig, TopicRouting};
pub use error::SnsSinkError;

/// The `type` that selects this sink in a route's `sink` table.
pub const KIND: &str = "sns";
