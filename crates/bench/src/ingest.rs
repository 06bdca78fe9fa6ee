//! The ingest listener beside what a job would use instead, in the same run, alternating: a
//! request's latency (one event per request, awaited) against a long-lived Kafka producer's
//! (rdkafka, idempotent, `acks=all`, one event awaited) and a `herald publish` process's (as a
//! shell step runs it: `acks=all`, not idempotent, whose producer id costs up to 500 ms); and
//! throughput (many events in flight: NDJSON requests, concurrent one-event requests) against
//! the producer pipelined and `kcat -P` (the raw tool).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::load;
use crate::process::HeraldProcess;
use crate::stats::{median, Percentiles, Row};
use crate::Services;

/// Requests (or events) per latency sample, per round.
const LATENCY_SAMPLES: usize = 300;
/// `herald publish` runs per round (a process each).
const PUBLISH_SAMPLES: usize = 15;
/// Events per NDJSON request.
const NDJSON_BATCH: usize = 500;
/// NDJSON requests in flight.
const NDJSON_IN_FLIGHT: usize = 4;
/// One-event requests in flight.
const REQUESTS_IN_FLIGHT: usize = 16;

/// Latency and throughput, `rounds` × each arm in turn.
pub async fn run(services: &Services, events: u64, rounds: usize) -> Result<Vec<Row>> {
    let run = services.run_name("ingest");
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 3).await.context("creating the topic")?;
    let config = format!(
        "[kafka]\nbootstrap.servers = \"{}\"\n\n[ingest]\nlisten = \"127.0.0.1:0\"\ntopic = \"{topic}\"\n\
         max_events_per_request = {NDJSON_BATCH}\n",
        services.brokers
    );
    let mut herald = HeraldProcess::start(&services.herald, &run, &config, None)?;
    let address = herald.logged_address("Ingest listener listening.")?;
    let url = format!("http://{address}/events");
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().context("the HTTP client")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &services.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .context("the reference producer")?;
    // Both warm: connections open, the producer's id granted, the listener's probe done.
    wait_until_ready(&client, &address).await?;
    let (_, warm) = load::event(&run, 0);
    post(&client, &url, warm.clone()).await?;
    producer
        .send(FutureRecord::to(&topic).key("warm").payload(&warm), Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;

    let mut latency = Latencies::default();
    let mut throughput = Throughputs::default();
    for round in 0..rounds {
        let base = (round as u64 + 1) * 10_000_000;
        latency.ingest.extend(ingest_latency(&client, &url, &run, base).await?);
        latency.producer.extend(producer_latency(&producer, &topic, &run, base + 1_000_000).await?);
        latency.publish.extend(publish_latency(services, &topic)?);
        throughput.ndjson.push(ingest_ndjson(&client, &url, &run, base + 2_000_000, events).await?);
        throughput.requests.push(ingest_requests(&client, &url, &run, base + 3_000_000, events / 4).await?);
        throughput.producer.push(producer_pipelined(&producer, &topic, &run, base + 4_000_000, events).await?);
        let seconds = load::kcat(&services.brokers, &topic, &run, base + 5_000_000..base + 5_000_000 + events)?;
        throughput.kcat.push(events as f64 / seconds);
    }
    let usage = herald.usage().ok();
    herald.stop()?;
    Ok(rows(&latency, &throughput, events, rounds, usage))
}

#[derive(Default)]
struct Latencies {
    ingest: Vec<f64>,
    producer: Vec<f64>,
    publish: Vec<f64>,
}

#[derive(Default)]
struct Throughputs {
    ndjson: Vec<f64>,
    requests: Vec<f64>,
    producer: Vec<f64>,
    kcat: Vec<f64>,
}

