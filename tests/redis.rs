//! Kafka → `herald run` → Redis, end to end: real broker, real Redis, the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use rand::Rng;
use redis::AsyncCommands;

fn redis_route(route: &str, topic: &str, sink: &str) -> String {
    let retry = r#"retry = { initial_backoff = "100ms", max_backoff = "1s" }"#;
    route_config(route, topic, retry, &format!("[route.sink]\ntype = \"redis\"\n{sink}"))
}

fn seq_of(json: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(json).unwrap()["seq"].as_u64().unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psubscribe_client_receives_every_event_in_per_source_order() {
    let topic = unique("events");
    let prefix = unique("chan");
    create_topic(&topic, 3).await;
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut subscriber = client
        .get_async_pubsub()
        .await
        .unwrap_or_else(|err| panic!("no Redis ({err}): start the test services with `scripts/services up`"));
    subscriber.psubscribe(format!("{prefix}.*")).await.unwrap();
    let config = TempConfig::new(&redis_route(
        &unique("route"),
        &topic,
        &format!("url = \"redis://127.0.0.1:6379\"\npublish = {{ channel = \"{prefix}.{{source}}\" }}"),
    ));
    let _herald = Herald::run(&config);
    let produced = produce_events(&topic, &["OrdersDB", "UsersDB", "Billing", "Ledger"], 400).await;

    let received: Vec<(String, usize)> = tokio::time::timeout(
        PATIENCE,
        subscriber
            .on_message()
            .take(produced.len())
            .map(|m| {
                let source = m.get_channel_name().trim_start_matches(&format!("{prefix}.")).to_owned();
                (source, seq_of(&m.get_payload::<String>().unwrap()))
            })
            .collect::<Vec<_>>(),
    )
    .await
    .expect("every event published");
    assert_per_key_order(&received);
    assert_eq!(received.iter().cloned().collect::<BTreeSet<_>>(), produced.iter().cloned().collect::<BTreeSet<_>>());
}

/// A Redis server of the test's own, with an append-only file, so restarting it disturbs no
/// other test and keeps what it had acknowledged.
struct PrivateRedis {
    dir: PathBuf,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("herald-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let redis = Self { dir, port: rand::rng().random_range(30_000..40_000) };
        redis.launch();
        redis
    }

    fn launch(&self) {
        let status = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--daemonize", "yes"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .status()
            .expect("redis-server: run `scripts/services up`");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn shutdown(&self) {
        let _ = Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown", "nosave"]).output();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_ends_with_complete_stream_and_newest_keys() {
    let server = PrivateRedis::start();
    let topic = unique("events");
    create_topic(&topic, 2).await;
    let config = TempConfig::new(&redis_route(
        &unique("route"),
        &topic,
        &format!(
            "url = \"{}\"\nconnect_timeout = \"1s\"\nresponse_timeout = \"2s\"\n\
             latest_key = {{ key = \"latest:{{source}}\" }}\nstream = {{ key = \"events\", max_len = 0 }}",
            server.url()
        ),
    ));
    let mut herald = Herald::run(&config);
    let sources = ["A", "B", "C"];
    produce_events(&topic, &sources, 300).await;
    let client = redis::Client::open(server.url()).unwrap();
    let stream_len = |client: redis::Client| async move {
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        connection.xlen::<_, usize>("events").await.ok()
    };
    let deadline = Instant::now() + PATIENCE;
    while stream_len(client.clone()).await.unwrap_or(0) < 300 {
        assert!(Instant::now() < deadline, "first 300 never arrived; log:\n{}", herald.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    server.shutdown();
    let more: Vec<String> =
        (300..600).map(|seq| event_json(sources[seq % 3], "bronze_ingest", "SUCCESS", seq)).collect();
    let batch: Vec<(Option<&str>, &[u8])> =
        more.iter().enumerate().map(|(i, m)| (Some(sources[(300 + i) % 3]), m.as_bytes())).collect();
    produce(&topic, &batch).await;
    herald.wait_for_log("Sink write failed; retrying.");
    server.launch();

    let mut connection = loop {
        if let Ok(connection) = client.get_multiplexed_async_connection().await {
            break connection;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deadline = Instant::now() + PATIENCE;
    let seen: BTreeSet<usize> = loop {
        // Just restarted, Redis answers LOADING until it has read its data back: not yet.
        let entries: redis::streams::StreamRangeReply = match connection.xrange_all("events").await {
            Ok(entries) => entries,
            Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading) => {
                assert!(Instant::now() < deadline, "Redis stayed LOADING");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(err) => panic!("reading the stream: {err}"),
        };
        let seen: BTreeSet<usize> = entries.ids.iter().map(|id| seq_of(&id.get::<String>("event").unwrap())).collect();
        if seen.len() == 600 || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seen, (0..600).collect::<BTreeSet<_>>(), "every event in the stream; log:\n{}", herald.log());
    // Event timestamps grow with `seq`: the newest of each source is its last.
    let mut last: HashMap<&str, usize> = HashMap::new();
    for seq in 0..600 {
        last.insert(sources[seq % 3], seq);
    }
    for source in sources {
        let stored: String = connection.get(format!("latest:{source}")).await.unwrap();
        assert_eq!(seq_of(&stored), last[source], "latest key of {source}");
    }
}
