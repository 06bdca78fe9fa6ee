//! Producing with librdkafka's `BaseProducer` on herald's own thread: queueing while the
//! queue is full, and waiting for every acknowledgement without librdkafka's slow flush.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Polls `producer` on this thread until every message it holds is acknowledged (or failed),
/// in 1 ms steps, for at most `timeout`; false when time ran out.
///
/// rdkafka's `BaseProducer::flush` (also run first by `commit_transaction`) polls with its whole
/// remaining timeout, and when the last delivery report is taken just before librdkafka counts
/// it, that poll waits for an event that never comes: transactions took 100–200 ms instead of
/// a few. Called right before, it leaves that flush nothing to wait for.
pub fn settle<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::BaseProducer<C>,
    timeout: Duration,
) -> bool {
    use rdkafka::producer::Producer;
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        producer.poll(Duration::from_millis(1));
    }
    true
}

/// Queues `record` on `producer`, polling (which serves delivery reports and frees room) while
/// librdkafka's queue is full.
pub fn send_queued<'a, C, K, P>(
    producer: &rdkafka::producer::BaseProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'a, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C: rdkafka::producer::ProducerContext,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                producer.poll(Duration::from_millis(10));
                record = returned;
            }
            Err((err, _)) => return Err(err),
        }
    }
}
