//! Which values of a config are secret, and masking them wherever text leaves herald.
//!
//! A value is secret when its key says so (`password`, `token`, `secret`, `authorization`, …),
//! and a URL's password is secret wherever the URL is. Loading a config remembers its secrets
//! for the whole process, so the binary can mask them in every log line ([`redact`] behind its
//! log writer), in `check`'s output and in the admin API's answers, whatever library wrote the
//! text. Values shorter than [`MIN_MASKED_LEN`] are not masked outside URLs: masking `test`
//! would garble every line that holds the word.

use std::borrow::Cow;
use std::sync::{PoisonError, RwLock};

/// What a masked secret is shown as.
pub const MASK: &str = "***";

/// The shortest secret masked wherever it appears (a URL's password is masked at any length,
/// where it stands between `:` and `@`).
pub const MIN_MASKED_LEN: usize = 6;

/// Parts of a key's name that make its value a secret.
const SECRET_KEY_PARTS: [&str; 10] = [
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "authorization",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
];

/// Every secret of every config this process loaded.
static REMEMBERED: RwLock<Secrets> = RwLock::new(Secrets { plain: Vec::new(), url_passwords: Vec::new() });

/// A set of secret strings and how each is found in text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Secrets {
    /// Masked wherever they appear.
    plain: Vec<String>,
    /// Masked where they stand as a URL's password: `:{password}@`.
    url_passwords: Vec<String>,
}

impl Secrets {
    /// Adds the secrets a value at `key` holds: all of it when the key names a secret, else the
    /// password of a URL in it.
    pub fn add_value(&mut self, key: &str, value: &str) {
        if is_secret_key(key) {
            self.add_plain(value);
        }
        if let Some(password) = url_password(value) {
            if !password.is_empty() && !self.url_passwords.iter().any(|known| known == password) {
                self.url_passwords.push(password.to_owned());
            }
        }
    }

    /// Adds a value that is secret wherever it appears.
    pub fn add_plain(&mut self, value: &str) {
        let value = value.trim();
        if value.chars().count() >= MIN_MASKED_LEN && !self.plain.iter().any(|known| known == value) {
            self.plain.push(value.to_owned());
        }
    }

    /// Adds every secret of `other`.
    pub fn extend(&mut self, other: &Secrets) {
        for value in &other.plain {
            if !self.plain.contains(value) {
                self.plain.push(value.clone());
            }
        }
        for value in &other.url_passwords {
            if !self.url_passwords.contains(value) {
                self.url_passwords.push(value.clone());
            }
        }
    }

    /// `text` with every secret masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        // Longest first, so a secret that contains another is masked whole.
        let mut plain: Vec<&String> = self.plain.iter().collect();
        plain.sort_by_key(|value| std::cmp::Reverse(value.len()));
        for value in plain {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), MASK));
            }
        }
        for password in &self.url_passwords {
            let written = format!(":{password}@");
            if out.contains(&written) {
                out = Cow::Owned(out.replace(&written, &format!(":{MASK}@")));
            }
        }
        out
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.url_passwords.is_empty()
    }
}

/// Whether the value of `key` (`kafka.sasl.password`, `route[0].sink.headers.Authorization`)
/// is a secret by its name.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part)) || key.ends_with("key.pem") || key.ends_with("jaas.config")
}

/// The password of a URL (`scheme://user:password@host…`) in `value`, as written.
fn url_password(value: &str) -> Option<&str> {
    let after_scheme = &value[value.find("://")? + 3..];
    let authority_end = after_scheme.find(['/', '?', '#']).unwrap_or(after_scheme.len());
    let authority = &after_scheme[..authority_end];
    let userinfo = &authority[..authority.rfind('@')?];
    Some(&userinfo[userinfo.find(':')? + 1..])
}

/// Remembers `secrets` for the rest of the process: [`redact`] masks them from now on.
pub fn remember(secrets: &Secrets) {
    if secrets.is_empty() {
        return;
    }
    REMEMBERED.write().unwrap_or_else(PoisonError::into_inner).extend(secrets);
}

/// `text` with every secret of every config this process loaded masked. Cheap when there is
/// none.
pub fn redact(text: &str) -> Cow<'_, str> {
    let remembered = REMEMBERED.read().unwrap_or_else(PoisonError::into_inner);
    if remembered.is_empty() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(remembered.redact(text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_name_secrets_are_secret() {
        for key in [
            "admin.token",
            "kafka.sasl.password",
            "kafka.ssl.key.password",
            "kafka.ssl.key.pem",
            "route[0].sink.hmac_secret",
            "route[2].sink.secret_access_key",
            "route[0].sink.headers.Authorization",
            "kafka.sasl.oauthbearer.client.secret",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["route[0].sink.key", "route[0].sink.url", "kafka.bootstrap.servers", "admin.listen"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn url_passwords_are_found_as_written() {
        assert_eq!(url_password("postgres://herald:S3cret@127.0.0.1:5432/db"), Some("S3cret"));
        assert_eq!(url_password("redis://:p%40ss@host:6379"), Some("p%40ss"));
        assert_eq!(url_password("postgres://user@host/db"), None);
        assert_eq!(url_password("http://host/path?u=a:b@c"), None);
        assert_eq!(url_password("not a url"), None);
    }

    #[test]
    fn redaction_masks_secrets_and_url_passwords_only() {
        let mut secrets = Secrets::default();
        secrets.add_value("admin.token", "a-long-admin-token");
        secrets.add_value("route[0].sink.url", "postgres://herald:herald@127.0.0.1/herald");
        secrets.add_value("route[1].sink.access_key_id", "test");
        let text = "token a-long-admin-token; url postgres://herald:herald@127.0.0.1/herald; topic herald-test-1";
        assert_eq!(
            secrets.redact(text),
            "token ***; url postgres://herald:***@127.0.0.1/herald; topic herald-test-1",
            "short values are not masked outside URLs, and a URL's user stays"
        );
        assert!(matches!(secrets.redact("nothing here"), Cow::Borrowed(_)));
    }
}
