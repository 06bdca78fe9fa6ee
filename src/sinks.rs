//! The sink registry: a route's `sink.type` → the sink crate that builds it.

use anyhow::{bail, Context, Result};
use herald_core::{RouteConfig, Sink};

/// Every sink type this binary knows, for error messages.
pub const KNOWN: &[&str] = &[herald_sink_stdout::KIND];

/// Parses the route's sink settings with that sink's typed config and builds the sink.
pub async fn build(route: &RouteConfig) -> Result<Box<dyn Sink>> {
    let spec = &route.sink;
    let context = || format!("route `{}`: sink `{}`", route.name, spec.kind);
    match spec.kind.as_str() {
        herald_sink_stdout::KIND => {
            let config: herald_sink_stdout::StdoutSinkConfig = spec.parse().with_context(context)?;
            Ok(config.build())
        }
        other => bail!("route `{}`: unknown sink type `{other}`; known types: {}", route.name, KNOWN.join(", ")),
    }
}
