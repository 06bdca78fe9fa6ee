//! One route to one sink, driven from Kafka: throughput flat out, or latency at a set rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_sqs::types::QueueAttributeName;
use futures::StreamExt;
use sqlx::postgres::PgListener;
use sqlx::PgPool;

use crate::load::{self, Pace};
use crate::observe::Visible;
use crate::process::{HeraldProcess, Usage};
use crate::stats::{Percentiles, Row};
use crate::Services;

/// The sink a run routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    /// Lines on herald's stdout.
    Stdout,
    /// Postgres `pipeline_status`, a row per event, exactly once.
    PostgresAppend,
    /// Postgres `pipeline_status_latest`, newest event per source and stage.
    PostgresUpsert,
    /// Redis: publish on a channel per source, and the latest key per source and stage.
    Redis,
    /// AWS SNS (the emulator) with `PublishBatch`, read from an SQS queue subscribed to the topic.
    Sns,
    /// As `sns`, but batches of one event: one call per event, the baseline for `PublishBatch`.
    SnsSingle,
    /// HTTP: a JSON array per batch POSTed to a receiver in this process.
    Http,
    /// HTTP, one request per event, one at a time, to a receiver that answers after 5 ms (a
    /// webhook doing a little work).
    HttpEvent,
    /// As `http-event`, with `concurrency = 8`: eight requests in flight, a source's in order.
    HttpEventParallel,
    /// Exec, stream mode without acknowledgements: `cat >> file`, the file read as it grows.
    Exec,
}

impl SinkKind {
    fn slug(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::PostgresAppend => "postgres-append",
            Self::PostgresUpsert => "postgres-upsert",
            Self::Redis => "redis",
            Self::Sns => "sns",
            Self::SnsSingle => "sns-single",
            Self::Http => "http",
            Self::HttpEvent => "http-event",
            Self::HttpEventParallel => "http-event-parallel",
            Self::Exec => "exec",
        }
    }
}

/// A sink made ready for one run: its `[route.sink]` TOML and what the reader needs.
struct Prepared {
    sink_toml: String,
    max_events: usize,
    schema: Option<String>,
    sqs: Option<(aws_sdk_sqs::Client, String)>,
    /// A reader started with the sink (the HTTP receiver, the exec output's follower).
    reader: Option<tokio::task::JoinHandle<()>>,
}

