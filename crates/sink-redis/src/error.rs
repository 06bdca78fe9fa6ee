//! Errors of the Redis sink.

use herald_sdk::SinkError;
use redis::{ErrorKind, RetryMethod};

/// What went wrong with the settings or with Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// The URL does not parse (not shown: it may hold a password).
    #[error("invalid Redis URL")]
    Url(#[source] redis::RedisError),
    /// A command failed.
    #[error("Redis command failed")]
    Command(#[from] redis::RedisError),
}

impl RedisSinkError {
    /// Whether retrying can succeed: connection problems, timeouts, a server still loading or
    /// failing over; not bad credentials, wrong key types or script errors.
    pub fn is_retriable(&self) -> bool {
        let RedisSinkError::Command(err) = self else { return false };
        if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() {
            return true;
        }
        match err.kind() {
            ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => false,
            _ => !matches!(err.retry_method(), RetryMethod::NoRetry),
        }
    }
}

impl From<RedisSinkError> for SinkError {
    fn from(err: RedisSinkError) -> Self {
        let retriable = err.is_retriable();
        SinkError::classified(err, retriable)
    }
}
