/*!
herald-sink-exec: stage events handed to a program — a shell script, a legacy batch job, a
command-line tool.

Two modes. **`per_event`**: the command runs once per event, in order, with the event's JSON on
standard input and its fields in environment variables (`HERALD_SOURCE`, `HERALD_STAGE`, …); its
exit code decides: 0 delivered, 75 (`EX_TEMPFAIL`) try again later, anything else the event goes
to the dead-letter topic. **`stream`**: one long-running command reads every event as a line of
JSON on standard input; after each batch herald writes a line `--` and waits for the command to
answer `ok` (it has the batch) or `retry`; with `ack = "none"` a batch counts as delivered once
written to the pipe.

The one decision to know: **no shell, no string building.** The command is an argument list run
as is; event values reach the program only through standard input and environment variables,
never through its arguments or a shell, so no event can inject a command. Output the program
writes goes to herald's log.

Layout: `config.rs` (settings, `build`, the plug-in), `sink.rs` (both modes), `error.rs`.
*/
#![deny(missing_docs)]

mod config;
mod error;
mod sink;

pub use config::{Ack, ExecMode, ExecSinkConfig};
pub use error::ExecSinkError;

/// The `type` that selects this sink in a route's `sink` table.
pub const KIND: &str = "exec";

/// The exit code that asks herald to try the event again later (`EX_TEMPFAIL` of sysexits.h).
pub const EXIT_RETRY: i32 = 75;
