//! What a reader of each sink sees, and when: every observer records `(seq, instant)` for each
//! event it receives, where `seq` is the event's `records` field, unique within a run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// The events a reader has seen so far.
#[derive(Debug, Default)]
pub struct Visible {
    seen: Mutex<Vec<(u64, Instant)>>,
    count: AtomicUsize,
}

impl Visible {
    /// Records that the event numbered `seq` became visible now.
    pub fn saw(&self, seq: u64) {
        let now = Instant::now();
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).push((seq, now));
        self.count.fetch_add(1, Ordering::Release);
    }

    /// Records the event whose JSON (possibly escaped inside an envelope) is `payload`.
    pub fn saw_payload(&self, payload: &str) {
        if let Some(seq) = seq_in(payload) {
            self.saw(seq);
        }
    }

    /// Forgets everything seen so far.
    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.count.store(0, Ordering::Release);
    }

    /// How many events were seen.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until `expected` events were seen; fails with how many were after `patience`.
    pub async fn wait_for(&self, expected: usize, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        while self.count() < expected {
            if Instant::now() > deadline {
                bail!("only {} of {expected} events became visible within {patience:?}", self.count());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// When each event was first seen (a reader may see one twice: at-least-once sinks).
    pub fn first_seen(&self) -> Vec<(u64, Instant)> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        seen.sort_unstable();
        seen.dedup_by_key(|(seq, _)| *seq);
        seen
    }
}

/// The number after the first `records` key in `text`: `"records":12` or, inside an envelope,
/// `\"records\":12`.
pub fn seq_in(text: &str) -> Option<u64> {
    let after = &text[text.find("records")? + "records".len()..];
    let digits = after.trim_start_matches(['"', '\\', ':', ' ']);
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_sequence_number_plain_and_escaped() {
        assert_eq!(seq_in(r#"{"event":"X","records":1234,"status":"SUCCESS"}"#), Some(1234));
        assert_eq!(seq_in(r#"{"Message":"{\"records\":77,\"x\":1}"}"#), Some(77));
        assert_eq!(seq_in(r#"{"event":"X"}"#), None);
    }
}
