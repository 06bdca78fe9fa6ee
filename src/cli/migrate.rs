//! `herald migrate`: create or update the tables herald's sinks own and install the sources'
//! change capture; or, with `--drop-source`, forget a source that was taken out of service.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::registry;

/// Arguments of `herald migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The config file.
    #[arg(long, short, env = "HERALD_CONFIG", default_value = "config/herald.toml")]
    pub config: PathBuf,
    /// Instead of migrating, retire the source of this name (a `[[source]]` of the config, still
    /// there): WAL capture drops its slot and publication; trigger capture stops keeping the
    /// table's changes for it and, when no other source reads the table, drops the trigger.
    #[arg(long, value_name = "NAME")]
    pub drop_source: Option<String>,
}

pub async fn migrate(args: MigrateArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    if let Some(name) = &args.drop_source {
        let Some(spec) = config.sources.iter().find(|spec| &spec.name == name) else {
            let known: Vec<&str> = config.sources.iter().map(|spec| spec.name.as_str()).collect();
            bail!(
                "{}: no [[source]] named `{name}` (sources: {}); keep a source's [[source]] in the config until it is retired",
                args.config.display(),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            );
        };
        let source = registry::source(spec)?;
        let had =
            source.retire().await.map_err(anyhow::Error::from_boxed).with_context(|| format!("source `{name}`"))?;
        let what = if had {
            "forgotten: its slot and publication, or its claim on the table's captured changes, are removed"
        } else {
            "had nothing to forget"
        };
        println!("ok    source {name:<21} {what}");
        return Ok(ExitCode::SUCCESS);
    }
    for route in &config.routes {
        match registry::migrate(route).await? {
            Some(what) => println!("ok    route {:<22} {} migrated", route.name, what),
            None => println!("-     route {:<22} sink `{}` has no tables", route.name, route.sink.kind),
        }
    }
    for spec in &config.sources {
        let source = registry::source(spec)?;
        let what = source
            .migrate()
            .await
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| format!("source `{}`", spec.name))?;
        println!("ok    source {:<21} {what}", spec.name);
    }
    Ok(ExitCode::SUCCESS)
}
