//! Producer values shown to people, in a terminal (`herald status`, `herald wait`) or a log
//! line. A value is hostile until shown otherwise: it may carry escape sequences that rewrite
//! the operator's terminal, carriage returns that hide what came before, or a megabyte of text.
//! Shown through [`printable`], control characters (and the bidirectional overrides that
//! reorder a line) are written as escapes and long values are cut, saying by how much.

use std::borrow::Cow;
use std::fmt::Write;

/// How many characters of a value a log line shows.
pub const LOG_CHARS: usize = 256;

/// `value` with control characters escaped (`\n`, `\r`, `\t`, `\u{1b}` …) and cut after
/// `max_chars` characters, with the number of characters left out. Borrowed when nothing needed
/// changing.
pub fn printable(value: &str, max_chars: usize) -> Cow<'_, str> {
    let clean = !value.chars().any(needs_escape);
    let chars = if clean && value.len() <= max_chars { value.len() } else { value.chars().count() };
    if clean && chars <= max_chars {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(max_chars * 2) + 24);
    for c in value.chars().take(max_chars) {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    if chars > max_chars {
        let _ = write!(out, "… ({} more characters)", chars - max_chars);
    }
    Cow::Owned(out)
}

/// JSON text (as `serde_json` writes it) with the characters [`printable`] escapes that JSON
/// leaves raw (DEL, C1 controls, the separators and bidirectional controls) written as `\uXXXX`
/// escapes: still the same JSON, now safe on a terminal. Borrowed when nothing needed changing.
pub fn json(json: &str) -> Cow<'_, str> {
    // JSON's own whitespace (line breaks of pretty output) stays: inside strings JSON escapes it.
    let raw = |c: char| needs_escape(c) && !matches!(c, '\n' | '\r' | '\t');
    if !json.chars().any(raw) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw(c) {
            // All of them are in the Basic Multilingual Plane: one `\u` escape each. A raw one
            // can only stand inside a string in JSON text, where the escape means the same.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Control characters (C0, DEL, C1), the line and paragraph separators, and the
/// bidirectional embeddings, overrides and isolates.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_borrowed() {
        assert!(matches!(printable("OrdersDB é✓", 64), Cow::Borrowed("OrdersDB é✓")));
        assert_eq!(printable("a\u{1b}[2Jb\r\n\t\u{7}\u{0}", 64), "a\\u{1b}[2Jb\\r\\n\\t\\u{7}\\u{0}");
        assert_eq!(printable("x\u{202e}y\u{9b}", 64), "x\\u{202e}y\\u{9b}");
    }

    #[test]
    fn json_keeps_its_meaning_and_loses_its_raw_controls() {
        let value = serde_json::json!({ "source": "a\u{1b}[2J\u{7f}\u{9b}\u{202e}b\n" });
        for text in [serde_json::to_string(&value).unwrap(), serde_json::to_string_pretty(&[&value]).unwrap()] {
            let safe = json(&text);
            assert!(!safe.chars().any(|c| needs_escape(c) && c != '\n'), "{safe}");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&safe).unwrap(),
                serde_json::from_str::<serde_json::Value>(&text).unwrap()
            );
        }
        assert!(matches!(json(r#"{"a":"é✓"}"#), Cow::Borrowed(_)));
    }

    #[test]
    fn long_values_are_cut_saying_how_much() {
        let long = "é".repeat(65_536);
        let shown = printable(&long, 10);
        assert_eq!(shown, format!("{}… (65526 more characters)", "é".repeat(10)));
        assert_eq!(printable("abc", 3), "abc");
        assert_eq!(printable("", 0), "");
    }
}
