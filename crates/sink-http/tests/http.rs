//! The HTTP sink against a real HTTP receiver the test runs on loopback: what it receives,
//! signed, and what each answer of the receiver makes of a batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use herald_sdk::conformance::{self, Harness, Replay};
use herald_sdk::{BoxError, Sink, SinkError, SinkPlugin, SinkRecord};
use herald_sink_http::HttpSinkConfig;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    lane: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on loopback that answers `status` (200 unless told otherwise).
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    /// When set, every such request answers 503 (with no `Retry-After`).
    fail_every: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Receiver::default();
        receiver.status.store(200, Ordering::SeqCst);
        let app = Router::new().route("/hook/{lane}", post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, format!("http://{address}"))
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|request| match serde_json::from_slice::<serde_json::Value>(&request.body).unwrap() {
                serde_json::Value::Array(events) => events,
                event => vec![event],
            })
            .collect()
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    Path(lane): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap, &'static str) {
    let status = StatusCode::from_u16(receiver.status.load(Ordering::SeqCst)).unwrap();
    let every = receiver.fail_every.load(Ordering::SeqCst);
    if every > 0 && (receiver.requests.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(every) {
        return (StatusCode::BAD_GATEWAY, HeaderMap::new(), "flaky");
    }
    let mut answer = HeaderMap::new();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        answer.insert("Retry-After", "1".parse().unwrap());
    }
    if status.is_success() {
        receiver.received.lock().unwrap().push(Received { lane, headers, body: body.to_vec() });
        return (status, answer, "ok");
    }
    (status, answer, "{\"error\": \"no such tenant\"}")
}

/// The sink of `config`, validated first as the registry does.
fn checked(config: HttpSinkConfig) -> Box<dyn Sink> {
    config.validate().unwrap();
    config.sink().unwrap()
}

fn sink(url: &str, extra: serde_json::Value) -> Box<dyn Sink> {
    let mut settings = serde_json::json!({ "url": format!("{url}/hook/{{lane}}") });
    for (key, value) in extra.as_object().unwrap() {
        settings[key] = value.clone();
    }
    checked(serde_json::from_value::<HttpSinkConfig>(settings).unwrap())
}

struct HttpHarness {
    receiver: Receiver,
    url: String,
    settings: serde_json::Value,
}

#[async_trait]
impl Harness for HttpHarness {
    fn replay(&self) -> Replay {
        Replay::AtLeastOnce
    }

    async fn sink(&mut self) -> Result<Box<dyn Sink>, BoxError> {
        Ok(sink(&self.url, self.settings.clone()))
    }

    async fn write_unreachable(&mut self, batch: &[SinkRecord]) -> Option<Result<(), SinkError>> {
        let mut unreachable = sink("http://127.0.0.1:1", serde_json::json!({ "timeout": "2s" }));
        Some(unreachable.write(batch).await.map(drop))
    }

    fn refused(&self, mut record: SinkRecord) -> Option<SinkRecord> {
        // The URL needs `lane`.
        record.event.edit(|event| drop(event.extra.remove("lane")));
        Some(record)
    }

    async fn delivered(&mut self) -> Result<Vec<i64>, BoxError> {
        Ok(self.receiver.events().iter().map(|event| event["records"].as_i64().unwrap()).collect())
    }

    async fn flaky(&mut self, every: usize) -> Option<Result<Box<dyn Sink>, BoxError>> {
        self.receiver.fail_every.store(every, Ordering::SeqCst);
        // One request per event, or one per URL: several requests per batch either way.
        let mut settings = self.settings.clone();
        if settings.get("body").is_none() {
            settings["body"] = "event".into();
        }
        Some(Ok(sink(&self.url, settings)))
    }
}

#[tokio::test]
async fn the_http_sink_keeps_every_promise_at_least_once() {
    let (receiver, url) = Receiver::start().await;
    conformance::check(&mut HttpHarness { receiver, url, settings: serde_json::json!({}) }).await.unwrap();
}

#[tokio::test]
async fn the_http_sink_keeps_every_promise_with_requests_in_parallel() {
    let (receiver, url) = Receiver::start().await;
    let settings = serde_json::json!({ "body": "event", "concurrency": 4 });
    conformance::check(&mut HttpHarness { receiver, url, settings }).await.unwrap();
}

