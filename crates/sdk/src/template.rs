//! Templates over event fields, for channel names, keys, topics and subjects:
//! `"pipeline.{source}.{stage}"`. `{{` and `}}` stand for literal braces.

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

    /// Fills the template from `event`: a [`crate::StageEvent`], or a record's
    /// [`crate::LazyEvent`], which reads the known fields without parsing. The error names the
    /// first field the event lacks.
    pub fn render(&self, event: &(impl EventFields + ?Sized)) -> Result<String, MissingField> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(name) => match event.field(name) {
                    Some(value) => out.push_str(&value),
                    None => return Err(MissingField { field: name.clone(), template: self.source.clone() }),
                },
            }
        }
        Ok(out)
    }

    /// Whether the template has no fields (renders the same for every event).
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|part| matches!(part, Part::Literal(_)))
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

/// An event lacks a field a template needs: the event cannot be delivered (dead-letter topic).
#[derive(Debug, thiserror::Error)]
#[error("the event has no field `{field}` (or it is null, a list or an object), which template `{template}` needs")]
pub struct MissingField {
    /// The field.
    pub field: String,
    /// The template.
    pub template: String,
}

#[cfg(test)]
mod tests {
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
        let err = Template::parse("k:{tenant}").unwrap().render(&event()).unwrap_err();
        assert_eq!(err.field, "tenant");
        assert!(err.to_string().contains("k:{tenant}"));
    }

    #[test]
    fn syntax_errors_say_where() {
        for bad in ["a{source", "a}b", "{}", "{so urce}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
