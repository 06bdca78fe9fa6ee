//! `[admin]`: where the admin API listens, checked so it stays on loopback unless told.

use herald_config::Invalid;
use serde::Deserialize;

/// The admin HTTP API: `/metrics`, `/health/live`, `/health/ready`, `/routes`,
/// `POST /routes/{name}/pause|resume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to serve on, e.g. `"127.0.0.1:9464"` (port 0: any free port, logged at start).
    /// Default: no admin API.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// Allow `listen` on an address other machines can reach. Default `false`: the API has no
    /// authentication, so it binds to loopback unless told otherwise.
    #[serde(default)]
    pub allow_remote: bool,
}

impl AdminConfig {
    /// Checks what the types cannot: a `listen` other machines can reach needs `allow_remote`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(listen) = self.listen {
            if !listen.ip().is_loopback() && !self.allow_remote {
                return Err(Invalid::new(
                    "admin.listen",
                    format!("{listen} is reachable from other machines; set `admin.allow_remote = true` to mean it"),
                ));
            }
        }
        Ok(())
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
    fn the_admin_api_stays_on_loopback_unless_allowed() {
        assert!(admin(r#"{"listen": "127.0.0.1:9464"}"#).validate().is_ok());
        let err = admin(r#"{"listen": "0.0.0.0:9464"}"#).validate().unwrap_err().to_string();
        assert!(err.contains("admin.listen") && err.contains("allow_remote"), "{err}");
        assert!(admin(r#"{"listen": "0.0.0.0:9464", "allow_remote": true}"#).validate().is_ok());
    }
}