#[tokio::test]
async fn a_batch_is_one_signed_array_per_url_in_order_with_an_idempotency_key() {
    let (receiver, url) = Receiver::start().await;
    let mut sink =
        sink(&url, serde_json::json!({ "hmac_secret": "s3cret", "headers": { "Authorization": "Bearer token-1" } }));
    let mut batch: Vec<SinkRecord> = (0..6).map(conformance::record).collect();
    for (index, record) in batch.iter_mut().enumerate() {
        let lane = if index % 2 == 0 { "even" } else { "odd" };
        record.event.edit(|event| drop(event.extra.insert("lane".into(), lane.into())));
    }
    let outcome = sink.write(&batch).await.unwrap();
    assert!(outcome.rejected.is_empty());

    let received = receiver.received.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "one request per URL");
    assert_eq!((received[0].lane.as_str(), received[1].lane.as_str()), ("even", "odd"));
    let records = |request: &Received| -> Vec<i64> {
        serde_json::from_slice::<Vec<serde_json::Value>>(&request.body)
            .unwrap()
            .iter()
            .map(|event| event["records"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(records(&received[0]), [0, 2, 4], "batch order kept");
    assert_eq!(records(&received[1]), [1, 3, 5]);
    for request in &received {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&request.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(request.headers["x-herald-signature"].to_str().unwrap(), expected, "the receiver can verify herald");
        assert_eq!(request.headers["authorization"], "Bearer token-1");
        assert_eq!(request.headers["content-type"], "application/json");
    }
    assert_eq!(received[0].headers["idempotency-key"], "conformance-0-0-4-3");

    // The same records again carry the same keys: a receiver can drop the duplicates.
    sink.write(&batch).await.unwrap();
    let again = receiver.received.lock().unwrap().clone();
    assert_eq!(again[2].headers["idempotency-key"], received[0].headers["idempotency-key"]);
}

#[tokio::test]
async fn a_busy_receiver_is_retried_and_a_refusing_one_dead_letters_with_its_answer() {
    let (receiver, url) = Receiver::start().await;
    let mut sink = sink(&url, serde_json::json!({ "body": "event" }));
    let batch: Vec<SinkRecord> = (0..3).map(conformance::record).collect();

    receiver.status.store(503, Ordering::SeqCst);
    let err = sink.write(&batch).await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    let chain = herald_sdk::error_chain(&err).join(": ");
    assert!(chain.contains("503") && chain.contains("after 1s"), "Retry-After honoured: {chain}");

    receiver.status.store(429, Ordering::SeqCst);
    assert!(sink.write(&batch).await.unwrap_err().is_retriable());

    receiver.status.store(404, Ordering::SeqCst);
    let outcome = sink.write(&batch).await.unwrap();
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [0, 1, 2], "one request per event, each refused");
    let reason = outcome.rejected[0].error.to_string();
    assert!(reason.contains("404") && reason.contains("no such tenant"), "{reason}");

    receiver.status.store(200, Ordering::SeqCst);
    sink.write(&batch).await.unwrap();
    let records: Vec<i64> = receiver.events().iter().map(|event| event["records"].as_i64().unwrap()).collect();
    assert_eq!(records, [0, 1, 2], "only the accepted requests count");
}

#[tokio::test]
async fn cloudevents_structured_mode_wraps_each_event_with_a_replay_stable_id() {
    let (receiver, url) = Receiver::start().await;
    let batch: Vec<SinkRecord> = (0..3).map(conformance::record).collect();

    let mut array = sink(&url, serde_json::json!({ "format": "cloudevents", "cloudevents_source": "/herald/test" }));
    array.write(&batch).await.unwrap();
    let mut single = sink(&url, serde_json::json!({ "format": "cloudevents", "body": "event" }));
    single.write(&batch[..1]).await.unwrap();

    let received = receiver.received.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].headers["content-type"], "application/cloudevents-batch+json");
    assert_eq!(received[1].headers["content-type"], "application/cloudevents+json");
    let envelopes: Vec<serde_json::Value> = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(envelopes.len(), 3);
    for (seq, envelope) in envelopes.iter().enumerate() {
        assert_eq!(envelope["specversion"], "1.0");
        assert_eq!(envelope["id"], format!("conformance-0-{seq}"), "Kafka coordinates: the same on a replay");
        assert_eq!(envelope["source"], "/herald/test");
        assert_eq!(envelope["type"], "herald.stage.STAGE_COMPLETE");
        assert_eq!(envelope["subject"], format!("src{}", seq % 3));
        assert_eq!(envelope["datacontenttype"], "application/json");
        assert_eq!(envelope["data"]["records"], seq as i64, "the stage event is the data, in batch order");
        assert_eq!(envelope["data"]["stage"], "conformance");
        let time = envelope["time"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(time).unwrap_or_else(|err| panic!("time `{time}` is not RFC 3339: {err}"));
    }
    let one: serde_json::Value = serde_json::from_slice(&received[1].body).unwrap();
    assert_eq!((one["id"].as_str(), one["source"].as_str()), (Some("conformance-0-0"), Some("herald")));
}

