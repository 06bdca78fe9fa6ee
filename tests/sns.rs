//! Kafka → `herald run` → SNS (the moto server) → SQS, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_sns::config::Credentials;
use aws_sdk_sqs::types::QueueAttributeName;
use common::*;
use rand::Rng;

/// An SNS/SQS emulator of the test's own, so pausing it disturbs no other test.
struct PrivateMoto {
    child: Child,
    port: u16,
}

impl PrivateMoto {
    fn start() -> Self {
        let server = installed("venv/bin/moto_server");
        // A port another process took makes the server exit at once: try another. A loaded
        // machine makes it slow to start: give it time.
        for _ in 0..3 {
            let port = rand::rng().random_range(40_000..50_000);
            let mut child = Command::new(&server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { child, port };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("private moto server did not start (three ports tried)");
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGSTOP / SIGCONT: the endpoint stops answering, with its state kept.
    fn signal(&self, signal: &str) {
        assert!(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_stopped_and_resumed_mid_stream_loses_nothing() {
    let moto = PrivateMoto::start();
    let aws = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await;
    let sns = aws_sdk_sns::Client::new(&aws);
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let topic_arn = sns.create_topic().name("events").send().await.unwrap().topic_arn().unwrap().to_owned();
    let queue_url = sqs.create_queue().queue_name("reader").send().await.unwrap().queue_url().unwrap().to_owned();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    sns.subscribe().topic_arn(&topic_arn).protocol("sqs").endpoint(queue_arn).send().await.unwrap();

    let topic = unique("events");
    create_topic(&topic, 2).await;
    let config = TempConfig::new(&format!(
        r#"
[kafka]
bootstrap.servers = "{BROKERS}"

[[route]]
name = "{route}"
topics = ["{topic}"]
batch = {{ max_events = 50, max_wait = "20ms" }}
retry = {{ initial_backoff = "100ms", max_backoff = "1s" }}
[route.sink]
type = "sns"
topic_arn = "{topic_arn}"
endpoint = "{endpoint}"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
timeout = "2s"
"#,
        route = unique("route"),
        endpoint = moto.endpoint(),
    ));
    let mut herald = Herald::run(&config);
    let mut seen = BTreeSet::new();
    let drain_until = |count: usize, herald: &Herald| {
        let (sqs, queue_url) = (sqs.clone(), queue_url.clone());
        let log = herald.log();
        async move {
            let mut seqs = Vec::new();
            let deadline = Instant::now() + PATIENCE;
            while seqs.len() < count {
                assert!(Instant::now() < deadline, "only {} of {count} messages; log:\n{log}", seqs.len());
                let received = sqs
                    .receive_message()
                    .queue_url(&queue_url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .unwrap();
                for message in received.messages() {
                    let envelope: serde_json::Value = serde_json::from_str(message.body().unwrap()).unwrap();
                    let event: serde_json::Value = serde_json::from_str(envelope["Message"].as_str().unwrap()).unwrap();
                    seqs.push(event["seq"].as_u64().unwrap() as usize);
                    sqs.delete_message()
                        .queue_url(&queue_url)
                        .receipt_handle(message.receipt_handle().unwrap())
                        .send()
                        .await
                        .unwrap();
                }
            }
            seqs
        }
    };
    produce_events(&topic, &["A", "B", "C"], 100).await;
    seen.extend(drain_until(100, &herald).await);

    moto.signal("STOP");
    let more: Vec<String> = (100..300).map(|seq| event_json("A", "bronze_ingest", "SUCCESS", seq)).collect();
    let batch: Vec<(Option<&str>, &[u8])> = more.iter().map(|m| (Some("A"), m.as_bytes())).collect();
    produce(&topic, &batch).await;
    herald.wait_for_log("Sink write failed; retrying.");
    moto.signal("CONT");

    // Standard topics are at-least-once: a timed-out call may have gone through, so count the
    // distinct events, which must be all of them.
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < 300 {
        assert!(Instant::now() < deadline, "missing {:?}", (0..300).filter(|s| !seen.contains(s)).collect::<Vec<_>>());
        seen.extend(drain_until(1, &herald).await);
    }
    assert_eq!(seen, (0..300).collect::<BTreeSet<_>>());
}
