//! Helpers of the Postgres source's end-to-end tests (both capture modes).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::*;

pub const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

pub async fn pool() -> PgPool {
    PgPoolOptions::new().max_connections(4).connect(URL).await.unwrap_or_else(|err| {
        panic!("no Postgres at {URL} ({err}): start the test services with `scripts/services up`")
    })
}

/// A greenfield schema of the test's own (herald migrate creates the tables), and its name.
pub async fn greenfield(pool: &PgPool) -> String {
    let schema = unique("src").replace('-', "_");
    let config = TempConfig::new(&format!(
        "[[route]]\nname = \"m\"\ntopics = [\"x\"]\n[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\n"
    ));
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = pool;
    schema
}

pub fn source_config(name: &str, schema: &str, topic: &str, extra: &str) -> String {
    format!(
        r#"
{kafka}

[[source]]
name = "{name}"
type = "postgres"
url = "{URL}"
schema = "{schema}"
topic = "{topic}"
offsets_topic = "{topic}.offsets"
poll_interval = "1s"
{extra}
"#,
        kafka = kafka_section()
    )
}

pub async fn insert(pool: &PgPool, schema: &str, source: &str, stage: &str, status: &str, records: i64) {
    sqlx::query(&format!("INSERT INTO {schema}.pipeline_status (event, stage, source, records, status) VALUES ('STAGE_COMPLETE', $1, $2, $3, $4)"))
        .bind(stage)
        .bind(source)
        .bind(records)
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
}

/// Reads `topic` with `read_committed` until `count` messages arrived, then a little longer to
/// catch any extra.
pub fn read_committed(topic: &str, count: usize) -> Vec<OwnedMessage> {
    read_committed_until(topic, |messages| messages.len() >= count)
}

pub fn json(message: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(message.payload().unwrap()).unwrap()
}

