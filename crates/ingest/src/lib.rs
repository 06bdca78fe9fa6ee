/*!
herald-ingest: the ingest listener. Jobs that cannot link a Kafka client publish stage events
over HTTP: orchestrators through their OpenLineage HTTP transport (`POST /api/v1/lineage`, one
`RunEvent`, gzip or not), scripts with `curl` (`POST /events`, one stage event or NDJSON).

The one decision to know: **a `200` means Kafka has every event of the request** (idempotent
producer, `acks=all`), and any other answer means the client should keep it: `400` (the body is
not what the endpoint takes) and `401`, `413`, `429` publish nothing; `503` (Kafka does not
answer in `publish_timeout`) may have published part of it, so a client that retries publishes
at least once, which is what every herald sink already takes (stage events are upserted by
source and stage, newest wins).

# Layout
- [`config`]: `[ingest]` ([`IngestConfig`]).
- [`body`]: inflating a gzip body within bounds; stage events from JSON or NDJSON.
- [`publish`]: the producer, and the probe that tells the brokers are there.
- this file: the HTTP endpoints and their answers.
*/
#![deny(missing_docs)]

pub mod body;
pub mod config;
pub mod publish;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_kafka::KafkaProperties;
use herald_sdk::{Lineage, LineageMapping, StageEvent};
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use body::BodyError;
pub use config::IngestConfig;
pub use publish::PublishError;

use publish::Publisher;

/// The ingest listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The address is taken or not this machine's.
    #[error("cannot listen on {address} (ingest.listen): {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `token_file` cannot be read or holds no usable token.
    #[error("ingest token: {0}")]
    Token(#[source] std::io::Error),
    /// The producer could not be made.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The metrics could not be registered (a second listener in one process).
    #[error("cannot register the ingest metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What every request shares.
struct Listener {
    publisher: Publisher,
    metrics: Metrics,
    mapping: LineageMapping,
    max_body_bytes: usize,
    max_events_per_request: usize,
    rate: Option<Rate>,
}

/// `herald_ingest_requests_total{endpoint, status}` and `herald_ingest_events_total{endpoint}`.
#[derive(Clone)]
struct Metrics {
    requests: prometheus::IntCounterVec,
    events: prometheus::IntCounterVec,
}

/// The endpoints, as metric labels: any other path counts as `other`, so a client cannot make a
/// label of its own.
const ENDPOINTS: [&str; 3] = ["/api/v1/lineage", "/events", "/health"];

impl Metrics {
    fn new(registry: Option<&prometheus::Registry>) -> Result<Self, prometheus::Error> {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "ingest_requests_total",
                "Requests the ingest listener answered, by endpoint and status.",
            ),
            &["endpoint", "status"],
        )?;
        let events = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "ingest_events_total",
                "Events the ingest listener published (Kafka acknowledged), by endpoint.",
            ),
            &["endpoint"],
        )?;
        if let Some(registry) = registry {
            registry.register(Box::new(requests.clone()))?;
            registry.register(Box::new(events.clone()))?;
        }
        Ok(Self { requests, events })
    }
}

/// Counts every answer by endpoint and status.
async fn count(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let endpoint = ENDPOINTS.into_iter().find(|endpoint| *endpoint == path).unwrap_or("other");
    let response = next.run(request).await;
    metrics.requests.with_label_values(&[endpoint, response.status().as_str()]).inc();
    response
}

/// The events-per-second budget over all requests.
type Rate = governor::DefaultDirectRateLimiter;

/// Binds `address` and returns the bound address and the server, which runs until `stop`; its
/// metrics go to `registry` (the admin API's `/metrics`) when one is given.
pub async fn bind(
    address: SocketAddr,
    config: &IngestConfig,
    kafka: &KafkaProperties,
    registry: Option<&prometheus::Registry>,
    stop: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = ()>), IngestError> {
    let metrics = Metrics::new(registry)?;
    let token = config.resolve_token().map_err(IngestError::Token)?;
    let publisher = Publisher::new(kafka, &config.topic, config.publish_timeout, stop.clone())?;
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|source| IngestError::Bind { address, source })?;
    let bound = listener.local_addr().map_err(|source| IngestError::Bind { address, source })?;
    info!(address = %bound, topic = %config.topic, token = token.is_some(), "Ingest listener listening.");
    let shared = Arc::new(Listener {
        publisher,
        metrics: metrics.clone(),
        mapping: config.openlineage.clone(),
        max_body_bytes: config.max_body_bytes,
        max_events_per_request: config.max_events_per_request,
        rate: config
            .max_events_per_second
            .map(|per_second| governor::RateLimiter::direct(governor::Quota::per_second(per_second))),
    });
    let app = router(shared, token, config.max_body_bytes).layer(axum::middleware::from_fn_with_state(metrics, count));
    let limits = herald_http::Limits {
        max_connections: config.max_connections,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        name: "ingest listener",
    };
    Ok((bound, herald_http::serve(listener, app, limits, stop)))
}