/// Routes `events` events at `pace` through herald to `sink`, and measures them as its reader
/// sees them.
pub async fn run(services: &Services, sink: SinkKind, events: u64, pace: Pace) -> Result<Row> {
    let run = services.run_name(sink.slug());
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 3).await.context("creating the bench topic")?;
    let visible = Arc::new(Visible::default());
    let mut prepared = prepare(services, sink, &run, pace, &visible).await?;
    let group = format!("herald-bench.{run}");
    let config = format!(
        "[kafka]\nbootstrap.servers = \"{brokers}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"bench\"\ntopics = [\"{topic}\"]\n\
         group_id = \"{group}\"\ndead_letter_topic = \"{topic}.dlq\"\nbatch = {{ max_events = {max_events} }}\n\
         [route.sink]\n{sink_toml}",
        brokers = services.brokers,
        max_events = prepared.max_events,
        sink_toml = prepared.sink_toml,
    );
    let stdout = (sink == SinkKind::Stdout).then(|| Arc::clone(&visible));
    let mut herald = HeraldProcess::start(&services.herald, &run, &config, stdout)?;
    herald.wait_for_log("Partitions assigned.", Duration::from_secs(60))?;

    // The reader, connected before the first event is sent.
    let pool = match &prepared.schema {
        Some(_) => Some(PgPool::connect(&services.postgres).await.context("connecting to Postgres")?),
        None => None,
    };
    let mut readers: Vec<tokio::task::JoinHandle<()>> = prepared.reader.take().into_iter().collect();
    if let (Pace::Rate(_), Some(pool), Some(schema)) = (pace, &pool, &prepared.schema) {
        let table = if sink == SinkKind::PostgresAppend { "pipeline_status" } else { "pipeline_status_latest" };
        readers.push(notify_on_commit(pool, &services.postgres, schema, table, &visible).await?);
    }
    if sink == SinkKind::Redis {
        readers.push(subscribe(&services.redis, &format!("bench.{run}.*"), &visible).await?);
    }
    if let Some((sqs, queue)) = &prepared.sqs {
        for _ in 0..2 {
            readers.push(tokio::spawn(receive(sqs.clone(), queue.clone(), Arc::clone(&visible))));
        }
    }

    // How the run knows events arrived: flat out, a trigger per row would slow the Postgres sink
    // it measures, so watch the offsets herald commits in the same transaction as the rows; and
    // the emulator's SNS → SQS fan-out is far slower than SNS, so count what SNS accepted.
    let schema = prepared.schema.as_deref().unwrap_or("public");
    let watch = match (&pool, pace, sink) {
        (Some(pool), Pace::Max, _) => Watch::Offsets { pool, schema, group: &group, topic: &topic },
        (None, Pace::Max, SinkKind::Sns | SinkKind::SnsSingle) => Watch::Accepted,
        _ => Watch::Reader(&visible),
    };

    // Warm-up: one event all the way through, so the measure starts with the consumer fetching
    // and every connection open, not with the group's first offset lookups.
    let producer = load::producer(&services.brokers, pace)?;
    load::send_warmup(&producer, &topic, &run).await?;
    watch.wait(&mut herald, 1, 1, Duration::from_secs(60)).await?;
    visible.clear();

    let before = herald.usage()?;
    let sent = load::produce(&producer, &topic, &run, 0..events, pace).await?;
    let sending_seconds = sent.last().zip(sent.first()).map_or(0.0, |(last, first)| (*last - *first).as_secs_f64());
    let patience = Duration::from_secs(120 + events / 1000);
    let all_visible_at = watch.wait(&mut herald, events, events + 1, patience).await?;
    let after = herald.usage()?;

    // Flat out, the producer shares the two cores with herald and the broker. herald's own rate
    // is its drain rate: pause the route, let a backlog of the same size build, resume.
    let mut first_after_resume = None;
    let drain_rate = match pace {
        Pace::Max => {
            herald.admin_post("/routes/bench/pause")?;
            herald.wait_for_log("Route paused.", Duration::from_secs(30))?;
            visible.clear();
            load::produce(&producer, &topic, &run, events..2 * events, pace).await?;
            let resumed = Instant::now();
            herald.admin_post("/routes/bench/resume")?;
            let drained_at = watch.wait(&mut herald, events, 2 * events + 1, patience).await?;
            // How long the route took to get going again, where the reader says.
            first_after_resume = visible.first_seen().iter().map(|(_, at)| *at).min().map(|at| at - resumed);
            Some(events as f64 / drained_at.saturating_duration_since(resumed).as_secs_f64().max(f64::EPSILON))
        }
        Pace::Rate(_) => None,
    };
    let peak = herald.usage()?;
    herald.stop()?;
    for reader in readers {
        reader.abort();
    }

    let first_sent = sent.first().copied().unwrap_or_else(Instant::now);
    let window = all_visible_at.saturating_duration_since(first_sent).as_secs_f64();
    // Flat out, latency is only queueing: report it at a set rate.
    let latency = match pace {
        Pace::Max => None,
        Pace::Rate(_) => Percentiles::between(&sent, &visible.first_seen()),
    };
    if let (Some(pool), Some(schema)) = (&pool, &prepared.schema) {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(pool).await.context("dropping the schema")?;
    }
    let mode = match pace {
        Pace::Max => "throughput",
        Pace::Rate(_) => "latency",
    };
    Ok(Row {
        name: format!("{} {mode}", sink.slug()),
        events: events as usize,
        offered_rate: match pace {
            Pace::Max => None,
            Pace::Rate(rate) => Some(rate),
        },
        throughput: events as f64 / window.max(f64::EPSILON),
        latency,
        usage: Some(Usage { peak_rss_mib: peak.peak_rss_mib, ..after }),
        drain_rate,
        cpu_percent: Some((after.cpu_seconds - before.cpu_seconds) / window.max(f64::EPSILON) * 100.0),
        note: format!(
            "batch.max_events = {}; the load was sent in {sending_seconds:.2} s ({:.0} events/s){}",
            prepared.max_events,
            events as f64 / sending_seconds.max(f64::EPSILON),
            first_after_resume.map_or(String::new(), |wait| format!(
                "; first event {:.0} ms after resume",
                wait.as_secs_f64() * 1000.0
            )),
        ),
    })
}

