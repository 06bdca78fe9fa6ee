//! Classifying SNS failures: what to retry, what to reject, what stops the route.

use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};

/// What a failed call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Throttled, a 5xx, a timeout, no connection: retry later.
    Transient,
    /// The request was refused as invalid (a 4xx on its content): find the entries to blame.
    Invalid,
    /// Missing topic, no permission, bad credentials: retrying cannot help.
    Fatal,
}

/// Error codes SNS (and the services behind it) return for load rather than for bad input.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "KMSThrottling",
    "KMSThrottlingException",
];

/// Error codes that mean the topic or the caller, not the message, is wrong.
const FATAL_CODES: &[&str] = &[
    "NotFound",
    "NotFoundException",
    "AuthorizationError",
    "AuthorizationErrorException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
    "KMSDisabled",
    "KMSNotFound",
    "KMSAccessDenied",
];

pub(crate) fn classify<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> Failure
where
    R: HasStatus,
{
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Failure::Transient,
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or_default();
            let status = context.raw().status_code();
            classify_code(code, status)
        }
        _ => Failure::Fatal,
    }
}

pub(crate) fn classify_code(code: &str, status: u16) -> Failure {
    if TRANSIENT_CODES.contains(&code) || status >= 500 || status == 429 {
        Failure::Transient
    } else if FATAL_CODES.contains(&code) || status == 401 || status == 403 || status == 404 {
        Failure::Fatal
    } else {
        Failure::Invalid
    }
}

/// The HTTP status of a raw response.
pub(crate) trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_sns::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_are_classified() {
        assert_eq!(classify_code("Throttling", 400), Failure::Transient);
        assert_eq!(classify_code("", 503), Failure::Transient);
        assert_eq!(classify_code("NotFound", 404), Failure::Fatal);
        assert_eq!(classify_code("AuthorizationError", 403), Failure::Fatal);
        assert_eq!(classify_code("InvalidParameter", 400), Failure::Invalid);
        assert_eq!(classify_code("BatchRequestTooLong", 400), Failure::Invalid);
    }
}
