//! Errors of the HTTP sink.

use std::time::Duration;

use herald_sdk::SinkError;

/// What went wrong delivering to the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HttpSinkError {
    /// A setting is invalid.
    #[error("sink setting `{key}`: {reason}")]
    Config {
        /// The key inside the sink table.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built (TLS roots, a CA file).
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The request did not get an answer: connection refused or reset, timeout.
    #[error("no answer from the endpoint")]
    Unanswered(#[source] reqwest::Error),
    /// The endpoint answered 429 or 5xx, or the health URL did not answer 2xx: it may take the
    /// events later.
    #[error("the endpoint answered {status} (retrying{})", retry_after.map(|d| format!(" after {d:?}")).unwrap_or_default())]
    Busy {
        /// The status code.
        status: u16,
        /// What `Retry-After` asked for, if anything.
        retry_after: Option<Duration>,
    },
    /// The event's URL cannot be requested: too long, or not a URL once filled in.
    #[error("the event's URL cannot be requested: {reason}")]
    BadUrl {
        /// Why.
        reason: String,
    },
    /// The endpoint answered with a redirect that is not followed (see `follow_redirects`).
    #[error("the endpoint redirected ({status}) to {location}, which is not followed (`follow_redirects`)")]
    Redirected {
        /// The status code.
        status: u16,
        /// Where to (`Location`), as far as shown.
        location: String,
    },
    /// The endpoint refused the events for good (a 4xx other than 429).
    #[error("the endpoint refused the events: {status}: {excerpt}")]
    Refused {
        /// The status code.
        status: u16,
        /// The start of the response body.
        excerpt: String,
    },
}

impl HttpSinkError {
    /// Whether retrying the request can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, HttpSinkError::Unanswered(_) | HttpSinkError::Busy { .. })
    }
}

impl From<HttpSinkError> for SinkError {
    fn from(err: HttpSinkError) -> Self {
        let retriable = err.is_retriable();
        SinkError::classified(err, retriable)
    }
}