/// A receiver whose every answer takes a while, counting how many requests it holds at once.
#[derive(Clone, Default)]
struct SlowReceiver {
    sources: Arc<Mutex<Vec<(String, i64)>>>,
    in_flight: Arc<AtomicU16>,
    most_in_flight: Arc<AtomicU16>,
}

async fn receive_slowly(State(receiver): State<SlowReceiver>, body: axum::body::Bytes) -> &'static str {
    let now = receiver.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    receiver.most_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let record = (event["source"].as_str().unwrap().to_owned(), event["records"].as_i64().unwrap());
    receiver.sources.lock().unwrap().push(record);
    receiver.in_flight.fetch_sub(1, Ordering::SeqCst);
    "ok"
}

async fn slow_receiver() -> (SlowReceiver, String) {
    let receiver = SlowReceiver::default();
    let app = Router::new().route("/hook/{lane}", post(receive_slowly)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, format!("http://{address}"))
}

#[tokio::test]
async fn requests_in_parallel_stay_within_the_bound_and_keep_each_sources_order() {
    let batch: Vec<SinkRecord> = (0..24)
        .map(|seq| {
            let mut record = conformance::record(seq);
            record.event.edit(|event| event.source = format!("S{}", seq % 6));
            record
        })
        .collect();
    for (concurrency, expected_most) in [(1, 1..=1), (4, 2..=4)] {
        let (receiver, url) = slow_receiver().await;
        let mut sink = sink(&url, serde_json::json!({ "body": "event", "concurrency": concurrency }));
        assert!(sink.write(&batch).await.unwrap().rejected.is_empty());
        let received = receiver.sources.lock().unwrap().clone();
        assert_eq!(received.len(), 24, "every event once");
        for source in 0..6 {
            let name = format!("S{source}");
            let order: Vec<i64> = received.iter().filter(|(s, _)| *s == name).map(|(_, seq)| *seq).collect();
            let expected: Vec<i64> = (0..24).filter(|seq| seq % 6 == source).collect();
            assert_eq!(order, expected, "{name}'s events in order with concurrency {concurrency}");
        }
        let most = receiver.most_in_flight.load(Ordering::SeqCst);
        assert!(expected_most.contains(&most), "concurrency {concurrency}: {most} requests were in flight at once");
    }
}

