//! `herald migrate`: create or update the tables herald's sinks own.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::sinks;

/// Arguments of `herald migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The config file.
    #[arg(long, short, env = "HERALD_CONFIG", default_value = "config/herald.toml")]
    pub config: PathBuf,
}

pub async fn migrate(args: MigrateArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    for route in &config.routes {
        match sinks::migrate(route).await? {
            Some(what) => println!("ok    route {:<22} {} migrated", route.name, what),
            None => println!("-     route {:<22} sink `{}` has no tables", route.name, route.sink.kind),
        }
    }
    for spec in &config.sources {
        let source = sinks::source(spec)?;
        source.migrate().await.with_context(|| format!("source `{}`", spec.name))?;
        println!("ok    source {:<21} change capture installed", spec.name);
    }
    Ok(ExitCode::SUCCESS)
}
