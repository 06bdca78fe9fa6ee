/*!
herald-board: which source is at which stage. The board keeps the latest stage event of every
(source, stage) pair read from the events topics, and tells subscribers about each change; the
admin API serves it as a live page (`/board`), and `herald status` prints it once.

The one decision to know: **the event's own timestamp decides which is latest**, not the order
of reading, so events read from several partitions, or read again after a restart, give the
same board. A tie goes to the one read last.

Layout: `cells.rs` (the board's cells: the state and its updates), `follow.rs` (reading topics into a board),
`text.rs` (the terminal table of `herald status`), `divergence.rs` (two boards side by side: a
table against a topic, for `herald reconcile`), `config.rs` (`[board]`).
*/
#![deny(missing_docs)]

mod cells;
mod config;
mod divergence;
mod follow;
mod text;

pub use cells::{Board, Cell, Mark, Snapshot, TableSide, Update};
pub use config::BoardConfig;
pub use divergence::{agrees, compare, render_divergences, Compared, Divergence, Verdict};
pub use follow::follow;
pub use text::{age, render_table};
