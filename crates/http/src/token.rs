//! Bearer tokens (RFC 6750): checking one a config gives, reading one from a file, and telling
//! whether a request carries it without timing telling anything of it.

use std::path::Path;

use axum::http::{header, HeaderMap};
use secrecy::{ExposeSecret, SecretString};

/// A bearer token must be long enough not to be guessed and be one header value: visible ASCII,
/// no spaces (RFC 6750's `b64token`, loosely). The reason never shows the token.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.chars().count() < 16 {
        return Err("a token shorter than 16 characters is guessable".into());
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("a token must be visible ASCII characters without spaces (it is sent in an HTTP header); \
                    the value is not shown"
            .into());
    }
    Ok(())
}

/// Who can reach a server and with what: checked the same for the admin API and the ingest
/// listener. `section` names the config table (`"admin"`, `"ingest"`) in the error.
pub struct Exposure<'a> {
    /// The config table.
    pub section: &'a str,
    /// Where the server listens, if it does.
    pub listen: Option<std::net::SocketAddr>,
    /// Whether `listen` may be reachable from other machines.
    pub allow_remote: bool,
    /// The token, when the config gives it.
    pub token: Option<&'a SecretString>,
    /// Whether the config reads the token from a file instead.
    pub token_file: bool,
}

impl Exposure<'_> {
    /// One token source, a token that [`check_token`] takes, and a `listen` other machines can
    /// reach only with `allow_remote` and a token.
    pub fn check(&self) -> Result<(), herald_config::Invalid> {
        use herald_config::Invalid;
        let section = self.section;
        if self.token.is_some() && self.token_file {
            return Err(Invalid::new(format!("{section}.token"), "give `token` or `token_file`, not both"));
        }
        if let Some(token) = self.token {
            check_token(token.expose_secret().trim()).map_err(|why| Invalid::new(format!("{section}.token"), why))?;
        }
        let Some(listen) = self.listen.filter(|listen| !listen.ip().is_loopback()) else { return Ok(()) };
        if !self.allow_remote {
            return Err(Invalid::new(
                format!("{section}.listen"),
                format!("{listen} is reachable from other machines; set `{section}.allow_remote = true` to mean it"),
            ));
        }
        if self.token.is_none() && !self.token_file {
            return Err(Invalid::new(
                format!("{section}.listen"),
                format!("{listen} is reachable from other machines: set `{section}.token` (or `token_file`) too"),
            ));
        }
        Ok(())
    }
}

/// The token in the first line of `path` (a mounted secret), checked as [`check_token`] does;
/// `setting` names the config key in the error (`admin.token_file`). The token is remembered as
/// a secret, so no error or log line ever shows it.
pub fn read_token_file(path: &Path, setting: &str) -> Result<SecretString, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if let Err(why) = check_token(&token) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} ({setting}): its first line: {why}", path.display()),
        ));
    }
    herald_config::secrets::remember(&{
        let mut secrets = herald_config::Secrets::default();
        secrets.add_plain(&token);
        secrets
    });
    Ok(SecretString::from(token))
}

/// Whether `headers` carry `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC
/// 9110 §11.1). Compared without stopping at the first difference.
pub fn carries_token(headers: &HeaderMap, token: &SecretString) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_credentials)
        .unwrap_or("");
    constant_time_eq(presented.trim().as_bytes(), token.expose_secret().as_bytes())
}

/// The credentials of an `Authorization: Bearer …` value.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
}

/// Compares without stopping at the first difference, so timing tells nothing of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_taken() {
        let token = SecretString::from("0123456789abcdef0123");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            carries_token(&headers, &token)
        };
        assert!(with("Bearer 0123456789abcdef0123") && with("bearer 0123456789abcdef0123"));
        for wrong in ["Bearer 0123456789abcdef012", "Basic 0123456789abcdef0123", "0123456789abcdef0123", "Bearer "] {
            assert!(!with(wrong), "{wrong}");
        }
        assert!(!carries_token(&HeaderMap::new(), &token));
    }

    #[test]
    fn a_server_stays_on_loopback_unless_allowed_and_guarded_with_one_good_token() {
        let token = SecretString::from("0123456789abcdef0123");
        let short = SecretString::from("short");
        let exposure = |listen: &str, allow_remote, token, token_file| Exposure {
            section: "x",
            listen: Some(listen.parse().unwrap()),
            allow_remote,
            token,
            token_file,
        };
        assert!(exposure("127.0.0.1:1", false, None, false).check().is_ok());
        assert!(exposure("0.0.0.0:1", true, Some(&token), false).check().is_ok());
        assert!(exposure("0.0.0.0:1", true, None, true).check().is_ok());
        for (bad, key, says) in [
            (exposure("0.0.0.0:1", false, Some(&token), false), "x.listen", "allow_remote"),
            (exposure("0.0.0.0:1", true, None, false), "x.listen", "x.token"),
            (exposure("127.0.0.1:1", false, Some(&token), true), "x.token", "not both"),
            (exposure("127.0.0.1:1", false, Some(&short), false), "x.token", "shorter than 16"),
        ] {
            let err = bad.check().unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{err}");
        }
    }

    #[test]
    fn a_token_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("herald-http-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = read_token_file(&dir.join("missing"), "x.token_file").unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        let short = dir.join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let err = read_token_file(&short, "x.token_file").unwrap_err().to_string();
        assert!(err.contains("shorter than 16") && err.contains("x.token_file") && !err.contains("tooshort"), "{err}");
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef0123\nsecond line ignored\n").unwrap();
        assert_eq!(read_token_file(&good, "x.token_file").unwrap().expose_secret(), "0123456789abcdef0123");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
