//! One request: its headers and signature, and what the endpoint's answer means.

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use herald_sdk::printable::{printable, LOG_CHARS};

use crate::config::{BodyFormat, BodyMode, FollowRedirects, HttpSinkConfig};
use crate::error::HttpSinkError;

/// The longest `Retry-After` herald waits before retrying; a longer one is cut to this, so the
/// route stays responsive to shutdown.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of a refusing response's body goes into the dead letter's reason.
const EXCERPT_BYTES: usize = 300;

/// A connection-reusing client with the config's headers and signing key.
pub(crate) struct Client {
    http: reqwest::Client,
    headers: HeaderMap,
    signing: Option<(HeaderName, SecretString)>,
}

impl Client {
    pub(crate) fn new(config: &HttpSinkConfig) -> Result<Self, HttpSinkError> {
        let mut builder = reqwest::Client::builder()
            .redirect(redirect_policy(config.follow_redirects))
            .timeout(config.timeout)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            // Keep a connection per request that may be in flight.
            .pool_max_idle_per_host(config.concurrency.max(1));
        if let Some(path) = &config.ca_file {
            for certificate in read_ca_file(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(HttpSinkError::Client)?;
        let mut headers = HeaderMap::new();
        let content_type = match (config.format, config.body) {
            (BodyFormat::Json, _) => "application/json",
            (BodyFormat::CloudEvents, BodyMode::Event) => "application/cloudevents+json",
            (BodyFormat::CloudEvents, BodyMode::Array) => "application/cloudevents-batch+json",
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        for (name, value) in &config.headers {
            let invalid =
                |reason: &str| HttpSinkError::Config { key: "headers", reason: format!("`{name}`: {reason}") };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("not a header name"))?;
            let value = HeaderValue::from_str(value).map_err(|_| invalid("not a valid header value"))?;
            headers.insert(name, value);
        }
        let signing = match &config.hmac_secret {
            Some(secret) => {
                let name = HeaderName::from_bytes(config.signature_header.as_bytes()).map_err(|_| {
                    HttpSinkError::Config { key: "signature_header", reason: "not a header name".into() }
                })?;
                Some((name, secret.clone()))
            }
            None => None,
        };
        Ok(Self { http, headers, signing })
    }

    /// POSTs `body` to `url` with `idempotency_key`; waits out a `Retry-After` before reporting
    /// a busy endpoint.
    pub(crate) async fn post(&self, url: &str, body: Vec<u8>, idempotency_key: &str) -> Result<(), HttpSinkError> {
        let mut request = self.http.post(url).headers(self.headers.clone()).header("Idempotency-Key", idempotency_key);
        if let Some((name, secret)) = &self.signing {
            request = request.header(name.clone(), signature(secret, &body));
        }
        let response = request.body(body).send().await.map_err(|err| {
            if err.is_builder() {
                // The request could not be made from this URL: the event's, not the endpoint's.
                HttpSinkError::BadUrl { reason: printable(&err.to_string(), LOG_CHARS).into_owned() }
            } else {
                HttpSinkError::Unanswered(err)
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_redirection() {
            let location = response.headers().get(reqwest::header::LOCATION).map_or_else(
                || "(no Location)".to_owned(),
                |value| printable(&String::from_utf8_lossy(value.as_bytes()), EXCERPT_BYTES).into_owned(),
            );
            return Err(HttpSinkError::Redirected { status: status.as_u16(), location });
        }
        if status.as_u16() == 429 || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
            if let Some(wait) = retry_after {
                tokio::time::sleep(wait).await;
            }
            return Err(HttpSinkError::Busy { status: status.as_u16(), retry_after });
        }
        let body = response.bytes().await.unwrap_or_default();
        let excerpt = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES)]).into_owned();
        Err(HttpSinkError::Refused {
            status: status.as_u16(),
            excerpt: printable(&excerpt, EXCERPT_BYTES).into_owned(),
        })
    }

    /// Whether the endpoint is up: `health_url` answers 2xx, or else the origin answers a `HEAD`
    /// with anything but 429 or 5xx.
    pub(crate) async fn health(&self, health_url: Option<&str>, origin: Option<&str>) -> Result<(), HttpSinkError> {
        let (url, strict) = match (health_url, origin) {
            (Some(url), _) => (url, true),
            (None, Some(origin)) => (origin, false),
            // The host itself comes from the events: nothing to ask before one arrives.
            (None, None) => return Ok(()),
        };
        let request = if strict { self.http.get(url) } else { self.http.head(url) };
        let response = request.send().await.map_err(HttpSinkError::Unanswered)?;
        let status = response.status();
        let up = if strict { status.is_success() } else { !(status.as_u16() == 429 || status.is_server_error()) };
        if up {
            Ok(())
        } else {
            Err(HttpSinkError::Busy { status: status.as_u16(), retry_after: None })
        }
    }
}

/// The client's redirect policy: none by default; with `same_origin`, 307 and 308 to the same
/// origin (they keep the method and body), at most 5 in a row.
fn redirect_policy(follow: FollowRedirects) -> reqwest::redirect::Policy {
    match follow {
        FollowRedirects::None => reqwest::redirect::Policy::none(),
        FollowRedirects::SameOrigin => reqwest::redirect::Policy::custom(|attempt| {
            let keeps_method = matches!(attempt.status().as_u16(), 307 | 308);
            let same_origin = attempt.previous().last().is_some_and(|from| from.origin() == attempt.url().origin());
            if keeps_method && same_origin && attempt.previous().len() <= 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }),
    }
}

/// The certificates of a PEM file, trusted as roots besides the system's.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpSinkError> {
    let invalid = |reason: String| HttpSinkError::Config { key: "ca_file", reason };
    let pem = std::fs::read(path).map_err(|err| invalid(format!("cannot read {}: {err}", path.display())))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|err| invalid(format!("{} is not a PEM bundle: {err}", path.display())))?;
    if certificates.is_empty() {
        return Err(invalid(format!("{} holds no certificate", path.display())));
    }
    Ok(certificates)
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub(crate) fn signature(secret: &SecretString, body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_github_style_hmac_sha256() {
        // Known answer: HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog").
        let secret = SecretString::from("key");
        assert_eq!(
            signature(&secret, b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
