/*!
herald-reconcile: does a status table agree with a topic?

For each (source, stage) it compares the table's latest row with the topic's latest event over a
window (instant, event, status, records) and names every pair that differs. It works both ways:
a Postgres source (table → topic; the repair publishes the rows the topic lacks through the
source's transactional producer) and a Postgres sink route (topic → table; events the route has
not reached yet and those the table refused are set aside; the repair writes the events the
table lacks as the sink writes them). Memory holds one row and one event per pair, never the
table or the topic.

`herald reconcile` runs one; `herald run` with `[reconcile] every` runs them periodically, sets
`herald_reconcile_divergent` and marks the board.

# Layout
- `round.rs`: one reconcile: the subjects, reading both sides, the repair, the report.
- `periodic.rs`: `[reconcile]` and the loop of `herald run`.
- `error.rs`: what can stop a reconcile.

The sides' own reads live with their owners: the source's latest rows and repair in
herald-source-postgres (`latest_rows.rs`), the sink's in herald-sink-postgres (`table_side.rs`),
the comparison of two boards in herald-board (`divergence.rs`).
*/
#![deny(missing_docs)]

mod error;
mod periodic;
mod round;

pub use error::ReconcileError;
pub use periodic::{run_periodically, ReconcileConfig};
pub use round::{reconcile, Refused, Report, Subject, Unreadable};
