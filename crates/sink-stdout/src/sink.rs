//! The stdout sink.

use async_trait::async_trait;
use herald_sdk::{Sink, SinkError, SinkRecord, WriteOutcome};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::config::OutputStream;
use crate::error::StdoutSinkError;

/// Writes each batch as JSON lines in one write, then flushes.
pub(crate) struct StdoutSink {
    stream: OutputStream,
    /// Reused between batches so a steady stream allocates nothing.
    buffer: Vec<u8>,
}

impl StdoutSink {
    pub(crate) fn new(stream: OutputStream) -> Self {
        Self { stream, buffer: Vec::new() }
    }

    async fn write_buffer(&self, out: &mut (impl AsyncWrite + Unpin)) -> Result<(), StdoutSinkError> {
        out.write_all(&self.buffer).await?;
        out.flush().await?;
        Ok(())
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        self.buffer.clear();
        for record in batch {
            self.buffer.extend_from_slice(record.event.to_json().as_bytes());
            self.buffer.push(b'\n');
        }
        match self.stream {
            OutputStream::Stdout => self.write_buffer(&mut tokio::io::stdout()).await?,
            OutputStream::Stderr => self.write_buffer(&mut tokio::io::stderr()).await?,
        }
        Ok(WriteOutcome::all_accepted())
    }
}
