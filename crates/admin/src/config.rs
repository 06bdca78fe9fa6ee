//! `[admin]`: where the admin API listens, who may change things through it, and how much of
//! herald it may take.

use std::path::PathBuf;
use std::time::Duration;

use herald_config::Invalid;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The admin HTTP API: `/metrics`, `/health/live`, `/health/ready`, `/routes`, `/sources`,
/// `POST /routes/{name}/pause|resume`, and the board.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to serve on, e.g. `"127.0.0.1:9464"` (port 0: any free port, logged at start).
    /// Default: no admin API.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// Allow `listen` on an address other machines can reach. Default `false`. Needs a token.
    #[serde(default)]
    pub allow_remote: bool,
    /// A bearer token: requests that change something (`POST`) must carry `Authorization:
    /// Bearer <token>`, and with `auth = "all"` every request must. E.g. `"${HERALD_ADMIN_TOKEN}"`.
    /// Never printed. Default: none (changes are still refused to other origins).
    #[serde(default)]
    pub token: Option<SecretString>,
    /// The token read from a file (its first line), e.g. a mounted secret; instead of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Which requests need the token: `"changes"` (default: `POST`s) or `"all"` (then
    /// Prometheus needs `authorization` in its scrape config, and the board page cannot be
    /// opened in a browser).
    #[serde(default)]
    pub auth: AuthScope,
    /// Most connections open at once; at the cap a new connection closes the oldest, so idle or
    /// slow clients cannot take the file descriptors herald's sinks need and a health probe is
    /// still answered. Default `64`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most live board streams (`/board/events`) at once, and as many route taps
    /// (`/routes/{name}/tap`); more get `503`. Default `16`.
    #[serde(default = "default_max_event_streams")]
    pub max_event_streams: usize,
    /// Longest a client may take to send a request's headers. Default `"10s"`.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection that neither sends nor takes a byte for this long is closed (a live board
    /// stream sends a keep-alive every 15 s, so only a client that stopped reading is). Default
    /// `"60s"`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

/// Every setting compared, the token by value (it prints redacted): a reload tells a changed
/// token alone from no change.
impl PartialEq for AdminConfig {
    fn eq(&self, other: &Self) -> bool {
        self.listen == other.listen
            && self.allow_remote == other.allow_remote
            && self.same_token(other)
            && self.token_file == other.token_file
            && self.auth == other.auth
            && self.max_connections == other.max_connections
            && self.max_event_streams == other.max_event_streams
            && self.header_timeout == other.header_timeout
            && self.idle_timeout == other.idle_timeout
    }
}

/// Which requests need the token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScope {
    /// Requests that change something: pause, resume, reload.
    #[default]
    Changes,
    /// Every request.
    All,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: None,
            allow_remote: false,
            token: None,
            token_file: None,
            auth: AuthScope::default(),
            max_connections: default_max_connections(),
            max_event_streams: default_max_event_streams(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_max_connections() -> usize {
    64
}

fn default_max_event_streams() -> usize {
    16
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

impl AdminConfig {
    /// Checks what the types cannot: a `listen` other machines can reach needs `allow_remote`
    /// and a token; one token source; limits above zero.
    pub fn validate(&self) -> Result<(), Invalid> {
        herald_http::Exposure {
            section: "admin",
            listen: self.listen,
            allow_remote: self.allow_remote,
            token: self.token.as_ref(),
            token_file: self.token_file.is_some(),
        }
        .check()?;
        let has_token = self.token.is_some() || self.token_file.is_some();
        if self.auth == AuthScope::All && !has_token {
            return Err(Invalid::new("admin.auth", "\"all\" needs `token` or `token_file`"));
        }
        if self.max_connections == 0 || self.max_event_streams == 0 {
            return Err(Invalid::new("admin", "`max_connections` and `max_event_streams` must be at least 1"));
        }
        if self.header_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(Invalid::new("admin", "`header_timeout` and `idle_timeout` must be greater than zero"));
        }
        Ok(())
    }

    /// Whether `other` holds the same `token` (compared by value: it prints redacted).
    fn same_token(&self, other: &AdminConfig) -> bool {
        let token = |admin: &AdminConfig| admin.token.as_ref().map(|token| token.expose_secret().to_owned());
        token(self) == token(other)
    }

    /// The token, read from `token_file` when that is where it is, checked as `token` is. `herald
    /// run` and `herald check` both call this, so `check` passes only what `run` takes.
    pub fn resolve_token(&self) -> Result<Option<SecretString>, std::io::Error> {
        if let Some(path) = &self.token_file {
            return herald_http::read_token_file(path, "admin.token_file").map(Some);
        }
        Ok(self.token.as_ref().map(|token| SecretString::from(token.expose_secret().trim().to_owned())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn admin(text: &str) -> AdminConfig {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_admin_api_stays_on_loopback_unless_allowed_and_guarded() {
        assert!(admin(r#"{"listen": "127.0.0.1:9464"}"#).validate().is_ok());
        let err = admin(r#"{"listen": "0.0.0.0:9464"}"#).validate().unwrap_err().to_string();
        assert!(err.contains("admin.listen") && err.contains("allow_remote"), "{err}");
        let err = admin(r#"{"listen": "0.0.0.0:9464", "allow_remote": true}"#).validate().unwrap_err().to_string();
        assert!(err.contains("admin.token"), "{err}");
        let remote = r#"{"listen": "0.0.0.0:9464", "allow_remote": true, "token": "0123456789abcdef0123"}"#;
        assert!(admin(remote).validate().is_ok());
    }

    #[test]
    fn tokens_and_limits_are_checked() {
        for bad in [
            r#"{"token": "short"}"#,
            r#"{"token": "0123456789abcdef\n[[route]]"}"#,
            r#"{"token": "0123456789 abcdef0123"}"#,
            r#"{"token": "0123456789abcdef0123", "token_file": "/x"}"#,
            r#"{"auth": "all"}"#,
            r#"{"max_connections": 0}"#,
            r#"{"idle_timeout": "0s"}"#,
        ] {
            assert!(admin(bad).validate().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<AdminConfig>(r#"{"auth": "some"}"#).is_err());
    }

    #[test]
    fn a_token_file_is_read_and_checked_as_the_token_is() {
        let path = std::env::temp_dir().join(format!("herald-admin-token-{}", std::process::id()));
        std::fs::write(&path, "tooshort\n").unwrap();
        let admin = AdminConfig { token_file: Some(path.clone()), ..AdminConfig::default() };
        let err = admin.resolve_token().unwrap_err().to_string();
        assert!(err.contains("admin.token_file") && err.contains("shorter than 16"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
