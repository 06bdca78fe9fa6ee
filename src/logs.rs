//! Where log lines go: standard error, with every secret of the loaded config masked, whichever
//! library wrote the line (an error from a client library may quote a URL with its password).

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;

/// Standard error through [`herald_config::redact`].
pub struct RedactedStderr;

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedWriter
    }
}

/// One log line's writer. tracing's formatter writes each line whole, in one call, so a secret
/// is never split between two writes.
pub struct RedactedWriter;

impl Write for RedactedWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(line);
        std::io::stderr().lock().write_all(herald_config::redact(&text).as_bytes())?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
