//! A database failover under a running Postgres sink route: the primary dies, the endpoint (a
//! TCP proxy here, as a DNS name or a pooler would be) moves to a standby that is still in
//! recovery, then the standby is promoted. herald never writes to the standby (its connections
//! there are refused and the writes retried: the route never fails, nothing is dead-lettered),
//! and once the standby is promoted every event is written exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald_testkit::{Endpoint, PrivatePostgres};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Polls the admin API's `path` (`/routes`, `/sources`) until it says `waiting`, asserting that
/// it never says `failed` meanwhile: a standby is waited out, never a failure.
async fn waits_out_the_standby(admin: &str, path: &str, waiting: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, units) = http(admin, "GET", path);
        assert!(!units.contains("\"failed\""), "failed on a standby: {units}");
        if units.contains(waiting) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never said `{waiting}`: {units}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Whether `sql` counts `wanted` within the patience.
async fn reaches(pool: &PgPool, sql: &str, wanted: i64) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let now: Result<i64, _> = sqlx::query_scalar(sql).fetch_one(pool).await;
        if now.as_ref().is_ok_and(|now| *now == wanted) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn wait_for(pool: &PgPool, sql: &str, wanted: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now: Result<i64, _> = sqlx::query_scalar(sql).fetch_one(pool).await;
        if now.as_ref().is_ok_and(|now| *now == wanted) {
            return;
        }
        assert!(Instant::now() < deadline, "`{sql}` is {now:?}, not {wanted}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_standby_is_waited_out_never_written_and_every_event_lands_once_on_the_promoted_server() {
    let primary = PrivatePostgres::start().unwrap();
    let primary_pool = PgPoolOptions::new().max_connections(2).connect(&primary.url()).await.unwrap();
    // herald's tables exist before the standby is made from the primary.
    sqlx::query("SELECT 1").execute(&primary_pool).await.unwrap();
    let endpoint = Endpoint::start(primary.port()).await.unwrap();
    let url = format!("postgres://herald@127.0.0.1:{}/postgres", endpoint.port());
    let topic = unique("failover");
    create_topic(&topic, 1).await;
    let (route, dlq) = (unique("to-db"), unique("dlq"));
    create_topic(&dlq, 1).await;
    let config = TempConfig::new(&format!(
        "{kafka}[admin]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"{route}\"\ntopics = [\"{topic}\"]\n\
         dead_letter_topic = \"{dlq}\"\nretry = {{ max_backoff = \"1s\" }}\n\
         [route.sink]\ntype = \"postgres\"\nurl = \"{url}\"\nconnect_timeout = \"2s\"\n",
        kafka = kafka_section()
    ));
    let migrate = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let standby = PrivatePostgres::standby_of(&primary).unwrap();
    let standby_pool = PgPoolOptions::new().max_connections(2).connect(&standby.url()).await.unwrap();

    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    let first: Vec<String> =
        (0..50).map(|seq| event_json(&format!("S{}", seq % 5), "bronze", "SUCCESS", seq)).collect();
    let messages: Vec<(Option<&str>, &[u8])> = first.iter().map(|e| (Some("k"), e.as_bytes())).collect();
    produce(&topic, &messages).await;
    let history = "SELECT count(*) FROM public.pipeline_status";
    wait_for(&primary_pool, history, 50).await;
    wait_for(&standby_pool, history, 50).await;

    // The primary dies; the endpoint moves to the standby, still in recovery.
    primary_pool.close().await;
    primary.control("stop -m immediate").unwrap();
    endpoint.move_to(standby.port());
    let second: Vec<String> =
        (50..100).map(|seq| event_json(&format!("S{}", seq % 5), "bronze", "SUCCESS", seq)).collect();
    let messages: Vec<(Option<&str>, &[u8])> = second.iter().map(|e| (Some("k"), e.as_bytes())).collect();
    produce(&topic, &messages).await;
    // herald keeps trying; the standby takes nothing and the route does not fail.
    waits_out_the_standby(&admin, "/routes", "\"retrying\"").await;
    assert_eq!(count(&standby_pool, history).await, 50, "nothing written to a standby");
    let (status, ready) = http(&admin, "GET", "/health/ready");
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("sink failing") && ready.contains("standby"), "readiness says why: {ready}");

    // Promoted: the writes go through, every event once.
    standby.control("promote").unwrap();
    wait_for(&standby_pool, history, 100).await;
    let distinct = "SELECT count(DISTINCT kafka_offset) FROM public.pipeline_status";
    assert_eq!(count(&standby_pool, distinct).await, 100, "each offset once");
    let (_, routes) = http(&admin, "GET", "/routes");
    assert!(!routes.contains("\"failed\""), "{routes}");
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    let (low, high) = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", BROKERS).create().unwrap();
        consumer.fetch_watermarks(&dlq, 0, Duration::from_secs(10)).unwrap()
    };
    assert_eq!(high - low, 0, "nothing dead-lettered: the standby was the destination's fault");
}

