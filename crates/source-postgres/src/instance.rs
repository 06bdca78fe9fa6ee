//! One configured Postgres source as a value: its name, its settings and the plan they make,
//! built once. What it does is implemented beside each concern (`source.rs` the loop and the
//! commands, `snapshot.rs` the snapshot, `latest_rows.rs` its side of reconcile); this module
//! holds only the value, so each of them depends on it and none on another through it.

use crate::config::{Plan, PostgresSourceConfig};
use crate::error::SourceError;

/// One configured Postgres source: its name, its settings and the plan they make, built once.
/// It owns what the source does (check, migrate, run, retire, its side of reconcile); the
/// settings stay plain data.
#[derive(Debug, Clone)]
pub struct PostgresSource {
    pub(crate) name: String,
    pub(crate) config: PostgresSourceConfig,
    pub(crate) plan: Plan,
    /// ` --config <file>`, for the commands its errors print (empty when not known).
    pub(crate) config_flag: String,
}

impl PostgresSource {
    /// Source `name` with `config` (read from `config_file`, for the commands it prints),
    /// its plan checked: table, mapping, skip rule.
    pub fn new(
        name: &str,
        config: PostgresSourceConfig,
        config_file: Option<&std::path::Path>,
    ) -> Result<Self, SourceError> {
        let plan = config.plan()?;
        let config_flag = config_file.map(|path| format!(" --config {}", path.display())).unwrap_or_default();
        Ok(Self { name: name.to_owned(), config, plan, config_flag })
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its settings.
    pub fn config(&self) -> &PostgresSourceConfig {
        &self.config
    }
}
