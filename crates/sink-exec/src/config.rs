//! Settings of the exec sink.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_sdk::{BoxError, Sink, SinkContext, SinkPlugin};
use serde::Deserialize;

use crate::error::ExecSinkError;
use crate::sink::ExecSink;

/// `sink = { type = "exec", command = ["/opt/jobs/on-stage.sh", "--quiet"], mode = "per_event" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSinkConfig {
    /// The program and its arguments, run as is (no shell), e.g. `["/usr/bin/logger", "-t",
    /// "herald"]`. Event values never go into the arguments.
    pub command: Vec<String>,
    /// `"per_event"` (default): the command runs once per event; `"stream"`: one long-running
    /// command reads every event as a JSON line.
    #[serde(default)]
    pub mode: ExecMode,
    /// Stream mode: `"line"` (default) waits for the command to answer `ok` after each batch;
    /// `"none"` counts a batch delivered once written to the pipe (for `cat >> file` and the
    /// like: a crash can then lose what the program had not yet written down).
    #[serde(default)]
    pub ack: Ack,
    /// Longest an event (per_event) or a batch's answer (stream) may take; the program is then
    /// killed and the events retried. Default `"30s"`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra environment variables for the command. Default: none (it inherits herald's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The command's working directory. Default: herald's.
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// How events reach the command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecMode {
    /// Once per event: JSON on stdin, fields in `HERALD_*` variables, the exit code decides.
    #[default]
    PerEvent,
    /// One long-running command reading JSON lines.
    Stream,
}

/// Whether a stream command acknowledges batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// After each batch's `--` line the command answers `ok` or `retry`.
    #[default]
    Line,
    /// No answer: written to the pipe is delivered.
    None,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ExecSinkConfig {
    /// What [`SinkPlugin::validate`] checks, as this crate's error.
    fn check(&self) -> Result<(), ExecSinkError> {
        if self.command.first().is_none_or(|program| program.is_empty()) {
            return Err(ExecSinkError::Config { key: "command", reason: "needs at least the program".into() });
        }
        if self.timeout.is_zero() {
            return Err(ExecSinkError::Config { key: "timeout", reason: "must be greater than zero".into() });
        }
        if self.mode == ExecMode::PerEvent && self.ack == Ack::None {
            return Err(ExecSinkError::Config {
                key: "ack",
                reason: "is for mode = \"stream\"; a per_event command answers with its exit code".into(),
            });
        }
        Ok(())
    }

    /// The sink these settings describe, which [`SinkPlugin::validate`] has checked (the
    /// registry does that once) (a stream command starts with the first batch).
    pub fn sink(&self) -> Result<Box<dyn Sink>, ExecSinkError> {
        Ok(Box::new(ExecSink::new(self.clone())))
    }
}

/// Where `program` would be run from: itself when it names a path (relative to `working_dir`),
/// else the first executable file of that name on `PATH`, as `execvp` looks. The error says
/// what is missing.
pub(crate) fn find_program(program: &str, working_dir: Option<&str>) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = match working_dir {
            Some(dir) => std::path::Path::new(dir).join(program),
            None => std::path::PathBuf::from(program),
        };
        return if executable(&path) {
            Ok(path)
        } else {
            Err(format!("`{}` is not an executable file", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| format!("no executable `{program}` on PATH"))
}

/// The settings are the plug-in; the binary registers the kind as
/// `&herald_sdk::Registered::<herald_sink_exec::ExecSinkConfig>::NEW`.
#[async_trait::async_trait]
impl SinkPlugin for ExecSinkConfig {
    const KIND: &'static str = crate::KIND;

    fn validate(&self) -> Result<(), BoxError> {
        Ok(self.check()?)
    }

    async fn build(&self, _context: SinkContext<'_>) -> Result<Box<dyn Sink>, BoxError> {
        Ok(self.sink()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok: ExecSinkConfig = serde_json::from_str(r#"{"command": ["true"]}"#).unwrap();
        assert_eq!((ok.mode, ok.ack), (ExecMode::PerEvent, Ack::Line));
        ok.validate().unwrap();
        let empty: ExecSinkConfig = serde_json::from_str(r#"{"command": []}"#).unwrap();
        assert!(empty.validate().unwrap_err().to_string().contains("command"));
        let ack: ExecSinkConfig = serde_json::from_str(r#"{"command": ["x"], "ack": "none"}"#).unwrap();
        assert!(ack.validate().unwrap_err().to_string().contains("stream"));
        assert!(
            serde_json::from_str::<ExecSinkConfig>(r#"{"command": "rm -rf /"}"#).is_err(),
            "a list, never a string"
        );
    }
}
