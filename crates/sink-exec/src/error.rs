//! Errors of the exec sink.

use herald_sdk::SinkError;

/// What went wrong handing events to the program.
#[derive(Debug, thiserror::Error)]
pub enum ExecSinkError {
    /// A setting is invalid.
    #[error("sink setting `{key}`: {reason}")]
    Config {
        /// The key inside the sink table.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The program could not be started (not found, not executable): retrying cannot help.
    #[error("cannot start `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The program asked to be tried again (exit code 75, or `retry` in stream mode).
    #[error("`{program}` asked to try again later")]
    Retry {
        /// The program.
        program: String,
    },
    /// The program did not finish (or answer) in time, died, or closed its input.
    #[error("`{program}`: {what}")]
    Failed {
        /// The program.
        program: String,
        /// What happened.
        what: String,
    },
    /// The program refused the event for good (a non-zero exit code other than 75).
    #[error("`{program}` exited with {code}: {stderr}")]
    Refused {
        /// The program.
        program: String,
        /// Its exit code.
        code: i32,
        /// The start of what it wrote on standard error.
        stderr: String,
    },
}

impl ExecSinkError {
    /// Whether handing the events over again can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ExecSinkError::Retry { .. } | ExecSinkError::Failed { .. })
    }
}

impl From<ExecSinkError> for SinkError {
    fn from(err: ExecSinkError) -> Self {
        let retriable = err.is_retriable();
        SinkError::classified(err, retriable)
    }
}
