//! Folding repeated client errors: with the brokers down, librdkafka reports the same error
//! several times a second per client. The first is logged; the same one again within
//! [`FOLD_WINDOW`] is counted, and the next logged after it says how many it stands for:
//! "Kafka client error (repeated 54 times)".

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long identical errors are counted rather than logged.
pub const FOLD_WINDOW: Duration = Duration::from_secs(60);

/// Most distinct errors remembered; past it the memory starts afresh (a few lines repeat).
const MAX_KEYS: usize = 256;

/// Per error text: when it was last logged, and how many times it came since.
static SEEN: Mutex<BTreeMap<String, (Instant, u64)>> = Mutex::new(BTreeMap::new());

/// Whether an error that reads `key` (name the client in it: `route x: AllBrokersDown`) is
/// logged now: `Some(n)` with the `n` identical ones folded into this line, `None` to count it.
pub fn fold(key: &str) -> Option<u64> {
    let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    match seen.get_mut(key) {
        Some((logged, folded)) if now.duration_since(*logged) < FOLD_WINDOW => {
            *folded += 1;
            None
        }
        Some((logged, folded)) => {
            let repeated = std::mem::take(folded);
            *logged = now;
            Some(repeated)
        }
        None => {
            if seen.len() >= MAX_KEYS {
                seen.clear();
            }
            seen.insert(key.to_owned(), (now, 0));
            Some(0)
        }
    }
}

/// `" (repeated 54 times)"` for a line that stands for folded ones, else nothing.
pub fn repeated(folded: u64) -> String {
    if folded == 0 {
        String::new()
    } else {
        format!(" (repeated {folded} times)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_the_same_again_is_counted_another_is_logged() {
        let key = "test client: AllBrokersDown";
        assert_eq!(fold(key), Some(0));
        for _ in 0..54 {
            assert_eq!(fold(key), None);
        }
        assert_eq!(fold("test client: another error"), Some(0));
        // After the window, the next says how many it stands for.
        if let Ok(mut seen) = SEEN.lock() {
            if let Some((logged, _)) = seen.get_mut(key) {
                *logged = logged.checked_sub(FOLD_WINDOW).unwrap_or(*logged);
            }
        }
        assert_eq!(fold(key), Some(54));
        assert_eq!(repeated(54), " (repeated 54 times)");
        assert_eq!(repeated(0), "");
    }
}
