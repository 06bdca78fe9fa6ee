//! The Kafka side of expectations (written next).

use herald_core::Config;
use tokio_util::sync::CancellationToken;

use crate::error::ExpectError;

/// Evaluates the config's `[[expect]]` rules until `cancel`.
pub async fn run(_config: &Config, _cancel: CancellationToken) -> Result<(), ExpectError> {
    Ok(())
}
