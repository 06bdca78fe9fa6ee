//! Who may do what. A request that changes something (any method but `GET`/`HEAD`) is served
//! only when it comes from the API's own origin (so no other web page, and no DNS-rebound name,
//! can pause a route from a browser), is not a form a page could submit without asking, and
//! carries the bearer token when one is set. With `auth = "all"` every request needs the token.
//! Every answer carries headers that keep it out of frames and content sniffing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::SecretString;

use crate::config::AuthScope;

/// The content security policy of every answer: the board page loads its script and style
/// from this server only, and nothing may frame it.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Content types a page may send cross-origin without a preflight: never taken for a change.
const FORM_TYPES: [&str; 3] = ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"];

/// The rules, shared by every request.
#[derive(Clone)]
pub(crate) struct Guard {
    token: Option<Arc<SecretString>>,
    scope: AuthScope,
    bound: SocketAddr,
}

impl Guard {
    pub(crate) fn new(bound: SocketAddr, token: Option<SecretString>, scope: AuthScope) -> Self {
        Self { token: token.map(Arc::new), scope, bound }
    }

    /// Whether a `Host` header names this server: the bound address, or (bound to loopback)
    /// `localhost`, `127.0.0.1` or `[::1]` with its port; bound to every interface, any name
    /// with its port (the token guards that case: the config requires one).
    fn names_this_server(&self, host: &str) -> bool {
        let port = self.bound.port();
        let Some((name, host_port)) = host.rsplit_once(':') else { return false };
        if host_port.parse::<u16>().ok() != Some(port) {
            return false;
        }
        let ip = self.bound.ip();
        if ip.is_unspecified() {
            return true;
        }
        if ip.is_loopback() && ["localhost", "127.0.0.1", "[::1]"].contains(&name) {
            return true;
        }
        host == self.bound.to_string()
    }

    /// Whether the request carries the token (always, when none is set).
    fn authorized(&self, request: &Request) -> bool {
        self.token.as_ref().is_none_or(|token| herald_http::carries_token(request.headers(), token))
    }
}

/// The middleware: refuses what the rules refuse, and adds the security headers.
pub(crate) async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    if changes {
        if let Err((status, reason)) = same_origin(&guard, &request) {
            return with_security_headers(refuse(status, reason));
        }
    }
    // `/health/live` says only that the process serves: a container's health check or a
    // liveness probe reads it without a token, whatever `auth` says.
    let liveness = request.uri().path() == "/health/live" && !changes;
    // A tap shows events' payloads: it needs the token whenever one is set.
    let tap = request.uri().path().ends_with("/tap");
    if (changes || tap || (guard.scope == AuthScope::All && !liveness)) && !guard.authorized(&request) {
        let mut refusal = refuse(StatusCode::UNAUTHORIZED, "this needs `Authorization: Bearer <admin.token>`");
        refusal.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return with_security_headers(refusal);
    }
    with_security_headers(next.run(request).await)
}

/// Refuses a change from another origin, to another host name, or sent as a simple form.
fn same_origin(guard: &Guard, request: &Request) -> Result<(), (StatusCode, &'static str)> {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("");
    if !guard.names_this_server(host) {
        return Err((
            StatusCode::FORBIDDEN,
            "changes are taken only for this server's own address (the Host header names another)",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin.to_str().ok().is_some_and(|origin| origin.strip_prefix("http://") == Some(host));
        if !same {
            return Err((
                StatusCode::FORBIDDEN,
                "changes are not taken from another origin (a web page cannot pause a route)",
            ));
        }
    }
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    if media_type.is_some_and(|media_type| FORM_TYPES.contains(&media_type.as_str())) {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "changes are not taken as a form: send no body, or application/json",
        ));
    }
    Ok(())
}

fn refuse(status: StatusCode, reason: &'static str) -> Response {
    tracing::warn!(status = status.as_u16(), reason, "Admin API refused a request.");
    (status, Json(serde_json::json!({ "error": reason }))).into_response()
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_server_s_names_pass() {
        let loopback =
            Guard::new("127.0.0.1:9464".parse().unwrap_or_else(|_| unreachable!()), None, AuthScope::Changes);
        for host in ["127.0.0.1:9464", "localhost:9464", "[::1]:9464"] {
            assert!(loopback.names_this_server(host), "{host}");
        }
        for host in ["evil.example:9464", "127.0.0.1:80", "localhost", "", "127.0.0.1:9464.evil.example:9464"] {
            assert!(!loopback.names_this_server(host), "{host}");
        }
        let everywhere =
            Guard::new("0.0.0.0:9464".parse().unwrap_or_else(|_| unreachable!()), None, AuthScope::Changes);
        assert!(everywhere.names_this_server("herald.internal:9464") && !everywhere.names_this_server("x:1"));
    }
}
