//! `${NAME}` and `${NAME:-default}` inside string values of the parsed file.
//!
//! Interpolation runs on the value tree, after TOML parsed the file, so whatever a variable
//! holds becomes the text of exactly one string value: quotes, newlines, `[[route]]` or `${…}`
//! in it are characters, never syntax.

use crate::Invalid;

/// A string value that took text from the environment: its key and the variables it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FromEnv {
    /// The key, as errors name it: `admin.token`, `route[0].sink.url`.
    pub key: String,
    /// The variables, as written: `ADMIN_TOKEN`, or `HERALD__ADMIN__TOKEN` for an override.
    pub variables: Vec<String>,
    /// What the variables put into the value (each variable's text, not the whole value).
    pub values: Vec<String>,
}

/// Expands every string value under `value` (whose key is `key`) with `lookup`, recording in
/// `used` which keys took text from which variables.
pub(crate) fn interpolate_tree(
    value: &mut toml::Value,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    used: &mut Vec<FromEnv>,
) -> Result<(), Invalid> {
    match value {
        toml::Value::String(text) => {
            if let Some((expanded, from_env)) = interpolate_value(text, key, lookup)? {
                *text = expanded;
                used.extend(from_env);
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{key}[{i}]"), lookup, used)?;
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table.iter_mut() {
                interpolate_tree(item, &join(key, name), lookup, used)?;
            }
        }
        toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) | toml::Value::Datetime(_) => {}
    }
    Ok(())
}

/// `key.name`, or `name` at the top level.
pub(crate) fn join(key: &str, name: &str) -> String {
    if key.is_empty() {
        name.to_owned()
    } else {
        format!("{key}.{name}")
    }
}

/// One string value expanded, with where its text came from; `None` when it names no variable
/// (and holds no `$${`).
fn interpolate_value(
    text: &str,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, Option<FromEnv>)>, Invalid> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut from_env = FromEnv { key: key.to_owned(), variables: Vec::new(), values: Vec::new() };
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let Some(end) = closing_brace(&rest[start + 2..]).map(|end| end + 2) else {
            return Err(Invalid::new(key, "`${` without a closing `}` (write `$${` for a literal `${`)"));
        };
        let inner = &rest[start + 2..start + end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Invalid::new(key, format!("`${{{inner}}}` is not a variable name")));
        }
        match (lookup(name), default) {
            (Some(value), _) => {
                check_one_value(key, name, &value)?;
                out.push_str(&value);
                from_env.variables.push(name.to_owned());
                from_env.values.push(value);
            }
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(Invalid::new(
                    key,
                    format!("environment variable `{name}` is not set (write `${{{name}:-default}}` for a default)"),
                ))
            }
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    let from_env = (!from_env.variables.is_empty()).then_some(from_env);
    Ok(Some((out, from_env)))
}

/// A variable's text must be something one value can be: a line break or another control
/// character in a URL, token or name is a mistake (or an attempt), never what was meant. PEM
/// keys (`ssl.ca.pem`, `ssl.key.pem`) take line breaks.
pub(crate) fn check_one_value(key: &str, variable: &str, value: &str) -> Result<(), Invalid> {
    let multiline = key.ends_with("pem");
    let bad = value.chars().any(|c| c.is_control() && c != '\t' && !(multiline && (c == '\n' || c == '\r')));
    if bad {
        return Err(Invalid::new(
            key,
            format!(
                "the value of environment variable `{variable}` holds a line break or another control character, \
                 which `{key}` cannot take (the value is not shown)"
            ),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Invalid> {
        Ok(interpolate_value(text, "k", &lookup)?.map_or_else(|| text.to_owned(), |(out, _)| out))
    }

    #[test]
    fn variables_defaults_and_escapes_expand() {
        let lookup = |name: &str| (name == "TOKEN").then(|| "s3cret".to_owned());
        assert_eq!(expand("${TOKEN}", lookup).unwrap(), "s3cret");
        assert_eq!(expand("${MISSING:-fallback}", lookup).unwrap(), "fallback");
        assert_eq!(expand("$${TOKEN}", lookup).unwrap(), "${TOKEN}");
        assert_eq!(expand("a-${TOKEN}-b", lookup).unwrap(), "a-s3cret-b");
        let err = expand("${NOPE}", lookup).unwrap_err();
        assert!(err.key == "k" && err.message.contains("NOPE"), "{err}");
        assert!(expand("${bad name}", lookup).is_err());
        assert!(expand("${UNCLOSED", lookup).is_err());
        // Braces inside a default pair up: a template placeholder stays whole.
        assert_eq!(expand("${MISSING:-http://x/{source}/{stage}}", lookup).unwrap(), "http://x/{source}/{stage}");
        assert_eq!(expand("${TOKEN}{x}", lookup).unwrap(), "s3cret{x}");
        assert!(expand("${MISSING:-{unclosed}", lookup).is_err());
    }

    #[test]
    fn a_variable_s_text_is_never_expanded_again() {
        let lookup = |name: &str| match name {
            "A" => Some("${B}".to_owned()),
            "B" => Some("never".to_owned()),
            _ => None,
        };
        assert_eq!(expand("${A}", lookup).unwrap(), "${B}");
    }

    #[test]
    fn line_breaks_and_control_characters_are_refused_naming_key_and_variable_not_value() {
        for bad in ["a\nb", "a\rb", "a\0b", "x\"\n[[route]]\nname = \"evil\""] {
            let lookup = |_: &str| Some(bad.to_owned());
            let err = interpolate_value("${ADMIN_TOKEN}", "admin.token", &lookup).unwrap_err();
            assert_eq!(err.key, "admin.token");
            assert!(err.message.contains("`ADMIN_TOKEN`") && !err.message.contains(bad), "{err}");
        }
        let pem = |_: &str| Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned());
        assert!(interpolate_value("${CA}", "kafka.ssl.ca.pem", &pem).is_ok());
        let tab = |_: &str| Some("a\tb".to_owned());
        assert_eq!(interpolate_value("${T}", "k", &tab).unwrap().unwrap().0, "a\tb");
    }

    #[test]
    fn the_tree_records_which_key_took_which_variable() {
        let mut value: toml::Value =
            toml::from_str("[admin]\ntoken = \"${T}\"\n[[route]]\nsink = { url = \"p://${U}@${H}\" }\nn = 1").unwrap();
        let lookup = |name: &str| Some(format!("<{name}>"));
        let mut used = Vec::new();
        interpolate_tree(&mut value, "", &lookup, &mut used).unwrap();
        assert_eq!(value["route"][0]["sink"]["url"].as_str(), Some("p://<U>@<H>"));
        let keys: Vec<_> = used.iter().map(|from| (from.key.as_str(), from.variables.join(","))).collect();
        assert_eq!(keys, [("admin.token", "T".to_owned()), ("route[0].sink.url", "U,H".to_owned())]);
    }
}
