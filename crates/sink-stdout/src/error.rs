//! Errors of the stdout sink.

use herald_sdk::SinkError;

/// Writing to the stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StdoutSinkError {
    /// The reader of the stream went away (`EPIPE`): nothing will ever read these lines.
    #[error("the reader of the output stream has gone away")]
    Closed(#[source] std::io::Error),
    /// Any other I/O failure, which may pass.
    #[error("cannot write to the output stream")]
    Write(#[source] std::io::Error),
}

impl StdoutSinkError {
    /// Whether retrying the write can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StdoutSinkError::Write(_))
    }
}

impl From<std::io::Error> for StdoutSinkError {
    fn from(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            StdoutSinkError::Closed(err)
        } else {
            StdoutSinkError::Write(err)
        }
    }
}

impl From<StdoutSinkError> for SinkError {
    fn from(err: StdoutSinkError) -> Self {
        let retriable = err.is_retriable();
        SinkError::classified(err, retriable)
    }
}
