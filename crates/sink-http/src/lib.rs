/*!
herald-sink-http: stage events POSTed to an HTTP endpoint — a webhook receiver, an internal
service, a chat or paging tool's incoming hook.

Each batch goes out as one JSON array per URL (`body = "array"`, the default) or one request per
event (`body = "event"`), in the batch's order, so each source's events arrive in order. The URL
is a template over event fields (`https://hooks.example/{source}`); headers come from the config
(with `${ENV}` secrets); an optional HMAC-SHA256 signature of the body lets the receiver verify
herald, as GitHub and Stripe webhooks do. Bodies are the events as JSON, CloudEvents 1.0
envelopes (`format = "cloudevents"`), or the receiver's own shape (`body_template`); `ca_file` adds a private CA to the system's roots;
`concurrency = N` puts up to N requests in flight, one lane per source (or per URL) so each
source's order holds.

The one decision to know: **the status code decides.** 2xx: delivered. 429, 5xx, a timeout or a
connection failure: retried (after the `Retry-After` the receiver asked for, up to a minute).
Any other 4xx: the receiver will never take these events, so they go to the dead-letter topic
with the status and the start of the response body. Every request carries an
`Idempotency-Key` from the Kafka coordinates, so a receiver can drop the duplicates a retry or a
replay sends (the sink is at least once).

Layout: `config.rs` (settings, `build`, the plug-in), `shape.rs` (`body_template`), `sink.rs` (batches into requests),
`client.rs` (the client, its TLS roots, one request, its signature and what its answer means), `error.rs`.
*/
#![deny(missing_docs)]

mod client;
mod config;
mod error;
mod shape;
mod sink;

pub use config::{BodyFormat, BodyMode, FollowRedirects, HttpSinkConfig};
pub use error::HttpSinkError;
pub use shape::BodyTemplate;

/// The `type` that selects this sink in a route's `sink` table.
pub const KIND: &str = "http";