/// The standby is behind when the primary dies (it was stopped while 50 events were written):
/// the promoted server has lost what herald had written. herald finds its stored offsets behind
/// what it committed — while idle, with no new event to write — reads again from there and
/// writes what was lost: every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_to_a_standby_that_was_behind_herald_writes_again_what_the_database_lost() {
    let primary = PrivatePostgres::start().unwrap();
    let primary_pool = PgPoolOptions::new().max_connections(2).connect(&primary.url()).await.unwrap();
    let endpoint = Endpoint::start(primary.port()).await.unwrap();
    let url = format!("postgres://herald@127.0.0.1:{}/postgres", endpoint.port());
    let topic = unique("failover-behind");
    create_topic(&topic, 1).await;
    let route = unique("to-db");
    let config = TempConfig::new(&format!(
        "{kafka}[admin]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"{route}\"\ntopics = [\"{topic}\"]\n\
         retry = {{ max_backoff = \"1s\" }}\n\
         [route.sink]\ntype = \"postgres\"\nurl = \"{url}\"\nconnect_timeout = \"2s\"\n",
        kafka = kafka_section()
    ));
    let migrate = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let standby = PrivatePostgres::standby_of(&primary).unwrap();
    let standby_pool = PgPoolOptions::new().max_connections(2).connect(&standby.url()).await.unwrap();
    let produce_range = |range: std::ops::Range<usize>| {
        let topic = topic.clone();
        async move {
            let events: Vec<String> =
                range.map(|seq| event_json(&format!("S{}", seq % 5), "bronze", "SUCCESS", seq)).collect();
            let messages: Vec<(Option<&str>, &[u8])> = events.iter().map(|e| (Some("k"), e.as_bytes())).collect();
            produce(&topic, &messages).await;
        }
    };

    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    let history = "SELECT count(*) FROM public.pipeline_status";
    produce_range(0..50).await;
    wait_for(&primary_pool, history, 50).await;
    wait_for(&standby_pool, history, 50).await;

    // The standby stops receiving; 50 more land on the primary alone; the primary dies.
    standby_pool.close().await;
    standby.control("stop").unwrap();
    produce_range(50..100).await;
    wait_for(&primary_pool, history, 100).await;
    primary_pool.close().await;
    primary.control("stop -m immediate").unwrap();
    // The standby comes back with what it had, is promoted, and the endpoint follows it.
    standby.control("start").unwrap();
    standby.control("promote").unwrap();
    endpoint.move_to(standby.port());
    let promoted = PgPoolOptions::new().max_connections(2).connect(&standby.url()).await.unwrap();
    assert_eq!(count(&promoted, history).await, 50, "the failover lost 50 events herald had written");
    // No event comes: the idle route asks the database anyway, and writes again what it lost.
    if !reaches(&promoted, history, 100).await {
        panic!("the idle route did not write the lost events again; herald's log:\n{}", herald.log());
    }

    produce_range(100..120).await;
    if !reaches(&promoted, history, 120).await {
        panic!("not 120 rows; herald's log:\n{}", herald.log());
    }
    let distinct = "SELECT count(DISTINCT kafka_offset) FROM public.pipeline_status";
    assert_eq!(count(&promoted, distinct).await, 120, "each offset once");
    let stored = "SELECT next_offset FROM public.herald_offsets";
    assert_eq!(count(&promoted, stored).await, 120);
    herald.wait_for_log("The sink's database is behind what herald delivered");
    let (_, metrics) = http(&admin, "GET", "/metrics");
    assert!(
        metrics.lines().any(|line| line == format!("herald_route_replayed_total{{route=\"{route}\"}} 50")),
        "{metrics}"
    );
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

