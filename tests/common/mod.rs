//! Shared helpers of the end-to-end tests: unique names, a real broker, the herald binary.
//!
//! Every test owns its topics and consumer groups (random names), so tests run in parallel.
//! They need the services of `scripts/services up`; without them they fail saying so.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub mod source;

use herald_kafka::KafkaProperties;
use rand::distr::{Alphanumeric, SampleString};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message};

/// The broker `scripts/services up` starts.
pub const BROKERS: &str = "127.0.0.1:9092";

/// Upper bound on waiting for something that should happen; reaching it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Alphanumeric.sample_string(&mut rand::rng(), 10).to_lowercase())
}

/// Fails the test unless the broker answers.
pub fn require_kafka() {
    if std::net::TcpStream::connect_timeout(&BROKERS.parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!("no Kafka broker at {BROKERS}: start the test services with `scripts/services up`");
    }
}

/// Creates a topic with `partitions` partitions.
pub async fn create_topic(topic: &str, partitions: i32) {
    require_kafka();
    herald_kafka::ensure_topic(&KafkaProperties::default(), topic, partitions).await.unwrap();
}

/// A stage event's JSON, the way the seed's Python producer writes it, with a sequence number.
pub fn event_json(source: &str, stage: &str, status: &str, seq: usize) -> String {
    format!(
        r#"{{"event": "STAGE_COMPLETE", "stage": "{stage}", "source": "{source}", "records": {seq}, "timestamp": "2026-11-26T10:15:00.{seq:06}", "status": "{status}", "seq": {seq}}}"#
    )
}

/// A producer that waits for every acknowledgement.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

/// Writes `messages` to `topic` in one Kafka transaction that is `committed` or aborted, as
/// herald's source and expectations write: what a `read_committed` reader must read to the
/// end of (markers and aborted messages take offsets but are never messages).
pub async fn produce_transaction(topic: &str, messages: &[(Option<&str>, &[u8])], committed: bool) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("transactional.id", unique("test-txn"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    for (key, value) in messages {
        let mut record = FutureRecord::to(topic).payload(*value);
        if let Some(key) = key {
            record = record.key(*key);
        }
        producer.send(record, Duration::from_secs(30)).await.unwrap();
    }
    if committed {
        producer.commit_transaction(Duration::from_secs(30)).unwrap();
    } else {
        producer.abort_transaction(Duration::from_secs(30)).unwrap();
    }
}

/// Produces `(key, value)` pairs in order and waits until all are acknowledged.
pub async fn produce(topic: &str, messages: &[(Option<&str>, &[u8])]) {
    let producer = producer();
    let mut deliveries = Vec::new();
    for (key, value) in messages {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(*value);
        if let Some(key) = key {
            record = record.key(*key);
        }
        deliveries.push(producer.send_result(record).map_err(|(err, _)| err).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(err, _)| err).unwrap();
    }
}

/// Produces `count` events spread over `sources` (keyed by source), `seq` 0..count.
pub async fn produce_events(topic: &str, sources: &[&str], count: usize) -> Vec<(String, usize)> {
    let events: Vec<(String, usize, String)> = (0..count)
        .map(|seq| {
            let source = sources[seq % sources.len()];
            (source.to_owned(), seq, event_json(source, "bronze_ingest", "SUCCESS", seq))
        })
        .collect();
    let messages: Vec<(Option<&str>, &[u8])> =
        events.iter().map(|(source, _, json)| (Some(source.as_str()), json.as_bytes())).collect();
    produce(topic, &messages).await;
    events.into_iter().map(|(source, seq, _)| (source, seq)).collect()
}

/// Reads every message of `topic` until `count` have arrived.
pub fn consume_all(topic: &str, count: usize) -> Vec<OwnedMessage> {
    consume(topic, count, Duration::ZERO)
}

/// [`consume_all`], then on until no message came for 3 s: a test that expects `count` sees any
/// extra one too.
pub fn consume_exactly(topic: &str, count: usize) -> Vec<OwnedMessage> {
    consume(topic, count, Duration::from_secs(3))
}

fn consume(topic: &str, count: usize, quiet: Duration) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", unique("test-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut messages = Vec::new();
    while messages.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} messages arrived on {topic}", messages.len());
        if let Some(result) = consumer.poll(Duration::from_millis(500)) {
            messages.push(result.unwrap().detach());
        }
    }
    while !quiet.is_zero() {
        match consumer.poll(quiet) {
            Some(extra) => messages.push(extra.unwrap().detach()),
            None => break,
        }
    }
    messages
}

/// The value of header `name` of `message`, as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// A config file in a temporary directory, removed on drop.
pub struct TempConfig {
    pub path: PathBuf,
}

impl TempConfig {
    pub fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("herald-test-config")));
        std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
        Self { path }
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The `[kafka]` table every test config starts with. A SIGKILLed member holds its partitions
/// until its session expires: keep that short in tests.
pub fn kafka_section() -> String {
    format!("[kafka]\nbootstrap.servers = \"{BROKERS}\"\nsession.timeout.ms = 6000\nheartbeat.interval.ms = 1000\n")
}

