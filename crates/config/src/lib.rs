/*!
herald-config: reading herald's configuration file into the typed sections each feature owns.

The file is TOML. It is parsed first; then `${NAME}` and `${NAME:-default}` inside string
values are replaced by environment variables (so a secret inside a `[[route]]` table stays out
of the file), and `HERALD__SECTION__KEY=…` variables override keys (`HERALD__KAFKA__SASL_PASSWORD`
sets `[kafka] sasl.password`). Every error names the file and, for a bad value, the key
(`route[0].batch.max_events`), so a user knows what to fix.

Two decisions to know:
- **this crate knows no section.** Each feature's crate owns its section's type and validation
  (routes in herald-core, `[admin]` in herald-admin, `[board]` in herald-board, expectations in
  herald-expect, `[kafka]` in herald-kafka); the binary composes them into one file type and
  calls [`load`] with it and its validation.
- **config is data, and secrets stay secret.** A variable's text becomes exactly one string
  value, never syntax (interpolation runs on the parsed tree, and a line break in a variable is
  refused); no error shows a value that came from the environment or the line a syntax error is
  on; and every secret a loaded file holds is remembered ([`secrets`]) so the binary masks it
  in whatever it prints.
*/
#![deny(missing_docs)]

mod interpolate;
pub mod secrets;
mod syntax;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use interpolate::FromEnv;
pub use secrets::{redact, Secrets};
pub use syntax::SyntaxError;

/// Prefix of environment variables that override the file; `__` separates keys, e.g.
/// `HERALD__KAFKA__SASL_PASSWORD=…` sets `[kafka] sasl.password`.
pub const ENV_PREFIX: &str = "HERALD";

/// Loads `path` into `T` and checks it with `validate`, applying `${…}` interpolation and
/// `HERALD__…` environment overrides. The file is read once, whole. The secrets it holds are
/// remembered for [`redact`], and masked in the error this returns.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    validate: impl FnOnce(&T) -> Result<(), Invalid>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    let overrides = std::env::vars().filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}__"))).collect();
    load_text(&text, path, &|name| std::env::var(name).ok(), overrides, validate)
}

/// [`load`] for a file that may be being written right now (a reload on SIGHUP while an editor
/// or a config-management tool rewrites it in place): the file is read until two reads
/// `settle` apart agree, so a half-written file that happens to parse (the first of two routes)
/// is not taken for the whole; after `patience` without two equal reads, it is refused.
pub fn load_settled<T: DeserializeOwned>(
    path: &Path,
    settle: std::time::Duration,
    patience: std::time::Duration,
    validate: impl FnOnce(&T) -> Result<(), Invalid>,
) -> Result<T, ConfigError> {
    let read = || std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source });
    let deadline = std::time::Instant::now() + patience;
    let mut text = read()?;
    loop {
        std::thread::sleep(settle);
        let again = read()?;
        if again == text {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(ConfigError::invalid(
                path,
                "(file)",
                format!("the file kept changing for {patience:?}: it is still being written; reload again once it is"),
            ));
        }
        text = again;
    }
    let overrides = std::env::vars().filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}__"))).collect();
    load_text(&text, path, &|name| std::env::var(name).ok(), overrides, validate)
}

/// [`load`] over `text` as if read from `origin`, with `lookup` for `${NAME}` and `overrides`
/// as the `HERALD__…` variables.
fn load_text<T: DeserializeOwned>(
    text: &str,
    origin: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    overrides: BTreeMap<String, String>,
    validate: impl FnOnce(&T) -> Result<(), Invalid>,
) -> Result<T, ConfigError> {
    let table = syntax::parse(text).map_err(|error| ConfigError::Syntax { path: origin.to_owned(), error })?;
    let mut tree = toml::Value::Table(table);
    let mut from_env = Vec::new();
    interpolate::interpolate_tree(&mut tree, "", lookup, &mut from_env)
        .map_err(|invalid| ConfigError::in_file(origin, invalid))?;
    for (variable, value) in &overrides {
        let key = override_key(variable);
        interpolate::check_one_value(&key, variable, value).map_err(|invalid| ConfigError::in_file(origin, invalid))?;
        from_env.push(FromEnv { key, variables: vec![variable.clone()], values: vec![value.clone()] });
    }
    let mut secrets = Secrets::default();
    collect_secrets(&tree, "", &mut secrets);
    for from in from_env.iter().filter(|from| from.variables.iter().any(|name| name.starts_with(ENV_PREFIX))) {
        for value in &from.values {
            secrets.add_value(&from.key, value);
        }
    }
    secrets::remember(&secrets);
    let hide = |err: ConfigError| hide_values(err, &from_env, &secrets);
    // The tree, written back as TOML, is what the config crate reads: every string in it is
    // quoted and escaped by the writer, so no value can become syntax.
    let written = toml::to_string(&tree)
        .map_err(|err| ConfigError::invalid(origin, "(top level)", format!("cannot write the file back: {err}")))?;
    let environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .source(Some(overrides.into_iter().collect()));
    let raw = config::Config::builder()
        .add_source(config::File::from_str(&written, config::FileFormat::Toml))
        .add_source(environment)
        .build()
        .map_err(|err| hide(ConfigError::invalid(origin, "(top level)", err.to_string())))?;
    let value: T = from_raw(raw, origin).map_err(hide)?;
    validate(&value).map_err(|invalid| hide(ConfigError::in_file(origin, invalid)))?;
    Ok(value)
}

