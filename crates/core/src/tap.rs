//! The tap: each message a route handles, with its outcome, for whoever watches — the admin
//! API's `/routes/{name}/tap` (and `herald tap` over it), and `herald redrive`, which counts
//! what became of each dead letter it sent back.
//!
//! Watching never slows the route. Each watcher has a bounded buffer; what does not fit while
//! the watcher reads slowly is counted as missed, never waited for, so a fast route is shown
//! sampled. With no watcher, the route pays one atomic load per batch.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use herald_sdk::printable::printable;

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The sink accepted it.
    Delivered,
    /// The route's filter passed over it (its offset is committed all the same).
    Skipped,
    /// It went to the dead-letter topic: not a stage event, refused by the sink, or poison.
    DeadLettered,
    /// A sink write holding it failed and will be tried again.
    Retried,
}

impl Outcome {
    /// The outcome as the tap prints it: `delivered`, `skipped`, `dead_lettered`, `retried`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Skipped => "skipped",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Retried => "retried",
        }
    }
}

/// Longest payload a tapped message shows, in characters.
const EVENT_CHARS: usize = 1024;

/// One message a route handled, and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Tapped {
    /// When the outcome was decided.
    pub at: DateTime<Utc>,
    /// The topic it was read from.
    #[serde(serialize_with = "as_text")]
    pub topic: Arc<str>,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// What became of it.
    pub outcome: Outcome,
    /// Why, for a dead letter or a retry: the error and its causes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The payload, as printable text, cut at 1,024 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

impl Tapped {
    /// A message at `topic[partition]@offset` with `outcome`, its payload shown as text.
    pub(crate) fn new(
        (topic, partition, offset): (Arc<str>, i32, i64),
        outcome: Outcome,
        payload: Option<&[u8]>,
        error: Option<String>,
    ) -> Self {
        let event = payload.map(|bytes| printable(&String::from_utf8_lossy(bytes), EVENT_CHARS).into_owned());
        Self { at: Utc::now(), topic, partition, offset, outcome, error, event }
    }
}

fn as_text<S: serde::Serializer>(text: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(text)
}

/// One watcher's end: the messages tapped for it, and how many did not fit its buffer.
pub struct TapWatch {
    receiver: mpsc::Receiver<Tapped>,
    missed: Arc<AtomicU64>,
}

impl TapWatch {
    /// The next message tapped, or `None` once the route is gone.
    pub async fn recv(&mut self) -> Option<Tapped> {
        self.receiver.recv().await
    }

    /// A message already tapped, without waiting.
    pub fn try_recv(&mut self) -> Option<Tapped> {
        self.receiver.try_recv().ok()
    }

    /// Messages not shown so far because the buffer was full (the tap samples a fast route).
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

struct Watcher {
    sender: mpsc::Sender<Tapped>,
    missed: Arc<AtomicU64>,
    /// At most this many messages a second (`None`: as many as the buffer takes).
    rate: Option<u32>,
    /// The second being counted, and how many were sent in it.
    second: (Instant, u32),
}

impl Watcher {
    /// Whether the watcher takes one more message now: room in its buffer, and in its rate.
    fn has_room(&mut self, now: Instant) -> bool {
        if self.sender.capacity() == 0 {
            return false;
        }
        let Some(rate) = self.rate else { return true };
        if now.duration_since(self.second.0) >= std::time::Duration::from_secs(1) {
            self.second = (now, 0);
        }
        self.second.1 < rate
    }
}

/// A route's tap: the watchers of its outcomes.
#[derive(Default)]
pub struct Tap {
    watchers: Mutex<Vec<Watcher>>,
    watching: AtomicUsize,
}

impl Tap {
    /// Starts watching, with room for `buffer` messages not yet read (at least 1), and at most
    /// `rate` messages a second (`None`: every message the buffer takes, as a redrive needs):
    /// a person reads a few a second, and a rate keeps a tap on a fast route cheap.
    pub fn watch(&self, buffer: usize, rate: Option<u32>) -> TapWatch {
        let (sender, receiver) = mpsc::channel(buffer.max(1));
        let missed = Arc::new(AtomicU64::new(0));
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers.push(Watcher { sender, missed: Arc::clone(&missed), rate, second: (Instant::now(), 0) });
        self.watching.store(watchers.len(), Ordering::Relaxed);
        TapWatch { receiver, missed }
    }

    /// Whether anyone watches (cheap: the route asks once per batch).
    pub fn is_watched(&self) -> bool {
        self.watching.load(Ordering::Relaxed) > 0
    }

    /// Offers each of `tapped` to every watcher, never waiting: what does not fit is counted as
    /// missed. Each is made only when some watcher has room for it, so a tap whose watchers
    /// fell behind costs the route a count, not a copy of each payload. A watcher that went
    /// away is forgotten.
    pub(crate) fn offer<Make: FnOnce() -> Tapped>(&self, tapped: impl IntoIterator<Item = Make>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers.retain(|watcher| !watcher.sender.is_closed());
        let now = Instant::now();
        let mut room: Vec<bool> = watchers.iter_mut().map(|watcher| watcher.has_room(now)).collect();
        for make in tapped {
            if !room.contains(&true) {
                for watcher in watchers.iter() {
                    watcher.missed.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            let message = make();
            for (watcher, room) in watchers.iter_mut().zip(room.iter_mut()) {
                if *room && watcher.sender.try_send(message.clone()).is_ok() {
                    watcher.second.1 += 1;
                } else {
                    watcher.missed.fetch_add(1, Ordering::Relaxed);
                }
                *room = watcher.has_room(now);
            }
        }
        watchers.retain(|watcher| !watcher.sender.is_closed());
        self.watching.store(watchers.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tapped(offset: i64) -> Tapped {
        Tapped::new((Arc::from("t"), 0, offset), Outcome::Delivered, Some(b"{}"), None)
    }

    #[tokio::test]
    async fn a_full_buffer_counts_what_it_misses_and_never_waits() {
        let tap = Tap::default();
        assert!(!tap.is_watched());
        let mut watch = tap.watch(2, None);
        assert!(tap.is_watched());
        tap.offer((0..5).map(|offset| move || tapped(offset)));
        assert_eq!(watch.recv().await.map(|t| t.offset), Some(0));
        assert_eq!(watch.recv().await.map(|t| t.offset), Some(1));
        assert_eq!(watch.missed(), 3);
        tap.offer([|| tapped(5)]);
        assert_eq!(watch.recv().await.map(|t| t.offset), Some(5));
    }

    #[test]
    fn a_rate_caps_what_a_watcher_gets_each_second() {
        let tap = Tap::default();
        let mut watch = tap.watch(100, Some(3));
        tap.offer((0..10).map(|offset| move || tapped(offset)));
        let got: Vec<i64> = std::iter::from_fn(|| watch.try_recv()).map(|t| t.offset).collect();
        assert_eq!(got, [0, 1, 2]);
        assert_eq!(watch.missed(), 7);
    }

    #[test]
    fn a_watcher_that_left_is_forgotten() {
        let tap = Tap::default();
        let watch = tap.watch(4, None);
        drop(watch);
        tap.offer([|| tapped(0)]);
        assert!(!tap.is_watched());
    }
}
