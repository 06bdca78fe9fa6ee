//! The HTTP sink against a real HTTP receiver the test runs on loopback: what it receives,
//! signed, and what each answer of the receiver makes of a batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use herald_sdk::conformance::{self, Harness, Replay};
use herald_sdk::{BoxError, Sink, SinkError, SinkRecord};
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

fn sink(url: &str, extra: serde_json::Value) -> Box<dyn Sink> {
    let mut settings = serde_json::json!({ "url": format!("{url}/hook/{{lane}}") });
    for (key, value) in extra.as_object().unwrap() {
        settings[key] = value.clone();
    }
    serde_json::from_value::<HttpSinkConfig>(settings).unwrap().build().unwrap()
}

struct HttpHarness {
    receiver: Receiver,
    url: String,
}

#[async_trait]
impl Harness for HttpHarness {
    fn replay(&self) -> Replay {
        Replay::AtLeastOnce
    }

    async fn sink(&mut self) -> Result<Box<dyn Sink>, BoxError> {
        Ok(sink(&self.url, serde_json::json!({})))
    }

    async fn write_unreachable(&mut self, batch: &[SinkRecord]) -> Option<Result<(), SinkError>> {
        let mut unreachable = sink("http://127.0.0.1:1", serde_json::json!({ "timeout": "2s" }));
        Some(unreachable.write(batch).await.map(drop))
    }

    fn refused(&self, mut record: SinkRecord) -> Option<SinkRecord> {
        // The URL needs `lane`.
        record.event.extra.remove("lane");
        Some(record)
    }

    async fn delivered(&mut self) -> Result<Vec<i64>, BoxError> {
        Ok(self.receiver.events().iter().map(|event| event["records"].as_i64().unwrap()).collect())
    }
}

#[tokio::test]
async fn the_http_sink_keeps_every_promise_at_least_once() {
    let (receiver, url) = Receiver::start().await;
    conformance::check(&mut HttpHarness { receiver, url }).await.unwrap();
}

#[tokio::test]
async fn a_batch_is_one_signed_array_per_url_in_order_with_an_idempotency_key() {
    let (receiver, url) = Receiver::start().await;
    let mut sink =
        sink(&url, serde_json::json!({ "hmac_secret": "s3cret", "headers": { "Authorization": "Bearer token-1" } }));
    let mut batch: Vec<SinkRecord> = (0..6).map(conformance::record).collect();
    for (index, record) in batch.iter_mut().enumerate() {
        record.event.extra.insert("lane".into(), if index % 2 == 0 { "even" } else { "odd" }.into());
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
