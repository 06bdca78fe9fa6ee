//! Against a Kafka broker of the test's own (same jars as `scripts/services`, other ports):
//! the broker restarted mid-stream, and SASL/SCRAM authentication through `[kafka]` properties.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use herald_kafka::KafkaProperties;
use rand::Rng;

/// A one-node KRaft broker with a PLAINTEXT listener and a SASL_PLAINTEXT (SCRAM-SHA-256)
/// listener for user `herald`.
struct PrivateKafka {
    dir: PathBuf,
    plain_port: u16,
    sasl_port: u16,
    tls_port: u16,
    child: Option<Child>,
}

const SCRAM_USER: &str = "herald";
const SCRAM_PASSWORD: &str = "herald-scram-secret";

impl PrivateKafka {
    fn libs() -> PathBuf {
        // The jars are complete once `.complete` is there.
        installed("kafka-libs/.complete").parent().unwrap().to_path_buf()
    }

    fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("herald-kafka"));
        std::fs::create_dir_all(&dir).unwrap();
        // Four consecutive free ports below the ephemeral range (32768 up), where a client's
        // socket cannot be holding one when the broker binds it.
        let base = loop {
            let base = rand::rng().random_range(20_000..32_000);
            if (base..base + 4).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()) {
                break base;
            }
        };
        let kafka = Self { dir, plain_port: base, sasl_port: base + 1, tls_port: base + 3, child: None };
        let controller = base + 2;
        // A throwaway certificate for 127.0.0.1, made with the JDK's keytool; its PEM is the CA.
        let keystore = kafka.dir.join("broker.p12");
        let keytool = Command::new("keytool")
            .args(["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "2"])
            .args(["-dname", "CN=127.0.0.1", "-ext", "SAN=IP:127.0.0.1", "-storetype", "PKCS12"])
            .args(["-storepass", "test-store", "-keypass", "test-store", "-keystore"])
            .arg(&keystore)
            .output()
            .unwrap();
        assert!(keytool.status.success(), "keytool: {}", String::from_utf8_lossy(&keytool.stderr));
        let pem = Command::new("keytool")
            .args(["-exportcert", "-rfc", "-alias", "broker", "-storepass", "test-store", "-keystore"])
            .arg(&keystore)
            .output()
            .unwrap();
        std::fs::write(kafka.dir.join("ca.pem"), pem.stdout).unwrap();
        std::fs::write(
            kafka.dir.join("server.properties"),
            format!(
                "process.roles=broker,controller\nnode.id=1\ncontroller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{plain},SASL_PLAINTEXT://127.0.0.1:{sasl},SSL://127.0.0.1:{tls},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{plain},SASL_PLAINTEXT://127.0.0.1:{sasl},SSL://127.0.0.1:{tls}\n\
                 controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL\n\
                 ssl.keystore.type=PKCS12\nssl.keystore.location={keystore}\nssl.keystore.password=test-store\nssl.key.password=test-store\n\
                 sasl.enabled.mechanisms=SCRAM-SHA-256\n\
                 listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 log.dirs={data}\noffsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\ngroup.initial.rebalance.delay.ms=0\nauto.create.topics.enable=false\n",
                plain = kafka.plain_port,
                sasl = kafka.sasl_port,
                tls = kafka.tls_port,
                keystore = keystore.display(),
                data = kafka.dir.join("data").display(),
            ),
        )
        .unwrap();
        let format = Command::new("java")
            .arg("-cp")
            .arg(format!("{}/*", Self::libs().display()))
            .args(["kafka.tools.StorageTool", "format", "-t", "herald-test-cluster-0001", "-c"])
            .arg(kafka.dir.join("server.properties"))
            .args(["--add-scram", &format!("SCRAM-SHA-256=[name={SCRAM_USER},password={SCRAM_PASSWORD}]")])
            .output()
            .unwrap();
        assert!(
            format.status.success(),
            "formatting the private broker failed: {}",
            String::from_utf8_lossy(&format.stderr)
        );
        let mut kafka = kafka;
        kafka.launch();
        kafka
    }

    fn launch(&mut self) {
        let child = Command::new("java")
            .args(["-Xmx384m", "-cp"])
            .arg(format!("{}/*", Self::libs().display()))
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdout(Stdio::from(std::fs::File::create(self.dir.join("broker.log")).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(150);
        while std::net::TcpStream::connect(("127.0.0.1", self.plain_port)).is_err() {
            let exited = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
                panic!("private broker did not start ({exited:?}); its log ends:\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, and wait for a clean stop.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.plain_port)
    }

    fn props(&self) -> KafkaProperties {
        let mut props = KafkaProperties::default();
        props.set("bootstrap.servers", self.brokers());
        props
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn produce_to(brokers: &str, topic: &str, range: std::ops::Range<usize>) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for seq in range {
        let source = ["A", "B", "C"][seq % 3];
        let json = event_json(source, "bronze", "SUCCESS", seq);
        producer.send(FutureRecord::to(topic).key(source).payload(&json), Duration::from_secs(60)).await.unwrap();
    }
}

/// Waits until `/health/ready` answers `status` with a body containing `text`.
async fn wait_for_readiness(admin: &str, status: u16, text: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (now, body) = http(admin, "GET", "/health/ready");
        if now == status && body.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "readiness never became {status} {text:?}: {now} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_restarted_mid_stream_loses_nothing() {
    let mut kafka = PrivateKafka::start();
    let topic = unique("events");
    herald_kafka::ensure_topic(&kafka.props(), &topic, 3).await.unwrap();
    let route = stdout_route_config(&unique("route"), &topic, "").replace(BROKERS, &kafka.brokers());
    let config = TempConfig::new(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{route}"));
    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    produce_to(&kafka.brokers(), &topic, 0..150).await;
    herald.wait_for_lines(150);
    wait_for_readiness(&admin, 200, "\"ready\":true").await;

    // Readiness follows the broker: down while it is gone, up again once it is back.
    kafka.stop();
    wait_for_readiness(&admin, 503, "no Kafka broker reachable").await;
    kafka.launch();
    wait_for_readiness(&admin, 200, "\"ready\":true").await;
    produce_to(&kafka.brokers(), &topic, 150..300).await;

    let lines = herald.wait_until(
        |lines| {
            let seen: BTreeSet<usize> = seqs(lines).into_iter().map(|(_, s)| s).collect();
            seen.len() == 300
        },
        "all 300 events after the broker restart",
    );
    // At-least-once across a broker restart: every event, each source in order within each delivery.
    let seen: BTreeSet<usize> = seqs(&lines).into_iter().map(|(_, s)| s).collect();
    assert_eq!(seen, (0..300).collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_credentials_in_kafka_properties_authenticate_and_wrong_ones_are_reported() {
    let kafka = PrivateKafka::start();
    let topic = unique("events");
    herald_kafka::ensure_topic(&kafka.props(), &topic, 1).await.unwrap();
    let sasl_config = |password: &str| {
        TempConfig::new(&format!(
            r#"
[kafka]
bootstrap.servers = "127.0.0.1:{port}"
security.protocol = "SASL_PLAINTEXT"
sasl.mechanism = "SCRAM-SHA-256"
sasl.username = "{SCRAM_USER}"
sasl.password = "{password}"

[[route]]
name = "{route}"
topics = ["{topic}"]
sink = {{ type = "stdout" }}
"#,
            port = kafka.sasl_port,
            route = unique("route"),
        ))
    };
    let good = sasl_config(SCRAM_PASSWORD);
    produce_to(&kafka.brokers(), &topic, 0..20).await;
    let mut running = Herald::run(&good);
    let lines = running.wait_for_lines(20);
    assert_eq!(seqs(&lines).into_iter().map(|(_, s)| s).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
    assert!(!running.log().contains(SCRAM_PASSWORD), "the password is never logged");

    let bad = sasl_config("wrong-password");
    let out = herald().args(["check", "--timeout", "5s", "--config"]).arg(&bad.path).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("FAIL  kafka"), "{report}");
    assert!(!report.contains("wrong-password") && !String::from_utf8_lossy(&out.stderr).contains("wrong-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_in_kafka_properties_reach_a_tls_listener() {
    let kafka = PrivateKafka::start();
    let topic = unique("events");
    herald_kafka::ensure_topic(&kafka.props(), &topic, 1).await.unwrap();
    produce_to(&kafka.brokers(), &topic, 0..10).await;
    let config = TempConfig::new(&format!(
        r#"
[kafka]
bootstrap.servers = "127.0.0.1:{port}"
security.protocol = "SSL"
ssl.ca.location = "{ca}"

[[route]]
name = "{route}"
topics = ["{topic}"]
sink = {{ type = "stdout" }}
"#,
        port = kafka.tls_port,
        ca = kafka.dir.join("ca.pem").display(),
        route = unique("route"),
    ));
    let out = herald().args(["check", "--config"]).arg(&config.path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let mut running = Herald::run(&config);
    let lines = running.wait_for_lines(10);
    assert_eq!(seqs(&lines).into_iter().map(|(_, s)| s).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_listener_answers_503_while_the_broker_is_down_and_loses_nothing_it_acknowledged() {
    let mut kafka = PrivateKafka::start();
    let topic = unique("ingest");
    herald_kafka::ensure_topic(&kafka.props(), &topic, 3).await.unwrap();
    let config = TempConfig::new(&format!(
        "[kafka]\nbootstrap.servers = \"{}\"\n[ingest]\nlisten = \"127.0.0.1:0\"\ntopic = \"{topic}\"\npublish_timeout = \"2s\"\n",
        kafka.brokers()
    ));
    let mut herald = Herald::run(&config);
    let address = logged_address(&mut herald, "Ingest listener listening.");
    let post = |seq: usize| {
        let event = event_json(["A", "B", "C"][seq % 3], "bronze", "SUCCESS", seq);
        request_with_body(&address, "POST", "/events", "Content-Type: application/json\r\n", &event)
    };
    let (mut acknowledged, mut refused) = (BTreeSet::new(), 0);
    let mut seq = 0;
    // Each event is posted once: a 200 is a promise, a 503 is the client's to keep.
    let mut post_until = |acknowledged: &mut BTreeSet<usize>,
                          refused: &mut usize,
                          done: &dyn Fn(usize, usize) -> bool| {
        let deadline = Instant::now() + PATIENCE;
        let (mut ok, mut unavailable) = (0, 0);
        while !done(ok, unavailable) {
            assert!(Instant::now() < deadline, "{ok} acknowledged and {unavailable} refused; log:\n{}", herald.log());
            let (status, body) = post(seq);
            match status {
                200 => {
                    acknowledged.insert(seq);
                    ok += 1;
                }
                503 => {
                    assert!(body.contains("does not answer"), "{body}");
                    *refused += 1;
                    unavailable += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => panic!("answered {other}: {body}"),
            }
            seq += 1;
        }
    };
    post_until(&mut acknowledged, &mut refused, &|ok, _| ok >= 20);
    kafka.stop();
    post_until(&mut acknowledged, &mut refused, &|_, unavailable| unavailable >= 3);
    kafka.launch();
    post_until(&mut acknowledged, &mut refused, &|ok, _| ok >= 20);
    assert!(refused >= 3 && acknowledged.len() >= 40, "{refused} refused, {} acknowledged", acknowledged.len());

    // Every acknowledged event is on the topic.
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", unique("ingest-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&consumer, &[topic.as_str()]).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut seen = BTreeSet::new();
    while !acknowledged.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "acknowledged but missing: {:?}",
            acknowledged.difference(&seen).collect::<Vec<_>>()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.unwrap();
            let event: serde_json::Value =
                serde_json::from_slice(rdkafka::Message::payload(&message).unwrap()).unwrap();
            seen.insert(event["seq"].as_u64().unwrap() as usize);
        }
    }
}
