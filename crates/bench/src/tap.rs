//! What `herald tap` costs the route it watches: one stdout route (to /dev/null) draining the
//! same events with and without a tap attached (`herald tap --json`, its lines counted),
//! alternating. The route is paused as soon as it exists, the tap attached, then resumed, so both
//! arms time the same drain.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::load::{self, Pace};
use crate::process::HeraldProcess;
use crate::stats::{median, Row};
use crate::Services;

/// One drain: events/s, and for a tapped one the lines the tap printed.
struct Drain {
    rate: f64,
    shown: u64,
}

/// `rounds` × (without a tap, with one) over the same `events`.
pub async fn run(services: &Services, events: u64, rounds: usize) -> Result<Vec<Row>> {
    let run = services.run_name("tap");
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 1).await.context("creating the topic")?;
    let producer = load::producer(&services.brokers, Pace::Max)?;
    load::produce(&producer, &topic, &run, 0..events, Pace::Max).await?;
    let (mut plain, mut tapped) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        plain.push(drain(services, &topic, events, &format!("{run}-{round}-plain"), false).await?);
        tapped.push(drain(services, &topic, events, &format!("{run}-{round}-tapped"), true).await?);
    }
    let rates = |drains: &[Drain]| drains.iter().map(|d| d.rate).collect::<Vec<f64>>();
    let (plain_rates, tapped_rates) = (rates(&plain), rates(&tapped));
    let shown: Vec<String> = tapped.iter().map(|d| d.shown.to_string()).collect();
    let listed = |rates: &[f64]| rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    let row = |name: &str, rates: &[f64], note: String| Row {
        name: name.to_owned(),
        events: events as usize,
        throughput: median(rates),
        note,
        ..Row::default()
    };
    Ok(vec![
        row(
            "one stdout route draining, no tap",
            &plain_rates,
            format!("median events/s over {rounds} alternating rounds ({})", listed(&plain_rates)),
        ),
        row(
            "the same with `herald tap --json` attached",
            &tapped_rates,
            format!(
                "({}); {:.2}× without; the tap printed {} of {events} (sampled)",
                listed(&tapped_rates),
                median(&tapped_rates) / median(&plain_rates).max(f64::EPSILON),
                shown.join(", ")
            ),
        ),
    ])
}

async fn drain(services: &Services, topic: &str, events: u64, name: &str, tap: bool) -> Result<Drain> {
    let config = format!(
        "[kafka]\nbootstrap.servers = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"tap\"\n\
         topics = [\"{topic}\"]\ngroup_id = \"{name}\"\nsink = {{ type = \"stdout\" }}\n",
        services.brokers
    );
    let mut herald = HeraldProcess::start(&services.herald, name, &config, None)?;
    let address = herald.admin_address()?;
    // Paused as soon as the route exists, before its group is joined.
    let deadline = Instant::now() + Duration::from_secs(30);
    while herald.admin_post("/routes/tap/pause").is_err() {
        ensure!(Instant::now() < deadline, "the route never appeared in the admin API");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    herald.wait_for_log("Partitions assigned.", Duration::from_secs(60))?;
    let before = herald.delivered()?;
    let shown = Arc::new(AtomicU64::new(0));
    let mut watcher = None;
    if tap {
        let path = std::env::temp_dir().join(format!("herald-bench-{name}-tap.toml"));
        std::fs::write(&path, &config)?;
        let mut child = Command::new(&services.herald)
            .args(["tap", "--json", "--route", "tap", "--admin", &address, "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting herald tap")?;
        let mut stderr = BufReader::new(child.stderr.take().context("the tap's stderr")?);
        let mut line = String::new();
        stderr.read_line(&mut line)?;
        ensure!(line.contains("tapping route"), "the tap did not connect: {line}");
        let stdout = child.stdout.take().context("the tap's stdout")?;
        let counter = Arc::clone(&shown);
        let counting = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("\"outcome\"") {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        watcher = Some((child, path, counting));
    }
    herald.admin_post("/routes/tap/resume")?;
    let started = Instant::now();
    while herald.delivered()? < events {
        ensure!(started.elapsed() < Duration::from_secs(120), "herald did not drain {events} events in 120 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = (events - before) as f64 / started.elapsed().as_secs_f64();
    herald.stop()?;
    if let Some((mut child, path, counting)) = watcher {
        let _ = child.wait_timeout_or_kill();
        let _ = counting.join();
        let _ = std::fs::remove_file(path);
    }
    Ok(Drain { rate, shown: shown.load(Ordering::Relaxed) })
}

/// Ends the tap: it ends by itself when herald stops; killed if it has not within 5 s.
trait WaitOrKill {
    fn wait_timeout_or_kill(&mut self) -> std::io::Result<()>;
}

impl WaitOrKill for std::process::Child {
    fn wait_timeout_or_kill(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.kill()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait().map(drop)
    }
}