async fn prepare(
    services: &Services,
    sink: SinkKind,
    run: &str,
    pace: Pace,
    visible: &Arc<Visible>,
) -> Result<Prepared> {
    let schema = Services::schema_for(run);
    let postgres = |mode: &str| {
        format!("type = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\nmode = \"{mode}\"\n", services.postgres)
    };
    Ok(match sink {
        SinkKind::Stdout => Prepared {
            sink_toml: "type = \"stdout\"\n".into(),
            max_events: 1000,
            schema: None,
            sqs: None,
            reader: None,
        },
        SinkKind::PostgresAppend | SinkKind::PostgresUpsert => {
            let pool = PgPool::connect(&services.postgres).await.context("connecting to Postgres")?;
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.context("creating the schema")?;
            pool.close().await;
            let mode = if sink == SinkKind::PostgresAppend { "append" } else { "upsert" };
            Prepared { sink_toml: postgres(mode), max_events: 1000, schema: Some(schema), sqs: None, reader: None }
        }
        SinkKind::Redis => Prepared {
            sink_toml: format!(
                "type = \"redis\"\nurl = \"{}\"\npublish = {{ channel = \"bench.{run}.{{source}}\" }}\n\
                 latest_key = {{ key = \"bench:{run}:{{source}}:{{stage}}\", ttl = \"10m\" }}\n",
                services.redis
            ),
            max_events: 1000,
            schema: None,
            sqs: None,
            reader: None,
        },
        SinkKind::Sns | SinkKind::SnsSingle => {
            // Flat out, SNS's acceptance is measured, and a subscribed queue would only load the
            // emulator; at a set rate the queue is the reader.
            let (topic_arn, sqs) = match pace {
                Pace::Max => (sns_topic(services, run).await?, None),
                Pace::Rate(_) => {
                    let (topic_arn, sqs, queue) = sns_topic_with_queue(services, run).await?;
                    (topic_arn, Some((sqs, queue)))
                }
            };
            Prepared {
                sink_toml: format!(
                    "type = \"sns\"\ntopic_arn = \"{topic_arn}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
                     access_key_id = \"test\"\nsecret_access_key = \"test\"\n",
                    services.aws_endpoint
                ),
                max_events: if sink == SinkKind::Sns { 100 } else { 1 },
                schema: None,
                sqs,
                reader: None,
            }
        }
        SinkKind::HttpEvent | SinkKind::HttpEventParallel => {
            let (address, reader) = http_receiver(Arc::clone(visible), Duration::from_millis(5)).await?;
            let concurrency = if sink == SinkKind::HttpEventParallel { 8 } else { 1 };
            Prepared {
                sink_toml: format!(
                    "type = \"http\"\nurl = \"http://{address}/bench/{{source}}\"\nbody = \"event\"\nconcurrency = {concurrency}\n"
                ),
                max_events: 500,
                schema: None,
                sqs: None,
                reader: Some(reader),
            }
        }
        SinkKind::Http => {
            let (address, reader) = http_receiver(Arc::clone(visible), Duration::ZERO).await?;
            Prepared {
                sink_toml: format!("type = \"http\"\nurl = \"http://{address}/bench/{{source}}\"\nbody = \"array\"\n"),
                max_events: 1000,
                schema: None,
                sqs: None,
                reader: Some(reader),
            }
        }
        SinkKind::Exec => {
            let path = std::env::temp_dir().join(format!("herald-bench-{run}.ndjson"));
            std::fs::write(&path, b"").context("creating the exec output file")?;
            let reader = tokio::spawn(follow_file(path.clone(), Arc::clone(visible)));
            Prepared {
                sink_toml: format!(
                    "type = \"exec\"\nmode = \"stream\"\nack = \"none\"\ncommand = [\"sh\", \"-c\", \"exec cat >> \\\"$OUT\\\"\"]\nenv = {{ OUT = \"{}\" }}\n",
                    path.display()
                ),
                max_events: 1000,
                schema: None,
                sqs: None,
                reader: Some(reader),
            }
        }
    })
}

