//! The polling baseline herald replaces: a stage writes a status row and downstream jobs poll
//! the table every 1 s or 5 s (the JDBC source connector's default `poll.interval.ms` is 5 s);
//! the same stage also sends the event to Kafka and herald hands it to a Redis subscriber. One
//! run, the same events, side by side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::PgPool;

use crate::load::{self, Pace};
use crate::observe::Visible;
use crate::process::HeraldProcess;
use crate::stats::{Percentiles, Row};
use crate::Services;

/// The three readers' rows, herald first.
pub async fn run(services: &Services, rate: f64, events: u64) -> Result<Vec<Row>> {
    let run = services.run_name("baseline");
    let schema = Services::schema_for(&run);
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 3).await.context("creating the bench topic")?;
    let pool = PgPool::connect(&services.postgres).await.context("connecting to Postgres")?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.context("creating the schema")?;
    sqlx::query(&format!(
        "CREATE TABLE {schema}.pipeline_status (id bigserial PRIMARY KEY, source text, stage text, status text, \
         records bigint, updated_at timestamptz DEFAULT now())"
    ))
    .execute(&pool)
    .await
    .context("creating the status table")?;

    let config = format!(
        "[kafka]\nbootstrap.servers = \"{brokers}\"\n\n[[route]]\nname = \"bench\"\ntopics = [\"{topic}\"]\n\
         group_id = \"herald-bench.{run}\"\n[route.sink]\ntype = \"redis\"\nurl = \"{redis}\"\n\
         publish = {{ channel = \"bench.{run}.{{source}}\" }}\n",
        brokers = services.brokers,
        redis = services.redis,
    );
    let mut herald = HeraldProcess::start(&services.herald, &run, &config, None)?;
    herald.wait_for_log("Partitions assigned.", Duration::from_secs(60))?;
    let herald_seen = Arc::new(Visible::default());
    let subscriber = crate::sinks::subscribe(&services.redis, &format!("bench.{run}.*"), &herald_seen).await?;

    let intervals = [Duration::from_secs(1), Duration::from_secs(5)];
    let pollers: Vec<(Arc<Visible>, Arc<AtomicU64>, tokio::task::JoinHandle<()>)> = intervals
        .iter()
        .map(|&every| {
            let (seen, queries) = (Arc::new(Visible::default()), Arc::new(AtomicU64::new(0)));
            let task = tokio::spawn(poll(pool.clone(), schema.clone(), every, Arc::clone(&seen), Arc::clone(&queries)));
            (seen, queries, task)
        })
        .collect();

    // The stage: each finished unit of work is a status row and a Kafka event, at the same moment.
    let producer = load::producer(&services.brokers, Pace::Rate(rate))?;
    // Warm-up, as for every herald measure: one event through, so the first is not also the
    // consumer's first fetch. The pollers need none: they are always querying.
    load::send_warmup(&producer, &topic, &run).await?;
    herald_seen.wait_for(1, Duration::from_secs(60)).await.with_context(|| herald.log_text())?;
    herald_seen.clear();
    let insert = format!(
        "INSERT INTO {schema}.pipeline_status (source, stage, status, records) VALUES ($1, 'bench', 'SUCCESS', $2)"
    );
    let started = Instant::now();
    let start = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(events as usize);
    for seq in 0..events {
        tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
        let (key, json) = load::event(&run, seq);
        sent.push(Instant::now());
        let row = sqlx::query(&insert).bind(&key).bind(i64::try_from(seq).unwrap_or(i64::MAX)).execute(&pool);
        let event = producer
            .send(rdkafka::producer::FutureRecord::to(&topic).key(&key).payload(&json), Duration::from_secs(10));
        let (row, event) = tokio::join!(row, event);
        row.context("inserting a status row")?;
        event.map_err(|(err, _)| err).context("producing an event")?;
    }
    let patience = Duration::from_secs(30);
    herald_seen.wait_for(events as usize, patience).await.with_context(|| herald.log_text())?;
    for (seen, _, _) in &pollers {
        seen.wait_for(events as usize, patience).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let usage = herald.usage()?;
    herald.stop()?;
    subscriber.abort();
    let mut rows = vec![Row {
        name: "herald → Redis subscriber".into(),
        events: events as usize,
        offered_rate: Some(rate),
        throughput: 0.0,
        drain_rate: None,
        latency: Percentiles::between(&sent, &herald_seen.first_seen()),
        usage: Some(usage),
        cpu_percent: None,
        note: "0 queries/s on Postgres".into(),
    }];
    for ((seen, queries, task), every) in pollers.into_iter().zip(intervals) {
        task.abort();
        rows.push(Row {
            name: format!("poll pipeline_status every {}", humantime::format_duration(every)),
            events: events as usize,
            offered_rate: Some(rate),
            throughput: 0.0,
            drain_rate: None,
            latency: Percentiles::between(&sent, &seen.first_seen()),
            usage: None,
            cpu_percent: None,
            note: format!("{:.2} queries/s per polling job", queries.load(Ordering::Relaxed) as f64 / elapsed),
        });
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.context("dropping the schema")?;
    Ok(rows)
}

/// A downstream job polling the status table for rows it has not seen, every `every`.
async fn poll(pool: PgPool, schema: String, every: Duration, seen: Arc<Visible>, queries: Arc<AtomicU64>) {
    let query = format!("SELECT id, records FROM {schema}.pipeline_status WHERE id > $1 ORDER BY id");
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_id = 0i64;
    loop {
        ticks.tick().await;
        queries.fetch_add(1, Ordering::Relaxed);
        match sqlx::query_as::<_, (i64, i64)>(&query).bind(last_id).fetch_all(&pool).await {
            Ok(rows) => {
                for (id, records) in rows {
                    last_id = last_id.max(id);
                    seen.saw(u64::try_from(records).unwrap_or(0));
                }
            }
            Err(err) => eprintln!("herald-bench: a poll failed: {err}"),
        }
    }
}
