//! Message headers herald writes and reads: where an event was born, and Kafka Connect's
//! dead-letter headers.

pub use herald_sdk::sink::ORIGIN_HEADER;

/// The `herald.origin` header among a message's `headers`, if any.
pub fn origin_of(headers: Option<&impl rdkafka::message::Headers>) -> Option<String> {
    headers?
        .iter()
        .find(|header| header.key == herald_sdk::sink::ORIGIN_HEADER)
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Where a dead letter came from, by its Kafka Connect headers: `(route, topic, partition,
/// offset)` of the original message; `None` for a message that is not a dead letter.
pub fn dead_letter_of(headers: Option<&impl rdkafka::message::Headers>) -> Option<(String, String, i32, i64)> {
    let headers = headers?;
    let text = |name: &str| {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    };
    Some((
        text(connect::CONNECTOR)?,
        text(connect::TOPIC)?,
        text(connect::PARTITION)?.parse().ok()?,
        text(connect::OFFSET)?.parse().ok()?,
    ))
}

/// Kafka Connect's header names.
pub mod connect {
    /// What every one of these names starts with.
    pub const PREFIX: &str = "__connect.errors.";
    /// Topic the message was read from.
    pub const TOPIC: &str = "__connect.errors.topic";
    /// Partition it was read from.
    pub const PARTITION: &str = "__connect.errors.partition";
    /// Its offset there.
    pub const OFFSET: &str = "__connect.errors.offset";
    /// The connector; for herald, the route name.
    pub const CONNECTOR: &str = "__connect.errors.connector.name";
    /// The task; herald has one per route, `0`.
    pub const TASK_ID: &str = "__connect.errors.task.id";
    /// Where it failed: `VALUE_CONVERTER` (parsing) or `TASK_PUT` (the sink).
    pub const STAGE: &str = "__connect.errors.stage";
    /// The component that failed.
    pub const CLASS: &str = "__connect.errors.class.name";
    /// The error type.
    pub const EXCEPTION_CLASS: &str = "__connect.errors.exception.class.name";
    /// The error message.
    pub const EXCEPTION_MESSAGE: &str = "__connect.errors.exception.message";
    /// The error with its whole chain of causes, one per line.
    pub const EXCEPTION_STACKTRACE: &str = "__connect.errors.exception.stacktrace";
}
