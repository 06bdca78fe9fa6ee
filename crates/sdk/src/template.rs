//! Templates over event fields, for channel names, keys, topics and subjects:
//! `"pipeline.{source}.{stage}"`. `{{` and `}}` stand for literal braces.
//!
//! A value comes from a producer and is hostile until shown otherwise, so it is encoded for
//! where it goes ([`Escaping`]), never interpreted: in a URL every value is one percent-encoded
//! component (it cannot add a path segment or a parameter), and in a key or channel name the
//! characters the template itself uses as delimiters are percent-encoded in values, so two
//! different events can never share a key.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::sink::EventFields;

/// A parsed template. Parsing checks the syntax, so a bad template is a config error.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

impl Template {
    /// Parses `text`; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|&(_, next)| next == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|&(_, next)| next == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' => {
                                name.push(c)
                            }
                            Some((_, c)) => {
                                return Err(TemplateError::new(text, format!("`{c}` in the field name at {at}")))
                            }
                            None => return Err(TemplateError::new(text, format!("`{{` at {at} is never closed"))),
                        }
                    }
                    if name.is_empty() {
                        return Err(TemplateError::new(text, format!("empty `{{}}` at {at}")));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => return Err(TemplateError::new(text, format!("lone `}}` at {at} (write `}}}}`)"))),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { source: text.to_owned(), parts })
    }

    /// The template `{name}`: one field's value, built without parsing (for defaults).
    pub(crate) fn of_field(name: &str) -> Self {
        Self { source: format!("{{{name}}}"), parts: vec![Part::Field(name.to_owned())] }
    }

    /// Fills the template from `event`: a [`crate::StageEvent`], or a record's
    /// [`crate::LazyEvent`], which reads the known fields without parsing. Values are written as
    /// they are; see [`Template::render_with`] for values placed in URLs and keys. The error
    /// names the first field the event lacks.
    pub fn render(&self, event: &(impl EventFields + ?Sized)) -> Result<String, RenderError> {
        self.render_with(event, &Escaping::NONE)
    }

    /// Fills the template from `event`, each value encoded as `escaping` says. The error names
    /// the first field the event lacks, or a value that cannot be placed.
    pub fn render_with(&self, event: &(impl EventFields + ?Sized), escaping: &Escaping) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(name) => match event.field(name) {
                    Some(value) => escaping.push(&mut out, &value).map_err(|reason| RenderError::Unplaceable {
                        field: name.clone(),
                        template: self.source.clone(),
                        reason,
                    })?,
                    None => {
                        return Err(RenderError::Missing(MissingField {
                            field: name.clone(),
                            template: self.source.clone(),
                        }))
                    }
                },
            }
        }
        Ok(out)
    }

    /// The escaping for this template used as a key or a channel name: in values, `%`, control
    /// characters, the ASCII punctuation the template's own text uses (`:` in
    /// `pipeline:status:{source}:{stage}`) and the characters of `also` are percent-encoded.
    /// Two events then render the same key only if their values are the same. Refused when two
    /// fields are not separated by such punctuation (`{source}{stage}`, `{source}x{stage}`),
    /// which no encoding could tell apart.
    pub fn key_escaping(&self, also: &str) -> Result<Escaping, TemplateError> {
        let mut reserved = [false; 128];
        reserved[usize::from(b'%')] = true;
        for c in also.chars().filter(char::is_ascii) {
            reserved[c as usize] = true;
        }
        let mut previous_field: Option<&str> = None;
        for part in &self.parts {
            match part {
                Part::Literal(text) => {
                    for c in text.chars().filter(|c| c.is_ascii_punctuation() || *c == ' ') {
                        reserved[c as usize] = true;
                    }
                    if text.chars().any(|c| (c.is_ascii_punctuation() || c == ' ') && c != '%') {
                        previous_field = None;
                    }
                }
                Part::Field(name) => {
                    if let Some(previous) = previous_field {
                        return Err(TemplateError::new(
                            &self.source,
                            format!(
                                "`{{{previous}}}` and `{{{name}}}` need a delimiter between them, such as `:`, \
                                 or two events could share a key"
                            ),
                        ));
                    }
                    previous_field = Some(name);
                }
            }
        }
        Ok(Escaping { reserved, dot_segments: false, encode_non_ascii: false })
    }

    /// Whether the template has no fields (renders the same for every event).
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|part| matches!(part, Part::Literal(_)))
    }

    /// The event fields it names, in order (a field named twice, twice).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Field(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Template::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A template that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("template `{template}`: {problem}")]
pub struct TemplateError {
    template: String,
    problem: String,
}

impl TemplateError {
    fn new(template: &str, problem: String) -> Self {
        Self { template: template.to_owned(), problem }
    }
}

