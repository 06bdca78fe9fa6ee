//! Reloading a running `herald run`: SIGHUP and `POST /reload` re-read the config; only the
//! route or source that changed restarts, the others are not touched, and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::source::{assert_each_record_once, greenfield, insert, pool, read_committed, source_config};
use common::*;

const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

/// Two Postgres routes read one topic under a steady stream of events. One route's filter is
/// changed (SIGHUP); then a broken config is offered (`POST /reload`) and refused. The changed
/// route restarts and its table still holds every event exactly once; the other route is never
/// revoked or reassigned, and its table holds every event too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_route_restarts_alone_and_loses_nothing() {
    let topic = unique("reload");
    create_topic(&topic, 2).await;
    let (steady, changing) = (unique("steady"), unique("changing"));
    let (steady_schema, changing_schema) = (unique("steady").replace('-', "_"), unique("changing").replace('-', "_"));
    let config_text = |filter: &str| {
        format!(
            "{kafka}[runtime]\nprogress_interval = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nname = \"{steady}\"\ntopics = [\"{topic}\"]\n\
             [route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{steady_schema}\"\nmode = \"append\"\n\
             [[route]]\nname = \"{changing}\"\ntopics = [\"{topic}\"]\nfilter = {filter}\n\
             [route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{changing_schema}\"\nmode = \"append\"\n",
            kafka = kafka_section()
        )
    };
    let config = TempConfig::new(&config_text("{ event = \"STAGE_COMPLETE\" }"));
    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    let deadline = Instant::now() + PATIENCE;
    while herald.log().matches("Partitions assigned.").count() < 2 {
        assert!(Instant::now() < deadline, "{}", herald.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A steady stream: 40 batches of 50 events, one every 100 ms, over ~4 s.
    let producing = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for batch in 0..40 {
                let events: Vec<(String, String)> = (batch * 50..batch * 50 + 50)
                    .map(|seq| {
                        let source = ["A", "B", "C"][seq % 3];
                        (source.to_owned(), event_json(source, "bronze", "SUCCESS", seq))
                    })
                    .collect();
                let messages: Vec<(Option<&str>, &[u8])> =
                    events.iter().map(|(key, json)| (Some(key.as_str()), json.as_bytes())).collect();
                produce(&topic, &messages).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The change: another filter that also passes every event of the stream.
    std::fs::write(&config.path, config_text("{ source = [\"A\", \"B\", \"C\"] }")).unwrap();
    herald.signal("HUP");
    herald.wait_for_log("Reloaded: routes: restarted [");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A broken config is refused, naming the problem; the routes run on.
    std::fs::write(&config.path, config_text("{ sorce = \"A\" }")).unwrap();
    let (status, body) = http_post_json(&admin, "/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("did you mean `source`"), "{body}");
    producing.await.unwrap();

    let pool = sqlx::PgPool::connect(URL).await.unwrap();
    for schema in [&steady_schema, &changing_schema] {
        let sql = format!("SELECT count(*), count(DISTINCT records) FROM {schema}.pipeline_status");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (rows, distinct): (i64, i64) = sqlx::query_as(&sql).fetch_one(&pool).await.unwrap_or((0, 0));
            if rows >= 2000 {
                assert_eq!((rows, distinct), (2000, 2000), "{schema}: every event exactly once");
                break;
            }
            assert!(Instant::now() < deadline, "{schema}: {rows} of 2000 rows\n{}", herald.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let log = herald.log();
    let about = |route: &str, what: &str| {
        log.lines().filter(|line| line.contains(what) && line.contains(&format!("route={route}"))).count()
    };
    assert_eq!(about(&steady, "Partitions assigned."), 1, "the steady route was never reassigned:\n{log}");
    assert_eq!(about(&steady, "Partitions revoked"), 0, "the steady route was never revoked:\n{log}");
    assert_eq!(about(&changing, "Reload: stopping the route"), 1, "{log}");
    assert!(about(&changing, "Partitions assigned.") >= 2, "the changed route started again:\n{log}");
    assert!(log.contains("Reload refused; running on with the old config"), "{log}");
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    for schema in [&steady_schema, &changing_schema] {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
    }
}

/// Two Postgres sources publish two tables under a steady stream of rows; one source's settings
/// change (SIGHUP). That source finishes its transaction and starts again from its cursor; the
/// other is never stopped; each topic holds every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_source_restarts_alone_and_loses_nothing() {
    let pool = pool().await;
    let (steady_schema, changing_schema) = (greenfield(&pool).await, greenfield(&pool).await);
    let (steady, changing) = (unique("steady"), unique("changing"));
    let (steady_topic, changing_topic) = (unique("steady-out"), unique("changing-out"));
    let config_text = |batch_size: usize| {
        let changing_block =
            source_config(&changing, &changing_schema, &changing_topic, &format!("batch_size = {batch_size}"))
                .replace(&kafka_section(), "");
        format!("{}{changing_block}", source_config(&steady, &steady_schema, &steady_topic, "batch_size = 20"))
    };
    let config = TempConfig::new(&config_text(20));
    let mut herald = Herald::run(&config);
    let active = |log: &str, name: &str| {
        log.lines().filter(|line| line.contains("Source active.") && line.contains(name)).count()
    };
    let deadline = Instant::now() + PATIENCE;
    while active(&herald.log(), &steady) + active(&herald.log(), &changing) < 2 {
        assert!(Instant::now() < deadline, "{}", herald.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A steady writer: 30 rounds of 10 rows into each table, one round every 100 ms.
    const TOTAL: usize = 300;
    let writing = {
        let (pool, steady_schema, changing_schema) = (pool.clone(), steady_schema.clone(), changing_schema.clone());
        tokio::spawn(async move {
            for round in 0..TOTAL / 10 {
                for records in round * 10..round * 10 + 10 {
                    for schema in [&steady_schema, &changing_schema] {
                        insert(&pool, schema, "OrdersDB", "bronze", "SUCCESS", records as i64).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    std::fs::write(&config.path, config_text(10)).unwrap();
    herald.signal("HUP");
    herald.wait_for_log("Reloaded: sources: restarted [");
    writing.await.unwrap();

    let log = herald.log();
    for topic in [&steady_topic, &changing_topic] {
        let messages = read_committed(topic, TOTAL);
        assert_each_record_once(&messages, TOTAL, &log);
    }
    let log = herald.log();
    assert_eq!(active(&log, &steady), 1, "the steady source was never restarted:\n{log}");
    assert_eq!(active(&log, &changing), 2, "the changed source started again:\n{log}");
    let stopped = |name: &str| {
        log.lines().filter(|line| line.contains("Reload: stopping the source") && line.contains(name)).count()
    };
    assert_eq!((stopped(&steady), stopped(&changing)), (0, 1), "{log}");
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

/// A POST with an `application/json` content type, as a script would send it.
fn http_post_json(address: &str, path: &str) -> (u16, String) {
    request(address, "POST", path, "Content-Type: application/json\r\n")
}
