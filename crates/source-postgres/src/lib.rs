/*!
herald-source-postgres: inserts and updates of a Postgres status table become Kafka stage events.

Legacy producers keep writing status rows (a `RUNNING` row, later updated to `SUCCESS`); Kafka
consumers see them as ordinary stage events within milliseconds, keyed and shaped as
`herald publish` writes them, with a `herald.origin` header naming the table.

The decisions to know:
- **Capture**: statement-level triggers record each statement's inserted or updated rows in
  `herald_changes` (chunks of up to 100 rows, published whole) with the id of its transaction,
  and `pg_notify`; herald `LISTEN`s, and also catches up from its cursor on
  start, after a lost connection and on a slow safety interval.
- **No row missed**: an id or timestamp cursor misses rows whose transactions commit out of
  order. herald reads only changes of transactions older than the snapshot's `xmin` (no
  transaction still running can add one before them), in (txid, id) order.
- **Exactly once into Kafka**: each batch of events and the cursor after it (a record on a
  compacted offsets topic) commit in one Kafka transaction; on start herald reads the cursor back
  with `read_committed`. A SIGKILL mid-transaction leaves nothing visible and nothing skipped.
- **One active publisher**: instances take a Postgres advisory lock per source; standbys poll for
  it and take over within about a second when the active one dies. `init_transactions` on the
  same transactional id fences a zombie.
- **No loops**: rows herald's sink wrote (`origin = 'kafka'`, or the configured marker) are not
  published; and the sink does not write back events whose `herald.origin` is its own table.

# Layout
- `plugin.rs`: the `Source` the binary registers (the settings type is the plug-in).
- `config.rs`: the settings and the plan they make (table, mapping, skip rule).
- `instance.rs`: `PostgresSource`, one configured source as a value (name, settings, plan).
- `source.rs`: the loop: standby until the lock is held, then capture, publish, repeat; the
  trigger mode's catch-up.
- `capture.rs`: the trigger mode's Postgres side: the trigger, `herald_changes`, reading
  changes in commit-safe order.
- `continuity.rs`: whether the capture is still the one the cursor in Kafka belongs to
  (a dropped slot or trigger, a restore, a failover), decided without I/O.
- `prune.rs`: deleting the changes every source of a table has published (trigger mode).
- `wal/`: the WAL mode: `position.rs` (what is stored in Kafka), `slot.rs` (slot, publication,
  connection), `decode.rs` (pgoutput), `stream.rs` (the loop).
- `rows.rs`: rows into stage events or dead letters, the same for both modes.
- `latest_rows.rs`: the table's side of `herald reconcile` (its latest row per pair) and the
  repair that publishes what the topic lacks.
- `publisher.rs`: the Kafka side: each batch and its position in one transaction; a repair's
  transaction through the same record loop.
- `offsets.rs`: the offsets topic's records (position, snapshot), their keys and encoding, and
  reading them back.
- `error.rs`: the crate's error and which failures are transient.
*/
#![deny(missing_docs)]

mod capture;
mod config;
mod continuity;
mod error;
mod instance;
mod latest_rows;
mod offsets;
mod plugin;
mod prune;
mod publisher;
mod rows;
mod snapshot;
mod source;
mod wal;

pub use capture::Cursor;
pub use config::{Capture, OnCaptureLost, PostgresSourceConfig, SkipWhen, SnapshotMode};
pub use error::SourceError;
pub use instance::PostgresSource;
pub use latest_rows::{RowToPublish, TableRow, UnreadableRow};
pub use offsets::StoredPosition;

/// The `type` that selects this source in a `[[source]]` table.
pub const KIND: &str = "postgres";