/// The key a `HERALD__SECTION__KEY` variable overrides, as errors name it: `section.key`.
fn override_key(variable: &str) -> String {
    let rest = variable.strip_prefix(ENV_PREFIX).unwrap_or(variable).trim_start_matches('_');
    rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".")
}

/// Adds every secret under `value` (at `key`) to `secrets`.
fn collect_secrets(value: &toml::Value, key: &str, secrets: &mut Secrets) {
    match value {
        toml::Value::String(text) => secrets.add_value(key, text),
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_secrets(item, &format!("{key}[{i}]"), secrets);
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table {
                collect_secrets(item, &interpolate::join(key, name), secrets);
            }
        }
        _ => {}
    }
}

/// An error about a value: the secrets masked, and a value that came from the environment
/// neither shown nor quoted but named by its variable.
fn hide_values(err: ConfigError, from_env: &[FromEnv], secrets: &Secrets) -> ConfigError {
    let ConfigError::Invalid { path, key, mut message } = err else { return err };
    for from in from_env.iter().filter(|from| key == from.key || key.starts_with(&format!("{}.", from.key))) {
        for value in from.values.iter().filter(|value| !value.is_empty()) {
            for (open, close) in [("\"", "\""), ("`", "`"), ("'", "'")] {
                message = message.replace(&format!("{open}{value}{close}"), &format!("{open}{}{close}", secrets::MASK));
            }
        }
        let variables: Vec<String> = from.variables.iter().map(|name| format!("`{name}`")).collect();
        message.push_str(&format!(" (the value comes from environment variable {}, not shown)", variables.join(", ")));
    }
    let message = secrets.redact(&message).into_owned();
    ConfigError::Invalid { path, key, message }
}

