/*!
herald-config: reading herald's configuration file into the typed sections each feature owns.

The file is TOML. Before it is parsed, `${NAME}` and `${NAME:-default}` are replaced by
environment variables (so a secret inside a `[[route]]` table stays out of the file), and after,
`HERALD__SECTION__KEY=…` variables override keys (`HERALD__KAFKA__SASL_PASSWORD` sets `[kafka]
sasl.password`). Every error names the file and, for a bad value, the key
(`route[0].batch.max_events`), so a user knows what to fix.

The one decision to know: **this crate knows no section.** Each feature's crate owns its
section's type and validation (routes in herald-core, `[admin]` in herald-admin, `[board]` in
herald-board, expectations in herald-expect, `[kafka]` in herald-kafka); the binary composes
them into one file type and calls [`load`] with it.
*/
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Prefix of environment variables that override the file; `__` separates keys, e.g.
/// `HERALD__KAFKA__SASL_PASSWORD=…` sets `[kafka] sasl.password`.
pub const ENV_PREFIX: &str = "HERALD";

/// Loads `path` into `T`, applying `${…}` interpolation and `HERALD__…` environment overrides.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    let text = interpolate_env(&text, |name| std::env::var(name).ok())
        .map_err(|(line, message)| ConfigError::invalid(path, format!("line {line}"), message))?;
    let raw = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__"))
        .build()
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source: Box::new(source) })?;
    from_raw(raw, path)
}

/// Parses configuration text into `T`, as if it had been read from `origin` (no environment).
pub fn from_toml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    let raw = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .map_err(|source| ConfigError::Read { path: origin.to_owned(), source: Box::new(source) })?;
    from_raw(raw, origin)
}

fn from_raw<T: DeserializeOwned>(raw: config::Config, path: &Path) -> Result<T, ConfigError> {
    let err = match serde_path_to_error::deserialize(raw.clone()) {
        Ok(value) => return Ok(value),
        Err(err) => err,
    };
    let key = err.path().to_string();
    let mut message = err.into_inner().to_string();
    if message.contains("does not have variant constructor") {
        // The config crate's enum error names the Rust type and not the values a user may
        // write; serde's own (through a plain value tree) lists them.
        if let Some(listed) = enum_message::<T>(raw, &key) {
            message = listed;
        }
    }
    if message.contains("expected a duration") {
        message.push_str(" such as \"30s\", \"5m\", \"1h 30m\" or \"2d\" (a string with a unit)");
    }
    Err(ConfigError::invalid(path, display_path(&key), message))
}

/// serde's message for the bad enum value at `key`: `unknown variant `x`, expected `a` or `b``.
fn enum_message<T: DeserializeOwned>(raw: config::Config, key: &str) -> Option<String> {
    let tree: serde_json::Value = raw.try_deserialize().ok()?;
    match serde_path_to_error::deserialize::<_, T>(tree) {
        Err(err) if err.path().to_string() == key && err.inner().to_string().contains("variant") => {
            Some(err.into_inner().to_string())
        }
        _ => None,
    }
}

/// Replaces `${NAME}` / `${NAME:-default}` with `lookup(NAME)`; `$${` stands for a literal `${`;
/// lines that are comments are left alone.
/// Errors carry the 1-based line.
fn interpolate_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (number, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            // A comment may show the syntax (`# ${NAME:-default} is replaced…`): left as it is.
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            if rest[..start].ends_with('$') {
                out.push_str(&rest[..start - 1]);
                out.push_str("${");
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let Some(end) = closing_brace(&rest[start + 2..]).map(|end| end + 2) else {
                return Err((number + 1, "`${` without a closing `}`".into()));
            };
            let inner = &rest[start + 2..start + end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((number + 1, format!("`${{{inner}}}` is not a variable name")));
            }
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err((
                        number + 1,
                        format!(
                            "environment variable `{name}` is not set (write `${{{name}:-default}}` for a default)"
                        ),
                    ))
                }
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Where the `}` that closes a `${` lies in `text` (what follows the `${`): braces inside a
/// default pair up, so `${URL:-http://x/{source}}` closes after `{source}`.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0_usize;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(at),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// serde_path_to_error writes `route[0].sink` as `route[0].sink`, and `.` for the root.
fn display_path(path: &str) -> String {
    if path == "." || path.is_empty() {
        "(top level)".into()
    } else {
        path.to_owned()
    }
}

/// Why a configuration cannot be used. Every variant names the file; `Invalid` also the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the config crate reported (boxed: it is large, and errors travel by value).
        #[source]
        source: Box<config::ConfigError>,
    },
    /// A key has a wrong, missing or unknown value.
    #[error("{}: `{key}`: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `route[0].batch.max_events`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// A bad value of `key` in `path`.
    pub fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { path: path.to_owned(), key: key.into(), message: message.into() }
    }

    /// What a section's validation found, in `path`.
    pub fn in_file(path: &Path, invalid: Invalid) -> Self {
        ConfigError::Invalid { path: path.to_owned(), key: invalid.key, message: invalid.message }
    }
}