/// A template that could not be filled from an event: the event cannot be delivered there
/// (dead-letter topic).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The event lacks a field the template needs.
    #[error(transparent)]
    Missing(#[from] MissingField),
    /// A value cannot be placed where the template puts it, whatever the encoding.
    #[error("field `{field}` cannot be placed in template `{template}`: {reason}")]
    Unplaceable {
        /// The field.
        field: String,
        /// The template.
        template: String,
        /// Why.
        reason: &'static str,
    },
}

/// An event lacks a field a template needs: the event cannot be delivered (dead-letter topic).
#[derive(Debug, thiserror::Error)]
#[error("the event has no field `{field}` (or it is null, a list or an object), which template `{template}` needs")]
pub struct MissingField {
    /// The field.
    pub field: String,
    /// The template.
    pub template: String,
}

/// How values are written into a rendered template; the template's own text is kept as it is.
/// Reserved characters are written as `%XX` (the bytes of their UTF-8, upper-case hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escaping {
    /// ASCII characters written percent-encoded.
    reserved: [bool; 128],
    /// A value of `.` or `..` is refused: in a URL path it would climb, encoded or not
    /// (`%2E%2E` is a dot segment to URL parsers too).
    dot_segments: bool,
    /// Characters beyond ASCII are percent-encoded too.
    encode_non_ascii: bool,
}

impl Escaping {
    /// Values as they are.
    pub const NONE: Escaping = Escaping { reserved: [false; 128], dot_segments: false, encode_non_ascii: false };

    /// Values as URL components: everything but `A–Z a–z 0–9 - . _ ~` is percent-encoded
    /// (RFC 3986 `unreserved`), so a value is one path segment or one query value and cannot
    /// add a `/`, `?`, `&`, `=` or `#` of its own. A value of `.` or `..` is refused.
    pub fn url_component() -> Self {
        let mut reserved = [true; 128];
        for c in (b'A'..=b'Z').chain(b'a'..=b'z').chain(b'0'..=b'9').chain(*b"-._~") {
            reserved[usize::from(c)] = false;
        }
        Escaping { reserved, dot_segments: true, encode_non_ascii: true }
    }

