//! Named connections: every herald connection says whose it is.

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

use crate::error::PgError;

/// `herald/<role>`, as `pg_stat_activity.application_name` shows it (Postgres keeps 63 bytes).
pub fn application_name(role: &str) -> String {
    let mut name = format!("herald/{role}");
    if name.len() > 63 {
        let mut end = 63;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// Options for `url`, named `herald/<role>` (a route's or a source's name). The URL is never
/// shown in errors: it may hold a password.
pub fn connect_options(url: &SecretString, role: &str) -> Result<PgConnectOptions, PgError> {
    let options: PgConnectOptions = url.expose_secret().parse().map_err(PgError::Url)?;
    Ok(options.application_name(&application_name(role)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_names_fit_postgres() {
        assert_eq!(application_name("status-table"), "herald/status-table");
        let long = application_name(&"é".repeat(60));
        assert!(long.len() <= 63 && long.starts_with("herald/"));
    }

    #[test]
    fn a_bad_url_does_not_echo_its_password() {
        let err = connect_options(&SecretString::from("postgres://u:s3cret@host:notaport/db"), "r").unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
    }
}
