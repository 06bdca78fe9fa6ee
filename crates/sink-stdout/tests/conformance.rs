//! The stdout sink keeps herald's sink promises (herald_sdk::conformance). Its lines go to a
//! buffer the test reads back; a replay writes them again (at least once).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_sdk::conformance::{self, Harness, Replay};
use herald_sdk::{BoxError, Sink, SinkError, SinkRecord};
use herald_sink_stdout::StdoutSinkConfig;

#[derive(Default)]
struct StdoutHarness {
    lines: Arc<Mutex<Vec<u8>>>,
}

#[async_trait]
impl Harness for StdoutHarness {
    fn replay(&self) -> Replay {
        Replay::AtLeastOnce
    }

    async fn sink(&mut self) -> Result<Box<dyn Sink>, BoxError> {
        Ok(StdoutSinkConfig::build_into(Arc::clone(&self.lines)))
    }

    async fn write_unreachable(&mut self, _batch: &[SinkRecord]) -> Option<Result<(), SinkError>> {
        // A standard stream is never down for a while: its reader is there or gone for good.
        None
    }

    fn refused(&self, _record: SinkRecord) -> Option<SinkRecord> {
        // Every event is a line.
        None
    }

    async fn delivered(&mut self) -> Result<Vec<i64>, BoxError> {
        let text = String::from_utf8(self.lines.lock().unwrap().clone())?;
        text.lines()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(line)?;
                Ok(event["records"].as_i64().ok_or("a line without records")?)
            })
            .collect()
    }
}

#[tokio::test]
async fn the_stdout_sink_keeps_every_promise_at_least_once() {
    conformance::check(&mut StdoutHarness::default()).await.unwrap();
}