/// A receiver behind TLS with a certificate of a private CA (self-signed for 127.0.0.1).
async fn tls_receiver() -> (Receiver, String, std::path::PathBuf) {
    use tokio_rustls::rustls;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let ca_file = std::env::temp_dir().join(format!("herald-http-ca-{}-{}.pem", std::process::id(), rand_suffix()));
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let receiver = Receiver::default();
    receiver.status.store(200, Ordering::SeqCst);
    let app = Router::new().route("/hook/{lane}", post(receive)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate hangs up here.
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (receiver, format!("https://{address}"), ca_file)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_through_ca_file() {
    let (receiver, url, ca_file) = tls_receiver().await;
    let batch: Vec<SinkRecord> = (0..3).map(conformance::record).collect();

    let mut system_roots_only = sink(&url, serde_json::json!({ "timeout": "5s" }));
    let err = system_roots_only.write(&batch).await.unwrap_err();
    assert!(err.is_retriable(), "an untrusted certificate is no answer, retried: {err}");
    assert!(receiver.events().is_empty());

    let mut trusting = sink(&url, serde_json::json!({ "ca_file": ca_file }));
    assert!(trusting.write(&batch).await.unwrap().rejected.is_empty());
    let records: Vec<i64> = receiver.events().iter().map(|event| event["records"].as_i64().unwrap()).collect();
    assert_eq!(records, [0, 1, 2]);
    std::fs::remove_file(&ca_file).unwrap();
}

#[test]
fn a_missing_or_empty_ca_file_and_a_bad_concurrency_are_named() {
    let config = |extra: serde_json::Value| {
        let mut settings = serde_json::json!({ "url": "https://h/" });
        for (key, value) in extra.as_object().unwrap() {
            settings[key] = value.clone();
        }
        serde_json::from_value::<HttpSinkConfig>(settings).unwrap()
    };
    let missing = config(serde_json::json!({ "ca_file": "/nonexistent/ca.pem" })).validate().unwrap_err().to_string();
    assert!(missing.contains("`ca_file`") && missing.contains("/nonexistent/ca.pem"), "{missing}");
    let empty = std::env::temp_dir().join(format!("herald-http-empty-{}.pem", rand_suffix()));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let error = config(serde_json::json!({ "ca_file": empty })).validate().unwrap_err().to_string();
    assert!(error.contains("`ca_file`") && error.contains("no certificate"), "{error}");
    std::fs::remove_file(&empty).unwrap();
    let error = config(serde_json::json!({ "concurrency": 0 })).validate().unwrap_err().to_string();
    assert!(error.contains("`concurrency`"), "{error}");
    assert!(serde_json::from_value::<HttpSinkConfig>(serde_json::json!({ "url": "h", "format": "xml" })).is_err());
}

/// One request to the hook: its path, headers and body.
type Hook = (String, HeaderMap, Vec<u8>);

/// A receiver with a hook, an admin endpoint that must never be reached, and redirects:
/// `/moved/{code}` answers `code` with `Location: {to}`.
#[derive(Clone, Default)]
struct Trap {
    hooks: Arc<Mutex<Vec<Hook>>>,
    admin_hits: Arc<AtomicUsize>,
    redirect_to: Arc<Mutex<String>>,
}

async fn trap() -> (Trap, String) {
    let trap = Trap::default();
    let hook = |State(trap): State<Trap>, uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| async move {
        trap.hooks.lock().unwrap().push((uri.path().to_owned(), headers, body.to_vec()));
        "ok"
    };
    let admin = |State(trap): State<Trap>| async move {
        trap.admin_hits.fetch_add(1, Ordering::SeqCst);
        "deleted everything"
    };
    let moved = |State(trap): State<Trap>, Path(code): Path<u16>| async move {
        let mut headers = HeaderMap::new();
        headers.insert("Location", trap.redirect_to.lock().unwrap().parse().unwrap());
        (StatusCode::from_u16(code).unwrap(), headers, "")
    };
    let app = Router::new()
        .route("/hook/{*rest}", post(hook).get(hook))
        .route("/admin/{*rest}", post(admin).get(admin))
        .route("/moved/{code}", post(moved))
        .with_state(trap.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (trap, format!("http://{address}"))
}

fn sink_at(url_template: &str, extra: serde_json::Value) -> Box<dyn Sink> {
    let mut settings = serde_json::json!({ "url": url_template, "body": "event" });
    for (key, value) in extra.as_object().unwrap() {
        settings[key] = value.clone();
    }
    checked(serde_json::from_value::<HttpSinkConfig>(settings).unwrap())
}

fn with_source(seq: i64, source: &str) -> SinkRecord {
    let mut record = conformance::record(seq);
    record.event.edit(|event| event.source = source.to_owned());
    record
}

#[tokio::test]
async fn a_value_in_the_url_stays_one_segment_and_never_reaches_another_path() {
    let (trap, base) = trap().await;
    let mut sink = sink_at(
        &format!("{base}/hook/{{source}}?stage={{stage}}"),
        serde_json::json!({ "headers": { "X-Api-Key": "k" } }),
    );
    let hostile = ["../../admin/delete?x=1", "..%2F..%2Fadmin%2Fdelete", "a/../../admin/x#f", "a b&stage=evil"];
    let batch: Vec<SinkRecord> = hostile.iter().enumerate().map(|(i, source)| with_source(i as i64, source)).collect();
    let outcome = sink.write(&batch).await.unwrap();
    assert!(outcome.rejected.is_empty() && outcome.unfinished.is_none());
    assert_eq!(trap.admin_hits.load(Ordering::SeqCst), 0, "the admin endpoint was never reached");
    let hooks = trap.hooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 4);
    for ((path, _, body), source) in hooks.iter().zip(hostile) {
        assert!(path.starts_with("/hook/") && path.matches('/').count() == 2, "one segment: {path}");
        let event: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["source"], source, "the event itself is unchanged");
    }

    // A dot segment would climb even encoded: that event is refused, the next delivered.
    let outcome = sink.write(&[with_source(10, ".."), with_source(11, "fine")]).await.unwrap();
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [0]);
    assert_eq!(trap.admin_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_url_too_long_to_request_is_refused_at_once_with_a_short_reason() {
    let (trap, base) = trap().await;
    let mut sink = sink_at(&format!("{base}/hook/{{source}}"), serde_json::json!({}));
    let outcome = sink.write(&[with_source(0, &"s".repeat(100_000)), with_source(1, "next")]).await.unwrap();
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [0], "refused, not retried");
    let reason = herald_sdk::error_chain(outcome.rejected[0].error.as_ref()).join(": ");
    assert!(
        reason.len() < 500 && reason.contains("bytes long"),
        "{} bytes: {}",
        reason.len(),
        &reason[..200.min(reason.len())]
    );
    let hooks = trap.hooks.lock().unwrap().clone();
    assert_eq!(hooks.iter().map(|(path, _, _)| path.as_str()).collect::<Vec<_>>(), ["/hook/next"]);
}

#[tokio::test]
async fn redirects_are_not_followed_unless_same_origin_and_method_preserving() {
    let (elsewhere, other_base) = trap().await;
    let (trap, base) = trap().await;
    let headers = serde_json::json!({ "X-Api-Key": "secret-key", "Authorization": "Bearer t" });
    for code in [301, 302, 303, 307, 308] {
        // By default nothing is followed: the event is refused with the answer, never lost.
        *trap.redirect_to.lock().unwrap() = format!("{base}/hook/landed");
        let mut sink = sink_at(&format!("{base}/moved/{code}"), serde_json::json!({ "headers": headers }));
        let outcome = sink.write(&[with_source(0, "a")]).await.unwrap();
        assert_eq!(outcome.rejected.len(), 1, "{code}");
        let reason = outcome.rejected[0].error.to_string();
        assert!(reason.contains(&code.to_string()) && reason.contains("/hook/landed"), "{reason}");

        // same_origin follows only 307 and 308, with the POST and its body.
        let mut sink = sink_at(
            &format!("{base}/moved/{code}"),
            serde_json::json!({ "headers": headers, "follow_redirects": "same_origin" }),
        );
        let outcome = sink.write(&[with_source(1, "b")]).await.unwrap();
        let followed = matches!(code, 307 | 308);
        assert_eq!(outcome.rejected.is_empty(), followed, "{code}");
        let landed = trap
            .hooks
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _, body)| path == "/hook/landed" && !body.is_empty())
            .count();
        assert_eq!(landed, usize::from(followed), "{code}");
        trap.hooks.lock().unwrap().clear();

        // Never to another origin, so the headers never travel there.
        *trap.redirect_to.lock().unwrap() = format!("{other_base}/hook/stolen");
        let outcome = sink.write(&[with_source(2, "c")]).await.unwrap();
        assert_eq!(outcome.rejected.len(), 1, "{code} to another origin");
        assert!(elsewhere.hooks.lock().unwrap().is_empty(), "{code}: nothing reached the other origin");
    }
}