/// A legacy writer busy while herald is SIGKILLed three times at random moments: `total` rows
/// (`records` 0..total) in transactions of 100, while herald on `config` is started and killed.
pub async fn write_rows_through_three_sigkills(pool: &PgPool, schema: &str, config: &TempConfig, total: usize) {
    let writer = {
        let (pool, schema) = (pool.clone(), schema.to_owned());
        tokio::spawn(async move {
            for chunk in 0..(total / 100) {
                let mut tx = pool.begin().await.unwrap();
                for i in 0..100 {
                    let seq = chunk * 100 + i;
                    sqlx::query(&format!(
                        "INSERT INTO {schema}.pipeline_status (event, stage, source, records, status) VALUES ('STAGE_COMPLETE', 's', $1, $2, 'SUCCESS')"
                    ))
                    .bind(format!("src{}", seq % 7))
                    .bind(seq as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for _ in 0..3 {
        let mut herald = Herald::run(config);
        herald.wait_for_log("Source active");
        tokio::time::sleep(Duration::from_millis(300 + rand::random::<u64>() % 400)).await;
        herald.signal("KILL");
        herald.wait_exit();
    }
    writer.await.unwrap();
}

/// Asserts that `messages` carry `records` 0..total, each exactly once.
pub fn assert_each_record_once(messages: &[OwnedMessage], total: usize, log: &str) {
    // Per `records`: where each copy is (topic[partition]@offset).
    let mut seen: std::collections::BTreeMap<i64, Vec<String>> = std::collections::BTreeMap::new();
    for message in messages {
        let at = format!("{}[{}]@{}", message.topic(), message.partition(), message.offset());
        seen.entry(json(message)["records"].as_i64().unwrap()).or_default().push(at);
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, copies)| copies.len() > 1).take(5).collect();
    assert!(duplicates.is_empty(), "published twice: {duplicates:?}; log:\n{log}");
    assert_eq!(seen.len(), total, "every row published once; log:\n{log}");
    assert!(seen.keys().copied().eq(0..total as i64), "exactly records 0..{total}");
}

/// A legacy job's rows: a `RUNNING` row (with an extra field in `payload`), later updated to
/// `SUCCESS` with its record count and finishing time.
pub async fn run_a_legacy_job(pool: &PgPool, schema: &str) {
    sqlx::query(&format!(
        "INSERT INTO {schema}.pipeline_status (event, stage, source, status, event_time, payload) VALUES ('STAGE_COMPLETE', 'bronze_ingest', 'OrdersDB', 'RUNNING', '2026-11-26 10:00:00+00', '{{\"run_id\": \"r-7\"}}')"
    ))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "UPDATE {schema}.pipeline_status SET status = 'SUCCESS', records = 14823, event_time = '2026-11-26 10:15:00.123456+00' WHERE source = 'OrdersDB'"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Asserts that `messages` are the two events of [`run_a_legacy_job`], keyed, shaped and
/// marked with their origin.
pub fn assert_the_legacy_jobs_events(messages: &[OwnedMessage], schema: &str, log: &str) {
    assert_eq!(messages.len(), 2, "{log}");
    assert_eq!(messages[0].key(), Some(&b"OrdersDB"[..]));
    let (running, success) = (json(&messages[0]), json(&messages[1]));
    assert_eq!(running["status"], "RUNNING");
    assert_eq!(running["run_id"], "r-7", "extra fields come from the payload column");
    assert_eq!(success["status"], "SUCCESS");
    assert_eq!(success["records"], 14823);
    assert_eq!(success["stage"], "bronze_ingest");
    let timestamp = herald_sdk::EventTimestamp::parse(success["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(timestamp.instant().to_rfc3339(), "2026-11-26T10:15:00.123456+00:00");
    assert_eq!(header(&messages[1], "herald.origin"), Some(format!("postgres:{schema}.pipeline_status")));
    assert_eq!(header(&messages[1], "herald.origin.operation").as_deref(), Some("UPDATE"));
}

/// Both directions busy on one greenfield table at once — Kafka producers (200 events) and legacy
/// row writers (150 rows) — with herald running `source_section` plus a Postgres sink route on
/// the table: asserts that each event exists once on each side, none coming back around.
/// Returns the running herald.
pub async fn assert_both_directions_never_loop(
    pool: &PgPool,
    schema: &str,
    topic: &str,
    source_section: &str,
) -> Herald {
    create_topic(topic, 3).await;
    let config = TempConfig::new(&format!(
        "{source_section}\n[[route]]\nname = \"{}\"\ntopics = [\"{topic}\"]\n[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\nmode = \"append\"\n",
        unique("route"),
    ));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    herald.wait_for_log("Partitions assigned");
    let kafka_side = tokio::spawn({
        let topic = topic.to_owned();
        async move { produce_events(&topic, &["K1", "K2", "K3"], 200).await }
    });
    for i in 0..150 {
        insert(pool, schema, &format!("D{}", i % 3), "db_stage", "SUCCESS", 10_000 + i).await;
    }
    kafka_side.await.unwrap();

    // Kafka: 200 Kafka-born + 150 table-born events, each once.
    let messages = read_committed(topic, 350);
    let mut on_kafka: std::collections::BTreeMap<i64, Vec<String>> = std::collections::BTreeMap::new();
    for message in &messages {
        let at =
            format!("[{}]@{} origin={:?}", message.partition(), message.offset(), header(message, "herald.origin"));
        on_kafka.entry(json(message)["records"].as_i64().unwrap()).or_default().push(at);
    }
    // Where an extra sits (a record twice, and with which origin), so a rare failure can be read.
    let twice: Vec<(&i64, &Vec<String>)> = on_kafka.iter().filter(|(_, at)| at.len() > 1).collect();
    assert_eq!(messages.len(), 350, "no event came back around; twice: {twice:?}; log:\n{}", herald.log());
    assert!(twice.is_empty(), "{twice:?}");
    // The table: the same 350, each once (Kafka-born written by the sink, table-born not again).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.pipeline_status"))
            .fetch_one(pool)
            .await
            .unwrap();
        if rows >= 350 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT origin, count(*) FROM {schema}.pipeline_status GROUP BY origin ORDER BY origin"
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(counts, vec![("db".to_owned(), 150), ("kafka".to_owned(), 200)]);
    let distinct: i64 = sqlx::query_scalar(&format!("SELECT count(DISTINCT records) FROM {schema}.pipeline_status"))
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(distinct, 350);
    herald
}

/// A row whose event is larger than Kafka takes: a 3 MB value in the row's JSON payload.
pub async fn insert_huge(pool: &PgPool, schema: &str, source: &str, records: i64) {
    sqlx::query(&format!("INSERT INTO {schema}.pipeline_status (event, stage, source, records, status, payload) VALUES ('STAGE_COMPLETE', 's', $1, $2, 'SUCCESS', jsonb_build_object('blob', repeat('x', 3000000)))"))
        .bind(source)
        .bind(records)
        .execute(pool)
        .await
        .unwrap();
}

/// Checks what a source published around a row too large for Kafka (`before`, `huge`, `after`):
/// the rows around it on `topic` in order, and one trimmed dead letter for it on `dlq`.
pub fn assert_the_huge_row_was_dead_lettered(topic: &str, dlq: &str) {
    let messages = read_committed(topic, 2);
    let sources: Vec<String> = messages.iter().map(|m| json(m)["source"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sources, ["before", "after"], "the rows around it flow, in order");
    let letters = read_committed(dlq, 1);
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.key(), Some(b"huge".as_slice()), "keyed as its event would have been");
    assert_eq!(letter.payload().unwrap().len(), 64 * 1024, "trimmed to fit");
    let trimmed = header(letter, "herald.trimmed").unwrap();
    assert!(trimmed.starts_with("kept 65536 of 3000"), "the trim is said: {trimmed}");
    let reason = header(letter, "__connect.errors.exception.message").unwrap();
    assert!(reason.contains("bytes, more than Kafka takes"), "{reason}");
    assert!(header(letter, "herald.origin.change").is_some(), "where in the table it came from");
}

/// A legacy table of odd types in `schema`, and the `[[source]]` lines mapping it.
pub async fn odd_table(pool: &PgPool, schema: &str) -> String {
    sqlx::query(&format!(
        "CREATE TABLE {schema}.odd_jobs (id bigserial PRIMARY KEY, src text, step text, state text, n numeric, at timestamptz, note text)"
    ))
    .execute(pool)
    .await
    .unwrap();
    format!(
        "table = \"{schema}.odd_jobs\"\ncolumns = {{ source = \"src\", stage = \"step\", status = \"state\", records = \"n\", timestamp = \"at\", note = \"note\" }}\nconstants = {{ event = \"STAGE_COMPLETE\" }}\n"
    )
}

/// Hostile rows into the odd table, one statement each: which become events (by `src`, in
/// order) and how many cannot (NULLs where a field is required, a number beyond `i64`,
/// `NaN`, an infinite timestamp).
pub async fn write_hostile_rows(pool: &PgPool, schema: &str) -> (Vec<String>, usize) {
    let rows = [
        ("'ok1'", "'SUCCESS'", "1", "now()", "'n'", true),
        ("NULL", "'SUCCESS'", "2", "now()", "'no source'", false),
        ("'nostatus'", "NULL", "3", "now()", "'n'", false),
        ("'huge-number'", "'SUCCESS'", "1e30", "now()", "'n'", false),
        ("'nan'", "'SUCCESS'", "'NaN'", "now()", "'n'", false),
        ("'forever'", "'SUCCESS'", "7", "'infinity'", "'n'", false),
        ("'year1'", "'SUCCESS'", "8", "'0001-01-01T00:00:00Z'", "'n'", true),
        ("'year9999'", "'SUCCESS'", "9", "'9999-12-31T23:59:59Z'", "'n'", true),
        ("E'esc\\x1b[2J\\x07'", "'SUCCESS'", "10", "now()", "E'tab\\there'", true),
        ("'long-note'", "'SUCCESS'", "11", "now()", "repeat('z', 100000)", true),
        ("''", "'SUCCESS'", "12", "now()", "''", true),
        ("'ok2'", "'SUCCESS'", "13", "now()", "NULL", true),
    ];
    let mut published = Vec::new();
    let mut dead = 0;
    for (src, state, n, at, note, ok) in rows {
        sqlx::query(&format!(
            "INSERT INTO {schema}.odd_jobs (src, step, state, n, at, note) VALUES ({src}, 's', {state}, {n}, {at}, {note})"
        ))
        .execute(pool)
        .await
        .unwrap();
        if ok {
            let value: String = sqlx::query_scalar(&format!("SELECT {src}")).fetch_one(pool).await.unwrap();
            published.push(value);
        } else {
            dead += 1;
        }
    }
    (published, dead)
}

/// Checks what a source made of [`write_hostile_rows`]: the good rows on `topic` in order, one
/// dead letter per bad one on `dlq`, each with its reason.
pub fn assert_hostile_rows_sorted(topic: &str, dlq: &str, published: &[String], dead: usize) {
    let messages = read_committed(topic, published.len());
    let sources: Vec<String> = messages.iter().map(|m| json(m)["source"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sources, published, "every row that is an event, in order");
    let long = messages.iter().find(|m| json(m)["source"] == "long-note").unwrap();
    assert_eq!(json(long)["note"].as_str().unwrap().len(), 100_000);
    let letters = read_committed(dlq, dead);
    assert_eq!(letters.len(), dead);
    for letter in &letters {
        let reason = header(letter, "__connect.errors.exception.message").unwrap();
        assert!(!reason.is_empty());
    }
}

/// Reads `topic` with `read_committed` from the start until `done` says the messages so far
/// are all, then a little longer to catch any extra.
pub fn read_committed_until(topic: &str, done: impl Fn(&[OwnedMessage]) -> bool) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut messages = Vec::new();
    let mut quiet_since = None;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(result) => {
                messages.push(result.unwrap().detach());
                quiet_since = None;
            }
            None if done(&messages) => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    return messages;
                }
            }
            None => {}
        }
        assert!(Instant::now() < deadline, "{} messages on {topic}, not yet all", messages.len());
    }
}

/// A first start with `snapshot = "latest"` (herald on `config`, publishing `schema`'s table to
/// `topic`) while a writer is busy and a transaction is open across the start. Every row ends up
/// on the topic exactly once — as its pair's latest row read in the snapshot, or streamed after
/// it — except rows the snapshot saw superseded by a later row of their pair. Never both, never
/// neither.
pub async fn assert_the_snapshot_joins_the_stream(pool: &PgPool, schema: &str, config: &TempConfig, topic: &str) {
    let pairs = ["P0", "P1", "P2", "P3"];
    let mut seq = 0;
    for _ in 0..3 {
        for pair in pairs {
            insert(pool, schema, pair, "s", "SUCCESS", seq).await;
            seq += 1;
        }
    }
    // Open across the snapshot: the snapshot cannot see it, so the stream must carry it.
    let mut open = pool.begin().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {schema}.pipeline_status (event, stage, source, records, status) VALUES ('STAGE_COMPLETE', 's', 'P0', 1000, 'SUCCESS')"
    ))
    .execute(&mut *open)
    .await
    .unwrap();
    let writer = {
        let (pool, schema) = (pool.clone(), schema.to_owned());
        tokio::spawn(async move {
            for seq in 100..160 {
                insert(&pool, &schema, ["P0", "P1", "P2", "P3"][seq % 4], "s", "SUCCESS", seq as i64).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let mut herald = Herald::run(config);
    herald.wait_for_log("Source active");
    writer.await.unwrap();
    open.commit().await.unwrap();
    insert(pool, schema, "P9", "s", "SUCCESS", 9999).await;

    let records_of = |m: &OwnedMessage| json(m)["records"].as_i64().unwrap();
    let messages = read_committed_until(topic, |messages| messages.iter().any(|m| records_of(m) == 9999));
    let published: Vec<(String, i64, String)> = messages
        .iter()
        .map(|m| {
            let operation = header(m, "herald.origin.operation").unwrap_or_default();
            (json(m)["source"].as_str().unwrap().to_owned(), records_of(m), operation)
        })
        .collect();
    let mut seen: Vec<i64> = published.iter().map(|(_, records, _)| *records).collect();
    seen.sort_unstable();
    let unique_count = {
        let mut unique = seen.clone();
        unique.dedup();
        unique.len()
    };
    assert_eq!(unique_count, seen.len(), "a row published twice: {published:?}");
    let snapshot: Vec<&(String, i64, String)> = published.iter().filter(|(_, _, op)| op == "snapshot").collect();
    assert_eq!(snapshot.len(), 4, "one snapshot row per pair: {published:?}");
    let all_rows: Vec<(String, i64)> =
        sqlx::query_as(&format!("SELECT source, records FROM {schema}.pipeline_status ORDER BY records"))
            .fetch_all(pool)
            .await
            .unwrap();
    for (pair, records) in all_rows {
        if seen.contains(&records) {
            continue;
        }
        let (_, snapshot_records, _) = snapshot.iter().find(|(p, _, _)| *p == pair).unwrap();
        assert!(
            records < *snapshot_records && records != 1000,
            "row {records} of {pair} is on the topic neither as streamed nor under the snapshot's {snapshot_records}: {published:?}"
        );
    }
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

/// A lost capture recovered with the commands the stopped source printed, run as printed, in
/// `snapshot = "latest"`'s config: nine statuses published, the capture lost (`lose`, SQL), two
/// written meanwhile (a newer status of a pair, a new pair). The printed repair publishes those
/// two, the printed retire and the next start publish none of the nine again, and the stream
/// goes on: every status on the topic exactly once.
pub async fn recover_a_lost_capture_as_printed(
    pool: &PgPool,
    schema: &str,
    config: &TempConfig,
    topic: &str,
    lose: &str,
) {
    let mut herald = Herald::run(config);
    herald.wait_for_log("Source active");
    for (i, source) in ["A", "B", "C", "D", "E", "F", "G", "H", "I"].into_iter().enumerate() {
        insert(pool, schema, source, "bronze", if i % 3 == 0 { "FAILED" } else { "SUCCESS" }, i as i64).await;
    }
    read_committed(topic, 9);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());

    sqlx::query(lose).execute(pool).await.unwrap();
    insert(pool, schema, "A", "bronze", "SUCCESS", 100).await;
    insert(pool, schema, "J", "bronze", "FAILED", 101).await;
    let mut herald = Herald::run(config);
    assert!(!herald.wait_exit().success(), "a lost capture stops the source: {}", herald.log());
    let log = herald.log();
    // The ways forward, in backticks, as printed.
    let mut printed: Vec<&str> = log.split('`').skip(1).step_by(2).filter(|text| text.starts_with("herald ")).collect();
    printed.dedup();
    let repair = printed.iter().find(|c| c.contains("reconcile") && c.ends_with("--repair")).expect("a repair printed");
    let retire = printed.iter().find(|c| c.contains("--drop-source")).expect("a retire printed");
    for command in [repair, retire] {
        let out = super::herald().args(command.split_whitespace().skip(1)).output().unwrap();
        assert!(
            out.status.success(),
            "`{command}` as printed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut herald = Herald::run(config);
    herald.wait_for_log("Source active");
    insert(pool, schema, "Z", "bronze", "SUCCESS", 999).await;
    let messages = read_committed_until(topic, |messages| messages.iter().any(|m| json(m)["source"] == "Z"));
    herald.signal("TERM");
    herald.wait_exit();
    let mut seen: std::collections::BTreeMap<(String, i64), usize> = std::collections::BTreeMap::new();
    for message in &messages {
        let event = json(message);
        *seen.entry((event["source"].as_str().unwrap().to_owned(), event["records"].as_i64().unwrap())).or_insert(0) +=
            1;
    }
    let mut expected: Vec<(String, i64)> = ["A", "B", "C", "D", "E", "F", "G", "H", "I"]
        .iter()
        .enumerate()
        .map(|(i, source)| ((*source).to_owned(), i as i64))
        .collect();
    expected.extend([("A".to_owned(), 100), ("J".to_owned(), 101), ("Z".to_owned(), 999)]);
    expected.sort();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), expected, "the statuses on the topic: {seen:?}");
    assert!(seen.values().all(|&count| count == 1), "each status once, none twice: {seen:?}");
}

/// Waits until `table` holds at least `count` rows.
pub async fn wait_for_rows(pool: &PgPool, table: &str, count: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows: Result<i64, _> = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await;
        if rows.as_ref().is_ok_and(|rows| *rows >= count) {
            return;
        }
        assert!(Instant::now() < deadline, "{table} has {rows:?} rows, not {count}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
