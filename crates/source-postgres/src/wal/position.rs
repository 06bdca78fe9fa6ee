//! Where the WAL capture stands: the position stored in Kafka with each batch (the end LSN of the
//! last whole transaction, and how much of a transaction too large for one batch), and the
//! bookkeeping that turns the stream's transactions into those positions.

use serde_json::{Map, Value};

use crate::offsets::Checkpoint;

/// The WAL mode's position in Kafka: the end LSN of the last whole transaction published, and,
/// when a batch ended inside a large transaction, how many of that transaction's row changes
/// were published. A transaction of any size is published in batches of `batch_size`, and a
/// restart skips exactly what is already in Kafka.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WalPosition {
    /// End LSN of the last whole transaction published.
    pub(crate) lsn: u64,
    /// A transaction published in part: its commit LSN and how many of its row changes (of the
    /// watched table, in WAL order) are in Kafka.
    pub(crate) partial: Option<Partial>,
}

/// A transaction published in part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Partial {
    /// Where its commit record starts (pgoutput's Begin `final_lsn`): the same on every replay.
    pub(crate) commit: u64,
    /// Row changes of the watched table published.
    pub(crate) done: u64,
}

impl Checkpoint for WalPosition {
    fn encode(&self, record: &mut Map<String, Value>) {
        record.insert("lsn".into(), self.lsn.into());
        if let Some(partial) = self.partial {
            record.insert("partial_commit".into(), partial.commit.into());
            record.insert("partial_done".into(), partial.done.into());
        }
    }

    fn decode(value: &Value) -> Option<Self> {
        let partial = match (value["partial_commit"].as_u64(), value["partial_done"].as_u64()) {
            (Some(commit), Some(done)) => Some(Partial { commit, done }),
            _ => None,
        };
        Some(WalPosition { lsn: value["lsn"].as_u64()?, partial })
    }
}

/// Which row changes of a session are new, and where a publish leaves the source: the
/// decisions of the stream, free of I/O.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Transactions whose commit record starts before this are in Kafka already.
    start: u64,
    /// A transaction partly in Kafka before this session.
    resume: Option<Partial>,
    /// End LSN of the last whole transaction seen.
    complete_end: u64,
    current: Option<Transaction>,
}

#[derive(Debug)]
struct Transaction {
    commit: u64,
    /// Row changes of the watched table seen so far.
    seen: u64,
    /// How many of the first ones are in Kafka already.
    skip: u64,
    /// Committed before `start`: all of it is in Kafka already.
    old: bool,
}

impl Progress {
    /// A session starting at `start` (see [`WalStream::run`]) after `resumed` was read back.
    pub(crate) fn new(start: u64, resumed: WalPosition) -> Self {
        Self { start, resume: resumed.partial, complete_end: start, current: None }
    }

    /// A transaction begins; its commit record starts at `commit`.
    pub(crate) fn begin(&mut self, commit: u64) {
        let skip = self.resume.filter(|partial| partial.commit == commit).map_or(0, |partial| partial.done);
        self.current = Some(Transaction { commit, seen: 0, skip, old: commit < self.start });
    }

    /// A row change of the watched table: whether it is new (to be published).
    pub(crate) fn admit(&mut self) -> bool {
        match &mut self.current {
            Some(transaction) if !transaction.old => {
                transaction.seen += 1;
                transaction.seen > transaction.skip
            }
            _ => false,
        }
    }

    /// The transaction commits, ending at `end`. Returns whether it was new.
    pub(crate) fn commit(&mut self, end: u64) -> bool {
        let new = self.current.take().is_some_and(|transaction| !transaction.old);
        if new {
            self.complete_end = self.complete_end.max(end);
        }
        new
    }

    /// The server reports its WAL end while no transaction is open: nothing of ours is before
    /// it that is not published, so the position may move there (once recorded in Kafka).
    pub(crate) fn idle_at(&mut self, wal_end: u64) {
        if self.current.is_none() {
            self.complete_end = self.complete_end.max(wal_end);
        }
    }

    /// Whether a transaction is open.
    pub(crate) fn in_transaction(&self) -> bool {
        self.current.is_some()
    }

    /// Where the source is once everything admitted so far is published.
    pub(crate) fn checkpoint(&self) -> WalPosition {
        WalPosition {
            lsn: self.complete_end,
            partial: self
                .current
                .as_ref()
                .filter(|transaction| !transaction.old && transaction.seen > 0)
                .map(|transaction| Partial { commit: transaction.commit, done: transaction.seen }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_skips_what_kafka_has_of_a_partly_published_transaction() {
        // Before the restart: transactions up to LSN 100 whole, and 3 row changes of the one
        // committing at 150.
        let resumed = WalPosition { lsn: 100, partial: Some(Partial { commit: 150, done: 3 }) };
        let mut record = Map::new();
        resumed.encode(&mut record);
        assert_eq!(WalPosition::decode(&Value::Object(record)), Some(resumed));
        assert_eq!(WalPosition::decode(&serde_json::json!({"lsn": 7})), Some(WalPosition { lsn: 7, partial: None }));
        let mut progress = Progress::new(100, resumed);

        // A transaction committed before the start is in Kafka whole.
        progress.begin(90);
        assert!(!progress.admit());
        assert!(!progress.commit(95));

        // The partly published one: its first 3 changes are skipped, the rest are new.
        progress.begin(150);
        let admitted: Vec<bool> = (0..5).map(|_| progress.admit()).collect();
        assert_eq!(admitted, [false, false, false, true, true]);
        // A batch ending inside it records how far it got.
        assert_eq!(progress.checkpoint(), WalPosition { lsn: 100, partial: Some(Partial { commit: 150, done: 5 }) });
        assert!(progress.commit(160));
        assert_eq!(progress.checkpoint(), WalPosition { lsn: 160, partial: None });

        // The next transaction is new from its first change.
        progress.begin(170);
        assert!(progress.admit());
        assert!(progress.in_transaction());
        assert!(progress.commit(180));
        assert!(!progress.in_transaction());
        assert_eq!(progress.checkpoint().lsn, 180);
    }
}
