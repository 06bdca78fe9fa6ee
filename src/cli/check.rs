//! `herald check`: is the config valid, and can herald reach everything it names?

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use anyhow::Result;
use clap::Args;
use herald_kafka::partition_counts;
use herald_sdk::error_chain;

use crate::registry;

/// Arguments of `herald check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file.
    #[arg(long, short, env = "HERALD_CONFIG", default_value = "config/herald.toml")]
    pub config: PathBuf,
    /// Only validate the file and every sink's settings; connect to nothing.
    #[arg(long)]
    pub offline: bool,
    /// Also say what a reload from the config in this file to `--config` would do (restart,
    /// start, stop; what it refuses; which routes start a consumer group of their own and read
    /// from `start_from`), before sending SIGHUP.
    #[arg(long, value_name = "OLD_CONFIG")]
    pub diff: Option<PathBuf>,
    /// How long to wait for Kafka before calling it unreachable.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

/// Collects one line per thing checked.
struct Report {
    problems: usize,
}

impl Report {
    /// Every line goes through [`herald_config::redact`]: a sink's error may quote its URL.
    fn line(&self, mark: &str, what: &str, detail: impl std::fmt::Display) {
        let line = format!("{mark:<5} {what:<28} {detail}");
        println!("{}", herald_config::redact(&line));
    }

    fn ok(&self, what: &str, detail: impl std::fmt::Display) {
        self.line("ok", what, detail);
    }

    fn warn(&self, what: &str, detail: impl std::fmt::Display) {
        self.line("warn", what, detail);
    }

    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.problems += 1;
        self.line("FAIL", what, detail);
    }

    fn finish(&self) -> ExitCode {
        if self.problems == 0 {
            println!("\nAll checks passed.");
            ExitCode::SUCCESS
        } else {
            println!("\n{} problem{} found.", self.problems, if self.problems == 1 { "" } else { "s" });
            ExitCode::FAILURE
        }
    }
}

/// What a reload from the config in `old` to `config` (read from `path`) would do.
fn diff_from(old: &std::path::Path, path: &std::path::Path, config: &Config, report: &mut Report) {
    let running = match Config::load(old) {
        Ok(running) => running,
        Err(err) => {
            return report
                .fail("reload", format!("cannot read --diff {}: {}", old.display(), error_chain(&err).join(": ")))
        }
    };
    match super::reload::plan(&running, config, path, &super::reload::Failed::default()) {
        Ok(plan) => {
            report.ok("reload", format!("from {}: {}", old.display(), plan.summary()));
            for warning in &plan.warnings {
                report.warn("reload", warning);
            }
        }
        Err(why) => report.fail("reload", format!("from {}: refused: {why}", old.display())),
    }
}

