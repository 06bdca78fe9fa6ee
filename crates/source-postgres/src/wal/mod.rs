//! WAL capture: the table's inserts and updates read from a logical replication slot (pgoutput).
//!
//! No trigger and no `herald_changes`: the legacy writers' transactions write nothing extra.
//! Transactions arrive in the WAL's commit order, whole, so there is no out-of-order-commit
//! hazard to guard against. Exactly once, as in trigger mode: the events of one or more whole
//! transactions and the commit LSN they end at go to Kafka in one transaction; only after it
//! committed is the slot told (`update_applied_lsn`) that Postgres may recycle that WAL. On
//! restart herald starts from its own LSN and drops any transaction that ends at or below it.
//!
//! Layout: `position.rs` (what is stored in Kafka, and the transactions' bookkeeping),
//! `slot.rs` (the slot, the publication and the replication connection), `decode.rs`
//! (pgoutput into rows), `stream.rs` (the loop that publishes and confirms).

mod decode;
mod position;
mod slot;
mod stream;

pub(crate) use position::{Progress, WalPosition};
pub(crate) use slot::{check_history, drop_capture, ensure, replication_config, slot_state, timeline_ended, WalNames};
pub(crate) use stream::WalStream;