fn rows(
    latency: &Latencies,
    throughput: &Throughputs,
    events: u64,
    rounds: usize,
    usage: Option<crate::process::Usage>,
) -> Vec<Row> {
    let p = |samples: &[f64]| Percentiles::of(samples.to_vec());
    let p99 = |samples: &[f64]| p(samples).map_or(0.0, |p| p.p99);
    let reference = p99(&latency.producer).max(f64::EPSILON);
    let latency_row = |name: &str, samples: &[f64]| Row {
        name: name.to_owned(),
        events: samples.len(),
        latency: p(samples),
        note: format!(
            "one event awaited at a time, {rounds} alternating rounds pooled; p99 {:.2}× the producer's",
            p99(samples) / reference
        ),
        ..Row::default()
    };
    let listed = |rates: &[f64]| rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    let kcat = median(&throughput.kcat).max(f64::EPSILON);
    let rate_row = |name: &str, count: u64, rates: &[f64]| Row {
        name: name.to_owned(),
        events: count as usize,
        throughput: median(rates),
        note: format!(
            "median events/s over {rounds} alternating rounds ({}); {:.2}× kcat",
            listed(rates),
            median(rates) / kcat
        ),
        ..Row::default()
    };
    let mut ndjson = rate_row(
        &format!("ingest: NDJSON, {NDJSON_BATCH} events a request, {NDJSON_IN_FLIGHT} in flight"),
        events,
        &throughput.ndjson,
    );
    ndjson.usage = usage;
    vec![
        latency_row("ingest: POST /events, one event a request (keep-alive)", &latency.ingest),
        latency_row("Kafka producer (rdkafka, idempotent, acks=all), long-lived", &latency.producer),
        latency_row("herald publish (a process per event, acks=all)", &latency.publish),
        ndjson,
        rate_row(
            &format!("ingest: one event a request, {REQUESTS_IN_FLIGHT} in flight"),
            events / 4,
            &throughput.requests,
        ),
        rate_row("Kafka producer pipelined (idempotent, acks=all)", events, &throughput.producer),
        rate_row("kcat -P (acks=all), the raw tool", events, &throughput.kcat),
    ]
}

async fn wait_until_ready(client: &reqwest::Client, address: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = client.get(format!("http://{address}/health")).send().await;
        if health.is_ok_and(|answer| answer.status().is_success()) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the ingest listener never said Kafka is up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> Result<()> {
    let answer = client.post(url).header("content-type", "application/json").body(body).send().await?;
    if !answer.status().is_success() {
        bail!("ingest answered {}: {}", answer.status(), answer.text().await.unwrap_or_default());
    }
    Ok(())
}

async fn ingest_latency(client: &reqwest::Client, url: &str, run: &str, base: u64) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for seq in base..base + LATENCY_SAMPLES as u64 {
        let (_, event) = load::event(run, seq);
        let started = Instant::now();
        post(client, url, event).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

async fn producer_latency(producer: &FutureProducer, topic: &str, run: &str, base: u64) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for seq in base..base + LATENCY_SAMPLES as u64 {
        let (key, event) = load::event(run, seq);
        let started = Instant::now();
        producer
            .send(FutureRecord::to(topic).key(&key).payload(&event), Duration::from_secs(30))
            .await
            .map_err(|(err, _)| err)?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

fn publish_latency(services: &Services, topic: &str) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(PUBLISH_SAMPLES);
    for _ in 0..PUBLISH_SAMPLES {
        let started = Instant::now();
        let status = Command::new(&services.herald)
            .args(["publish", "--brokers", &services.brokers, "--topic", topic, "--source", "s", "--stage", "bench"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running herald publish")?;
        ensure!(status.success(), "herald publish failed: {status}");
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

async fn ingest_ndjson(client: &reqwest::Client, url: &str, run: &str, base: u64, events: u64) -> Result<f64> {
    let bodies: Vec<String> = (base..base + events)
        .collect::<Vec<_>>()
        .chunks(NDJSON_BATCH)
        .map(|seqs| seqs.iter().map(|&seq| load::event(run, seq).1 + "\n").collect())
        .collect();
    let started = Instant::now();
    let queue = Arc::new(tokio::sync::Mutex::new(bodies));
    let workers = (0..NDJSON_IN_FLIGHT).map(|_| {
        let (queue, client, url) = (Arc::clone(&queue), client.clone(), url.to_owned());
        tokio::spawn(async move {
            loop {
                let Some(body) = queue.lock().await.pop() else { return Ok::<_, anyhow::Error>(()) };
                post(&client, &url, body).await?;
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

async fn ingest_requests(client: &reqwest::Client, url: &str, run: &str, base: u64, events: u64) -> Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(base));
    let started = Instant::now();
    let workers = (0..REQUESTS_IN_FLIGHT).map(|_| {
        let (next, client, url, run) = (Arc::clone(&next), client.clone(), url.to_owned(), run.to_owned());
        tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seq >= base + events {
                    return Ok::<_, anyhow::Error>(());
                }
                post(&client, &url, load::event(&run, seq).1).await?;
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

async fn producer_pipelined(producer: &FutureProducer, topic: &str, run: &str, base: u64, events: u64) -> Result<f64> {
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(events as usize);
    for seq in base..base + events {
        let (key, event) = load::event(run, seq);
        let record = FutureRecord::to(topic).key(&key).payload(&event);
        deliveries.push(producer.send_result(record).map_err(|(err, _)| err)?);
    }
    for delivery in futures::future::join_all(deliveries).await {
        delivery.context("the producer went away")?.map_err(|(err, _)| err)?;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}
