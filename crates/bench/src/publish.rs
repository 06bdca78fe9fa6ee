//! A one-shot `herald publish` beside the seed's own Python `publish_stage_complete` run as a
//! script (confluent-kafka, the same librdkafka underneath), alternating: the whole process, as
//! a shell step pays it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::stats::Row;
use crate::Services;

/// The seed's script and the interpreter `scripts/services up` installs confluent-kafka into.
const SEED: &str = "tests/interop/seed.py";
const PYTHON: &str = ".cache/venv/bin/python";

/// `rounds` × (herald, herald --idempotent, seed); one row per command with median and range.
pub async fn run(services: &Services, rounds: usize) -> Result<Vec<Row>> {
    if !Path::new(PYTHON).exists() || !Path::new(SEED).exists() {
        bail!("{PYTHON} or {SEED} is missing: run from the repository after `scripts/services up`");
    }
    let topic = format!("bench.{}", services.run_name("publish"));
    herald_kafka::ensure_topic(&services.kafka(), &topic, 3).await.context("creating the topic")?;
    let herald: Vec<String> = [
        services.herald.display().to_string().as_str(),
        "publish",
        "--brokers",
        services.brokers.as_str(),
        "--topic",
        topic.as_str(),
        "--source",
        "OrdersDB",
        "--stage",
        "bronze_ingest",
    ]
    .map(str::to_owned)
    .to_vec();
    let idempotent: Vec<String> = herald.iter().cloned().chain(["--idempotent".to_owned()]).collect();
    let seed = vec![PYTHON.into(), SEED.into(), "publish".into(), services.brokers.clone(), topic.clone()];
    let commands: [(&str, Vec<String>); 3] = [
        ("herald publish", herald),
        ("herald publish --idempotent", idempotent),
        ("the seed's publish_stage_complete (Python)", seed),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); commands.len()];
    for _ in 0..rounds {
        for (index, (name, argv)) in commands.iter().enumerate() {
            let started = Instant::now();
            let status = Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("running {name}"))?;
            let elapsed = started.elapsed();
            if !status.success() {
                bail!("{name} failed: {status}");
            }
            times[index].push(elapsed.as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let seed = median(&times[2]);
    Ok(commands
        .iter()
        .zip(&times)
        .map(|((name, _), values)| {
            let (low, high) = values.iter().fold((f64::MAX, 0.0_f64), |(l, h), v| (l.min(*v), h.max(*v)));
            Row {
                name: format!("one-shot publish: {name}"),
                events: values.len(),
                offered_rate: None,
                throughput: 0.0,
                drain_rate: None,
                latency: None,
                usage: None,
                cpu_percent: None,
                note: format!(
                    "whole process: median {:.0} ms (range {low:.0}–{high:.0}) over {} alternating runs; {:.2}× the seed's script",
                    median(values),
                    values.len(),
                    median(values) / seed
                ),
            }
        })
        .collect())
}
