//! Scale-out on Kafka's own consumer groups: several herald processes with one config share the
//! partitions; killing one and starting it again loses nothing and, into Postgres, duplicates
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::*;
use sqlx::postgres::PgPoolOptions;

const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_six_partitions_and_survive_a_kill_and_restart_exactly_once() {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(URL)
        .await
        .unwrap_or_else(|err| panic!("no Postgres ({err}): start the test services with `scripts/services up`"));
    let topic = unique("events");
    let schema = unique("scale").replace('-', "_");
    create_topic(&topic, 6).await;
    let config = TempConfig::new(&format!(
        r#"
{kafka}

[[route]]
name = "{route}"
topics = ["{topic}"]
batch = {{ max_events = 50, max_wait = "20ms" }}
[route.sink]
type = "postgres"
url = "{URL}"
schema = "{schema}"
mode = "append"
"#,
        kafka = kafka_section(),
        route = unique("route")
    ));
    let mut members: Vec<Herald> = (0..3).map(|_| Herald::run(&config)).collect();
    for member in &mut members {
        member.wait_for_log("Partitions assigned");
    }

    // Steady load: 6,000 events over 12 sources, in 20 rounds.
    let sources: Vec<String> = (0..12).map(|i| format!("S{i}")).collect();
    let source_refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    let count_sql = format!("SELECT count(*) FROM {schema}.pipeline_status");
    let mut produced = Vec::new();
    for round in 0..20 {
        let batch: Vec<String> = (0..300)
            .map(|i| round * 300 + i)
            .map(|seq| event_json(source_refs[seq % 12], "s", "SUCCESS", seq))
            .collect();
        let messages: Vec<(Option<&str>, &[u8])> =
            batch.iter().enumerate().map(|(i, m)| (Some(source_refs[(round * 300 + i) % 12]), m.as_bytes())).collect();
        produce(&topic, &messages).await;
        produced.extend((0..300).map(|i| round * 300 + i));
        if round == 6 {
            members[1].signal("KILL");
            members[1].wait_exit();
        }
        if round == 13 {
            members[1] = Herald::run(&config);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows: i64 = sqlx::query_scalar(&count_sql).fetch_one(&pool).await.unwrap_or(0);
        if rows >= produced.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {rows} of {} rows; logs:\n{}", produced.len(), members[0].log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A sentinel on every partition, produced last: once all are in, nothing older is in flight.
    let sentinels: Vec<String> =
        (0..12).map(|i| event_json(source_refs[i], "sentinel", "SUCCESS", 100_000 + i)).collect();
    let messages: Vec<(Option<&str>, &[u8])> =
        sentinels.iter().enumerate().map(|(i, m)| (Some(source_refs[i]), m.as_bytes())).collect();
    produce(&topic, &messages).await;
    loop {
        let rows: i64 =
            sqlx::query_scalar(&format!("{count_sql} WHERE stage = 'sentinel'")).fetch_one(&pool).await.unwrap();
        if rows >= 12 {
            break;
        }
        assert!(Instant::now() < deadline, "sentinels missing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let rows: Vec<(String, i32)> = sqlx::query_as(&format!(
        "SELECT source, (payload->>'seq')::int FROM {schema}.pipeline_status WHERE stage <> 'sentinel' ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), produced.len(), "exactly once: none missing, none twice");
    let seen: BTreeSet<usize> = rows.iter().map(|(_, seq)| *seq as usize).collect();
    assert_eq!(seen, produced.iter().copied().collect::<BTreeSet<_>>());
    let mut last: HashMap<&str, i32> = HashMap::new();
    for (source, seq) in &rows {
        if let Some(previous) = last.insert(source.as_str(), *seq) {
            assert!(*seq > previous, "source {source}: {seq} written after {previous}");
        }
    }
    // All three members took part.
    for member in &mut members {
        assert!(member.log().contains("Partitions assigned"));
    }
}
