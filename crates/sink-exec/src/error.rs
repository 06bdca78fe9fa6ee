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
    /// The program could not be started (not found, not executable): the configuration's fault,
    /// retrying cannot help.
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
    /// The event's values cannot be handed to a process: a NUL in a variable, or more than
    /// the system takes in a process's environment (`E2BIG`). Only that event is at fault.
    #[error("the event cannot be passed to `{program}`: {reason}")]
    Unpassable {
        /// The program.
        program: String,
        /// What cannot be passed, and why.
        reason: String,
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

    /// Whether only the event at hand is at fault (it goes to the dead-letter topic).
    pub fn is_the_events(&self) -> bool {
        matches!(self, ExecSinkError::Refused { .. } | ExecSinkError::Unpassable { .. })
    }
}

impl From<ExecSinkError> for SinkError {
    fn from(err: ExecSinkError) -> Self {
        let retriable = err.is_retriable();
        SinkError::classified(err, retriable)
    }
}
