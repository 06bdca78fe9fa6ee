//! Parsing the file as TOML, with errors that say where and what but never show the line: the
//! line may hold a password (`url = "postgres://herald:…@…" x`).

/// Where a syntax error is and what it is, without the text around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The key written on that line, when the line is `key = …`.
    pub key: Option<String>,
    /// What the TOML parser expected or found.
    pub message: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, " (in the line of `{key}`, whose value is not shown)")?;
        }
        write!(f, ": {}", self.message.trim_end())
    }
}

/// Parses `text` as a TOML document.
pub(crate) fn parse(text: &str) -> Result<toml::Table, SyntaxError> {
    text.parse::<toml::Table>().map_err(|err| {
        let at = err.span().map_or(0, |span| span.start).min(text.len());
        let before = text.get(..at).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let column = before[line_start..].chars().count() + 1;
        let line_text = text[line_start..].lines().next().unwrap_or("");
        SyntaxError { line, column, key: key_of(line_text), message: err.message().to_owned() }
    })
}

/// The key of a `key = value` line (bare, dotted or quoted), if the line is one.
fn key_of(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let plausible = !key.is_empty()
        && key.len() <= 100
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | ' '));
    plausible.then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_error_names_line_column_and_key_but_never_shows_the_value() {
        let text = "[[route]]\nname = \"a\"\n\n[route.sink]\nurl = \"postgres://herald:S3cretPW@db/x\" x\n";
        let err = parse(text).unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (5, Some("url")));
        let shown = err.to_string();
        assert!(shown.starts_with("line 5, column ") && shown.contains("`url`"), "{shown}");
        assert!(!shown.contains("S3cretPW") && !shown.contains("postgres://"), "{shown}");
    }

    #[test]
    fn a_line_that_is_no_assignment_names_no_key() {
        let err = parse("a = 1\n[[[route]]\n").unwrap_err();
        assert_eq!((err.line, err.key), (2, None));
        assert!(parse("").unwrap().is_empty());
    }
}