/// A webhook receiver on loopback that answers after `delay`: every event of every POSTed array
/// (or single event) becomes visible.
async fn http_receiver(
    visible: Arc<Visible>,
    delay: Duration,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/bench/{source}",
        post(move |body: axum::body::Bytes| {
            let visible = Arc::clone(&visible);
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let events = match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(serde_json::Value::Array(events)) => events,
                    Ok(event) => vec![event],
                    Err(_) => Vec::new(),
                };
                for event in events {
                    if let Some(seq) = event["records"].as_u64() {
                        visible.saw(seq);
                    }
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the HTTP receiver")?;
    let address = listener.local_addr().context("the HTTP receiver's address")?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((address, server))
}

/// Reads the exec sink's output file as it grows: every complete line is an event.
async fn follow_file(path: std::path::PathBuf, visible: Arc<Visible>) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(&path).await else { return };
    let mut position = 0_u64;
    let mut pending = Vec::new();
    let mut chunk = vec![0_u8; 1 << 20];
    loop {
        if file.seek(std::io::SeekFrom::Start(position)).await.is_err() {
            return;
        }
        match file.read(&mut chunk).await {
            Ok(0) | Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            Ok(read) => {
                position += read as u64;
                pending.extend_from_slice(&chunk[..read]);
                // Every complete line, then keep the incomplete tail (one move per read, not one
                // per line: draining line by line made the harness the bottleneck).
                let complete = pending.iter().rposition(|&byte| byte == b'\n').map_or(0, |end| end + 1);
                for line in pending[..complete].split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
                    visible.saw_payload(&String::from_utf8_lossy(line));
                }
                pending.drain(..complete);
            }
        }
    }
}

/// An SNS topic on the emulator.
pub async fn sns_topic(services: &Services, run: &str) -> Result<String> {
    let sns = aws_sdk_sns::Client::new(&services.aws().await);
    let created = sns
        .create_topic()
        .name(run.replace('.', "-"))
        .send()
        .await
        .context("creating the SNS topic (is the emulator up?)")?;
    Ok(created.topic_arn().context("CreateTopic returned no ARN")?.to_owned())
}

