//! `herald-bench`: measures the herald binary against the local services (`scripts/services up`)
//! — throughput per sink, send → visible latency as each sink's reader sees it, the Postgres
//! source, memory and CPU, start-up, and the polling baseline herald replaces. It prints
//! markdown tables; `all` also writes them, a JSON copy and an SVG plot into `--out`.
//!
//! ```sh
//! cargo build --release -p herald -p herald-bench
//! target/release/herald-bench all --out docs/bench
//! target/release/herald-bench latency redis --rate 1000 --duration 10s
//! ```

mod baseline;
mod burst;
mod expect;
mod failover;
mod ingest;
mod limit;
mod load;
mod observe;
mod plot;
mod process;
mod publish;
mod recovery;
mod restart;
mod routes;
mod sinks;
mod source;
mod startup;
mod stats;
mod tap;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use herald_kafka::KafkaProperties;

use crate::load::Pace;
use crate::sinks::SinkKind;
use crate::stats::Row;

/// Benchmarks of herald against real services.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The herald binary to measure.
    #[arg(long, global = true, default_value = "target/release/herald")]
    herald: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, global = true, env = "HERALD_BENCH_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Postgres URL.
    #[arg(
        long,
        global = true,
        env = "HERALD_PG_URL",
        default_value = "postgres://herald:herald@127.0.0.1:5432/herald"
    )]
    postgres: String,
    /// Redis URL.
    #[arg(long, global = true, env = "HERALD_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// SNS/SQS endpoint (the emulator).
    #[arg(long, global = true, env = "HERALD_SNS_ENDPOINT", default_value = "http://127.0.0.1:4566")]
    aws_endpoint: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Events/s through one sink: N events produced as fast as possible.
    Throughput {
        /// The sink.
        sink: SinkKind,
        /// How many events.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
    },
    /// Send → visible latency through one sink at a set rate.
    Latency {
        /// The sink.
        sink: SinkKind,
        /// Events per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// How long to send.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Insert committed → Kafka consumer latency of the Postgres source.
    Source {
        /// How the source captures changes.
        #[arg(long, value_enum, default_value = "trigger")]
        capture: source::Capture,
        /// Rows inserted per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// How long to insert.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// What capture costs the watched table's writers, single-row and one bulk `INSERT …
    /// SELECT`: insert rate and Postgres CPU with no capture, trigger capture, the row-level
    /// trigger of earlier versions, WAL capture and pg_recvlogical, alternating.
    SourceOverhead {
        /// Single-row transactions per run.
        #[arg(long, default_value_t = 5_000)]
        rows: u64,
        /// Rows of the one `INSERT … SELECT` per run, after the single rows.
        #[arg(long, default_value_t = 100_000)]
        bulk_rows: u64,
        /// Rounds of the arms.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// herald next to jobs polling the status table every 1 s and 5 s, on the same events.
    Baseline {
        /// Events per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// How long to send.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// What expectations cost: RSS and idle CPU with N (source, stage) pairs tracked, beside the
    /// same herald without them, alternating.
    Expect {
        /// Pairs tracked.
        #[arg(long, default_value_t = 10_000)]
        pairs: usize,
        /// Rounds of (without, with).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Many routes beside one: idle RSS, threads and CPU, SIGTERM → exit, and a backlog drained.
    Routes {
        /// Routes (one topic and group each).
        #[arg(long, default_value_t = 50)]
        routes: usize,
        /// Events per topic of the many-routes run (the one-route run drains the same total); 0: no drain.
        #[arg(long, default_value_t = 6_000)]
        backlog: u64,
    },
    /// herald beside the raw tool on the same data, alternating: one stdout route against
    /// `kcat -C -e`, both to /dev/null.
    LimitStdout {
        /// Events in the topic.
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// Rounds of (kcat, herald).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Pad each event to this many bytes (0: its natural size, about 230).
        #[arg(long, default_value_t = 0)]
        event_bytes: usize,
    },
    /// herald's Redis route beside the same commands pipelined straight into Redis, alternating.
    LimitRedis {
        /// Events.
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// Rounds of (pipelined, herald).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// herald's exactly-once Postgres append beside one `\copy` of the same rows through psql,
    /// alternating.
    LimitPostgres {
        /// Events.
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// Rounds of (herald, psql).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The route's `batch.max_events` (unset: the sink's default, 5,000).
        #[arg(long)]
        max_events: Option<usize>,
    },
    /// A one-shot `herald publish` beside the seed's Python script, alternating.
    Publish {
        /// Rounds of (herald, herald --idempotent, seed).
        #[arg(long, default_value_t = 9)]
        rounds: usize,
    },
    /// Start-up time to all sinks connected, and idle memory.
    Startup,
    /// A herald SIGKILLed and restarted at once: exec → first delivery, with dynamic and with
    /// static group membership (`[runtime] instance_id`), alternating.
    Restart {
        /// Rounds of (dynamic, static).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A database failover under a Postgres route, the standby behind: endpoint moved → the
    /// lost events written again, beside the route draining as many into a healthy server,
    /// alternating.
    Failover {
        /// Events the failover loses (written on the primary alone).
        #[arg(long, default_value_t = 5_000)]
        lost: u64,
        /// Rounds of (failover, drain).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// After an incident, into Postgres: a replay (`offsets reset --to-earliest`) and a redrive
    /// of as many dead letters, beside the route's own drain, in turn.
    Recovery {
        /// Events per measure.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Rounds of (drain, replay, redrive).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// What a tap costs the route it watches: one stdout route draining with and without
    /// `herald tap` attached, alternating.
    Tap {
        /// Events per drain.
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// Rounds of (without, with).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A burst into a status table under WAL and trigger capture (one `INSERT … SELECT`, and
    /// single-row transactions), beside pg_recvlogical and kcat, alternating.
    SourceBurst {
        /// Rows per burst.
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        /// Rounds of every shape and mode.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// The ingest listener: a request's latency and throughput, beside a long-lived Kafka
    /// producer, `herald publish` and `kcat -P`, alternating.
    Ingest {
        /// Events per throughput measure (a quarter of it for one-event requests).
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Rounds of every arm.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Draws baseline.svg again from a results.json that `all` wrote.
    Plot {
        /// The results.json.
        results: PathBuf,
    },
    /// Every measure of docs/benchmarks.md; writes results.md, results.json and baseline.svg.
    All {
        /// Where to write the results.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
}

/// Where the services are, and the herald binary.
pub struct Services {
    herald: PathBuf,
    brokers: String,
    postgres: String,
    redis: String,
    aws_endpoint: String,
    runs: AtomicU32,
}

impl Services {
    /// A name unique to this run of `what`: topics, schemas, channels and groups derive from it.
    pub fn run_name(&self, what: &str) -> String {
        format!("{what}-{}-{}", std::process::id(), self.runs.fetch_add(1, Ordering::Relaxed))
    }

    /// The Postgres schema of the run named `run`: a valid identifier, unique like the name.
    pub fn schema_for(run: &str) -> String {
        format!("bench_{}", run.replace(['-', '.'], "_"))
    }

    /// Kafka client properties for the broker.
    pub fn kafka(&self) -> KafkaProperties {
        let mut props = KafkaProperties::default();
        props.set("bootstrap.servers", self.brokers.clone());
        props
    }

    /// AWS SDK settings for the emulator.
    pub async fn aws(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.aws_endpoint)
            .credentials_provider(aws_sdk_sns::config::Credentials::new("test", "test", None, None, "herald-bench"))
            .load()
            .await
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let services = Services {
        herald: cli.herald,
        brokers: cli.brokers,
        postgres: cli.postgres,
        redis: cli.redis,
        aws_endpoint: cli.aws_endpoint,
        runs: AtomicU32::new(0),
    };
    let events_in = |rate: f64, duration: Duration| (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    println!("{}", Row::HEADER);
    let rows = match cli.command {
        Command::Throughput { sink, events } => vec![sinks::run(&services, sink, events, Pace::Max).await?],
        Command::Latency { sink, rate, duration } => {
            vec![sinks::run(&services, sink, events_in(rate, duration), Pace::Rate(rate)).await?]
        }
        Command::Source { capture, rate, duration } => {
            vec![source::run(&services, capture, rate, events_in(rate, duration)).await?]
        }
        Command::SourceOverhead { rows, bulk_rows, rounds } => {
            source::writer_overhead(&services, rows, bulk_rows, rounds).await?
        }
        Command::Baseline { rate, duration } => baseline::run(&services, rate, events_in(rate, duration)).await?,
        Command::Startup => vec![startup::run(&services).await?],
        Command::Restart { rounds } => restart::run(&services, rounds).await?,
        Command::Failover { lost, rounds } => failover::run(&services, lost, rounds).await?,
        Command::Recovery { events, rounds } => recovery::run(&services, events, rounds).await?,
        Command::Tap { events, rounds } => tap::run(&services, events, rounds).await?,
        Command::Ingest { events, rounds } => ingest::run(&services, events, rounds).await?,
        Command::SourceBurst { rows, rounds } => burst::run(&services, rows, rounds).await?,
        Command::Expect { pairs, rounds } => expect::run(&services, pairs, rounds).await?,
        Command::Publish { rounds } => publish::run(&services, rounds).await?,
        Command::LimitStdout { events, rounds, event_bytes } => {
            limit::stdout(&services, events, rounds, event_bytes).await?
        }
        Command::LimitRedis { events, rounds } => limit::redis(&services, events, rounds).await?,
        Command::LimitPostgres { events, rounds, max_events } => {
            limit::postgres(&services, events, rounds, max_events).await?
        }
        Command::Routes { routes, backlog } => routes::run(&services, routes, backlog).await?,
        Command::All { out } => return all(&services, &out).await,
        Command::Plot { results } => return plot_baseline(&results),
    };
    for row in &rows {
        println!("{}", row.markdown());
    }
    Ok(())
}

/// The title of the baseline plot.
const BASELINE_TITLE: &str = "A stage event, 10 events/s: herald vs polling the status table";

/// Draws baseline.svg, next to `results`, from the baseline rows in it.
fn plot_baseline(results: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(results).with_context(|| format!("reading {}", results.display()))?;
    let rows: Vec<Row> =
        serde_json::from_str(&text).with_context(|| format!("{} is not results.json", results.display()))?;
    let baseline: Vec<Row> =
        rows.into_iter().filter(|row| row.name.starts_with("herald → ") || row.name.starts_with("poll ")).collect();
    anyhow::ensure!(!baseline.is_empty(), "{} holds no baseline rows", results.display());
    let out = results.with_file_name("baseline.svg");
    plot::latency_bars(&baseline, BASELINE_TITLE, &out)?;
    eprintln!("herald-bench: wrote {}", out.display());
    Ok(())
}

/// Runs every measure, printing each row as it comes, then writes the files.
async fn all(services: &Services, out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    // A measure that fails is reported and the others still run.
    let mut record = |name: &str, result: Result<Vec<Row>>| match result {
        Ok(new) => {
            for row in &new {
                println!("{}", row.markdown());
            }
            rows.extend(new);
        }
        Err(err) => {
            eprintln!("herald-bench: {name} failed: {err:#}");
            failures.push(format!("{name}: {err}"));
        }
    };
    record("startup", startup::run(services).await.map(|row| vec![row]));
    // Several seconds of load per sink, so the start of the run (fetch ramp-up, the first
    // batches) is a small part of the window.
    for (sink, events) in [
        (SinkKind::Stdout, 1_000_000),
        (SinkKind::PostgresAppend, 300_000),
        (SinkKind::PostgresUpsert, 300_000),
        (SinkKind::Redis, 300_000),
        (SinkKind::SnsSingle, 1_000),
        (SinkKind::Sns, 2_000),
        (SinkKind::Http, 300_000),
        (SinkKind::HttpEvent, 2_000),
        (SinkKind::HttpEventParallel, 10_000),
        (SinkKind::Exec, 1_000_000),
    ] {
        record("throughput", sinks::run(services, sink, events, Pace::Max).await.map(|row| vec![row]));
    }
    for sink in [SinkKind::Stdout, SinkKind::Redis, SinkKind::PostgresAppend, SinkKind::PostgresUpsert] {
        record("latency", sinks::run(services, sink, 10_000, Pace::Rate(1000.0)).await.map(|row| vec![row]));
    }
    record("sns latency", sinks::run(services, SinkKind::Sns, 500, Pace::Rate(50.0)).await.map(|row| vec![row]));
    for capture in [source::Capture::Trigger, source::Capture::Wal] {
        record("source", source::run(services, capture, 100.0, 1000).await.map(|row| vec![row]));
        record("source", source::run(services, capture, 1000.0, 10_000).await.map(|row| vec![row]));
    }
    record("source overhead", source::writer_overhead(services, 5_000, 100_000, 3).await);
    let baseline = baseline::run(services, 10.0, 300).await;
    if let Ok(baseline_rows) = &baseline {
        plot::latency_bars(baseline_rows, BASELINE_TITLE, &out.join("baseline.svg"))?;
    }
    record("baseline", baseline);

    let mut markdown = format!("{}\n", Row::HEADER);
    for row in &rows {
        markdown.push_str(&row.markdown());
        markdown.push('\n');
    }
    std::fs::write(out.join("results.md"), markdown).context("writing results.md")?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&rows)?).context("writing results.json")?;
    eprintln!("herald-bench: wrote results.md, results.json and baseline.svg to {}", out.display());
    anyhow::ensure!(failures.is_empty(), "{} measure(s) failed: {}", failures.len(), failures.join("; "));
    Ok(())
}
