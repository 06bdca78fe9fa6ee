/*!
herald-wait: when is a stage done? The decision `herald wait` makes from the stage events it
reads, with no Kafka in it: the binary reads the topics and prints, this crate decides.

The one decision to know: **the newest event of a pair decides, as a poller of the table would
see it.** Events already on the topic when the wait starts (its history) are remembered per pair
and stage, newest by timestamp and, on a tie, the later read (the later offset, as the Postgres
sink's upsert orders them). Once the history is read, a pair whose newest event is an outcome is
decided by it; one whose newest event says a new run began (`STAGE_STARTED`, or `RUNNING`) waits
for that run's outcome. After that, each new outcome decides at once.

# Layout
- `pair.rs`: the awaited (source, stage) pairs, from `--source` and `--stage`.
- `waiting.rs`: the state machine: what is remembered, settled and decided.
*/
#![deny(missing_docs)]

mod pair;
mod waiting;

pub use pair::{pairs, Pair, PairsError};
pub use waiting::{Decision, Verdict, Waiting};