/// A value the types accept but a section's validation does not: its key in the file (e.g.
/// `route[0].batch.max_events`) and what is wrong. Each feature's crate validates its own
/// section and answers with this; the binary adds the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct Invalid {
    /// The key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    /// `key` is wrong: `message`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        section: Section,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[serde(default)]
        count: u32,
        #[serde(default, with = "humantime_serde")]
        every: Option<Duration>,
    }

    fn load(text: &str) -> Result<File, ConfigError> {
        from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_durations_name_the_file_and_key() {
        let unknown = load("[section]\ncolour = 1").unwrap_err().to_string();
        assert!(unknown.starts_with("test.toml: `section.colour`: unknown field"), "{unknown}");
        let wrong = load("[section]\ncount = \"many\"").unwrap_err().to_string();
        assert!(wrong.contains("`section.count`"), "{wrong}");
        let duration = load("[section]\nevery = \"soon\"").unwrap_err().to_string();
        assert!(duration.contains("`section.every`"), "{duration}");
        let section = load("[section]\ncount = 2\nevery = \"5s\"").unwrap().section;
        assert_eq!((section.count, section.every), (2, Some(Duration::from_secs(5))));
    }

    #[test]
    fn not_toml_is_a_read_error_naming_the_file() {
        let err = load("this is = = not toml").unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("test.toml"));
    }

    #[test]
    fn environment_variables_are_interpolated_with_defaults_and_escapes() {
        let lookup = |name: &str| (name == "TOKEN").then(|| "s3cret".to_owned());
        let text = "a = \"${TOKEN}\"\nb = \"${MISSING:-fallback}\"\nc = \"$${TOKEN}\"\n";
        assert_eq!(interpolate_env(text, lookup).unwrap(), "a = \"s3cret\"\nb = \"fallback\"\nc = \"${TOKEN}\"\n");
        let (line, message) = interpolate_env("x = 1\ny = \"${NOPE}\"", lookup).unwrap_err();
        assert_eq!(line, 2);
        assert!(message.contains("NOPE"), "{message}");
        assert!(interpolate_env("${bad name}", lookup).is_err());
        assert!(interpolate_env("${UNCLOSED", lookup).is_err());
        // Braces inside a default pair up: a template placeholder stays whole.
        let text = "url = \"${MISSING:-http://x/{source}/{stage}}\"\nn = \"${TOKEN}{x}\"";
        assert_eq!(interpolate_env(text, lookup).unwrap(), "url = \"http://x/{source}/{stage}\"\nn = \"s3cret{x}\"");
        assert!(interpolate_env("${MISSING:-{unclosed}", lookup).is_err());
        assert_eq!(interpolate_env("  # write ${NAME}\n", lookup).unwrap(), "  # write ${NAME}\n");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WithEnum {
        #[serde(default)]
        route: Vec<Route>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Route {
        start_from: Start,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Start {
        Earliest,
        Latest,
    }

    #[test]
    fn enum_and_duration_errors_list_what_may_be_written() {
        let good = from_toml::<WithEnum>("[[route]]\nstart_from = \"latest\"", Path::new("t.toml")).unwrap();
        assert!(matches!(good.route[..], [Route { start_from: Start::Latest }]));
        let err = from_toml::<WithEnum>("[[route]]\nstart_from = \"beginning\"", Path::new("t.toml")).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("route[0].start_from") && err.contains("`earliest`") && err.contains("`latest`"), "{err}");
        assert!(!err.contains("variant constructor") && !err.contains("Start"), "{err}");
        let err = load("[section]\nevery = 30").unwrap_err().to_string();
        assert!(err.contains("`section.every`") && err.contains("\"30s\""), "{err}");
    }
}
