//! Partitions assigned and revoked, noted by a consumer's context (on librdkafka's thread) for
//! the task that owns the consumer. Checking costs one atomic load, so a loop may ask per
//! message; a task waiting on no message is woken by [`Rebalances::signal`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::consumer::Rebalance;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::Notify;

/// Partitions whose ownership changed since last taken, as (topic, partition).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AssignmentChanges {
    /// Newly assigned.
    pub assigned: Vec<(String, i32)>,
    /// Revoked.
    pub revoked: Vec<(String, i32)>,
}

/// The rebalances a consumer went through since its owner last looked.
#[derive(Debug, Default)]
pub struct Rebalances {
    changes: Mutex<AssignmentChanges>,
    /// Whether `changes` holds anything: checked without taking the lock.
    changed: AtomicBool,
    /// Notified (a stored permit) when `changes` gets something.
    signal: Arc<Notify>,
}

impl Rebalances {
    /// Notes what `rebalance` changes; call it from both `pre_rebalance` (revocations, before
    /// the partitions go) and `post_rebalance` (assignments, once they are in place).
    pub fn note(&self, rebalance: &Rebalance<'_>, pre: bool) {
        match rebalance {
            Rebalance::Revoke(partitions) if pre => self.record(partitions, false),
            Rebalance::Assign(partitions) if !pre => self.record(partitions, true),
            _ => {}
        }
    }

    /// Notes `partitions` as assigned or revoked.
    pub fn record(&self, partitions: &TopicPartitionList, assigned: bool) {
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let list = if assigned { &mut changes.assigned } else { &mut changes.revoked };
        list.extend(partitions.elements().iter().map(|e| (e.topic().to_owned(), e.partition())));
        self.changed.store(true, Ordering::Release);
        self.signal.notify_one();
    }

    /// Whether anything changed since the changes were last taken.
    pub fn has_changes(&self) -> bool {
        self.changed.load(Ordering::Acquire)
    }

    /// The changes since last taken, if any.
    pub fn take(&self) -> Option<AssignmentChanges> {
        if !self.changed.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner)))
    }

    /// Notified each time a rebalance changes the assignment.
    pub fn signal(&self) -> Arc<Notify> {
        Arc::clone(&self.signal)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rdkafka::topic_partition_list::Offset;

    use super::*;

    fn partitions(list: &[(&str, i32)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in list {
            tpl.add_partition_offset(topic, *partition, Offset::Invalid).unwrap();
        }
        tpl
    }

    #[tokio::test]
    async fn changes_accumulate_until_taken_and_wake_a_waiting_task() {
        let rebalances = Arc::new(Rebalances::default());
        assert!(!rebalances.has_changes() && rebalances.take().is_none());
        let waiting = {
            let signal = rebalances.signal();
            tokio::spawn(async move { signal.notified().await })
        };
        rebalances.note(&Rebalance::Assign(&partitions(&[("t", 0), ("t", 1)])), false);
        rebalances.note(&Rebalance::Assign(&partitions(&[("t", 9)])), true); // pre: not yet
        rebalances.note(&Rebalance::Revoke(&partitions(&[("t", 0)])), true);
        waiting.await.unwrap();
        assert!(rebalances.has_changes());
        let changes = rebalances.take().unwrap();
        assert_eq!(changes.assigned, [("t".to_owned(), 0), ("t".to_owned(), 1)]);
        assert_eq!(changes.revoked, [("t".to_owned(), 0)]);
        assert!(!rebalances.has_changes() && rebalances.take().is_none());
    }
}
