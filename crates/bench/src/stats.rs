//! Latency percentiles and the result rows the harness prints.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::process::Usage;

/// Latency percentiles of one run, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Percentiles {
    /// Events measured.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (ms); `None` when empty.
    pub fn of(mut samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
        Some(Self { count: samples.len(), p50: rank(0.50), p95: rank(0.95), p99: rank(0.99), max: rank(1.0) })
    }

    /// Latencies from when each event was sent (`sent[seq]`) to when it was seen.
    pub fn between(sent: &[Instant], seen: &[(u64, Instant)]) -> Option<Self> {
        Self::of(
            seen.iter()
                .filter_map(|&(seq, at)| {
                    let sent = sent.get(usize::try_from(seq).ok()?)?;
                    Some(at.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
                })
                .collect(),
        )
    }
}

/// One line of results; fields a measure does not take stay at their defaults (none, zero).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    /// What was measured, e.g. `postgres-append throughput`.
    pub name: String,
    /// Events sent.
    pub events: usize,
    /// The set rate (events/s), or none for as fast as possible.
    pub offered_rate: Option<f64>,
    /// Events/s from the first send to the last event visible.
    pub throughput: f64,
    /// Events/s herald drained from a backlog of `events`, the producer idle meanwhile.
    pub drain_rate: Option<f64>,
    /// Send → visible latency.
    pub latency: Option<Percentiles>,
    /// herald's memory and CPU during the run (CPU time spent while the events flowed).
    pub usage: Option<Usage>,
    /// Share of one core herald used while the events flowed, %.
    pub cpu_percent: Option<f64>,
    /// Anything else worth saying.
    pub note: String,
}

impl Row {
    /// The table header matching `markdown`.
    pub const HEADER: &'static str = "| measure | events | rate | events/s | drain events/s | p50 ms | p95 ms | p99 ms | max ms | peak RSS MiB | CPU % | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

    /// One markdown table row.
    pub fn markdown(&self) -> String {
        let ms = |value: Option<f64>| value.map_or("–".to_owned(), |v| format!("{v:.1}"));
        let latency = self.latency;
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.name,
            self.events,
            match (self.events, self.offered_rate) {
                (0, _) => "–".to_owned(),
                (_, None) => "max".to_owned(),
                (_, Some(rate)) => format!("{rate:.0}/s"),
            },
            if self.throughput > 0.0 { format!("{:.0}", self.throughput) } else { "–".to_owned() },
            self.drain_rate.map_or("–".to_owned(), |r| format!("{r:.0}")),
            ms(latency.map(|l| l.p50)),
            ms(latency.map(|l| l.p95)),
            ms(latency.map(|l| l.p99)),
            ms(latency.map(|l| l.max)),
            self.usage.map_or("–".to_owned(), |u| format!("{:.1}", u.peak_rss_mib)),
            self.cpu_percent.map_or("–".to_owned(), |c| format!("{c:.0}")),
            self.note,
        )
    }
}

/// The median of `seconds` (the upper one of an even count).
pub fn median(seconds: &[f64]) -> f64 {
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// A row for `events` handled in each of `seconds` (one per run, in run order): throughput at
/// the median, and every run listed, then `more`.
pub fn runs_row(what: &str, events: u64, seconds: &[f64], more: &str) -> Row {
    let median = median(seconds);
    let listed: Vec<String> = seconds.iter().map(|s| format!("{s:.2}")).collect();
    Row {
        name: what.to_owned(),
        events: events as usize,
        offered_rate: None,
        throughput: events as f64 / median.max(f64::EPSILON),
        drain_rate: None,
        latency: None,
        usage: None,
        cpu_percent: None,
        note: format!("median {median:.2} s over {} runs ({} s, in run order){more}", seconds.len(), listed.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((p.count, p.p50, p.p95, p.p99, p.max), (100, 50.0, 95.0, 99.0, 100.0));
        let one = Percentiles::of(vec![7.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert!(Percentiles::of(Vec::new()).is_none());
    }
}