pub async fn check(args: CheckArgs) -> Result<ExitCode> {
    let mut report = Report { problems: 0 };
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            report.fail("config", error_chain(&err).join(": "));
            println!("\n1 problem found.");
            return Ok(ExitCode::FAILURE);
        }
    };
    report.ok("config", format!("{} ({} routes)", args.config.display(), config.routes.len()));
    if let Some(why) = config.nothing_to_run(&args.config) {
        report.fail("config", why);
    }
    // What `herald run` reads besides the file: the admin token's file and Kafka's key and
    // certificate files.
    if config.admin.token.is_some() || config.admin.token_file.is_some() {
        match config.admin.resolve_token() {
            Ok(_) => report.ok("admin token", "readable and long enough"),
            Err(err) => report.fail("admin token", format!("{err} (admin.token_file)")),
        }
    }
    if config.ingest.token_file.is_some() {
        match config.ingest.resolve_token() {
            Ok(_) => report.ok("ingest token", "readable and long enough"),
            Err(err) => report.fail("ingest token", err.to_string()),
        }
    }
    for (property, file) in
        config.kafka.iter().filter(|(name, _)| name.ends_with(".location") || name.ends_with(".keytab"))
    {
        match std::fs::File::open(file) {
            Ok(_) => report.ok("kafka", format!("`{property}` {file} is readable")),
            Err(err) => report.fail("kafka", format!("`{property}` {file}: {err}")),
        }
    }
    if let Some(old) = &args.diff {
        diff_from(old, &args.config, &config, &mut report);
    }
    // Each source's own errors are reported below; this adds what only shows across sources.
    if config.sources.iter().all(|spec| registry::source(spec).is_ok()) {
        if let Err(err) = registry::sources(&config.sources) {
            report.fail("sources", format!("{err:#}"));
        }
    }
    if !config.expect.is_empty() {
        // Checked when the file was loaded.
        let rules = config.expect.len();
        report.ok("expectations", format!("{rules} rules valid; alerts on `{}`", config.expectations.topic));
    }
    if args.offline {
        for route in &config.routes {
            let label = format!("route {}", route.name);
            match registry::validate(route) {
                Ok(()) => report.ok(&label, format!("sink `{}` settings valid", route.sink.kind)),
                Err(err) => report.fail(&label, format!("{err:#}")),
            }
        }
        for spec in &config.sources {
            match registry::source(spec) {
                Ok(_) => report.ok(&format!("source {}", spec.name), "settings valid"),
                Err(err) => report.fail(&format!("source {}", spec.name), format!("{err:#}")),
            }
        }
        return Ok(report.finish());
    }

    let topics: Vec<String> = config
        .routes
        .iter()
        .flat_map(|route| route.topics.iter().filter(|topic| !topic.starts_with('^')).cloned())
        .collect();
    let props = config.kafka.clone();
    let timeout = args.timeout;
    let lookup = tokio::task::spawn_blocking(move || partition_counts(&props, &topics, timeout)).await?;
    let brokers = config.kafka.bootstrap_servers();
    let partitions = match lookup {
        Ok(partitions) => {
            report.ok("kafka", format!("{brokers} answered"));
            Some(partitions)
        }
        Err(err) => {
            report.fail("kafka", format!("cannot reach {brokers}: {}", error_chain(&err).join(": ")));
            None
        }
    };

    for route in &config.routes {
        let label = format!("route {}", route.name);
        if let Some(partitions) = &partitions {
            for topic in &route.topics {
                match partitions.iter().find(|(name, _)| name == topic) {
                    Some((_, 0)) => report.fail(&label, format!("topic `{topic}` does not exist")),
                    Some((_, n)) => report.ok(&label, format!("topic `{topic}`: {n} partitions")),
                    None => report.ok(&label, format!("topics matching `{topic}` (regex)")),
                }
            }
        }
        match registry::build(route, herald_sdk::Purpose::Check).await {
            Ok(mut sink) => match sink.healthcheck().await {
                Ok(()) => {
                    report.ok(&label, format!("sink `{}` reachable", route.sink.kind));
                    for warning in sink.warnings() {
                        report.warn(&label, warning);
                    }
                }
                Err(err) => {
                    report.fail(&label, format!("sink `{}`: {}", route.sink.kind, error_chain(&err).join(": ")))
                }
            },
            Err(err) => report.fail(&label, format!("{err:#}")),
        }
    }

    if let Some(listen) = config.admin.listen {
        // Bound and let go at once: `herald run` would fail on a taken address.
        match tokio::net::TcpListener::bind(listen).await {
            Ok(_) => report.ok("admin", format!("{listen} is free")),
            Err(err) => report.fail(
                "admin",
                format!("cannot listen on {listen} (admin.listen): {err}; is another herald running on it?"),
            ),
        }
    }
    if let Some(listen) = config.ingest.listen {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(_) => report.ok("ingest", format!("{listen} is free; events go to `{}`", config.ingest.topic)),
            Err(err) => report.fail(
                "ingest",
                format!("cannot listen on {listen} (ingest.listen): {err}; is another herald running on it?"),
            ),
        }
    }

    for spec in &config.sources {
        let label = format!("source {}", spec.name);
        match registry::source(spec) {
            Ok(source) => match source.check(&config.kafka).await {
                Ok(found) => report.ok(&label, found),
                Err(err) => report.fail(&label, error_chain(err.as_ref()).join(": ")),
            },
            Err(err) => report.fail(&label, format!("{err:#}")),
        }
    }
    Ok(report.finish())
}
