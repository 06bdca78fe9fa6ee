//! `herald publish`, `wait` and `check`, and bad input on the command line.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::Message;

fn run_herald(args: &[&str]) -> Output {
    herald().args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_writes_the_seed_event_keyed_by_source() {
    let topic = unique("events");
    create_topic(&topic, 3).await;
    let out = run_herald(&[
        "publish",
        "--brokers",
        BROKERS,
        "--topic",
        &topic,
        "--source",
        "OrdersDB",
        "--stage",
        "bronze_ingest",
        "--records",
        "14823",
        "--field",
        "run_id=r-7",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let message = consume_all(&topic, 1).remove(0);
    assert_eq!(message.key(), Some(&b"OrdersDB"[..]));
    let event: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(event["event"], "STAGE_COMPLETE");
    assert_eq!(event["stage"], "bronze_ingest");
    assert_eq!(event["source"], "OrdersDB");
    assert_eq!(event["records"], 14823);
    assert_eq!(event["status"], "SUCCESS");
    assert_eq!(event["run_id"], "r-7");
    let timestamp = event["timestamp"].as_str().unwrap();
    assert!(herald_sdk::EventTimestamp::parse(timestamp).is_ok(), "{timestamp}");
    // What was printed is what was sent.
    assert_eq!(text(&out.stdout).trim(), std::str::from_utf8(message.payload().unwrap()).unwrap());
}

/// `publish` exits as soon as the event is acknowledged, without tearing the client down: every
/// exit 0 is an event on the topic, and in order, for both producers (plain and idempotent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_publish_is_on_the_topic_with_either_producer() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    for records in 0..6 {
        let records = records.to_string();
        let mut args = vec!["publish", "--brokers", BROKERS, "--topic", &topic, "--source", "A", "--stage", "s"];
        args.extend(["--records", &records]);
        if records.parse::<u32>().unwrap() % 2 == 1 {
            args.push("--idempotent");
        }
        let out = run_herald(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(&format!("published to {topic}[0]@")), "{}", text(&out.stderr));
    }
    let seen: Vec<i64> = consume_all(&topic, 6)
        .iter()
        .map(|message| {
            serde_json::from_slice::<serde_json::Value>(message.payload().unwrap()).unwrap()["records"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seen, (0..6).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_an_event_published_before_it_started() {
    let topic = unique("events");
    create_topic(&topic, 3).await;
    let published = run_herald(&[
        "publish",
        "--brokers",
        BROKERS,
        "--topic",
        &topic,
        "--source",
        "OrdersDB",
        "--stage",
        "bronze_ingest",
        "--records",
        "5",
    ]);
    assert!(published.status.success(), "{}", text(&published.stderr));

    let out =
        run_herald(&["wait", "--brokers", BROKERS, "--topic", &topic, "--source", "OrdersDB", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), text(&published.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_prefers_the_newest_matching_event_in_its_look_back() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let now = chrono::Utc::now();
    let at = |secs: i64| (now - chrono::Duration::seconds(secs)).format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
    let events = [
        format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"bronze","source":"OrdersDB","timestamp":"{}","status":"FAILED"}}"#,
            at(30)
        ),
        format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"bronze","source":"OrdersDB","timestamp":"{}","status":"SUCCESS","attempt":2}}"#,
            at(20)
        ),
        format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"bronze","source":"UsersDB","timestamp":"{}","status":"FAILED"}}"#,
            at(10)
        ),
    ];
    let batch: Vec<(Option<&str>, &[u8])> = events.iter().map(|e| (Some("k"), e.as_bytes())).collect();
    produce(&topic, &batch).await;

    let out = run_herald(&[
        "wait",
        "--brokers",
        BROKERS,
        "--topic",
        &topic,
        "--source",
        "OrdersDB",
        "--stage",
        "bronze",
        "--timeout",
        "60s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(r#""attempt":2"#), "{}", text(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_3_when_the_stage_failed_unless_allowed() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let published = run_herald(&[
        "publish",
        "--brokers",
        BROKERS,
        "--topic",
        &topic,
        "--source",
        "OrdersDB",
        "--stage",
        "bronze",
        "--status",
        "FAILED",
    ]);
    assert!(published.status.success());

    let failed =
        run_herald(&["wait", "--brokers", BROKERS, "--topic", &topic, "--source", "OrdersDB", "--timeout", "60s"]);
    assert_eq!(failed.status.code(), Some(3), "{}", text(&failed.stderr));
    assert!(text(&failed.stdout).contains("FAILED"));
    let allowed = run_herald(&[
        "wait",
        "--brokers",
        BROKERS,
        "--topic",
        &topic,
        "--source",
        "OrdersDB",
        "--timeout",
        "60s",
        "--allow-failed",
    ]);
    assert_eq!(allowed.status.code(), Some(0));
}