/// A Postgres source across the same failover, in `capture` mode: the standby is behind when the
/// primary dies (5 rows were published from the primary alone), and the endpoint moves to it
/// before it is promoted. The source waits the standby out (it captures from a primary only),
/// sees the new timeline once it is promoted and resyncs: nothing published twice, the rows
/// written after the promotion once each. `reconcile` names exactly the pairs whose rows the
/// failover lost (their events are in the topic, their rows gone); once those jobs run again it
/// exits 0.
async fn a_source_across_a_failover(capture: &str) {
    use common::source::{insert, json, read_committed};
    let primary = PrivatePostgres::start().unwrap();
    let primary_pool = PgPoolOptions::new().max_connections(2).connect(&primary.url()).await.unwrap();
    let endpoint = Endpoint::start(primary.port()).await.unwrap();
    let url = format!("postgres://herald@127.0.0.1:{}/postgres", endpoint.port());
    let (name, topic) = (unique("src"), unique("failover-src"));
    let config = TempConfig::new(&format!(
        "{kafka}[admin]\nlisten = \"127.0.0.1:0\"\n[[source]]\nname = \"{name}\"\ntype = \"postgres\"\n\
         url = \"{url}\"\nschema = \"public\"\ntopic = \"{topic}\"\noffsets_topic = \"{topic}.offsets\"\n\
         poll_interval = \"1s\"\ncapture = \"{capture}\"\non_capture_lost = \"resync\"\n",
        kafka = kafka_section()
    ));
    let migrate = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    // In WAL mode the standby keeps the slot (as a failover slot would): the promotion is then
    // judged by where the old timeline ended, which the standby that was behind had not reached.
    let standby = if capture == "wal" {
        PrivatePostgres::copy_of(&primary).unwrap()
    } else {
        PrivatePostgres::standby_of(&primary).unwrap()
    };
    let standby_pool = PgPoolOptions::new().max_connections(2).connect(&standby.url()).await.unwrap();
    let rows = "SELECT count(*) FROM public.pipeline_status";
    let records = |messages: &[rdkafka::message::OwnedMessage]| -> Vec<i64> {
        messages.iter().map(|m| json(m)["records"].as_i64().unwrap()).collect()
    };

    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    herald.wait_for_log("Source active");
    for seq in 0..10 {
        insert(&primary_pool, "public", &format!("P{}", seq % 5), "bronze", "SUCCESS", seq).await;
    }
    read_committed(&topic, 10);
    wait_for(&standby_pool, rows, 10).await;

    // The standby stops receiving; five jobs complete on the primary alone and are published.
    standby_pool.close().await;
    standby.control("stop").unwrap();
    for seq in 10..15 {
        insert(&primary_pool, "public", &format!("P{}", seq % 5), "bronze", "FAILED", seq).await;
    }
    assert_eq!(records(&read_committed(&topic, 15)), (0..15).collect::<Vec<_>>());
    // The primary dies; the endpoint moves to the standby, still in recovery: the source waits.
    primary_pool.close().await;
    primary.control("stop -m immediate").unwrap();
    standby.control("start").unwrap();
    endpoint.move_to(standby.port());
    waits_out_the_standby(&admin, "/sources", "standby (in recovery)").await;

    // Promoted: a new timeline, so the source resyncs against the topic.
    standby.control("promote").unwrap();
    let promoted = PgPoolOptions::new().max_connections(2).connect(&standby.url()).await.unwrap();
    assert_eq!(count(&promoted, rows).await, 10, "the failover lost the 5 rows the standby never received");
    herald.wait_for_log("Capture lost; resyncing");
    let why =
        if capture == "wal" { "herald published changes the promoted server never had" } else { "timeline 2, was 1" };
    assert!(herald.log().contains(why), "{}", herald.log());
    herald.wait_for_log("The topic holds newer events than the table");
    insert(&promoted, "public", "N0", "bronze", "SUCCESS", 100).await;
    insert(&promoted, "public", "N1", "bronze", "SUCCESS", 101).await;
    let published = records(&read_committed(&topic, 17));
    assert_eq!(published, [(0..15).collect::<Vec<_>>(), vec![100, 101]].concat(), "{}", herald.log());

    // reconcile names the five pairs whose rows the failover lost, and nothing else.
    let reconcile =
        || common::herald().args(["reconcile", "--json", "--source", &name, "--config"]).arg(&config.path).output();
    let out = reconcile().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(3), "divergent: {report}");
    let mut diverged: Vec<(String, String)> = report["divergences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["source"].as_str().unwrap().to_owned(), d["verdict"].as_str().unwrap().to_owned()))
        .collect();
    diverged.sort();
    let lost: Vec<(String, String)> = (0..5).map(|p| (format!("P{p}"), "topic_newer".to_owned())).collect();
    assert_eq!(diverged, lost, "{report}");
    assert_eq!(report["repairable"], 0, "{report}");

    // Those jobs run again: the table has them, the topic has them once more, they agree.
    for seq in 20..25 {
        insert(&promoted, "public", &format!("P{}", seq % 5), "bronze", "SUCCESS", seq).await;
    }
    let published = records(&read_committed(&topic, 22));
    assert_eq!(published[17..], [20, 21, 22, 23, 24], "{}", herald.log());
    let out = reconcile().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_source_waits_out_a_standby_and_resyncs_once_promoted() {
    a_source_across_a_failover("trigger").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_source_waits_out_a_standby_and_resyncs_once_promoted() {
    a_source_across_a_failover("wal").await;
}

/// A WAL source whose slot came along with the promotion (a failover slot; here the standby is a
/// file copy that kept it), and a standby that had everything herald published: nothing was
/// lost, so the capture goes on from the slot with no resync (the default `on_capture_lost =
/// "stop"` would stop it otherwise): every row once, in order, across the promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_source_goes_on_when_the_promotion_kept_its_slot_and_everything_it_published() {
    use common::source::{insert, json, read_committed};
    let primary = PrivatePostgres::start().unwrap();
    let endpoint = Endpoint::start(primary.port()).await.unwrap();
    let url = format!("postgres://herald@127.0.0.1:{}/postgres", endpoint.port());
    let (name, topic) = (unique("src"), unique("failover-slot"));
    let config = TempConfig::new(&format!(
        "{kafka}[[source]]\nname = \"{name}\"\ntype = \"postgres\"\nurl = \"{url}\"\nschema = \"public\"\n\
         topic = \"{topic}\"\noffsets_topic = \"{topic}.offsets\"\ncapture = \"wal\"\n",
        kafka = kafka_section()
    ));
    let migrate = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let standby = PrivatePostgres::copy_of(&primary).unwrap();
    let primary_pool = PgPoolOptions::new().max_connections(2).connect(&primary.url()).await.unwrap();
    let standby_pool = PgPoolOptions::new().max_connections(2).connect(&standby.url()).await.unwrap();
    let records = |messages: &[rdkafka::message::OwnedMessage]| -> Vec<i64> {
        messages.iter().map(|m| json(m)["records"].as_i64().unwrap()).collect()
    };

    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    for seq in 0..10 {
        insert(&primary_pool, "public", &format!("P{}", seq % 5), "bronze", "SUCCESS", seq).await;
    }
    read_committed(&topic, 10);
    // The standby has replayed all the primary wrote (so all herald published) when it dies.
    let written: String =
        sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&primary_pool).await.unwrap();
    let caught_up = format!("SELECT (pg_last_wal_replay_lsn() >= '{written}')::int::bigint");
    wait_for(&standby_pool, &caught_up, 1).await;
    primary_pool.close().await;
    primary.control("stop -m immediate").unwrap();
    standby_pool.close().await;
    standby.control("promote").unwrap();
    endpoint.move_to(standby.port());
    herald.wait_for_log("kept the slot (a failover slot)");
    let promoted = PgPoolOptions::new().max_connections(2).connect(&standby.url()).await.unwrap();
    for seq in 10..15 {
        insert(&promoted, "public", &format!("P{}", seq % 5), "bronze", "SUCCESS", seq).await;
    }
    let published = records(&read_committed(&topic, 15));
    assert_eq!(published, (0..15).collect::<Vec<_>>(), "{}", herald.log());
    assert!(!herald.log().contains("Capture lost"), "{}", herald.log());
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}
