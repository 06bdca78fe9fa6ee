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
