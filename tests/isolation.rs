//! A failure stays where it happened: a route or source that fails stops alone, shown failed
//! (`/routes`, `/sources`, readiness, a metric); the others and the process go on, and a
//! restart brings the failed one back once its cause is fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::source::{greenfield, insert, pool, read_committed_until, URL};
use common::*;

/// Waits until `done()` holds, or fails with `what` and herald's log.
async fn eventually(herald: &Herald, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "never: {what}\n{}", herald.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `status` of route or source `name` in `/routes` or `/sources`, and the whole entry.
fn unit(admin: &str, kind: &str, name: &str) -> (String, serde_json::Value) {
    let (_, body) = http(admin, "GET", &format!("/{kind}"));
    let units: serde_json::Value = serde_json::from_str(&body).unwrap();
    let found = units.as_array().unwrap().iter().find(|unit| unit["name"] == name).cloned().unwrap_or_default();
    (found["status"].as_str().unwrap_or("").to_owned(), found)
}

fn post(admin: &str, path: &str) -> (u16, String) {
    request(admin, "POST", path, "")
}

async fn produce_seqs(topic: &str, seqs: std::ops::Range<usize>) {
    let events: Vec<String> = seqs.map(|seq| event_json("A", "bronze", "SUCCESS", seq)).collect();
    let messages: Vec<(Option<&str>, &[u8])> = events.iter().map(|json| (Some("A"), json.as_bytes())).collect();
    produce(topic, &messages).await;
}

/// Two routes (stdout, Postgres) and a source in one process. The Postgres route's schema is
/// dropped: that route fails alone (failed in `/routes` with its error, readiness 503 naming it,
/// `herald_route_failed` 1) while the stdout route delivers every event and the source publishes;
/// `herald migrate` and `POST /routes/{name}/restart` bring it back, and its table holds every
/// event produced meanwhile exactly once. Then the source's capture is dropped: the source fails
/// alone and the routes deliver on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_route_or_source_stops_alone_and_a_restart_brings_it_back() {
    let pool = pool().await;
    let (sink_schema, source_schema) = (unique("iso_sink").replace('-', "_"), greenfield(&pool).await);
    let (topic, source_topic) = (unique("iso"), unique("iso-src"));
    create_topic(&topic, 1).await;
    let config = TempConfig::new(&format!(
        "{kafka}[runtime]\nprogress_interval = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"echo\"\ntopics = [\"{topic}\"]\nsink = {{ type = \"stdout\" }}\n\
         [[route]]\nname = \"table\"\ntopics = [\"{topic}\"]\n\
         [route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{sink_schema}\"\nmode = \"append\"\n\
         [[source]]\nname = \"orders\"\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{source_schema}\"\n\
         topic = \"{source_topic}\"\noffsets_topic = \"{source_topic}.offsets\"\npoll_interval = \"1s\"\n",
        kafka = kafka_section()
    ));
    let migrate = || {
        let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    migrate();
    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    let rows = |pool: &sqlx::PgPool| {
        let sql = format!(
            "SELECT count(*), count(DISTINCT records), coalesce(min(records), -1) FROM {sink_schema}.pipeline_status"
        );
        let pool = pool.clone();
        async move { sqlx::query_as::<_, (i64, i64, i64)>(&sql).fetch_one(&pool).await.unwrap_or((-1, -1, -1)) }
    };

    produce_seqs(&topic, 0..100).await;
    herald.wait_for_lines(100);
    eventually(&herald, "the table holds the first 100", async || rows(&pool).await.0 == 100).await;

    // A bad deploy drops the route's schema, table and all: the Postgres route fails alone.
    sqlx::query(&format!("DROP SCHEMA {sink_schema} CASCADE")).execute(&pool).await.unwrap();
    produce_seqs(&topic, 100..200).await;
    eventually(&herald, "route `table` failed", async || unit(&admin, "routes", "table").0 == "failed").await;
    let (_, failed) = unit(&admin, "routes", "table");
    assert!(failed["last_error"].as_str().unwrap_or("").contains("does not exist"), "{failed}");
    assert!(failed["failed_since"].is_string(), "{failed}");
    let (status, ready) = http(&admin, "GET", "/health/ready");
    assert!(status == 503 && ready.contains("route table: failed since"), "{status} {ready}");
    let (_, metrics) = http(&admin, "GET", "/metrics");
    assert!(metrics.contains("herald_route_failed{route=\"table\"} 1"), "{metrics}");
    // The others go on: the stdout route prints every event, the source publishes.
    let printed = herald.wait_for_lines(200);
    assert_eq!(seqs(&printed).iter().map(|(_, seq)| *seq).collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
    assert_eq!(unit(&admin, "routes", "echo").0, "running", "{}", herald.log());
    insert(&pool, &source_schema, "OrdersDB", "bronze", "SUCCESS", 1).await;
    let published = read_committed_until(&source_topic, |messages| !messages.is_empty());
    assert_eq!(published.len(), 1);

    // Fixed: the table is back; a restart of the route alone picks it up, and the events
    // produced while it was failed arrive exactly once.
    migrate();
    let (status, body) = post(&admin, "/routes/table/restart");
    assert_eq!(status, 200, "{body}");
    eventually(&herald, "the table holds 100..200", async || {
        let (count, distinct, _) = rows(&pool).await;
        let in_window: (i64,) = sqlx::query_as(&format!(
            "SELECT count(*) FROM {sink_schema}.pipeline_status WHERE records BETWEEN 100 AND 199"
        ))
        .fetch_one(&pool)
        .await
        .unwrap_or((0,));
        in_window.0 == 100 && count == distinct
    })
    .await;
    let (count, distinct, _) = rows(&pool).await;
    assert_eq!(count, distinct, "no event twice");
    eventually(&herald, "route `table` running", async || unit(&admin, "routes", "table").0 == "running").await;
    eventually(&herald, "ready again", async || http(&admin, "GET", "/health/ready").0 == 200).await;

    // A retire while the source runs is refused, naming who runs it: it would look like a loss.
    let out =
        common::herald().args(["migrate", "--drop-source", "orders", "--config"]).arg(&config.path).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("is running in a herald") && said.contains("application_name"), "{said}");
    assert_eq!(unit(&admin, "sources", "orders").0, "active", "{}", herald.log());

    // The source's capture is dropped behind its back: the source fails alone.
    let triggers: Vec<(String,)> = sqlx::query_as(&format!(
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = '{source_schema}.pipeline_status'::regclass AND NOT tgisinternal"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!triggers.is_empty());
    for (trigger,) in triggers {
        sqlx::query(&format!("DROP TRIGGER \"{trigger}\" ON {source_schema}.pipeline_status"))
            .execute(&pool)
            .await
            .unwrap();
    }
    insert(&pool, &source_schema, "OrdersDB", "silver", "SUCCESS", 2).await;
    eventually(&herald, "source `orders` failed", async || unit(&admin, "sources", "orders").0 == "failed").await;
    let (status, ready) = http(&admin, "GET", "/health/ready");
    assert!(status == 503 && ready.contains("source orders: failed since"), "{status} {ready}");
    // Its error prints the ways forward as commands that run as printed: with --config.
    let (_, failed) = unit(&admin, "sources", "orders");
    let error = failed["last_error"].as_str().unwrap_or("");
    let config_flag = format!("--config {}", config.path.display());
    for command in [
        format!("herald reconcile {config_flag} --source orders"),
        format!("herald migrate {config_flag} --drop-source orders"),
    ] {
        assert!(error.contains(&command), "`{command}` in: {error}");
    }
    produce_seqs(&topic, 200..250).await;
    herald.wait_for_lines(250);
    eventually(&herald, "the table holds 200..250", async || {
        let in_window: (i64,) = sqlx::query_as(&format!(
            "SELECT count(*) FROM {sink_schema}.pipeline_status WHERE records BETWEEN 200 AND 249"
        ))
        .fetch_one(&pool)
        .await
        .unwrap_or((0,));
        in_window.0 == 50
    })
    .await;
    // Recovered as an operator would: retire (the failed source holds no lock), install again,
    // restart the source alone; it publishes the next row.
    let out =
        common::herald().args(["migrate", "--drop-source", "orders", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    migrate();
    let (status, body) = post(&admin, "/sources/orders/restart");
    assert_eq!(status, 200, "{body}");
    eventually(&herald, "source `orders` active", async || unit(&admin, "sources", "orders").0 == "active").await;
    insert(&pool, &source_schema, "OrdersDB", "gold", "SUCCESS", 3).await;
    let published = read_committed_until(&source_topic, |messages| {
        messages.iter().any(|message| common::source::json(message)["stage"] == "gold")
    });
    assert!(published.iter().any(|message| common::source::json(message)["stage"] == "gold"));
    eventually(&herald, "ready again", async || http(&admin, "GET", "/health/ready").0 == 200).await;
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "herald runs on and stops cleanly:\n{}", herald.log());
    assert_eq!(herald.log().matches("Route failed; the other routes run on.").count(), 1, "{}", herald.log());
    for schema in [&sink_schema, &source_schema] {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
    }
}

/// With `--fail-fast` the first failure stops herald (exit 1, naming it); every route failed
/// stops it without the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_stops_on_the_first_failure_and_all_failed_stops_without_it() {
    let topic = unique("iso-fast");
    create_topic(&topic, 1).await;
    let missing_schema = unique("iso_missing").replace('-', "_");
    let text = format!(
        "{kafka}[[route]]\nname = \"echo\"\ntopics = [\"{topic}\"]\nsink = {{ type = \"stdout\" }}\n\
         [[route]]\nname = \"legacy\"\ntopics = [\"{topic}\"]\n\
         [route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nmode = \"append\"\n\
         table = {{ name = \"{missing_schema}.status\", columns = {{ src = \"source\", stage = \"stage\" }} }}\n",
        kafka = kafka_section()
    );
    let config = TempConfig::new(&text);
    // Without the flag: the legacy table is missing, that route fails, the stdout one runs on.
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Route failed");
    produce_seqs(&topic, 0..3).await;
    herald.wait_for_lines(3);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    // With it: exit 1, naming the route.
    let out = common::herald().args(["run", "--fail-fast", "--config"]).arg(&config.path).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("--fail-fast") && log.contains("route legacy"), "{log}");
}
