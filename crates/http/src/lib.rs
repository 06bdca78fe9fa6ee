/*!
herald-http: what herald's two HTTP servers share, the admin API (herald-admin) and the ingest
listener (herald-ingest): serving connections within bounds ([`serve`]) and bearer tokens
([`token`]).

The one decision to know: **a server herald runs must never take what the bridge needs**. It
holds at most `max_connections` connections (a new one closes the oldest), cuts off clients
slow to send headers, and closes connections that move nothing; tokens are compared in
constant time and never printed.
*/
#![deny(missing_docs)]

pub mod serve;
pub mod token;

pub use serve::{serve, Limits};
pub use token::{carries_token, check_token, read_token_file, Exposure};
