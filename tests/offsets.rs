//! `herald offsets show`: where a route resumes (its sink's stored offsets, or its group's) and
//! where a source stands, end to end against the services.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::source::*;
use common::*;

fn show(config: &TempConfig, args: &[&str]) -> serde_json::Value {
    let out = herald().args(["offsets", "show", "--json", "--config"]).arg(&config.path).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Sums a numeric field over the partitions.
fn total(report: &serde_json::Value, field: &str) -> i64 {
    report["partitions"].as_array().unwrap().iter().map(|p| p[field].as_i64().unwrap_or(0)).sum()
}

async fn produce_events(topic: &str, range: std::ops::Range<usize>) {
    let events: Vec<String> = range.map(|seq| event_json(&format!("S{seq}"), "bronze", "SUCCESS", seq)).collect();
    let keys: Vec<String> = (0..events.len()).map(|i| format!("k{i}")).collect();
    let messages: Vec<(Option<&str>, &[u8])> =
        events.iter().zip(&keys).map(|(e, k)| (Some(k.as_str()), e.as_bytes())).collect();
    produce(topic, &messages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_route_resumes_from_its_sink_s_offsets_and_a_stdout_route_from_its_group_s() {
    let pool = pool().await;
    let schema = unique("offs").replace('-', "_");
    let topic = unique("events");
    create_topic(&topic, 2).await;
    let (to_db, to_stdout) = (unique("to-db"), unique("to-stdout"));
    let db = TempConfig::new(&route_config(
        &to_db,
        &topic,
        "",
        &format!("[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\nmode = \"append\"\n"),
    ));
    let stdout = TempConfig::new(&stdout_route_config(&to_stdout, &topic, ""));
    produce_events(&topic, 0..10).await;
    for config in [&db, &stdout] {
        let mut herald = Herald::run(config);
        if std::ptr::eq(config, &db) {
            wait_for_rows(&pool, &format!("{schema}.pipeline_status"), 10).await;
        } else {
            herald.wait_for_lines(10);
        }
        herald.signal("TERM");
        assert!(herald.wait_exit().success(), "{}", herald.log());
    }
    // Five more, read by neither yet.
    produce_events(&topic, 10..15).await;

    let report = show(&db, &["--route", &to_db]);
    assert_eq!(report["group"], format!("herald.{to_db}"), "{report}");
    let partitions = report["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2, "{report}");
    assert!(partitions.iter().all(|p| p["kept_by"] == "sink"), "the Postgres sink keeps them: {report}");
    assert_eq!((total(&report, "resumes_from"), total(&report, "log_end"), total(&report, "lag")), (10, 15, 5));
    for partition in partitions {
        let lag = partition["lag"].as_i64().unwrap();
        assert_eq!(partition["next_event_at"].is_string(), lag > 0, "the next event's time where one waits: {report}");
    }

    let report = show(&stdout, &["--route", &to_stdout]);
    let partitions = report["partitions"].as_array().unwrap();
    assert!(partitions.iter().all(|p| p["kept_by"] == "group"), "{report}");
    assert_eq!((total(&report, "resumes_from"), total(&report, "lag")), (10, 5), "{report}");

    // The text form names who keeps them.
    let out = herald().args(["offsets", "show", "--route", &to_db, "--config"]).arg(&db.path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("resumes from its sink's stored offsets") && text.contains(&topic), "{text}");
    // A wrong name is named, with the ones there are.
    let out = herald().args(["offsets", "show", "--route", "nope", "--config"]).arg(&db.path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("routes: {to_db}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_shows_no_position_before_its_start_and_its_cursor_after() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let (name, topic) = (unique("src"), unique("events"));
    let config = TempConfig::new(&source_config(&name, &schema, &topic, ""));
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = show(&config, &["--source", &name]);
    assert!(report["position"].is_null(), "{report}");

    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "A", "bronze", "SUCCESS", 1).await;
    read_committed(&topic, 1);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    let report = show(&config, &["--source", &name]);
    let position = report["position"]["position"].as_str().unwrap();
    assert!(position.starts_with("transaction ") && position.contains(", change "), "{report}");
    assert!(report["position"]["at"].is_string(), "{report}");
}

fn reset(config: &TempConfig, args: &[&str]) -> (bool, String) {
    let out = herald().args(["offsets", "reset", "--config"]).arg(&config.path).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_a_postgres_route_moves_its_stored_offsets_and_replays_exactly_the_window() {
    let pool = pool().await;
    let schema = unique("offr").replace('-', "_");
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let route = unique("to-db");
    let config = TempConfig::new(&route_config(
        &route,
        &topic,
        "",
        &format!("[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\nmode = \"append\"\n"),
    ));
    produce_events(&topic, 0..10).await;
    let history = format!("{schema}.pipeline_status");
    let mut herald = Herald::run(&config);
    wait_for_rows(&pool, &history, 10).await;

    // Refused while a herald runs the route, naming it.
    let (moved, text) = reset(&config, &["--route", &route, "--to-offset", &format!("{topic}:0:6")]);
    assert!(!moved && text.contains("is running") && text.contains("members ("), "{text}");
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());

    // A dry run says before → after and moves nothing.
    let (moved, text) = reset(&config, &["--route", &route, "--to-offset", &format!("{topic}:0:6"), "--dry-run"]);
    assert!(moved && text.contains(&format!("{topic}[0]: 10 → 6")) && text.contains("nothing moved"), "{text}");
    assert_eq!(show(&config, &["--route", &route])["partitions"][0]["resumes_from"], 10);
    // An offset the log does not hold is refused.
    let (moved, text) = reset(&config, &["--route", &route, "--to-offset", &format!("{topic}:0:99")]);
    assert!(!moved && text.contains("outside"), "{text}");

    let (moved, text) = reset(&config, &["--route", &route, "--to-offset", &format!("{topic}:0:6")]);
    assert!(moved, "{text}");
    let report = show(&config, &["--route", &route]);
    assert_eq!(
        (report["partitions"][0]["resumes_from"].as_i64(), report["partitions"][0]["lag"].as_i64()),
        (Some(6), Some(4))
    );
    let mut herald = Herald::run(&config);
    wait_for_rows(&pool, &history, 14).await;
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    let twice: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT kafka_offset FROM {history} GROUP BY kafka_offset HAVING count(*) = 2 ORDER BY kafka_offset"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(twice, [6, 7, 8, 9], "exactly the window from offset 6 was written again");
    assert_eq!(
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {history}")).fetch_one(&pool).await.unwrap(),
        14
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_a_stdout_route_moves_its_group_s_offsets_by_time_and_to_the_start() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let route = unique("to-stdout");
    let config = TempConfig::new(&stdout_route_config(&route, &topic, ""));
    produce_events(&topic, 0..5).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    produce_events(&topic, 5..10).await;
    let mut herald = Herald::run(&config);
    herald.wait_for_lines(10);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());

    let (moved, text) = reset(&config, &["--route", &route, "--to-time", &between]);
    assert!(moved && text.contains(&format!("{topic}[0]: 10 → 5")), "{text}");
    let report = show(&config, &["--route", &route]);
    assert_eq!(report["partitions"][0]["kept_by"], "group", "{report}");
    let records = |lines: &[String]| -> Vec<i64> {
        lines
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["records"].as_i64().unwrap())
            .collect()
    };
    let mut herald = Herald::run(&config);
    let lines = herald.wait_for_lines(5);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    assert_eq!(records(&lines), [5, 6, 7, 8, 9], "the events produced after the instant, once");

    let (moved, text) = reset(&config, &["--route", &route, "--to-earliest"]);
    assert!(moved && text.contains(&format!("{topic}[0]: 10 → 0")), "{text}");
    let mut herald = Herald::run(&config);
    let lines = herald.wait_for_lines(10);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    assert_eq!(records(&lines), (0..10).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_a_redis_route_moves_its_group_s_offsets_and_replays_exactly_the_window() {
    use redis::AsyncCommands;
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let (route, stream) = (unique("to-redis"), unique("stream"));
    let config = TempConfig::new(&route_config(
        &route,
        &topic,
        "",
        &format!(
            "[route.sink]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nstream = {{ key = \"{stream}\", max_len = 0 }}\n"
        ),
    ));
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let records_in_stream = |mut redis: redis::aio::MultiplexedConnection, stream: String| async move {
        let entries: redis::streams::StreamRangeReply = redis.xrange_all(&stream).await.unwrap();
        entries
            .ids
            .iter()
            .map(|id| {
                let event: String = id.get("event").unwrap();
                serde_json::from_str::<serde_json::Value>(&event).unwrap()["records"].as_i64().unwrap()
            })
            .collect::<Vec<i64>>()
    };
    let until_len = |wanted: usize| {
        let (redis, stream) = (redis.clone(), stream.clone());
        async move {
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                let mut redis = redis.clone();
                let len: usize = redis.xlen(&stream).await.unwrap();
                if len >= wanted {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "{len} entries in {stream}, not {wanted}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    produce_events(&topic, 0..10).await;
    let mut herald = Herald::run(&config);
    until_len(10).await;
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());

    let (moved, text) = reset(&config, &["--route", &route, "--to-offset", &format!("{topic}:0:4")]);
    assert!(moved && text.contains(&format!("{topic}[0]: 10 → 4")) && text.contains("the group's offsets"), "{text}");
    let mut herald = Herald::run(&config);
    until_len(16).await;
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    let expected: Vec<i64> = (0..10).chain(4..10).collect();
    assert_eq!(records_in_stream(redis.clone(), stream.clone()).await, expected, "exactly offsets 4–9 again");
    let _: () = redis.del(&stream).await.unwrap();
}

/// `PATCH /routes/{name}/offsets` with a JSON `body`.
fn patch_offsets(admin: &str, route: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = request_with_body(
        admin,
        "PATCH",
        &format!("/routes/{route}/offsets"),
        "Content-Type: application/json\r\n",
        body,
    );
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {status} {text}")))
}

fn route_status(admin: &str, route: &str) -> String {
    let (_, body) = http(admin, "GET", "/routes");
    let routes: serde_json::Value = serde_json::from_str(&body).unwrap();
    let found = routes.as_array().unwrap().iter().find(|r| r["name"] == route).cloned().unwrap_or_default();
    found["status"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_moves_a_paused_route_and_refuses_a_running_one_and_a_second_reset_moves_nothing() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let route = unique("to-stdout");
    let config =
        TempConfig::new(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", stdout_route_config(&route, &topic, "")));
    produce_events(&topic, 0..10).await;
    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    herald.wait_for_lines(10);

    let to_four = format!(r#"{{"to_offset": {{"topic": "{topic}", "partition": 0, "offset": 4}}}}"#);
    let (status, answer) = patch_offsets(&admin, &route, &to_four);
    assert!(status == 422 && answer["error"].as_str().unwrap().contains("pause it first"), "{status} {answer}");
    let (status, answer) = patch_offsets(&admin, &route, r#"{"to_earliest": true, "to_latest": true}"#);
    assert!(status == 400 && answer["error"].as_str().unwrap().contains("exactly one"), "{status} {answer}");

    let (status, _) = request(&admin, "POST", &format!("/routes/{route}/pause"), "");
    assert_eq!(status, 202);
    // The group's offsets are committed within a second of the events' delivery.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = http(&admin, "GET", &format!("/routes/{route}/offsets"));
        let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200, "{shown}");
        if shown["partitions"][0]["resumes_from"] == 10 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{shown}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A dry run moves nothing; the reset moves 10 → 4 and the route stays paused.
    let dry_run = format!(r#"{{"to_offset": {{"topic": "{topic}", "partition": 0, "offset": 4}}, "dry_run": true}}"#);
    let (status, answer) = patch_offsets(&admin, &route, &dry_run);
    assert_eq!((status, &answer["dry_run"]), (200, &serde_json::json!(true)), "{answer}");
    let (status, answer) = patch_offsets(&admin, &route, &to_four);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["moved"][0]["before"], &answer["moved"][0]["after"]),
        (&serde_json::json!(10), &serde_json::json!(4))
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    while route_status(&admin, &route) != "paused" {
        assert!(std::time::Instant::now() < deadline, "not paused again: {}", route_status(&admin, &route));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The same reset again: 4 → 4, nothing replayed twice.
    let (status, answer) = patch_offsets(&admin, &route, &to_four);
    assert_eq!((status, &answer["moved"][0]["before"]), (200, &serde_json::json!(4)), "{answer}");
    assert_eq!(herald.lines().len(), 10, "nothing read while paused");

    let (status, _) = request(&admin, "POST", &format!("/routes/{route}/resume"), "");
    assert_eq!(status, 202);
    let lines = herald.wait_for_lines(16);
    let replayed: Vec<usize> = lines[10..]
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(replayed, [4, 5, 6, 7, 8, 9], "exactly the window, once");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(herald.lines().len(), 16);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}
