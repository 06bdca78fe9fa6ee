//! Settings of the stdout sink.

use serde::Deserialize;

use std::sync::{Arc, Mutex};

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
    /// The sink these settings describe.
    pub fn build(&self) -> Box<dyn herald_sdk::Sink> {
        Box::new(StdoutSink::new(Target::Stream(self.stream)))
    }

    /// A sink that appends its lines to `buffer` instead of a stream: for tests (the conformance
    /// suite reads them back) and for embedding.
    pub fn build_into(buffer: Arc<Mutex<Vec<u8>>>) -> Box<dyn herald_sdk::Sink> {
        Box::new(StdoutSink::new(Target::Buffer(buffer)))
    }
}

/// The stdout sink as a plug-in; the binary registers it as
/// `&herald_sdk::Registered::<herald_sink_stdout::Stdout>::NEW`.
pub struct Stdout;

#[async_trait::async_trait]
impl herald_sdk::SinkPlugin for Stdout {
    const KIND: &'static str = crate::KIND;
    type Config = StdoutSinkConfig;

    async fn build(
        config: &StdoutSinkConfig,
        _context: herald_sdk::SinkContext<'_>,
    ) -> Result<Box<dyn herald_sdk::Sink>, herald_sdk::BoxError> {
        Ok(config.build())
    }
}