#[tokio::test]
async fn a_steadily_flaky_endpoint_drains_arrays_per_url_retrying_only_what_is_left() {
    let (receiver, url) = Receiver::start().await;
    receiver.fail_every.store(4, Ordering::SeqCst);
    // `array` bodies, one URL per lane: 500 events make 10 requests per write, and one in
    // four fails. Retrying the whole batch each time never got through; retrying the rest does.
    let mut sink = sink(&url, serde_json::json!({}));
    let batch: Vec<SinkRecord> = (0..500)
        .map(|seq| {
            let mut record = conformance::record(seq);
            record.event.edit(|event| drop(event.extra.insert("lane".into(), format!("l{}", seq % 10).into())));
            record
        })
        .collect();
    let mut pending = herald_sdk::Pending::all(batch.len());
    let mut writes = 0;
    while !pending.is_empty() {
        writes += 1;
        assert!(writes <= 20, "{} events left after 20 writes", pending.len());
        let records = pending.records(&batch).into_owned();
        match sink.write(&records).await {
            Ok(outcome) => assert!(pending.settle(outcome).unwrap().rejected.is_empty()),
            Err(err) => assert!(err.is_retriable(), "{err}"),
        }
    }
    let mut seen: Vec<i64> = receiver.events().iter().map(|event| event["records"].as_i64().unwrap()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0..500).collect::<Vec<_>>(), "every event, within {writes} writes");
}
