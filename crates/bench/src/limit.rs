//! herald beside the raw tool on the same data in the same run, alternating: `kcat -C -e`
//! draining a topic to /dev/null against one stdout route draining it to /dev/null.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::load::{self, Pace};
use crate::process::HeraldProcess;
use crate::stats::Row;
use crate::Services;

/// One drain: events/s and CPU seconds.
#[derive(Debug, Clone, Copy)]
struct Drain {
    rate: f64,
    cpu_seconds: f64,
}

/// `rounds` × (kcat, herald) over the same `events` events; a row per tool with medians, ranges
/// and the ratio. `event_bytes` above an event's natural size (about 230 bytes) pads its `run`
/// field up to that size.
pub async fn stdout(services: &Services, events: u64, rounds: usize, event_bytes: usize) -> Result<Vec<Row>> {
    let run = services.run_name("limit-stdout");
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 1).await.context("creating the topic")?;
    let producer = load::producer(&services.brokers, Pace::Max)?;
    let natural = load::event(&run, events).1.len();
    let padded_run = format!("{run}{}", "x".repeat(event_bytes.saturating_sub(natural)));
    load::produce(&producer, &topic, &padded_run, 0..events, Pace::Max).await?;
    let (mut kcat, mut herald) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        kcat.push(drain_kcat(services, &topic, events)?);
        let name = format!("{run}-{round}");
        herald.push(drain_herald_into(services, &topic, events, &name, "{ type = \"stdout\" }", "").await?);
    }
    Ok(compare(events, rounds, ("kcat -C -e → /dev/null", &kcat), ("herald, one stdout route → /dev/null", &herald)))
}

/// Two rows, the reference and herald, with medians, ranges and herald's ratios to the reference.
fn compare(events: u64, rounds: usize, reference: (&str, &[Drain]), herald: (&str, &[Drain])) -> Vec<Row> {
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (values[values.len() / 2], values[0], values[values.len() - 1])
    };
    let summarize = |drains: &[Drain]| {
        let (mut rates, mut cpu): (Vec<f64>, Vec<f64>) = drains.iter().map(|d| (d.rate, d.cpu_seconds)).unzip();
        (median(&mut rates), median(&mut cpu))
    };
    let (k_rate, k_cpu) = summarize(reference.1);
    let (h_rate, h_cpu) = summarize(herald.1);
    let row =
        |name: &str, (rate, low, high): (f64, f64, f64), (cpu, cpu_low, cpu_high): (f64, f64, f64), note: String| Row {
            name: name.to_owned(),
            events: events as usize,
            throughput: rate,
            note: {
                let cpu = if cpu.is_nan() {
                    "its CPU not measured (it runs in the harness)".to_owned()
                } else {
                    format!("{cpu:.2} CPU-s ({cpu_low:.2}–{cpu_high:.2})")
                };
                format!("median {rate:.0} events/s ({low:.0}–{high:.0}), {cpu}, {rounds} alternating rounds; {note}")
            },
            ..Row::default()
        };
    vec![
        row(reference.0, k_rate, k_cpu, "the reference".into()),
        row(
            herald.0,
            h_rate,
            h_cpu,
            if k_cpu.0.is_nan() {
                format!("{:.2}× the reference's events/s", h_rate.0 / k_rate.0)
            } else {
                format!(
                    "{:.2}× the reference's events/s, {:.2}× its CPU per event",
                    h_rate.0 / k_rate.0,
                    h_cpu.0 / k_cpu.0
                )
            },
        ),
    ]
}

/// Redis: herald draining `events` from Kafka into `PUBLISH` on a channel per source and the
/// latest key per source and stage, beside the same commands pipelined straight into Redis from
/// this process (batches of 1,000, as herald's), alternating.
pub async fn redis(services: &Services, events: u64, rounds: usize) -> Result<Vec<Row>> {
    let run = services.run_name("limit-redis");
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 1).await.context("creating the topic")?;
    let producer = load::producer(&services.brokers, Pace::Max)?;
    load::produce(&producer, &topic, &run, 0..events, Pace::Max).await?;
    let client = redis::Client::open(services.redis.as_str()).context("the Redis URL")?;
    let mut connection = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let (mut direct, mut herald) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for &seq in chunk {
                let (source, json) = load::event(&run, seq);
                pipe.cmd("PUBLISH").arg(format!("bench.{run}.{source}")).arg(&json).ignore();
                pipe.cmd("SET")
                    .arg(format!("bench:{run}:direct:{source}:bench"))
                    .arg(&json)
                    .arg("EX")
                    .arg(600)
                    .ignore();
            }
            let () = pipe.query_async(&mut connection).await.context("the pipelined reference")?;
        }
        direct.push(Drain { rate: events as f64 / started.elapsed().as_secs_f64(), cpu_seconds: f64::NAN });
        let sink = format!(
            "{{ type = \"redis\", url = \"{}\", publish = {{ channel = \"bench.{run}.{{source}}\" }}, latest_key = {{ key = \"bench:{run}:{round}:{{source}}:{{stage}}\", ttl = \"10m\" }} }}",
            services.redis
        );
        herald.push(drain_herald_into(services, &topic, events, &format!("{run}-{round}"), &sink, "").await?);
    }
    Ok(compare(
        events,
        rounds,
        ("the same PUBLISH + SET pipelined from one client, 1,000 events a round trip", &direct),
        ("herald, one Redis route (publish + latest key) from Kafka", &herald),
    ))
}

