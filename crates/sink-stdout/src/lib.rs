/*!
herald-sink-stdout: stage events as JSON lines on standard output (or standard error).

One event per line, the event's JSON as herald re-emits it (unknown fields kept), each batch
written and flushed in one call before the write counts as delivered. Logs go to standard
error, so standard output carries nothing but events and can be piped.

This crate is the template a new sink is copied from: `config.rs` (the typed settings and
`build`), `sink.rs` (the [`herald_sdk::Sink`] impl), `error.rs` (the crate's error type and
whether each error is retriable). Only the config type is exported.
*/
#![deny(missing_docs)]

mod config;
mod error;
mod sink;

pub use config::{OutputStream, StdoutSinkConfig};
pub use error::StdoutSinkError;

/// The `type` that selects this sink in a route's `sink` table.
pub const KIND: &str = "stdout";
