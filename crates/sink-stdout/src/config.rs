//! Settings of the stdout sink.

use serde::Deserialize;

use std::sync::{Arc, Mutex};

use herald_sdk::{BoxError, Sink, SinkContext, SinkPlugin};

use crate::sink::{StdoutSink, Target};

/// `sink = { type = "stdout" }`, optionally with `stream = "stderr"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Where the lines go: `"stdout"` (default) or `"stderr"`.
    #[serde(default)]
    pub stream: OutputStream,
}

/// A standard stream of the process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    #[default]
    Stdout,
    /// Standard error, shared with the log.
    Stderr,
}

impl StdoutSinkConfig {
    /// A sink that appends its lines to `buffer` instead of a stream: for tests (the conformance
    /// suite reads them back) and for embedding.
    pub fn build_into(buffer: Arc<Mutex<Vec<u8>>>) -> Box<dyn Sink> {
        Box::new(StdoutSink::new(Target::Buffer(buffer)))
    }
}

/// The settings are the plug-in; the binary registers the kind as
/// `&herald_sdk::Registered::<herald_sink_stdout::StdoutSinkConfig>::NEW`.
#[async_trait::async_trait]
impl SinkPlugin for StdoutSinkConfig {
    const KIND: &'static str = crate::KIND;

    async fn build(&self, _context: SinkContext<'_>) -> Result<Box<dyn Sink>, BoxError> {
        Ok(Box::new(StdoutSink::new(Target::Stream(self.stream))))
    }
}
