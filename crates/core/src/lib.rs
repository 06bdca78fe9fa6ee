/*!
herald-core: the route runtime, the Kafka consumer loop that drives sinks.

herald moves *stage events* — the small JSON messages pipeline stages publish to Kafka when they
finish a unit of work — to systems that cannot read Kafka. This crate is the runtime that does
it for each `[[route]]`, and the contract sources are written against. The event model and the
`Sink` trait are herald-sdk's, and only there (`herald_sdk::StageEvent`, `herald_sdk::Sink`):
sink crates, the board and expectations need not build librdkafka or depend on this crate.

The one decision to know: **offsets advance only after the sink has the data.** Each route reads
with `enable.auto.offset.store=false`; a batch's offsets are stored only once `Sink::write`
returned `Ok` and its dead letters were acknowledged, so a crash at any instant re-delivers rather
than loses (at-least-once). Sinks that can store offsets with the data do better.

# Layout
- [`config`]: `[runtime]` and `[[route]]`, and their validation.
- [`changes`]: what a reload changes among routes and sources, decided without I/O.
- [`filter`]: which events a route delivers.
- [`dlq`]: the dead-letter topic and its Kafka Connect headers.
- [`runtime`]: [`run`], every route at work until shutdown.
- [`source`]: the [`source::Source`] plug-in contract, for sources that publish to Kafka.
- [`observe`]: Prometheus metrics and each route's live state, for the admin API.
- [`tap`]: each message a route handles and its outcome, for whoever watches.
- `route`: one route's consume → sink → commit loop (its own layout in `route/mod.rs`).

# Where each concept lives
One home per concept, in the lowest crate that needs it:
- the stage event, the `Sink` contract, templates and value encodings, printable values, the
  next offset of each partition: **herald-sdk**;
- Kafka plumbing (client properties, topics, the group-less topic reader, the rebalance tracker,
  the transactional producer, header names): **herald-kafka**;
- reading the configuration file: **herald-config**; each section lives with the feature that
  reads it (`[[route]]` and `[runtime]` here, `[admin]`, `[board]`, expectations in their
  crates), and the binary composes them;
- identifiers, SQLSTATEs and DDL under `lock_timeout`: **herald-pg**;
- settling batches, retries and poison isolation, dead letters, resuming from a sink's offsets:
  here, in `route/`;
- comparing a status table with a topic: **herald-reconcile** (each side's reads with its owner,
  the comparison of two boards in herald-board).
*/
#![deny(missing_docs)]

pub mod changes;
pub mod config;
pub mod dlq;
pub mod error;
pub mod filter;
pub mod observe;
mod route;
pub mod runtime;
pub mod source;
pub mod source_runtime;
pub mod tap;

pub use config::{Only, RouteConfig, RuntimeConfig, SinkSpec};
pub use error::{RouteError, RuntimeError};
pub use filter::Filter;
pub use observe::Observer;
pub use runtime::{run, BoundRoute, RouteChanges};
pub use source::SourceSpec;
pub use source_runtime::{run_sources, NamedSource, SourceChanges, SourceRunError};
