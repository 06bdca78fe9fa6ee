//! `herald reconcile`: does a status table agree with a topic? The evidence a team needs before
//! it switches a poller off or retires a table. The comparison is herald-reconcile's; this
//! command picks the subject from the config and prints the report.
//!
//! Exit 0 when they agree, 3 when they differ (after `--repair`: when something is left that it
//! could not repair), 1 on error, 124 when reading the topic outlasts `--timeout`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::Args;
use herald_board::render_divergences;
use herald_reconcile::{ReconcileError, Report, Subject};
use herald_sdk::printable::printable;

use crate::config::Config;
use crate::registry;

/// Exit code when table and topic differ.
const EXIT_DIVERGENT: u8 = 3;
/// Exit code when reading the topic outlasted `--timeout`.
const EXIT_TIMEOUT: u8 = 124;

/// Arguments of `herald reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The config file that names the source or route.
    #[arg(long, short, env = "HERALD_CONFIG")]
    pub config: PathBuf,
    /// Compare a Postgres source's table with the topic it publishes to.
    #[arg(long, value_name = "NAME", required_unless_present = "route", conflicts_with = "route")]
    pub source: Option<String>,
    /// Compare a Postgres sink route's table with the topics it reads.
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// The window: pairs whose latest row and latest event are both older are not compared.
    #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
    pub since: Duration,
    /// Make them agree where herald can: a source publishes the rows the topic lacks or has
    /// older (exactly once: a second repair publishes nothing); a route writes the events the
    /// table lacks or has older, as the sink writes them.
    #[arg(long)]
    pub repair: bool,
    /// Print one JSON object: the divergences, what was repaired, what was left out.
    #[arg(long)]
    pub json: bool,
    /// Give up reading the topic after this long (exit 124).
    #[arg(long, default_value = "120s", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

pub async fn reconcile(args: ReconcileArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let since = Utc::now() - chrono::Duration::from_std(args.since).context("--since is too large")?;
    let subject = match (&args.source, &args.route) {
        (Some(name), _) => source_subject(&config, name, &args.config)?,
        (None, Some(name)) => route_subject(&config, name, &args.config)?,
        (None, None) => bail!("say what to reconcile: --source NAME or --route NAME"),
    };
    let report = match herald_reconcile::reconcile(&config.kafka, &subject, since, args.timeout, args.repair).await {
        Ok(report) => report,
        Err(err @ ReconcileError::TimedOut { .. }) => {
            eprintln!("herald reconcile: {err}");
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        Err(err) => return Err(err).with_context(|| subject.label()),
    };
    print_report(&report, args.json, args.repair)?;
    let left = if args.repair { report.unrepairable } else { report.divergences.len() + report.unreadable.len() };
    Ok(if left == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_DIVERGENT) })
}

/// The subject of `--source NAME`: a Postgres `[[source]]`.
fn source_subject(config: &Config, name: &str, path: &std::path::Path) -> Result<Subject> {
    let spec = super::find_source(config, name, path)?;
    match registry::source_subject(spec)? {
        Some(subject) => Ok(subject),
        None => bail!("source `{name}` is of type `{}`; reconcile compares Postgres tables", spec.kind),
    }
}

/// The subject of `--route NAME`: a `[[route]]` with a Postgres sink.
fn route_subject(config: &Config, name: &str, path: &std::path::Path) -> Result<Subject> {
    let route = super::find_route(config, name, path)?;
    match registry::route_subject(route)? {
        Some(subject) => Ok(subject),
        None => bail!("route `{name}` writes to a `{}` sink; reconcile compares Postgres tables", route.sink.kind),
    }
}

fn print_report(report: &Report, json: bool, repair: bool) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(report).context("encoding the report")?;
        println!("{}", herald_sdk::printable::json(&text));
        return Ok(());
    }
    let window = format!("since {}", report.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let (table, topics) = (printable(&report.table, 128), printable(&report.topics.join(", "), 256).into_owned());
    for row in &report.unreadable {
        println!(
            "cannot compare {}/{}: its newest row cannot become an event: {}",
            printable(&row.source, 64),
            printable(&row.stage, 64),
            printable(&row.reason, 256)
        );
    }
    if report.divergences.is_empty() && report.unreadable.is_empty() {
        println!(
            "{}: table {table} and topic {topics} agree on {} (source, stage) pairs {window}.",
            report.subject, report.pairs
        );
    } else {
        print!("{}", render_divergences(&report.divergences, Utc::now()));
        println!(
            "\n{}: {} of {} (source, stage) pairs differ between table {table} and topic {topics} {window}{}.",
            report.subject,
            report.divergences.len() + report.unreadable.len(),
            report.pairs,
            if report.unreadable.is_empty() {
                String::new()
            } else {
                format!(" ({} of them cannot be compared)", report.unreadable.len())
            }
        );
        if repair {
            print!("Repaired {}", report.repaired);
            if report.cannot_repair.is_empty() {
                println!(".");
            } else {
                println!("; {} cannot be repaired from this side:", report.unrepairable);
            }
        } else if report.repairable > 0 {
            println!("`--repair` makes {} of them agree (where this side lacks or is older).", report.repairable);
        }
        if !repair && !report.cannot_repair.is_empty() {
            println!("{} cannot be repaired from this side:", report.unrepairable);
        }
        for why in &report.cannot_repair {
            println!("  {}", printable(why, 512));
        }
    }
    if report.in_flight > 0 {
        println!("Not compared: {} events the route has not reached yet.", report.in_flight);
    }
    if !report.refused.is_empty() {
        let queue = report.dead_letter_topic.as_deref();
        println!(
            "Not compared: {} events the table refused (recorded in herald_rejections){}:",
            report.refused.len(),
            match queue {
                Some(queue) =>
                    format!("; {} of them in dead-letter topic {}", report.dead_lettered, printable(queue, 128)),
                None => "; the route has no dead_letter_topic, so it stops on them until one is set".to_owned(),
            }
        );
        for refused in &report.refused {
            let letter = match (queue, refused.in_dead_letter_topic) {
                (_, true) => "in the dead-letter topic",
                (Some(_), false) => "NOT in the dead-letter topic yet (the route sends it when it reads it again)",
                (None, false) => "no dead-letter topic",
            };
            println!(
                "  {}:{}@{}: {} ({letter})",
                printable(&refused.topic, 128),
                refused.partition,
                refused.offset,
                printable(&refused.reason, 256)
            );
        }
    }
    Ok(())
}
