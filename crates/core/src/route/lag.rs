//! A route's consumer lag, and whether Kafka answers it, asked of the route's own consumer every
//! progress interval. librdkafka's statistics would say the same, but a client with statistics
//! on keeps some 16 latency histograms (about 0.2 MiB) whether anyone reads them or not: half of
//! an idle route's memory. Asking costs a `ListOffsets` request per assigned partition per
//! interval.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::RouteConsumer;
use crate::observe::RouteShared;

/// What one look at the consumer found.
#[derive(Default)]
pub(crate) struct LagReading {
    /// Whether a broker answered.
    pub(crate) kafka_up: bool,
    /// Per assigned partition whose position is known: messages between it and the partition's end.
    pub(crate) lags: Vec<(String, i32, i64)>,
}

/// One route, as [`watch_lag`] sees it.
#[derive(Clone)]
pub(crate) struct LagSubject {
    /// The route's consumer; the watch skips it once the route has let it go.
    pub(crate) consumer: Weak<RouteConsumer>,
    /// One of the route's topics, for the metadata request made while nothing is assigned.
    pub(crate) topic: Option<String>,
    /// Where the reading goes.
    pub(crate) stats: Arc<RouteShared>,
}

/// Every `interval` from now until `cancel`: reads each route's lag and records it, with whether
/// Kafka answered, in the route's metrics. The routes are asked one after the other on tokio's
/// blocking pool (one thread however many routes), each call bounded by `interval` (at most 5 s).
/// That Kafka went away is known sooner: the consumer's error callback marks it down.
pub(crate) async fn watch_lag(routes: Vec<LagSubject>, interval: Duration, cancel: CancellationToken) {
    let timeout = interval.min(Duration::from_secs(5));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for route in &routes {
            let Some(consumer) = route.consumer.upgrade() else { continue };
            let topic = route.topic.clone();
            let read = tokio::task::spawn_blocking(move || read_lag(&consumer, topic.as_deref(), timeout));
            let reading = tokio::select! {
                _ = cancel.cancelled() => return,
                reading = read => reading,
            };
            if let Ok(reading) = reading {
                record(&route.stats, &reading);
            }
        }
    }
}

/// Puts `reading` into the route's metrics: total lag (-1 when no partition's is known), lag per
/// partition, and whether Kafka is up.
fn record(stats: &RouteShared, reading: &LagReading) {
    let total = if reading.lags.is_empty() { -1 } else { reading.lags.iter().map(|(_, _, lag)| lag).sum() };
    stats.lag.store(total, Ordering::Relaxed);
    for (topic, partition, lag) in &reading.lags {
        stats.set_partition_lag(topic, *partition, *lag);
    }
    stats.kafka_up.store(reading.kafka_up, Ordering::Relaxed);
}

/// Asks the consumer where it is in each assigned partition (its position; the group's committed
/// offset before it has received anything there) and where each partition ends. With nothing
/// assigned, Kafka is up when it answers a metadata request for `topic`.
fn read_lag(consumer: &RouteConsumer, topic: Option<&str>, timeout: Duration) -> LagReading {
    let assignment = consumer.assignment().unwrap_or_default();
    if assignment.count() == 0 {
        return LagReading { kafka_up: consumer.fetch_metadata(topic, timeout).is_ok(), lags: Vec::new() };
    }
    let positions = consumer.position().unwrap_or(assignment);
    let mut unknown = TopicPartitionList::new();
    for element in positions.elements().iter().filter(|e| !matches!(e.offset(), Offset::Offset(_))) {
        unknown.add_partition(element.topic(), element.partition());
    }
    let committed = if unknown.count() > 0 { consumer.committed_offsets(unknown, timeout).ok() } else { None };
    let next_offset = |topic: &str, partition: i32, position: Offset| match position {
        Offset::Offset(next) => Some(next),
        _ => match committed.as_ref()?.find_partition(topic, partition)?.offset() {
            Offset::Offset(next) => Some(next),
            _ => None,
        },
    };
    let mut reading = LagReading::default();
    for element in positions.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let Ok((_, end)) = consumer.fetch_watermarks(topic, partition, timeout) else { continue };
        reading.kafka_up = true;
        if let Some(next) = next_offset(topic, partition, element.offset()) {
            reading.lags.push((topic.to_owned(), partition, (end - next).max(0)));
        }
    }
    reading
}
