//! Route filters: which events a route delivers.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use herald_sdk::EventFields;

/// A conjunction of field conditions: an event passes when every named field matches.
/// An empty filter passes everything. A field the event lacks never matches.
///
/// ```toml
/// filter = { event = "STAGE_COMPLETE", status = ["SUCCESS", "FAILED"], source = ["OrdersDB"] }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Filter(BTreeMap<String, FieldMatch>);

impl Filter {
    /// Whether `event` passes the filter (a record's [`herald_sdk::LazyEvent`] reads the known
    /// fields without parsing).
    pub fn matches(&self, event: &(impl EventFields + ?Sized)) -> bool {
        self.0.iter().all(|(field, condition)| match event.field(field) {
            Some(value) => condition.matches(&value),
            None => false,
        })
    }

    /// The fields it names.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether the filter passes everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The condition on one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldMatch {
    /// The field equals this text (`status = "SUCCESS"`).
    Equals(String),
    /// The field equals one of these (`status = ["SUCCESS", "FAILED"]`).
    AnyOf(Vec<String>),
}

impl FieldMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            FieldMatch::Equals(expected) => expected == value,
            FieldMatch::AnyOf(options) => options.iter().any(|option| option == value),
        }
    }
}

impl<'de> Deserialize<'de> for FieldMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldMatchVisitor;

        impl<'de> Visitor<'de> for FieldMatchVisitor {
            type Value = FieldMatch;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value the field must equal, or a non-empty list of values it may equal")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldMatch, E> {
                Ok(FieldMatch::Equals(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldMatch, E> {
                Ok(FieldMatch::Equals(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldMatch, E> {
                Ok(FieldMatch::Equals(v.to_string()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldMatch, E> {
                Ok(FieldMatch::Equals(v.to_string()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FieldMatch, A::Error> {
                let mut options = Vec::new();
                while let Some(option) = seq.next_element::<FieldMatch>()? {
                    match option {
                        FieldMatch::Equals(value) => options.push(value),
                        FieldMatch::AnyOf(_) => return Err(de::Error::custom("lists cannot be nested")),
                    }
                }
                if options.is_empty() {
                    return Err(de::Error::custom("an empty list matches nothing; remove the field instead"));
                }
                Ok(FieldMatch::AnyOf(options))
            }
        }

        deserializer.deserialize_any(FieldMatchVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_sdk::event::StageEvent;

    fn event(status: &str, source: &str) -> StageEvent {
        StageEvent::from_json(
            format!(
                r#"{{"event":"STAGE_COMPLETE","stage":"bronze","source":"{source}","records":5,"timestamp":"2026-11-26T10:15:00","status":"{status}","env":"prod"}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn filter(json: &str) -> Filter {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn empty_filter_passes_everything() {
        assert!(Filter::default().matches(&event("FAILED", "A")));
    }

    #[test]
    fn every_field_must_match() {
        let f = filter(r#"{"event":"STAGE_COMPLETE","status":["SUCCESS","FAILED"],"source":"OrdersDB"}"#);
        assert!(f.matches(&event("SUCCESS", "OrdersDB")));
        assert!(f.matches(&event("FAILED", "OrdersDB")));
        assert!(!f.matches(&event("RUNNING", "OrdersDB")));
        assert!(!f.matches(&event("SUCCESS", "UsersDB")));
    }

    #[test]
    fn numbers_and_extra_fields_can_be_matched() {
        assert!(filter(r#"{"records":5,"env":"prod"}"#).matches(&event("SUCCESS", "A")));
        assert!(!filter(r#"{"records":6}"#).matches(&event("SUCCESS", "A")));
    }

    #[test]
    fn a_missing_field_never_matches() {
        assert!(!filter(r#"{"region":"eu"}"#).matches(&event("SUCCESS", "A")));
    }

    #[test]
    fn empty_and_nested_lists_are_config_errors() {
        assert!(serde_json::from_str::<Filter>(r#"{"status":[]}"#).unwrap_err().to_string().contains("empty list"));
        assert!(serde_json::from_str::<Filter>(r#"{"status":[["A"]]}"#).is_err());
        assert!(serde_json::from_str::<Filter>(r#"{"status":{"a":1}}"#).is_err());
    }
}