/// A stage that succeeded and is running again is not done: `wait` decides as a poller of the
/// (source, stage) row would, by the newest event. It waits for this run's outcome, and a
/// `RUNNING` followed by `SUCCESS` is done at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_does_not_call_a_re_running_stage_done() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let publish = |stage: &str, status: &str, event: &str| {
        let out = run_herald(&[
            "publish",
            "--brokers",
            BROKERS,
            "--topic",
            &topic,
            "--source",
            "OrdersDB",
            "--stage",
            stage,
            "--status",
            status,
            "--event",
            event,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    let wait = |stage: &str, timeout: &str| {
        run_herald(&[
            "wait",
            "--brokers",
            BROKERS,
            "--topic",
            &topic,
            "--source",
            "OrdersDB",
            "--stage",
            stage,
            "--since",
            "6h",
            "--timeout",
            timeout,
        ])
    };
    // silver: SUCCESS, then a re-run starts (RUNNING): open until the re-run's outcome.
    publish("silver", "SUCCESS", "STAGE_COMPLETE");
    publish("silver", "RUNNING", "STAGE_COMPLETE");
    let open = wait("silver", "3s");
    assert_eq!(open.status.code(), Some(124), "the old SUCCESS does not decide: {}", text(&open.stdout));
    // gold: SUCCESS, then STAGE_STARTED: open too.
    publish("gold", "SUCCESS", "STAGE_COMPLETE");
    publish("gold", "RUNNING", "STAGE_STARTED");
    assert_eq!(wait("gold", "3s").status.code(), Some(124));
    // The re-run's outcome arrives while `wait` waits: that decides.
    let waiting = {
        let topic = topic.clone();
        std::thread::spawn(move || {
            run_herald(&[
                "wait",
                "--brokers",
                BROKERS,
                "--topic",
                &topic,
                "--source",
                "OrdersDB",
                "--stage",
                "silver",
                "--since",
                "6h",
                "--timeout",
                "60s",
            ])
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    publish("silver", "SUCCESS", "STAGE_COMPLETE");
    let decided = waiting.join().unwrap();
    assert_eq!(decided.status.code(), Some(0), "{}", text(&decided.stderr));
    // bronze: RUNNING then SUCCESS is done at once.
    publish("bronze", "RUNNING", "STAGE_COMPLETE");
    publish("bronze", "SUCCESS", "STAGE_COMPLETE");
    let done = wait("bronze", "30s");
    assert_eq!(done.status.code(), Some(0), "{}", text(&done.stderr));
    assert!(text(&done.stdout).contains("SUCCESS"));
}

/// With `--config`, `wait` and `status` read the topics that config's sources write and routes
/// read, not the default one; a timeout names them, and a long wait says what it still awaits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_and_status_read_the_topics_of_their_config() {
    let (source_topic, route_topic) = (unique("cfg-src"), unique("cfg-route"));
    create_topic(&source_topic, 1).await;
    create_topic(&route_topic, 1).await;
    let config = TempConfig::new(&format!(
        "{}\n[[source]]\nname = \"s\"\ntype = \"postgres\"\nurl = \"postgres://herald:herald@127.0.0.1/herald\"\n\
         topic = \"{source_topic}\"\n",
        stdout_route_config("r", &route_topic, "")
    ));
    let path = config.path.to_str().unwrap();
    let published = run_herald(&[
        "publish",
        "--brokers",
        BROKERS,
        "--topic",
        &source_topic,
        "--source",
        "Legacy",
        "--stage",
        "bronze",
    ]);
    assert!(published.status.success(), "{}", text(&published.stderr));
    let found = run_herald(&["wait", "--config", path, "--source", "Legacy", "--stage", "bronze", "--timeout", "60s"]);
    assert_eq!(found.status.code(), Some(0), "{}", text(&found.stderr));
    let status = run_herald(&["status", "--config", path]);
    assert!(text(&status.stdout).contains("Legacy"), "{}", text(&status.stdout));
    let open = run_herald(&["wait", "--config", path, "--source", "Nobody", "--timeout", "3s", "--progress", "1s"]);
    assert_eq!(open.status.code(), Some(124));
    let said = text(&open.stderr);
    assert!(said.contains(&source_topic) && said.contains(&route_topic), "the timeout names the topics: {said}");
    assert!(said.contains("still waiting for source `Nobody`"), "progress on stderr: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_with_124_when_nothing_matches_and_ignores_events_older_than_since() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let old = r#"{"event":"STAGE_COMPLETE","stage":"bronze","source":"OrdersDB","timestamp":"2020-01-01T00:00:00","status":"SUCCESS"}"#;
    produce(&topic, &[(Some("OrdersDB"), old.as_bytes())]).await;
    let other =
        run_herald(&["publish", "--brokers", BROKERS, "--topic", &topic, "--source", "UsersDB", "--stage", "bronze"]);
    assert!(other.status.success());

    let out = run_herald(&["wait", "--brokers", BROKERS, "--topic", &topic, "--source", "OrdersDB", "--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(text(&out.stdout).is_empty());
    assert!(text(&out.stderr).contains("no STAGE_COMPLETE event for source `OrdersDB`"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_up_on_an_event_published_while_it_waits() {
    let topic = unique("events");
    create_topic(&topic, 3).await;
    let waiter = herald()
        .args([
            "wait",
            "--brokers",
            BROKERS,
            "--topic",
            &topic,
            "--source",
            "OrdersDB",
            "--stage",
            "silver",
            "--timeout",
            "90s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish a non-matching stage first, then the awaited one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for stage in ["bronze", "silver"] {
        let out =
            run_herald(&["publish", "--brokers", BROKERS, "--topic", &topic, "--source", "OrdersDB", "--stage", stage]);
        assert!(out.status.success());
    }
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(r#""stage":"silver""#), "{}", text(&out.stdout));
}

#[test]
fn check_reports_an_unreachable_broker() {
    let config = TempConfig::new(&stdout_route_config("r", "t", "").replace(BROKERS, "127.0.0.1:1"));
    let out = run_herald(&["check", "--timeout", "3s", "--config", config.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(report.contains("FAIL  kafka") && report.contains("cannot reach 127.0.0.1:1"), "{report}");
}

#[test]
fn check_passes_on_a_good_config_against_the_real_broker() {
    require_kafka();
    let out = run_herald(&["check", "--config", "config/herald.toml"]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("ok    kafka") && report.contains("All checks passed"), "{report}");
}

#[test]
fn check_and_run_name_the_file_and_key_of_a_bad_config() {
    let config = TempConfig::new(&stdout_route_config("r", "t", "colour = \"red\""));
    let path = config.path.to_str().unwrap();
    let check = run_herald(&["check", "--config", path]);
    assert_eq!(check.status.code(), Some(1));
    let report = text(&check.stdout);
    assert!(
        report.contains(path) && report.contains("route[0]") && report.contains("unknown field `colour`"),
        "{report}"
    );

    let run = run_herald(&["run", "--config", path]);
    assert_eq!(run.status.code(), Some(1));
    let error = text(&run.stderr);
    assert!(error.contains(path) && error.contains("unknown field `colour`"), "{error}");
    assert!(!error.contains("panicked"), "{error}");
}

#[test]
fn an_unknown_sink_type_or_sink_setting_is_named() {
    let unknown_type =
        TempConfig::new(&stdout_route_config("r", "t", "").replace("type = \"stdout\"", "type = \"kafka-connect\""));
    let out = run_herald(&["run", "--config", unknown_type.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown sink type `kafka-connect`"), "{}", text(&out.stderr));

    let bad_setting = TempConfig::new(
        &stdout_route_config("r", "t", "").replace("type = \"stdout\"", "type = \"stdout\", stream = \"printer\""),
    );
    let out = run_herald(&["run", "--config", bad_setting.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let error = text(&out.stderr);
    assert!(error.contains("route `r`") && error.contains("stream") && error.contains("printer"), "{error}");
}

#[test]
fn a_missing_config_file_and_a_bad_flag_are_clear_errors() {
    let out = run_herald(&["run", "--config", "/nonexistent/herald.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/herald.toml"), "{}", text(&out.stderr));

    let out = run_herald(&["wait", "--source", "A", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("`soon` is not a duration"), "{}", text(&out.stderr));

    let out = run_herald(&["publish", "--stage", "s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--source"), "{}", text(&out.stderr));
}

/// Every shipped file passes `check --offline` as shipped (its `${VAR:-default}`s unset) and with
/// each variable it names set, as its comments tell a user to.
#[test]
fn every_shipped_config_file_and_its_sink_settings_are_valid() {
    // A value a user would set for each variable the files name.
    let values = [
        ("HERALD_PG_URL", "postgres://app:s3cret@db.internal:5432/pipelines"),
        ("HERALD_REDIS_URL", "rediss://:s3cret@cache.internal:6380/2"),
        ("HERALD_WEBHOOK_URL", "https://hooks.internal/stages/{source}/{stage}?x={event}"),
        ("HERALD_WEBHOOK_TOKEN", "0123456789abcdef"),
        ("HERALD_WEBHOOK_SECRET", "a-secret-with-{braces}"),
        ("HERALD_SNS_TOPIC", "arn:aws:sns:eu-west-1:210987654321:stages"),
        ("HERALD_SNS_ENDPOINT", "https://sns.eu-west-1.amazonaws.com"),
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "s3cret/key+with=signs"),
        ("HERALD_ADMIN_TOKEN", "0123456789abcdef0123"),
        ("HERALD_INGEST_TOKEN", "ingest-0123456789abcdef"),
    ];
    let mut count = 0;
    let files = std::fs::read_dir("config").unwrap().chain(std::fs::read_dir("docker").unwrap());
    for entry in files {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let content = std::fs::read_to_string(&path).unwrap();
        let named: Vec<&str> = content
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(|line| line.split("${").skip(1))
            .filter_map(|rest| rest.split([':', '}']).next())
            .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .filter(|name| !name.is_empty())
            .collect();
        for set in [false, true] {
            let mut command = herald();
            command.args(["check", "--offline", "--config", path.to_str().unwrap()]).stdin(Stdio::null());
            for (name, value) in values {
                if set {
                    command.env(name, value);
                } else {
                    command.env_remove(name);
                }
            }
            for name in &named {
                assert!(
                    values.iter().any(|(known, _)| known == name),
                    "{}: give `{name}` a value here",
                    path.display()
                );
            }
            let out = command.output().unwrap();
            let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
            let how = if set { "with its variables set" } else { "as shipped" };
            // A variable with no default is required: unset, the check names it.
            let required = content
                .lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .find_map(|line| named.iter().find(|name| line.contains(&format!("${{{name}}}"))));
            if let (false, Some(name)) = (set, required) {
                assert_eq!(out.status.code(), Some(1), "{} {how}: {said}", path.display());
                assert!(said.contains(&format!("`{name}` is not set")), "{} {how}: {said}", path.display());
                continue;
            }
            assert_eq!(out.status.code(), Some(0), "{} {how}: {said}", path.display());
            assert!(said.contains("settings valid"), "{} {how}: {said}", path.display());
        }
        count += 1;
    }
    assert!(count >= 10, "{count} files");
}

#[test]
fn check_offline_reports_bad_sink_settings() {
    let config = TempConfig::new(&stdout_route_config("r", "t", "").replace(
        "type = \"stdout\"",
        "type = \"postgres\", url = \"postgres://x\", table = { name = \"a;b\", columns = { c = \"source\" } }",
    ));
    let out = run_herald(&["check", "--offline", "--config", config.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(report.contains("FAIL  route r") && report.contains("table.name") && report.contains("`a;b`"), "{report}");
}

#[test]
fn sources_go_through_the_registry_an_unknown_type_a_bad_setting_and_a_shared_slot_are_named() {
    let source = |name: &str, extra: &str| {
        format!(
            "[[source]]\nname = \"{name}\"\ntype = \"postgres\"\nurl = \"postgres://h/db\"\ntopic = \"t\"\n{extra}\n"
        )
    };
    let check = |text: &str| {
        let config = TempConfig::new(text);
        let out = run_herald(&["check", "--offline", "--config", config.path.to_str().unwrap()]);
        (out.status.code(), format!("{}{}", text_of(&out.stdout), text_of(&out.stderr)))
    };
    fn text_of(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    let (code, report) = check(&source("a", "").replace("type = \"postgres\"", "type = \"mysql\""));
    assert_eq!(code, Some(1));
    assert!(report.contains("unknown source type `mysql`") && report.contains("known types: postgres"), "{report}");

    let (code, report) = check(&source("a", "captur = \"wal\""));
    assert_eq!(code, Some(1));
    assert!(report.contains("source `a` (type `postgres`)") && report.contains("captur"), "{report}");

    let two =
        format!("{}{}", source("a", "capture = \"wal\"\nslot = \"s\""), source("b", "capture = \"wal\"\nslot = \"s\""));
    let (code, report) = check(&two);
    assert_eq!(code, Some(1));
    assert!(
        report.contains("sources `a` and `b` would share replication slot `s`: set `slot` on one of them"),
        "{report}"
    );

    let apart = format!("{}{}", source("a", "capture = \"wal\""), source("b", "capture = \"wal\""));
    let (code, report) = check(&apart);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("source a") && report.contains("source b"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_several_pairs_needs_all_of_them_or_any_one_and_stops_at_a_failure() {
    let topic = unique("events");
    create_topic(&topic, 3).await;
    let publish = |source: &str, stage: &str, status: &str| {
        let out = run_herald(&[
            "publish",
            "--brokers",
            BROKERS,
            "--topic",
            &topic,
            "--source",
            source,
            "--stage",
            stage,
            "--status",
            status,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    let wait = |extra: &[&str]| {
        let mut args = vec![
            "wait",
            "--brokers",
            BROKERS,
            "--topic",
            topic.as_str(),
            "--source",
            "OrdersDB",
            "--source",
            "Payments",
        ];
        args.extend_from_slice(extra);
        herald().args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    // OrdersDB's silver is already done; Payments' is not.
    publish("OrdersDB", "silver", "SUCCESS");
    publish("Payments", "bronze", "SUCCESS");

    let any = run_herald(&[
        "wait",
        "--brokers",
        BROKERS,
        "--topic",
        &topic,
        "--source",
        "OrdersDB",
        "--source",
        "Payments",
        "--stage",
        "silver",
        "--any",
        "--timeout",
        "60s",
    ]);
    assert_eq!(any.status.code(), Some(0), "{}", text(&any.stderr));
    assert_eq!(text(&any.stdout).lines().count(), 1, "--any: the one pair done: {}", text(&any.stdout));

    let all = wait(&["--stage", "silver", "--timeout", "90s"]);
    let timed_out = run_herald(&[
        "wait",
        "--brokers",
        BROKERS,
        "--topic",
        &topic,
        "--source",
        "OrdersDB",
        "--source",
        "Payments",
        "--stage",
        "silver",
        "--timeout",
        "2s",
    ]);
    assert_eq!(timed_out.status.code(), Some(124));
    let error = text(&timed_out.stderr);
    assert!(error.contains("source `Payments`, stage `silver`") && !error.contains("OrdersDB"), "{error}");
    publish("Payments", "silver", "SUCCESS");
    let out = all.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let pairs: Vec<(&str, &str)> =
        printed.iter().map(|e| (e["source"].as_str().unwrap(), e["stage"].as_str().unwrap())).collect();
    assert_eq!(pairs, [("OrdersDB", "silver"), ("Payments", "silver")], "each pair's event, as it was decided");

    // One stage per source; Payments' gold FAILS while OrdersDB's gold is still pending: exit 3 at once.
    let failing = wait(&["--stage", "gold", "--stage", "gold", "--timeout", "90s"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish("Payments", "gold", "FAILED");
    let out = failing.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(r#""source":"Payments""#), "{}", text(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_latest_event_of_each_source_and_stage() {
    let topic = unique("events");
    create_topic(&topic, 3).await;
    let events = [
        ("OrdersDB", "bronze", "RUNNING", 1),
        ("OrdersDB", "bronze", "SUCCESS", 2),
        ("OrdersDB", "silver", "RUNNING", 3),
        ("Payments", "bronze", "FAILED", 4),
    ];
    for (source, stage, status, seq) in events {
        produce(&topic, &[(Some(source), event_json(source, stage, status, seq).as_bytes())]).await;
    }
    produce(&topic, &[(Some("junk"), b"not a stage event".as_slice())]).await;

    let out = run_herald(&["status", "--brokers", BROKERS, "--topic", &topic]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<Vec<&str>> = table.lines().map(|line| line.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["SOURCE", "bronze", "silver"], "{table}");
    assert_eq!((lines[1][0], lines[1][1], lines[1][3]), ("OrdersDB", "SUCCESS", "RUNNING"), "{table}");
    assert_eq!((lines[2][0], lines[2][1], lines[2][3]), ("Payments", "FAILED", "-"), "{table}");
    assert!(table.contains("2 sources, 2 stages"), "{table}");

    let out = run_herald(&["status", "--brokers", BROKERS, "--topic", &topic, "--json"]);
    let cells: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let seen: Vec<(&str, &str, &str, i64)> = cells
        .iter()
        .map(|c| {
            (
                c["source"].as_str().unwrap(),
                c["stage"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                c["records"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("OrdersDB", "bronze", "SUCCESS", 2),
            ("OrdersDB", "silver", "RUNNING", 3),
            ("Payments", "bronze", "FAILED", 4)
        ]
    );
    assert!(cells.iter().all(|c| c["age_seconds"].as_i64().unwrap() > 0));

    let empty = unique("events");
    create_topic(&empty, 1).await;
    let out = run_herald(&["status", "--brokers", BROKERS, "--topic", &empty]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("No stage events"), "{}", text(&out.stdout));
}

#[test]
fn check_offline_names_the_key_of_a_bad_expectation() {
    let rule = |extra: &str| {
        format!("[[expect]]\nname = \"r\"\nstage = \"silver\"\n{extra}\n[[route]]\nname = \"x\"\ntopics = [\"t\"]\nsink = {{ type = \"stdout\" }}\n")
    };
    for (extra, key, words) in [
        ("by = \"0 6 * *\"\nsources = [\"A\"]", "expect[0].by", "is not a schedule"),
        ("by = \"0 6 * * *\"\nsources = [\"A\"]\ntimezone = \"Mars/Olympus\"", "expect[0].timezone", "Mars/Olympus"),
        ("by = \"0 6 * * *\"", "expect[0].sources", "needs the sources"),
        ("after = \"bronze\"", "expect[0].within", "needs `within`"),
        ("after = \"bronze\"\nwithin = \"30m\"\nby = \"0 6 * * *\"", "expect[0].after", "either `by`"),
    ] {
        let config = TempConfig::new(&rule(extra));
        let out = run_herald(&["check", "--offline", "--config", config.path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{extra}");
        let report = text(&out.stdout);
        // Rules are checked where the file is loaded, with every other section.
        assert!(report.contains("FAIL  config") && report.contains(key) && report.contains(words), "{report}");
        let run = run_herald(&["run", "--config", config.path.to_str().unwrap()]);
        assert_eq!(run.status.code(), Some(1));
        assert!(text(&run.stderr).contains(key), "{}", text(&run.stderr));
    }
    let unknown = TempConfig::new(&rule("after = \"bronze\"\nwithin = \"30m\"\ndeadline = \"soon\""));
    let out = run_herald(&["check", "--offline", "--config", unknown.path.to_str().unwrap()]);
    assert!(text(&out.stdout).contains("deadline"), "{}", text(&out.stdout));
}

/// Whether `text` holds a character a terminal acts on (bar the line ends of the output itself).
fn has_raw_controls(text: &str) -> bool {
    text.chars().any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_wait_survive_hostile_values_and_never_print_raw_controls() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f");
    let long = "L".repeat(65_536);
    // ESC sequences that set the window title and clear the screen, BEL, CR, a C1 CSI, a
    // right-to-left override: valid JSON, each escaped in it.
    let evil = "evil\u{1b}]0;owned\u{7}\u{1b}[2J\r\u{9b}31m\u{202e}";
    for (source, stage, status) in [(long.as_str(), "bronze", "SUCCESS"), (evil, "silver", "FAILED")] {
        let event = serde_json::json!({
            "event": "STAGE_COMPLETE", "stage": stage, "source": source, "records": 1,
            "timestamp": now.to_string(), "status": status, "note": "\u{1b}[8mhidden\u{7f}",
        });
        produce(&topic, &[(Some("k"), event.to_string().as_bytes())]).await;
    }

    let out = run_herald(&["status", "--brokers", BROKERS, "--topic", &topic]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(!has_raw_controls(&table), "{table:?}");
    assert!(table.contains("evil\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\r"), "{table}");
    assert!(table.contains("more characters)"), "the long source is cut: {}", &table[..300.min(table.len())]);

    let out = run_herald(&["status", "--brokers", BROKERS, "--topic", &topic, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    assert!(!has_raw_controls(&json), "{json:?}");
    let cells: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert!(cells.iter().any(|cell| cell["source"] == evil), "the values themselves are intact in JSON");

    let out = run_herald(&[
        "wait",
        "--brokers",
        BROKERS,
        "--topic",
        &topic,
        "--source",
        evil,
        "--stage",
        "silver",
        "--since",
        "1h",
        "--timeout",
        "20s",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!has_raw_controls(&stdout) && !has_raw_controls(&stderr), "{stdout:?} {stderr:?}");
    assert_eq!(out.status.code(), Some(3), "FAILED: {stderr}");
    assert!(stderr.contains("evil\\u{1b}]0;owned"), "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((printed["source"].as_str(), printed["note"].as_str()), (Some(evil), Some("\u{1b}[8mhidden\u{7f}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_and_status_read_to_the_end_of_a_topic_written_with_transactions() {
    let topic = unique("events");
    create_topic(&topic, 2).await;
    let now = chrono::Utc::now().to_rfc3339();
    let event = |source: &str, records: i64| {
        serde_json::json!({"event": "STAGE_COMPLETE", "stage": "bronze", "source": source, "records": records,
            "timestamp": now, "status": "SUCCESS"})
        .to_string()
    };
    let (committed, aborted) = (event("OrdersDB", 1), event("Payments", 2));
    // A committed transaction, then an aborted one last: the history ends in markers and
    // aborted messages, never in a message a reader gets.
    produce_transaction(&topic, &[(Some("OrdersDB"), committed.as_bytes())], true).await;
    produce_transaction(&topic, &[(Some("Payments"), aborted.as_bytes())], false).await;

    let started = std::time::Instant::now();
    let out = run_herald(&["status", "--brokers", BROKERS, "--topic", &topic, "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("OrdersDB") && !table.contains("Payments"), "committed only:\n{table}");
    assert!(started.elapsed() < Duration::from_secs(15), "read to the end, not to the timeout");

    let wait = |source: &str, timeout: &str| {
        run_herald(&[
            "wait",
            "--brokers",
            BROKERS,
            "--topic",
            &topic,
            "--source",
            source,
            "--stage",
            "bronze",
            "--since",
            "1h",
            "--timeout",
            timeout,
        ])
    };
    let out = wait("OrdersDB", "20s");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"records\":1"), "{}", text(&out.stdout));
    let out = wait("Payments", "3s");
    assert_eq!(out.status.code(), Some(124), "an aborted event never decides a wait: {}", text(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_an_alert_ends_on_any_event_of_that_kind_and_a_completion_waits_for_its_status() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let late = serde_json::json!({
        "event": "STAGE_LATE", "stage": "silver", "source": "OrdersDB", "status": "LATE",
        "timestamp": chrono::Utc::now().to_rfc3339(), "rule": "r",
    });
    let running = serde_json::json!({
        "event": "STAGE_COMPLETE", "stage": "silver", "source": "OrdersDB", "status": "RUNNING",
        "timestamp": chrono::Utc::now().to_rfc3339(),
    });
    for event in [&late, &running] {
        produce(&topic, &[(Some("OrdersDB"), event.to_string().as_bytes())]).await;
    }
    let wait = |event: &str, timeout: &str| {
        run_herald(&[
            "wait",
            "--brokers",
            BROKERS,
            "--topic",
            &topic,
            "--source",
            "OrdersDB",
            "--stage",
            "silver",
            "--event",
            event,
            "--since",
            "1h",
            "--timeout",
            timeout,
        ])
    };
    let out = wait("STAGE_LATE", "20s");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"status\":\"LATE\""), "{}", text(&out.stdout));
    let out = wait("STAGE_COMPLETE", "3s");
    assert_eq!(out.status.code(), Some(124), "RUNNING does not end a wait for completion");
}

#[test]
fn publish_to_a_missing_topic_fails_fast_saying_how_to_create_it() {
    let topic = unique("never-created");
    let started = std::time::Instant::now();
    let out = run_herald(&["publish", "--brokers", BROKERS, "--topic", &topic, "--source", "A", "--stage", "s"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("topic `{topic}` does not exist")) && stderr.contains("herald migrate"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "not the whole 30 s: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_topics_herald_writes_with_the_configured_defaults() {
    let (dlq, alerts, group) = (unique("dlq"), unique("alerts"), unique("expect"));
    let config = TempConfig::new(&format!(
        r#"{kafka}
[kafka.topic_defaults]
partitions = 3

[expectations]
topic = "{alerts}"
group_id = "{group}"

[[expect]]
name = "r"
stage = "silver"
after = "bronze"
within = "1h"

[[route]]
name = "r"
topics = ["{alerts}"]
dead_letter_topic = "{dlq}"
sink = {{ type = "stdout" }}
"#,
        kafka = kafka_section()
    ));
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    for topic in [&dlq, &alerts, &format!("{group}.state")] {
        assert!(report.contains(&format!("ok    topic {topic}")) && report.contains("created"), "{report}");
    }
    let props = herald_kafka::KafkaProperties::default();
    let names = vec![dlq.clone(), alerts.clone(), format!("{group}.state")];
    let counts = herald_kafka::partition_counts(&props, &names, Duration::from_secs(10)).unwrap();
    assert!(counts.iter().all(|(_, partitions)| *partitions == 3), "{counts:?}");
    // Again: nothing to create.
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(text(&out.stdout).matches("exists").count() >= 3, "{}", text(&out.stdout));
}

/// A field name that is no event field would match nothing: a filter would skip every event and
/// commit past it, a template or column would be empty. `check --offline` refuses each, names
/// where, suggests the nearest field; declared in `extra_fields`, the same names pass.
#[test]
fn filters_templates_and_mappings_on_unknown_fields_are_refused_with_a_suggestion() {
    let route =
        |extra: &str, sink: &str| format!("[[route]]\nname = \"r\"\ntopics = [\"t\"]\n{extra}\nsink = {{ {sink} }}\n");
    let stdout = "type = \"stdout\"";
    let cases = [
        (route("filter = { evnt = \"STAGE_COMPLETE\" }", stdout), "route[0].filter.evnt", Some("event")),
        (route("filter = { Status = [\"FAILED\"] }", stdout), "route[0].filter.Status", Some("status")),
        (route("filter = { run_id = \"x\" }", stdout), "route[0].filter.run_id", None),
        (route("", "type = \"http\", url = \"http://h/{sorce}/{stage}\""), "route[0].sink.url", Some("source")),
        (
            route("", "type = \"redis\", url = \"redis://h\", publish = { channel = \"c:{stge}\" }"),
            "route[0].sink.publish.channel",
            Some("stage"),
        ),
        (
            route(
                "",
                "type = \"postgres\", url = \"postgres://h/db\", table = { name = \"t\", columns = { a = \"sourc\" } }",
            ),
            "route[0].sink.table.columns",
            Some("source"),
        ),
        (
            route("", "type = \"sns\", topic_arn = \"arn:aws:sns:us-east-1:1:t\", subject = \"{stage} {recods}\""),
            "route[0].sink.subject",
            Some("records"),
        ),
    ];
    for (config_text, key, suggestion) in cases {
        let config = TempConfig::new(&config_text);
        let out = run_herald(&["check", "--offline", "--config", config.path.to_str().unwrap()]);
        let said = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{config_text}\n{said}");
        assert!(
            said.contains(&format!("`{key}`")) && said.contains("is not a stage event field"),
            "{config_text}\n{said}"
        );
        match suggestion {
            Some(field) => assert!(said.contains(&format!("did you mean `{field}`?")), "{said}"),
            None => assert!(!said.contains("did you mean") && said.contains("extra_fields"), "{said}"),
        }
    }
    // Declared, an extra field may be filtered on and named in a template.
    let declared = route(
        "extra_fields = [\"run_id\", \"rule\"]\nfilter = { run_id = \"x\", event = \"STAGE_LATE\" }",
        "type = \"http\", url = \"http://h/{source}/{rule}\"",
    );
    let config = TempConfig::new(&declared);
    let out = run_herald(&["check", "--offline", "--config", config.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

/// `check` binds the admin address as `run` would: a taken one fails the check, naming it.
#[test]
fn check_fails_when_the_admin_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    // A route, so that the file has something to run (`check` fails a file `run` refuses).
    let route = stdout_route_config("r", "pipeline.stage.events", "");
    let config = TempConfig::new(&format!("{route}[admin]\nlisten = \"{address}\"\n"));
    let out = run_herald(&["check", "--config", config.path.to_str().unwrap()]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("FAIL  admin") && said.contains(&format!("cannot listen on {address}")), "{said}");
    drop(taken);
    let out = run_herald(&["check", "--config", config.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains(&format!("{address} is free")));
}

/// `HERALD__KAFKA__BOOTSTRAP_SERVERS` overrides the file's `bootstrap.servers` (the way a
/// container is pointed at its Kafka), though the file writes the dotted name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_override_replaces_the_file_s_dotted_kafka_property() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let config = TempConfig::new(&format!(
        "[kafka]\nbootstrap.servers = \"127.0.0.1:1\"\n[[route]]\nname = \"r\"\ntopics = [\"{topic}\"]\nsink = {{ type = \"stdout\" }}\n"
    ));
    let out = herald()
        .args(["check", "--config"])
        .arg(&config.path)
        .env("HERALD__KAFKA__BOOTSTRAP_SERVERS", BROKERS)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    assert!(report.contains(&format!("{BROKERS} answered")), "{report}");
}
