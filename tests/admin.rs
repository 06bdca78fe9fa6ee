//! The admin HTTP API of a running `herald run`: metrics, health, routes, pause and resume.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_routes_report_what_the_route_did() {
    let topic = unique("events");
    let route = unique("route");
    create_topic(&topic, 2).await;
    let config =
        TempConfig::new(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", stdout_route_config(&route, &topic, "")));
    let mut herald = Herald::run(&config);
    let address = admin_address(&mut herald);
    produce_events(&topic, &["A", "B"], 40).await;
    herald.wait_for_lines(40);

    let (status, live) = http(&address, "GET", "/health/live");
    assert_eq!((status, live.trim()), (200, "ok"));
    let (status, metrics) = http(&address, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains(&format!("herald_route_delivered_total{{route=\"{route}\"}} 40")), "{metrics}");
    assert!(metrics.contains(&format!("herald_route_consumed_total{{route=\"{route}\"}} 40")), "{metrics}");
    assert!(metrics.contains("herald_route_write_seconds_bucket"), "{metrics}");

    let (status, routes) = http(&address, "GET", "/routes");
    assert_eq!(status, 200);
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let view = &routes[0];
    assert_eq!(view["name"], route.as_str());
    assert_eq!(view["status"], "running");
    assert_eq!(view["delivered"], 40);
    let assigned: Vec<&str> = view["assigned"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(assigned, [format!("{topic}[0]"), format!("{topic}[1]")]);
    assert!(view["last_event_at"].is_string());

    // Ready once the route's consumer found a broker answering (every progress interval, 1 s here).
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = http(&address, "GET", "/health/ready");
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http(&address, "POST", "/routes/no-such-route/pause").0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_route_delivers_nothing_until_resumed() {
    let topic = unique("events");
    let route = unique("route");
    create_topic(&topic, 1).await;
    let config =
        TempConfig::new(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", stdout_route_config(&route, &topic, "")));
    let mut herald = Herald::run(&config);
    let address = admin_address(&mut herald);
    produce_events(&topic, &["A"], 10).await;
    herald.wait_for_lines(10);

    assert_eq!(http(&address, "POST", &format!("/routes/{route}/pause")).0, 202);
    herald.wait_for_log("Route paused.");
    let more: Vec<String> = (10..30).map(|seq| event_json("A", "bronze", "SUCCESS", seq)).collect();
    let batch: Vec<(Option<&str>, &[u8])> = more.iter().map(|m| (Some("A"), m.as_bytes())).collect();
    produce(&topic, &batch).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(herald.lines().len(), 10, "nothing delivered while paused");
    let routes: serde_json::Value = serde_json::from_str(&http(&address, "GET", "/routes").1).unwrap();
    assert_eq!(routes[0]["status"], "paused");

    // What was produced while paused is the route's lag, in /routes and per partition in /metrics.
    let lag_metric = format!("herald_route_consumer_lag{{partition=\"0\",route=\"{route}\",topic=\"{topic}\"}}");
    wait_for_lag(&address, &lag_metric, 20).await;

    assert_eq!(http(&address, "POST", &format!("/routes/{route}/resume")).0, 202);
    let lines = herald.wait_for_lines(30);
    assert_eq!(seqs(&lines).into_iter().map(|(_, s)| s).collect::<Vec<_>>(), (0..30).collect::<Vec<_>>());
    wait_for_lag(&address, &lag_metric, 0).await;
}

/// Waits until the route's lag in `/routes` and `metric` in `/metrics` are both `lag`.
async fn wait_for_lag(address: &str, metric: &str, lag: i64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let routes: serde_json::Value = serde_json::from_str(&http(address, "GET", "/routes").1).unwrap();
        let metrics = http(address, "GET", "/metrics").1;
        let per_partition = metrics.lines().find_map(|line| line.strip_prefix(metric)).map(str::trim);
        if routes[0]["lag"] == lag && per_partition == Some(lag.to_string().as_str()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never became {lag}: /routes says {}, /metrics {per_partition:?}",
            routes[0]["lag"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What an attacker on the same host, or a crowd of forgotten browser tabs, can do to the admin
/// API: 500 board streams that never read and 2,000 connections that never speak, with herald
/// held to 1,024 file descriptors. The Postgres route delivers every event, the health probe
/// is answered, and memory stays under 250 MiB (the board holds 3,000 cells, so each stream's
/// first snapshot is ~0.5 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_or_speak_do_not_starve_the_sinks() {
    const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";
    let board_topic = unique("crowd-board");
    let topic = unique("crowd-events");
    create_topic(&board_topic, 1).await;
    create_topic(&topic, 2).await;
    let cells: Vec<String> = (0..3000).map(|n| event_json(&format!("source-{n:04}"), "bronze", "SUCCESS", n)).collect();
    let batch: Vec<(Option<&str>, &[u8])> = cells.iter().map(|event| (None, event.as_bytes())).collect();
    produce(&board_topic, &batch).await;
    let schema = unique("crowd").replace('-', "_");
    let route = unique("to-table");
    let config = TempConfig::new(&format!(
        "{kafka}[admin]\nlisten = \"127.0.0.1:0\"\n[board]\ntopics = [\"{board_topic}\"]\n\
         [[route]]\nname = \"{route}\"\ntopics = [\"{topic}\"]\n[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\n",
        kafka = kafka_section()
    ));
    let mut herald = Herald::run(&config);
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", herald.pid()))
        .arg("--nofile=1024:1024")
        .status()
        .unwrap();
    assert!(limited.success());
    let address = admin_address(&mut herald);
    let admin: std::net::SocketAddr = address.parse().unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while http(&address, "GET", "/board/state").1.len() < 3000 * 100 {
        assert!(std::time::Instant::now() < deadline, "the board never held 3,000 cells");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The crowd: 500 streams asked for and never read, 2,000 connections that say nothing.
    let crowd = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut open = Vec::new();
        for n in 0..2500 {
            let Ok(mut stream) = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5)) else { continue };
            if n < 500 {
                let _ = write!(stream, "GET /board/events HTTP/1.1\r\nHost: {admin}\r\n\r\n");
            }
            open.push(stream);
        }
        open
    })
    .await
    .unwrap();
    println!("{} crowd connections opened", crowd.len());

    // Under the crowd: 2,000 events for the table, and board changes every stream should get.
    let peak_rss = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = {
        let (peak_rss, pid) = (std::sync::Arc::clone(&peak_rss), herald.pid());
        tokio::spawn(async move {
            loop {
                peak_rss.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    produce_events(&topic, &["A", "B", "C", "D"], 2000).await;
    let changes: Vec<String> =
        (0..3000).map(|n| event_json(&format!("source-{n:04}"), "silver", "RUNNING", n)).collect();
    let batch: Vec<(Option<&str>, &[u8])> = changes.iter().map(|event| (None, event.as_bytes())).collect();
    produce(&board_topic, &batch).await;
    let health = tokio::task::spawn_blocking({
        let address = address.clone();
        move || http(&address, "GET", "/health/live")
    })
    .await
    .unwrap();
    assert_eq!(health, (200, "ok\n".to_owned()), "the health probe is answered under the crowd");

    let pool = sqlx::PgPool::connect(URL).await.unwrap();
    let count_rows = format!("SELECT count(*) FROM {schema}.pipeline_status");
    loop {
        let rows: i64 = sqlx::query_scalar(&count_rows).fetch_one(&pool).await.unwrap_or(0);
        if rows == 2000 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "{rows} of 2,000 rows under the crowd; log:\n{}", herald.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered_after = started.elapsed();
    sampling.abort();
    let peak_mib = peak_rss.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    println!("2,000 events in the table {delivered_after:?} after the first was produced; peak RSS {peak_mib} MiB");
    assert!(peak_mib < 250, "peak RSS {peak_mib} MiB");
    let log = herald.log();
    assert!(!log.contains("Too many open files"), "{log}");
    drop(crowd);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