/// A config with one route reading `topic`: the `extra` lines in the route, then `sink`, the
/// sink's TOML (an inline `sink = {…}` or a `[route.sink]` table).
pub fn route_config(route: &str, topic: &str, extra: &str, sink: &str) -> String {
    format!(
        r#"
{kafka}

[runtime]
progress_interval = "1s"

[[route]]
name = "{route}"
topics = ["{topic}"]
{extra}
{sink}
"#,
        kafka = kafka_section()
    )
}

/// A config with one stdout route reading `topic`.
pub fn stdout_route_config(route: &str, topic: &str, extra: &str) -> String {
    route_config(route, topic, extra, r#"sink = { type = "stdout" }"#)
}

/// The `herald` binary under test.
pub fn herald() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.env_remove("HERALD_CONFIG").env_remove("HERALD_BROKERS").env("HERALD_LOG", "info,sqlx=warn");
    command
}

/// A running `herald run`, its stdout and stderr collected line by line.
pub struct Herald {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Herald {
    /// Starts `herald run --config <config>`.
    pub fn run(config: &TempConfig) -> Self {
        Self::run_with_env(config, &[])
    }

    /// Starts `herald run --config <config>` with these environment variables set.
    pub fn run_with_env(config: &TempConfig, env: &[(&str, &str)]) -> Self {
        let mut child = herald()
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(&config.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect_lines(child.stdout.take().unwrap());
        let stderr = collect_lines(child.stderr.take().unwrap());
        Self { child, stdout, stderr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until at least `count` lines were printed; panics with the log after `PATIENCE`.
    pub fn wait_for_lines(&mut self, count: usize) -> Vec<String> {
        self.wait_until(|lines| lines.len() >= count, &format!("{count} lines"))
    }

    /// Waits until `done(lines)` holds.
    pub fn wait_until(&mut self, done: impl Fn(&[String]) -> bool, what: &str) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let lines = self.lines();
            if done(&lines) {
                return lines;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("herald exited ({status}) before {what}; printed {} lines; log:\n{}", lines.len(), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after {PATIENCE:?}; got {}; log:\n{}",
                lines.len(),
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `text`.
    pub fn wait_for_log(&mut self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("herald exited ({status}) before logging `{text}`; log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "herald never logged `{text}`; log:\n{}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (e.g. `"TERM"`, `"KILL"`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, giving up after `PATIENCE`.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(Instant::now() < deadline, "herald did not exit; log:\n{}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn collect_lines(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => sink.lock().unwrap().push(line),
                Err(_) => break,
            }
        }
    });
    lines
}

/// Parses printed lines into `(source, seq)`.
pub fn seqs(lines: &[String]) -> Vec<(String, usize)> {
    lines
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("`{line}`: {err}"));
            (value["source"].as_str().unwrap().to_owned(), value["seq"].as_u64().unwrap() as usize)
        })
        .collect()
}

/// Asserts that, for every source, its seqs appear in increasing order.
pub fn assert_per_key_order(seen: &[(String, usize)]) {
    let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (source, seq) in seen {
        if let Some(&previous) = last.get(source.as_str()) {
            assert!(*seq > previous, "source {source}: seq {seq} printed after {previous}");
        }
        last.insert(source, *seq);
    }
}

/// One HTTP/1.1 request to the admin API; returns the status code and the body.
pub fn http(address: &str, method: &str, path: &str) -> (u16, String) {
    request(address, method, path, "")
}

/// One HTTP/1.1 request with extra header lines (each ending in `\r\n`, e.g.
/// `"Content-Type: application/json\r\n"`); the status code and the body. A reload may take a
/// while: answers are awaited up to a minute.
pub fn request(address: &str, method: &str, path: &str, headers: &str) -> (u16, String) {
    request_with_body(address, method, path, headers, "")
}

/// One HTTP/1.1 request with `body` (send a `Content-Type` among `headers`).
pub fn request_with_body(address: &str, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// `path` under what `scripts/services up` installs (`$HERALD_CACHE`, default `.cache`): the
/// Kafka jars, the virtualenvs; the test fails naming the command when it is missing.
pub fn installed(path: &str) -> PathBuf {
    let cache = std::env::var_os("HERALD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"));
    let installed = cache.join(path);
    assert!(
        installed.exists(),
        "{} is missing: start the test services with `scripts/services up`",
        installed.display()
    );
    installed
}

/// The Python of `scripts/services up`'s virtualenv, which holds the article's client
/// (confluent-kafka) and the orchestrators' (openlineage-python).
pub fn python() -> PathBuf {
    installed("venv/bin/python")
}

/// The address a running herald logged on the line that says `listening` (e.g. `"Admin API
/// listening."`, `"Ingest listener listening."`).
pub fn logged_address(herald: &mut Herald, listening: &str) -> String {
    herald.wait_for_log(listening);
    let log = herald.log();
    let line = log.lines().find(|line| line.contains(listening)).unwrap();
    let start = line.find("address=").unwrap() + "address=".len();
    line[start..].split_whitespace().next().unwrap().to_owned()
}

/// The admin API address a running herald logged.
pub fn admin_address(herald: &mut Herald) -> String {
    logged_address(herald, "Admin API listening.")
}