/// An SNS topic and an SQS queue subscribed to it, on the emulator.
pub async fn sns_topic_with_queue(services: &Services, run: &str) -> Result<(String, aws_sdk_sqs::Client, String)> {
    let aws = services.aws().await;
    let sns = aws_sdk_sns::Client::new(&aws);
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let name = run.replace('.', "-");
    let topic_arn = sns_topic(services, run).await?;
    let queue = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .context("creating the SQS queue")?
        .queue_url()
        .context("CreateQueue returned no URL")?
        .to_owned();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .context("reading the queue ARN")?;
    let queue_arn = attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .context("the queue has no ARN")?
        .clone();
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(queue_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .context("subscribing the queue")?;
    Ok((topic_arn, sqs, queue))
}

/// Reads the queue until aborted, deleting what it read: the emulator scans every message a
/// queue holds on each receive, so a queue left full slows it, and herald's publishing with it.
async fn receive(sqs: aws_sdk_sqs::Client, queue: String, visible: Arc<Visible>) {
    loop {
        let received = sqs.receive_message().queue_url(&queue).max_number_of_messages(10).send().await;
        let messages = match received {
            Ok(received) => received.messages.unwrap_or_default(),
            Err(err) => {
                eprintln!("herald-bench: SQS receive failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut delete = sqs.delete_message_batch().queue_url(&queue);
        for (index, message) in messages.iter().enumerate() {
            visible.saw_payload(message.body().unwrap_or_default());
            if let Some(handle) = message.receipt_handle() {
                let entry = aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(handle)
                    .build();
                if let Ok(entry) = entry {
                    delete = delete.entries(entry);
                }
            }
        }
        if messages.is_empty() {
            // Short polls: the emulator's long polling keeps a worker busy that publishing needs.
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else if let Err(err) = delete.send().await {
            eprintln!("herald-bench: SQS delete failed: {err}");
        }
    }
}

/// A Redis subscriber on `pattern`, subscribed when this returns.
pub async fn subscribe(url: &str, pattern: &str, visible: &Arc<Visible>) -> Result<tokio::task::JoinHandle<()>> {
    let client = redis::Client::open(url).context("the Redis URL")?;
    let mut pubsub = client.get_async_pubsub().await.context("connecting to Redis")?;
    pubsub.psubscribe(pattern).await.context("subscribing")?;
    let visible = Arc::clone(visible);
    Ok(tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            if let Ok(payload) = message.get_payload::<String>() {
                visible.saw_payload(&payload);
            }
        }
    }))
}

/// A trigger that `NOTIFY`s each row's `records` on commit, and a listener recording them: the
/// moment a polling reader could first see the row.
async fn notify_on_commit(
    pool: &PgPool,
    url: &str,
    schema: &str,
    table: &str,
    visible: &Arc<Visible>,
) -> Result<tokio::task::JoinHandle<()>> {
    let channel = format!("{schema}_committed");
    sqlx::query(&format!(
        "CREATE FUNCTION {schema}.notify_committed() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_notify('{channel}', NEW.records::text); RETURN NULL; END $$"
    ))
    .execute(pool)
    .await
    .context("creating the notify function")?;
    sqlx::query(&format!(
        "CREATE TRIGGER notify_committed AFTER INSERT OR UPDATE ON {schema}.{table} \
         FOR EACH ROW EXECUTE FUNCTION {schema}.notify_committed()"
    ))
    .execute(pool)
    .await
    .context("creating the notify trigger")?;
    let mut listener = PgListener::connect(url).await.context("connecting the listener")?;
    listener.listen(&channel).await.context("listening")?;
    let visible = Arc::clone(visible);
    Ok(tokio::spawn(async move {
        while let Ok(notification) = listener.recv().await {
            if let Ok(seq) = notification.payload().parse() {
                visible.saw(seq);
            }
        }
    }))
}

/// How a run sees that events arrived.
enum Watch<'a> {
    /// The sink's reader: each event as it sees it.
    Reader(&'a Visible),
    /// The offsets the Postgres sink stores with its rows.
    Offsets { pool: &'a PgPool, schema: &'a str, group: &'a str, topic: &'a str },
    /// What the sink accepted, per herald's admin API.
    Accepted,
}

impl Watch<'_> {
    /// Waits until the reader has seen `seen` events since it was last cleared, or the sink
    /// holds `total` events since the run began; returns when.
    async fn wait(&self, herald: &mut HeraldProcess, seen: u64, total: u64, patience: Duration) -> Result<Instant> {
        match self {
            Watch::Reader(visible) => {
                visible.wait_for(seen as usize, patience).await.with_context(|| herald.log_text())?;
                Ok(visible.first_seen().iter().map(|(_, at)| *at).max().unwrap_or_else(Instant::now))
            }
            Watch::Offsets { pool, schema, group, topic } => {
                wait_for_offsets(pool, schema, group, topic, total, patience).await
            }
            Watch::Accepted => {
                let deadline = Instant::now() + patience;
                loop {
                    let delivered = herald.delivered()?;
                    if delivered >= total {
                        return Ok(Instant::now());
                    }
                    anyhow::ensure!(Instant::now() < deadline, "only {delivered} of {total} events accepted");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
}

/// Waits until herald's stored offsets for `topic` (written in the same transaction as the rows,
/// in the sink's schema) add up to `events`, and returns when they did.
async fn wait_for_offsets(
    pool: &PgPool,
    schema: &str,
    group: &str,
    topic: &str,
    events: u64,
    patience: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + patience;
    let query = format!(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM {schema}.herald_offsets WHERE consumer_group = $1 AND topic = $2"
    );
    loop {
        let total: i64 = sqlx::query_scalar(&query)
            .bind(group)
            .bind(topic)
            .fetch_one(pool)
            .await
            .context("reading herald's stored offsets")?;
        if u64::try_from(total).unwrap_or(0) >= events {
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {total} of {events} rows committed within {patience:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