fn router(shared: Arc<Listener>, token: Option<SecretString>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v1/lineage", post(lineage))
        .route("/events", post(events))
        .route("/health", get(health))
        .with_state(shared)
        // The body limit applies to what is sent; `body::inflate` bounds what it inflates to.
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(token.map(Arc::new), authorize))
}

/// Every request carries the token, when one is set.
async fn authorize(State(token): State<Option<Arc<SecretString>>>, request: Request, next: Next) -> Response {
    if let Some(token) = token {
        if !herald_http::carries_token(request.headers(), &token) {
            let mut refusal =
                answer(StatusCode::UNAUTHORIZED, json!({"error": "this needs `Authorization: Bearer <ingest.token>`"}));
            refusal.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return refusal;
        }
    }
    next.run(request).await
}

/// `POST /api/v1/lineage`: one OpenLineage event. A run's transition is published as a stage
/// event; an event of no run (a `DatasetEvent`, a `JobEvent`) is answered `200` with why nothing
/// was published, so the client does not retry it.
async fn lineage(State(shared): State<Arc<Listener>>, headers: HeaderMap, body: Bytes) -> Response {
    let body = match body::inflate(&body, content_encoding(&headers), shared.max_body_bytes) {
        Ok(body) => body,
        Err(err) => return refuse_body(err),
    };
    let event = match shared.mapping.map(&body) {
        Ok(Lineage::Event(event)) => *event,
        Ok(Lineage::NotARun(why)) => return answer(StatusCode::OK, json!({"published": 0, "ignored": why})),
        Err(err) => return answer(StatusCode::BAD_REQUEST, json!({"error": herald_sdk::error_chain(&err).join(": ")})),
    };
    publish(&shared, "/api/v1/lineage", vec![event]).await
}

/// `POST /events`: one stage event, or NDJSON; all of it or none.
async fn events(State(shared): State<Arc<Listener>>, headers: HeaderMap, body: Bytes) -> Response {
    let events = body::inflate(&body, content_encoding(&headers), shared.max_body_bytes)
        .and_then(|body| body::stage_events(&body, shared.max_events_per_request));
    match events {
        Ok(events) => publish(&shared, "/events", events).await,
        Err(err) => refuse_body(err),
    }
}

/// `GET /health`: `200` while the brokers answer and the topic exists, else `503` with why.
async fn health(State(shared): State<Arc<Listener>>) -> Response {
    match shared.publisher.ready() {
        Ok(()) => answer(StatusCode::OK, json!({"kafka": "up", "topic": shared.publisher.topic()})),
        Err(err) => unavailable(&err),
    }
}

/// Publishes `events` within the rate, answering `200` once all are acknowledged.
async fn publish(shared: &Listener, endpoint: &str, events: Vec<StageEvent>) -> Response {
    if let Some(rate) = &shared.rate {
        let count = NonZeroU32::new(u32::try_from(events.len()).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        match rate.check_n(count) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                let mut refusal = answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "over ingest.max_events_per_second; retry in a second"}),
                );
                refusal.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return refusal;
            }
            Err(_) => {
                return answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({"error": "the request holds more events than ingest.max_events_per_second allows in a second"}),
                )
            }
        }
    }
    match shared.publisher.publish(&events).await {
        Ok(published) => {
            shared.metrics.events.with_label_values(&[endpoint]).inc_by(published as u64);
            answer(StatusCode::OK, json!({"published": published, "topic": shared.publisher.topic()}))
        }
        Err(err) => {
            warn!(error = %err, events = events.len(), "Ingest request not published.");
            unavailable(&err)
        }
    }
}

/// `503` for Kafka not answering or a missing topic (with `Retry-After`), `502` for a refusal.
fn unavailable(err: &PublishError) -> Response {
    let status = match err {
        PublishError::Unavailable { .. } | PublishError::NoTopic { .. } => StatusCode::SERVICE_UNAVAILABLE,
        PublishError::Refused(_) | PublishError::Producer(_) => StatusCode::BAD_GATEWAY,
    };
    let mut response = answer(status, json!({"error": err.to_string()}));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

fn refuse_body(err: BodyError) -> Response {
    let status = match err {
        BodyError::TooLarge { .. } | BodyError::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        BodyError::Gzip(_) | BodyError::Event { .. } | BodyError::Empty => StatusCode::BAD_REQUEST,
    };
    answer(status, json!({"error": err.to_string()}))
}

fn content_encoding(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::CONTENT_ENCODING).and_then(|value| value.to_str().ok())
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}