/// kcat from the beginning to the end, its output to /dev/null, under GNU time for its CPU.
fn drain_kcat(services: &Services, topic: &str, events: u64) -> Result<Drain> {
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args([
            "-f",
            "%U %S",
            "kcat",
            "-C",
            "-q",
            "-e",
            "-o",
            "beginning",
            "-b",
            &services.brokers,
            "-t",
            topic,
            "-f",
            "%s\\n",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running kcat under /usr/bin/time (Debian packages kcat and time)")?;
    let wall = started.elapsed();
    if !out.status.success() {
        bail!("kcat failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let cpu: f64 = text.lines().last().unwrap_or("").split_whitespace().filter_map(|v| v.parse::<f64>().ok()).sum();
    Ok(Drain { rate: events as f64 / wall.as_secs_f64(), cpu_seconds: cpu })
}

/// herald with one route (`sink`, a TOML inline table, then any further route keys as TOML
/// lines in `route_keys`) on a new group, from its partitions assigned to the last event
/// delivered (the group join is not the drain).
async fn drain_herald_into(
    services: &Services,
    topic: &str,
    events: u64,
    name: &str,
    sink: &str,
    route_keys: &str,
) -> Result<Drain> {
    let config = format!(
        "[kafka]\nbootstrap.servers = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"limit\"\ntopics = [\"{topic}\"]\n\
         group_id = \"{name}\"\n{route_keys}sink = {sink}\n",
        services.brokers
    );
    let mut herald = HeraldProcess::start(&services.herald, name, &config, None)?;
    herald.wait_for_log("Partitions assigned.", Duration::from_secs(60))?;
    let started = Instant::now();
    let before = herald.usage()?;
    loop {
        if herald.delivered_total(1)? >= events {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "herald did not drain {events} events in 120 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = started.elapsed();
    let after = herald.usage()?;
    herald.stop()?;
    Ok(Drain { rate: events as f64 / wall.as_secs_f64(), cpu_seconds: after.cpu_seconds - before.cpu_seconds })
}

/// The columns herald's greenfield append writes, in its order: what the reference copies too.
const HISTORY_COLUMNS: &str =
    "event, stage, source, records, status, event_time, payload, origin, kafka_topic, kafka_partition, kafka_offset";

/// Postgres: herald's exactly-once append of `events` into `pipeline_status` (a schema of its
/// own each round), beside one `\copy` of the same rows through psql into a table made `LIKE`
/// it (indexes and defaults included), alternating. The rows herald wrote in its first round are
/// the reference's input.
pub async fn postgres(services: &Services, events: u64, rounds: usize, max_events: Option<usize>) -> Result<Vec<Row>> {
    let run = services.run_name("limit-postgres");
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 1).await.context("creating the topic")?;
    let producer = load::producer(&services.brokers, Pace::Max)?;
    load::produce(&producer, &topic, &run, 0..events, Pace::Max).await?;
    let pool = sqlx::PgPool::connect(&services.postgres).await.context("connecting to Postgres")?;
    let rows_file = std::env::temp_dir().join(format!("herald-{run}.copy"));
    let (mut reference, mut herald) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let schema = crate::Services::schema_for(&format!("{run}-{round}"));
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.context("creating the schema")?;
        let sink = format!(
            "{{ type = \"postgres\", url = \"{}\", schema = \"{schema}\", mode = \"append\" }}",
            services.postgres
        );
        let batch = max_events.map(|n| format!("batch = {{ max_events = {n} }}\n")).unwrap_or_default();
        herald.push(drain_herald_into(services, &topic, events, &format!("{run}-{round}"), &sink, &batch).await?);
        let written: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.pipeline_status")).fetch_one(&pool).await?;
        anyhow::ensure!(written == events as i64, "herald wrote {written} rows, not {events}");
        if round == 0 {
            psql(
                services,
                &format!(
                    "\\copy (SELECT {HISTORY_COLUMNS} FROM {schema}.pipeline_status ORDER BY id) TO '{}'",
                    rows_file.display()
                ),
            )?;
        }
        let copy_schema = format!("{schema}_copy");
        sqlx::query(&format!("CREATE SCHEMA {copy_schema}")).execute(&pool).await?;
        sqlx::query(&format!(
            "CREATE TABLE {copy_schema}.pipeline_status (LIKE {schema}.pipeline_status INCLUDING ALL)"
        ))
        .execute(&pool)
        .await?;
        let started = Instant::now();
        let cpu_seconds = psql(
            services,
            &format!("\\copy {copy_schema}.pipeline_status ({HISTORY_COLUMNS}) FROM '{}'", rows_file.display()),
        )?;
        reference.push(Drain { rate: events as f64 / started.elapsed().as_secs_f64(), cpu_seconds });
        for drop in [copy_schema, schema] {
            sqlx::query(&format!("DROP SCHEMA {drop} CASCADE")).execute(&pool).await?;
        }
    }
    let _ = std::fs::remove_file(&rows_file);
    Ok(compare(
        events,
        rounds,
        ("one \\copy of the same rows through psql into the same table", &reference),
        (
            &match max_events {
                Some(n) => format!("herald, one Postgres append route, exactly-once, batches of ≤ {n}"),
                None => "herald, one Postgres append route, exactly-once, default batches".to_owned(),
            },
            &herald,
        ),
    ))
}

/// Runs one psql command under GNU time; returns psql's CPU seconds.
fn psql(services: &Services, command: &str) -> Result<f64> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%U %S", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", &services.postgres, "-c", command])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running psql under /usr/bin/time")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("psql failed: {text}");
    }
    Ok(text.lines().last().unwrap_or("").split_whitespace().filter_map(|v| v.parse::<f64>().ok()).sum())
}
