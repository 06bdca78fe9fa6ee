//! `body_template`: the request body in the receiver's own shape, for endpoints that take
//! something other than a stage event (Airflow's `POST /api/v2/assets/events` wants
//! `{"asset_id": 7, "extra": {…}}`; Dagster reads `metadata`, `description`, `data_version`).
//!
//! The template is a JSON value written in the config; every string in it is a `{field}`
//! template. The structure is fixed by the config and a value never changes it: a string that is
//! exactly one field (`"{records}"`) becomes that field's JSON value (a number stays a number),
//! any other string becomes a string, serialized by serde_json, so a hostile value cannot add a
//! key or end the document.

use herald_sdk::template::MissingField;
use herald_sdk::{RenderError, StageEvent, Template};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A compiled body template.
#[derive(Debug, Clone)]
pub struct BodyTemplate {
    root: Node,
}

#[derive(Debug, Clone)]
enum Node {
    /// A number, boolean or null written in the config.
    Constant(Value),
    /// A string that is exactly one field: that field's JSON value.
    Field(String),
    /// Any other string: the template rendered, as a JSON string.
    Text(Template),
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
}

impl BodyTemplate {
    /// Compiles `value`; the error names the key path of a string that is no template.
    pub fn compile(value: &Value) -> Result<Self, String> {
        Ok(Self { root: compile(value, "body_template")? })
    }

    /// Every field the template names.
    pub fn fields(&self) -> Vec<String> {
        let mut fields = Vec::new();
        collect_fields(&self.root, &mut fields);
        fields
    }

    /// The body for `event`; the error names a field the event lacks (the event cannot be
    /// delivered this way: dead-letter topic).
    pub fn render(&self, event: &StageEvent) -> Result<String, RenderError> {
        Ok(render(&self.root, event)?.to_string())
    }
}

impl<'de> Deserialize<'de> for BodyTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        BodyTemplate::compile(&value).map_err(serde::de::Error::custom)
    }
}

fn compile(value: &Value, at: &str) -> Result<Node, String> {
    Ok(match value {
        Value::String(text) => {
            let template = Template::parse(text).map_err(|err| format!("{at}: {err}"))?;
            let fields: Vec<&str> = template.fields().collect();
            match fields.as_slice() {
                [only] if text.as_str() == format!("{{{only}}}") => Node::Field((*only).to_owned()),
                _ => Node::Text(template),
            }
        }
        Value::Object(map) => Node::Object(
            map.iter()
                .map(|(key, value)| Ok((key.clone(), compile(value, &format!("{at}.{key}"))?)))
                .collect::<Result<_, String>>()?,
        ),
        Value::Array(items) => Node::Array(
            items.iter().enumerate().map(|(i, item)| compile(item, &format!("{at}[{i}]"))).collect::<Result<_, _>>()?,
        ),
        constant => Node::Constant(constant.clone()),
    })
}

fn collect_fields(node: &Node, fields: &mut Vec<String>) {
    match node {
        Node::Constant(_) => {}
        Node::Field(name) => fields.push(name.clone()),
        Node::Text(template) => fields.extend(template.fields().map(str::to_owned)),
        Node::Object(entries) => entries.iter().for_each(|(_, node)| collect_fields(node, fields)),
        Node::Array(items) => items.iter().for_each(|node| collect_fields(node, fields)),
    }
}

fn render(node: &Node, event: &StageEvent) -> Result<Value, RenderError> {
    Ok(match node {
        Node::Constant(value) => value.clone(),
        Node::Field(name) => field_value(event, name).ok_or_else(|| {
            RenderError::Missing(MissingField { field: name.clone(), template: format!("{{{name}}}") })
        })?,
        Node::Text(template) => Value::String(template.render(event)?),
        Node::Object(entries) => {
            let mut object = Map::with_capacity(entries.len());
            for (key, node) in entries {
                object.insert(key.clone(), render(node, event)?);
            }
            Value::Object(object)
        }
        Node::Array(items) => Value::Array(items.iter().map(|node| render(node, event)).collect::<Result<_, _>>()?),
    })
}

/// A field's value as JSON: the known fields as the event holds them, an extra as it came
/// (objects and lists too); `None` when missing or null.
fn field_value(event: &StageEvent, name: &str) -> Option<Value> {
    let text = |value: &str| Some(Value::String(value.to_owned()));
    match name {
        "event" => text(&event.event),
        "stage" => text(&event.stage),
        "source" => text(&event.source),
        "status" => text(&event.status),
        "timestamp" => text(event.timestamp.as_str()),
        "records" => event.records.map(Value::from),
        other => event.extra.get(other).filter(|value| !value.is_null()).cloned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn event(extra: &str) -> StageEvent {
        StageEvent::from_json_str(&format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"bronze","source":"Orders\"DB","records":14823,"timestamp":"2026-11-26T10:15:00.123456","status":"SUCCESS"{extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn the_shape_is_the_config_s_and_a_lone_field_keeps_its_type() {
        let template = BodyTemplate::compile(&json!({
            "asset_id": 7,
            "extra": {"source": "{source}", "records": "{records}", "what": "{stage} at {timestamp}", "tags": ["{run}", "x"]},
            "literal": "{{not a field}}"
        }))
        .unwrap();
        let body: Value = serde_json::from_str(&template.render(&event(r#","run":{"id":3}"#)).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "asset_id": 7,
                "extra": {"source": "Orders\"DB", "records": 14823, "what": "bronze at 2026-11-26T10:15:00.123456", "tags": [{"id": 3}, "x"]},
                "literal": "{not a field}"
            })
        );
        let mut fields = template.fields();
        fields.sort();
        assert_eq!(fields, ["records", "run", "source", "stage", "timestamp"]);
    }

    #[test]
    fn a_hostile_value_stays_one_string_and_a_missing_field_refuses_the_event() {
        let template = BodyTemplate::compile(&json!({"a": "{note}", "b": "x{note}"})).unwrap();
        let hostile = r#"","evil":1,"x":""#;
        let body: Value =
            serde_json::from_str(&template.render(&event(&format!(r#","note":{}"#, json!(hostile)))).unwrap()).unwrap();
        assert_eq!(body, json!({"a": hostile, "b": format!("x{hostile}")}));
        let err = template.render(&event("")).unwrap_err().to_string();
        assert!(err.contains("note"), "{err}");
        assert!(BodyTemplate::compile(&json!({"a": {"b": "{unclosed"}})).unwrap_err().contains("body_template.a.b"));
    }
}
