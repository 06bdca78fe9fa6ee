//! The load: stage events produced to Kafka as fast as possible or at a set rate, each numbered
//! (`records` = its sequence number) and remembered by send time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

/// How many distinct sources (Kafka keys) the events come from.
pub const SOURCES: u64 = 100;

/// How events are sent.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the producer can.
    Max,
    /// This many events per second.
    Rate(f64),
}

/// The stage event numbered `seq`, and its key.
pub fn event(run: &str, seq: u64) -> (String, String) {
    let source = format!("source-{}", seq % SOURCES);
    let timestamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f");
    let json = format!(
        r#"{{"event":"STAGE_COMPLETE","stage":"bench","source":"{source}","records":{seq},"timestamp":"{timestamp}","status":"SUCCESS","run":"{run}"}}"#
    );
    (source, json)
}

/// A producer tuned for `pace`: batching when flat out, no linger at a set rate.
pub fn producer(brokers: &str, pace: Pace) -> Result<FutureProducer> {
    let linger = match pace {
        Pace::Max => "10",
        Pace::Rate(_) => "0",
    };
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger)
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()
        .context("creating the load producer")
}

/// Sends the events numbered `seqs` to `topic` at `pace`, and returns each one's send time, in
/// order, once the broker has acknowledged them all.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    run: &str,
    seqs: std::ops::Range<u64>,
    pace: Pace,
) -> Result<Vec<Instant>> {
    let count = (seqs.end - seqs.start) as usize;
    let mut sent = Vec::with_capacity(count);
    let mut deliveries = Vec::with_capacity(count);
    let start = tokio::time::Instant::now();
    for seq in seqs.clone() {
        if let Pace::Rate(rate) = pace {
            tokio::time::sleep_until(start + Duration::from_secs_f64((seq - seqs.start) as f64 / rate)).await;
        }
        let (key, json) = event(run, seq);
        loop {
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&json)) {
                Ok(delivery) => {
                    sent.push(Instant::now());
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((err, _)) => return Err(err).context("queueing an event"),
            }
        }
    }
    for delivery in join_all(deliveries).await {
        match delivery {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => return Err(err).context("producing an event"),
            Err(_) => anyhow::bail!("the producer dropped an event"),
        }
    }
    producer.flush(Duration::from_secs(30)).context("flushing the load producer")?;
    Ok(sent)
}

/// The sequence number of warm-up events, outside any run's range.
pub const WARMUP_SEQ: u64 = 1 << 40;

/// Sends one warm-up event and waits for the broker's acknowledgement.
pub async fn send_warmup(producer: &FutureProducer, topic: &str, run: &str) -> Result<()> {
    let (key, json) = event(run, WARMUP_SEQ);
    producer
        .send(FutureRecord::to(topic).key(&key).payload(&json), Duration::from_secs(10))
        .await
        .map_err(|(err, _)| err)
        .context("producing the warm-up event")?;
    Ok(())
}

/// `kcat -P` of the events numbered `seqs` (key and value per line, `acks=all`) from a file,
/// timed exec to exit: the raw tool's floor. The seconds it took.
pub fn kcat(brokers: &str, topic: &str, run: &str, seqs: std::ops::Range<u64>) -> Result<f64> {
    use std::io::Write;
    let path = std::env::temp_dir().join(format!("herald-bench-{run}-{}.txt", seqs.start));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for seq in seqs {
        let (key, event) = event(run, seq);
        writeln!(file, "{key}\t{event}")?;
    }
    file.flush()?;
    drop(file);
    let started = Instant::now();
    let status = std::process::Command::new("kcat")
        .args(["-P", "-b", brokers, "-t", topic, "-K", "\t", "-X", "acks=all", "-l"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running kcat (apt-get install kcat)")?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    anyhow::ensure!(status.success(), "kcat failed: {status}");
    Ok(seconds)
}