/// Parses configuration text into `T`, as if it had been read from `origin`: no environment
/// (neither `${…}` nor overrides), no validation.
pub fn from_toml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    let table = syntax::parse(text).map_err(|error| ConfigError::Syntax { path: origin.to_owned(), error })?;
    let written = toml::to_string(&table)
        .map_err(|err| ConfigError::invalid(origin, "(top level)", format!("cannot write the file back: {err}")))?;
    let raw = config::Config::builder()
        .add_source(config::File::from_str(&written, config::FileFormat::Toml))
        .build()
        .map_err(|err| ConfigError::invalid(origin, "(top level)", err.to_string()))?;
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
    /// The file is not TOML: where, and what the parser expected (never the line's text, which
    /// may hold a secret).
    #[error("{}: not valid TOML at {error}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where and what.
        error: SyntaxError,
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
    fn a_file_caught_mid_write_is_read_again_until_it_settles() {
        let path = std::env::temp_dir().join(format!("herald-settled-{}.toml", std::process::id()));
        std::fs::write(&path, "[section]\ncount = 1\n").unwrap();
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                // An editor writing in place: the file changes every 20 ms for 300 ms.
                for count in 2..=16 {
                    std::fs::write(&path, format!("[section]\ncount = {count}\n")).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(10));
        let settle = Duration::from_millis(100);
        let loaded: File = load_settled(&path, settle, Duration::from_secs(5), |_| Ok(())).unwrap();
        writer.join().unwrap();
        assert_eq!(loaded.section.count, 16, "the settled content, not a snapshot mid-write");
        // A file that never settles is refused.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, stop) = (path.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut count = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    count += 1;
                    std::fs::write(&path, format!("[section]\ncount = {count}\n")).unwrap();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let refused = load_settled::<File>(&path, Duration::from_millis(50), Duration::from_millis(300), |_| Ok(()));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(refused.unwrap_err().to_string().contains("still being written"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn not_toml_is_a_syntax_error_naming_the_file_and_line() {
        let err = load("a = 1\nthis is = = not toml").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }));
        let shown = err.to_string();
        assert!(shown.starts_with("test.toml: not valid TOML at line 2"), "{shown}");
    }

    /// A file with `[admin] token` and routes, as the injection cases need.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Injectable {
        #[serde(default)]
        admin: Admin,
        #[serde(default)]
        route: Vec<InjectedRoute>,
        #[serde(default)]
        section: Section,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Admin {
        token: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct InjectedRoute {
        name: String,
        url: Option<String>,
    }

    fn with_env(
        text: &str,
        vars: &[(&str, &str)],
        validate: impl FnOnce(&Injectable) -> Result<(), Invalid>,
    ) -> Result<Injectable, ConfigError> {
        let lookup = |name: &str| vars.iter().find(|(var, _)| *var == name).map(|(_, value)| (*value).to_owned());
        let overrides = vars
            .iter()
            .filter(|(name, _)| name.starts_with("HERALD__"))
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        load_text(text, Path::new("test.toml"), &lookup, overrides, validate)
    }

    const FILE: &str = "[admin]\ntoken = \"${ADMIN_TOKEN}\"\n\n[[route]]\nname = \"a\"\n";

    #[test]
    fn a_variable_is_always_exactly_one_string_value() {
        // What an attacker who holds one variable would write, and what ordinary secrets hold.
        for value in [
            "x\" \n[[route]]\nname = \"evil\"\nurl = \"exec\"",
            "x\"\n[[route]]\nname = \"evil\"",
            "pa\"ss",
            "back\\slash",
            "tab\\tnot-a-tab",
            "hash # not a comment",
            "[[route]]",
            "${OTHER}",
            "$${OTHER}",
            "quote' and \"double\" ''' \"\"\"",
            "ünïcödé ☃",
        ] {
            let loaded = with_env(FILE, &[("ADMIN_TOKEN", value), ("OTHER", "other")], |_| Ok(()));
            if value.contains('\n') {
                let err = loaded.unwrap_err().to_string();
                assert!(err.contains("`admin.token`") && err.contains("`ADMIN_TOKEN`"), "{err}");
                assert!(!err.contains("evil"), "the value is not shown: {err}");
                continue;
            }
            let loaded = loaded.unwrap();
            assert_eq!(loaded.admin.token.as_deref(), Some(value), "taken as it is, character for character");
            let names: Vec<&str> = loaded.route.iter().map(|route| route.name.as_str()).collect();
            assert_eq!(names, ["a"], "{value:?} added a route");
        }
    }

    #[test]
    fn overrides_are_one_value_too_and_cannot_hold_line_breaks() {
        let loaded = with_env(FILE, &[("ADMIN_TOKEN", "t"), ("HERALD__SECTION__COUNT", "7")], |_| Ok(())).unwrap();
        assert_eq!(loaded.section.count, 7);
        let err = with_env(FILE, &[("ADMIN_TOKEN", "t"), ("HERALD__ADMIN__TOKEN", "a\nb")], |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`admin.token`") && err.contains("HERALD__ADMIN__TOKEN"), "{err}");
    }

    #[test]
    fn a_quoted_variable_can_fill_a_number_and_comments_are_not_values() {
        let text = "# ${NOT_SET} in a comment is text\n[section]\ncount = \"${COUNT}\" # ${NOT_SET_EITHER}\n";
        let loaded = with_env(text, &[("COUNT", "12")], |_| Ok(())).unwrap();
        assert_eq!(loaded.section.count, 12);
    }

    #[test]
    fn no_error_shows_a_secret_or_a_value_from_the_environment() {
        const SECRET: &str = "S3cretPW-planted";
        let url = format!("postgres://herald:{SECRET}@db:5432/x");
        // A syntax error on the line that holds the secret.
        let text = format!("[[route]]\nname = \"a\"\nurl = \"{url}\" x\n");
        let err = with_env(&text, &[], |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("`url`") && !err.contains(SECRET), "{err}");
        // A wrong type whose value came from the environment: the variable is named instead.
        let text = "[section]\ncount = \"${COUNT}\"\n";
        let err = with_env(text, &[("COUNT", SECRET)], |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("`section.count`") && err.contains("`COUNT`") && !err.contains(SECRET), "{err}");
        // A section's validation that quotes the value.
        let text = "[admin]\ntoken = \"${ADMIN_TOKEN}\"\n";
        let quoting = |loaded: &Injectable| {
            Err(Invalid::new("admin.token", format!("`{}` is no token", loaded.admin.token.as_deref().unwrap_or(""))))
        };
        let err = with_env(text, &[("ADMIN_TOKEN", SECRET)], quoting).unwrap_err().to_string();
        assert!(err.contains("`admin.token`") && err.contains("ADMIN_TOKEN") && !err.contains(SECRET), "{err}");
        // A URL's password written in the file, quoted by a validation of another key.
        let text = format!("[[route]]\nname = \"a\"\nurl = \"{url}\"\n");
        let quoting = |loaded: &Injectable| {
            Err(Invalid::new("route[0].name", format!("see {}", loaded.route[0].url.as_deref().unwrap_or(""))))
        };
        let err = with_env(&text, &[], quoting).unwrap_err().to_string();
        assert!(err.contains("postgres://herald:***@db") && !err.contains(SECRET), "{err}");
        // And from now on the process masks it wherever it is printed.
        assert_eq!(redact(&format!("connecting to {url}")), "connecting to postgres://herald:***@db:5432/x");
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
