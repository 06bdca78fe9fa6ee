/*!
herald-sink-postgres: stage events into a Postgres status table, exactly once.

Two table situations, both first-class: **greenfield**, where herald owns `pipeline_status`
(one row per event) and `pipeline_status_latest` (the newest event per source and stage, for
pollers), created by embedded sqlx migrations; and **legacy**, an existing table written through
a column mapping, with constant columns and an upsert key.

The one decision to know: **the Kafka offsets live in Postgres, in the same transaction as the
rows.** Each batch locks its partitions' rows in `herald_offsets`, drops events below the stored
offset (already written before a crash or rebalance), writes the rest with one statement per table
(`COPY … FROM STDIN` to append into a plain table, `INSERT … SELECT FROM UNNEST(…)` to upsert or
to write a view) and moves the offsets, then commits. A crash at any instant neither
loses nor duplicates a row, whatever Kafka's own committed offsets say; the row locks also fence
a zombie consumer during a rebalance. A row the table refuses is found by replaying the batch
row by row under savepoints, recorded in `herald_rejections` and handed back for the
dead-letter topic; the rest of the batch is written.

Layout: `config.rs` (settings, validation, table plans), `sink.rs` (the transaction, stored
offsets and rejections; the plug-in), `table.rs` (one table's writer: the catalog check, the
statements, `COPY` in text or binary), `table_side.rs` (`RouteTable`, the table's side of
`herald reconcile`: the latest event per pair read back, what the route wrote and refused, the
repair), `error.rs` (what each error means for the batch; the SQLSTATE reading is herald-pg's).
*/
#![deny(missing_docs)]

mod config;
mod error;
mod sink;
mod table;
mod table_side;

pub use config::{LegacyTableConfig, PostgresSinkConfig, WriteMode};
pub use error::PostgresSinkError;
pub use sink::Setup;
pub use table_side::{NewestRows, Repaired, RouteTable, Written};

/// The `type` that selects this sink in a route's `sink` table.
pub const KIND: &str = "postgres";

/// The `origin` herald writes on greenfield rows that came from Kafka.
pub const ORIGIN_KAFKA: &str = "kafka";