    /// Appends `value` to `out`, encoded; the error says why it cannot be placed.
    fn push(&self, out: &mut String, value: &str) -> Result<(), &'static str> {
        if self.dot_segments && (value == "." || value == "..") {
            return Err("`.` and `..` would climb a URL path");
        }
        if *self == Escaping::NONE {
            out.push_str(value);
            return Ok(());
        }
        let mut bytes = [0u8; 4];
        for c in value.chars() {
            let encode = match c {
                c if c.is_ascii() => self.reserved[c as usize] || c.is_ascii_control(),
                c => self.encode_non_ascii || c.is_control(),
            };
            if encode {
                for byte in c.encode_utf8(&mut bytes).bytes() {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(byte >> 4)]));
                    out.push(char::from(HEX[usize::from(byte & 0xf)]));
                }
            } else {
                out.push(c);
            }
        }
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::event::StageEvent;

    fn event() -> StageEvent {
        StageEvent::from_json(
            br#"{"event":"STAGE_COMPLETE","stage":"bronze","source":"OrdersDB","records":3,"timestamp":"2026-11-26T10:15:00","status":"SUCCESS","region":"eu"}"#,
        )
        .unwrap()
    }

    #[test]
    fn renders_known_and_extra_fields() {
        let template = Template::parse("pipeline:{source}:{stage}:{region}:{records}").unwrap();
        assert_eq!(template.render(&event()).unwrap(), "pipeline:OrdersDB:bronze:eu:3");
        assert!(!template.is_constant());
        assert!(Template::parse("pipeline.stage.events").unwrap().is_constant());
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(Template::parse("{{{source}}}").unwrap().render(&event()).unwrap(), "{OrdersDB}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let RenderError::Missing(err) = Template::parse("k:{tenant}").unwrap().render(&event()).unwrap_err() else {
            panic!("not a missing field")
        };
        assert_eq!(err.field, "tenant");
        assert!(err.to_string().contains("k:{tenant}"));
    }

    fn with_source(source: &str) -> StageEvent {
        let mut event = event();
        event.source = source.to_owned();
        event
    }

    #[test]
    fn a_url_value_stays_one_component() {
        let template = Template::parse("http://h/hook/{source}?stage={stage}").unwrap();
        let url = |source: &str| template.render_with(&with_source(source), &Escaping::url_component());
        assert_eq!(url("OrdersDB").unwrap(), "http://h/hook/OrdersDB?stage=bronze");
        assert_eq!(
            url("../../admin/delete?x=1").unwrap(),
            "http://h/hook/..%2F..%2Fadmin%2Fdelete%3Fx%3D1?stage=bronze"
        );
        assert_eq!(url("a b&c=d#e%f").unwrap(), "http://h/hook/a%20b%26c%3Dd%23e%25f?stage=bronze");
        assert_eq!(url("é\u{0}").unwrap(), "http://h/hook/%C3%A9%00?stage=bronze");
        for climbing in [".", ".."] {
            let err = url(climbing).unwrap_err();
            assert!(matches!(err, RenderError::Unplaceable { ref field, .. } if field == "source"), "{err}");
        }
        assert_eq!(url("...").unwrap(), "http://h/hook/...?stage=bronze", "not a dot segment");
    }

    #[test]
    fn key_values_encode_the_templates_own_delimiters() {
        let template = Template::parse("pipeline:status:{source}:{stage}").unwrap();
        let escaping = template.key_escaping("#").unwrap();
        let key = |source: &str, stage: &str| {
            let mut event = with_source(source);
            event.stage = stage.to_owned();
            template.render_with(&event, &escaping).unwrap()
        };
        assert_eq!(key("orders.db", "bronze"), "pipeline:status:orders.db:bronze", "plain values unchanged");
        assert_ne!(key("a", "b:c"), key("a:b", "c"));
        assert_eq!(key("a", "b:c"), "pipeline:status:a:b%3Ac");
        assert_eq!(key("a", "x#rank"), "pipeline:status:a:x%23rank");
        assert_eq!(key("100%", "\u{1b}[2J"), "pipeline:status:100%25:%1B[2J");
        assert!(Template::parse("p.{source}.{stage}").unwrap().key_escaping("").unwrap().reserved[usize::from(b'.')]);
        for ambiguous in ["{source}{stage}", "k:{source}x{stage}"] {
            let err = Template::parse(ambiguous).unwrap().key_escaping("").unwrap_err();
            assert!(err.to_string().contains("need a delimiter"), "{err}");
        }
        assert!(Template::parse("k:{source}-x:{stage}").unwrap().key_escaping("").is_ok());
    }

    #[test]
    fn syntax_errors_say_where() {
        for bad in ["a{source", "a}b", "{}", "{so urce}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    //! The encodings' promises, for any values: keys are injective, a URL value stays inside
    //! its component.
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::event::StageEvent;

    fn event(source: &str, stage: &str) -> StageEvent {
        let mut event = StageEvent::from_json(
            br#"{"event":"E","stage":"s","source":"S","timestamp":"2026-11-26T10:15:00","status":"SUCCESS"}"#,
        )
        .unwrap();
        event.source = source.to_owned();
        event.stage = stage.to_owned();
        event
    }

    /// Values rich in delimiters, escapes and controls.
    fn value() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-c:.#%/?&=\\-_ \\x00-\\x1f\\x7fé{}]{0,8}").unwrap()
    }

    proptest! {
        #[test]
        fn different_pairs_never_share_a_key_or_a_rank_key(
            a in (value(), value()), b in (value(), value()),
            template in prop::sample::select(vec!["pipeline:status:{source}:{stage}", "p.{source}.{stage}", "{source}/x:{stage}#", "k-{source}--{stage}"]),
        ) {
            let template = Template::parse(template).unwrap();
            let escaping = template.key_escaping("#").unwrap();
            let key_a = template.render_with(&event(&a.0, &a.1), &escaping).unwrap();
            let key_b = template.render_with(&event(&b.0, &b.1), &escaping).unwrap();
            prop_assert_eq!(key_a == key_b, a == b, "{:?} {:?} -> {} {}", a, b, key_a, key_b);
            prop_assert_ne!(format!("{key_a}#rank"), key_b.clone());
            prop_assert!(!key_a.chars().any(|c| c.is_control()));
        }

        #[test]
        fn a_url_value_never_leaves_its_component(source in ".{0,12}", stage in value()) {
            let template = Template::parse("https://h.example/hook/{source}?stage={stage}&k=1").unwrap();
            match template.render_with(&event(&source, &stage), &Escaping::url_component()) {
                Ok(url) => {
                    let (path, query) = url.split_once('?').unwrap();
                    prop_assert_eq!(path.matches('/').count(), 4);
                    prop_assert_eq!(query.matches('&').count(), 1);
                    prop_assert_eq!(query.matches('=').count(), 2);
                    prop_assert!(!url.contains('#'));
                    prop_assert!(url.is_ascii());
                }
                Err(RenderError::Unplaceable { .. }) => prop_assert!(source == "." || source == ".." || stage == "." || stage == ".."),
                Err(err) => prop_assert!(false, "{}", err),
            }
        }
    }
}
