//! pgoutput decoding: relation and row messages into rows as JSON, read as `to_jsonb` would
//! write them, so both capture modes make the same events of the same rows. Malformed input
//! is an error, never a panic.

use std::collections::HashMap;

use bytes::Buf;
use serde_json::{Map, Number, Value};
use tracing::warn;

use crate::error::SourceError;

/// One relation as pgoutput described it: names and type OIDs of its columns.
pub(super) struct Relation {
    /// `schema.name`.
    table: String,
    columns: Vec<(String, u32)>,
}

/// One decoded row change.
pub(super) struct RowChange {
    /// The relation's `schema.name`.
    pub(super) table: String,
    /// `insert` or `update`.
    pub(super) operation: &'static str,
    /// The new row, as `to_jsonb` would write it.
    pub(super) row: Map<String, Value>,
}

/// A malformed pgoutput message: a bug on one side or the other, not something to retry.
fn malformed(what: &str) -> SourceError {
    SourceError::Replication { context: "decoding pgoutput", reason: what.to_owned() }
}

fn take_cstr(data: &mut &[u8]) -> Result<String, SourceError> {
    let end = data.iter().position(|&byte| byte == 0).ok_or_else(|| malformed("unterminated string"))?;
    let text = String::from_utf8_lossy(&data[..end]).into_owned();
    *data = &data[end + 1..];
    Ok(text)
}

fn need(data: &[u8], bytes: usize) -> Result<(), SourceError> {
    if data.remaining() < bytes {
        return Err(malformed("message ends early"));
    }
    Ok(())
}

/// Decodes one pgoutput message: a Relation updates `relations`, an Insert or Update becomes a
/// row change, anything else (Delete, Truncate, Type, Origin) is passed over.
pub(super) fn decode(
    mut data: &[u8],
    relations: &mut HashMap<u32, Relation>,
) -> Result<Option<RowChange>, SourceError> {
    need(data, 1)?;
    match data.get_u8() {
        b'R' => {
            need(data, 4)?;
            let id = data.get_u32();
            let schema = take_cstr(&mut data)?;
            let name = take_cstr(&mut data)?;
            need(data, 3)?;
            let _replica_identity = data.get_u8();
            let count = data.get_i16().max(0) as usize;
            let mut columns = Vec::with_capacity(count);
            for _ in 0..count {
                need(data, 1)?;
                let _flags = data.get_u8();
                let column = take_cstr(&mut data)?;
                need(data, 8)?;
                let type_oid = data.get_u32();
                let _type_modifier = data.get_i32();
                columns.push((column, type_oid));
            }
            relations.insert(id, Relation { table: format!("{schema}.{name}"), columns });
            Ok(None)
        }
        tag @ (b'I' | b'U') => {
            need(data, 5)?;
            let relation =
                relations.get(&data.get_u32()).ok_or_else(|| malformed("a change for an unknown relation"))?;
            let mut kind = data.get_u8();
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                // The old key (or, with REPLICA IDENTITY FULL, the old row) of an update.
                old = Some(tuple(&mut data, &relation.columns)?.0);
                need(data, 1)?;
                kind = data.get_u8();
            }
            if kind != b'N' {
                return Err(malformed("expected a new tuple"));
            }
            let (mut row, unchanged) = tuple(&mut data, &relation.columns)?;
            // Large values an UPDATE left alone are not sent; the old row has them when the
            // table's replica identity is FULL.
            for column in unchanged {
                match old.as_mut().and_then(|old| old.remove(&column)) {
                    Some(value) => {
                        row.insert(column, value);
                    }
                    None => {
                        warn!(table = %relation.table, column = %column, "An UPDATE left a large value unchanged and Postgres did not send it; the event lacks it (REPLICA IDENTITY FULL on the table sends it).");
                    }
                }
            }
            Ok(Some(RowChange {
                table: relation.table.clone(),
                operation: if tag == b'I' { "INSERT" } else { "UPDATE" },
                row,
            }))
        }
        _ => Ok(None),
    }
}

/// A tuple as a JSON object keyed by column name, shaped like `to_jsonb(row)` (what the
/// trigger mode records), so both modes give the same events; and the columns whose (large,
/// TOASTed) values Postgres did not send because an UPDATE left them unchanged.
fn tuple(data: &mut &[u8], columns: &[(String, u32)]) -> Result<(Map<String, Value>, Vec<String>), SourceError> {
    need(data, 2)?;
    let count = data.get_i16().max(0) as usize;
    let mut row = Map::new();
    let mut unchanged = Vec::new();
    for index in 0..count {
        need(data, 1)?;
        let kind = data.get_u8();
        let (name, type_oid) = columns.get(index).ok_or_else(|| malformed("more values than columns"))?;
        match kind {
            b'n' => {
                row.insert(name.clone(), Value::Null);
            }
            b'u' => unchanged.push(name.clone()),
            b't' => {
                need(data, 4)?;
                let length = data.get_i32().max(0) as usize;
                need(data, length)?;
                let text = String::from_utf8_lossy(&data[..length]);
                row.insert(name.clone(), text_to_json(*type_oid, &text));
                data.advance(length);
            }
            _ => return Err(malformed("unknown tuple value kind")),
        }
    }
    Ok((row, unchanged))
}

/// A column's text value as `to_jsonb` would give it.
fn text_to_json(type_oid: u32, text: &str) -> Value {
    const BOOL: u32 = 16;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const OID: u32 = 26;
    const JSON: u32 = 114;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const TIMESTAMP: u32 = 1114;
    const TIMESTAMPTZ: u32 = 1184;
    const NUMERIC: u32 = 1700;
    const JSONB: u32 = 3802;
    match type_oid {
        BOOL => Value::Bool(text == "t"),
        INT2 | INT4 | INT8 | OID => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.into())),
        FLOAT4 | FLOAT8 | NUMERIC => text
            .parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| text.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number))
            .unwrap_or_else(|| Value::String(text.into())),
        JSON | JSONB => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        TIMESTAMP | TIMESTAMPTZ => Value::String(iso_timestamp(text)),
        _ => Value::String(text.into()),
    }
}

/// `2026-11-26 10:15:00.123456+00` (the ISO DateStyle) → `2026-11-26T10:15:00.123456+00:00`
/// (`to_jsonb`'s form). `infinity` and other forms are kept as they are.
fn iso_timestamp(text: &str) -> String {
    let Some((date, time)) = text.split_once(' ') else { return text.to_owned() };
    let mut out = format!("{date}T{time}");
    // A `+HH` or `-HH` offset gets its minutes.
    let bytes = out.as_bytes();
    let length = bytes.len();
    if length >= 3 && matches!(bytes[length - 3], b'+' | b'-') && bytes[length - 2..].iter().all(u8::is_ascii_digit) {
        out.push_str(":00");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_message() -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend(16384_u32.to_be_bytes());
        out.extend(b"ops\0job_status\0");
        out.push(b'd');
        out.extend(4_i16.to_be_bytes());
        for (name, oid) in [("src", 25_u32), ("n", 20), ("at", 1184), ("payload", 3802)] {
            out.push(1);
            out.extend(name.as_bytes());
            out.push(0);
            out.extend(oid.to_be_bytes());
            out.extend((-1_i32).to_be_bytes());
        }
        out
    }

    fn value(out: &mut Vec<u8>, text: &str) {
        out.push(b't');
        out.extend((text.len() as i32).to_be_bytes());
        out.extend(text.as_bytes());
    }

    #[test]
    fn pgoutput_rows_decode_like_to_jsonb() {
        let mut relations = HashMap::new();
        assert!(decode(&relation_message(), &mut relations).unwrap().is_none());
        let mut insert = vec![b'I'];
        insert.extend(16384_u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(4_i16.to_be_bytes());
        value(&mut insert, "OrdersDB");
        value(&mut insert, "14823");
        value(&mut insert, "2026-11-26 10:15:00.123456+00");
        insert.push(b'n');
        let change = decode(&insert, &mut relations).unwrap().unwrap();
        assert_eq!(change.table, "ops.job_status");
        assert_eq!(change.operation, "INSERT");
        assert_eq!(
            Value::Object(change.row),
            serde_json::json!({"src": "OrdersDB", "n": 14823, "at": "2026-11-26T10:15:00.123456+00:00", "payload": null})
        );

        // An update with the old key first, an unchanged TOASTed value, and JSON.
        let mut update = vec![b'U'];
        update.extend(16384_u32.to_be_bytes());
        update.push(b'K');
        update.extend(1_i16.to_be_bytes());
        value(&mut update, "old");
        update.push(b'N');
        update.extend(4_i16.to_be_bytes());
        value(&mut update, "Payments");
        value(&mut update, "-3");
        update.push(b'u');
        value(&mut update, r#"{"attempt": 2}"#);
        let change = decode(&update, &mut relations).unwrap().unwrap();
        assert_eq!(change.operation, "UPDATE");
        assert_eq!(
            Value::Object(change.row),
            serde_json::json!({"src": "Payments", "n": -3, "payload": {"attempt": 2}})
        );
    }

    #[test]
    fn an_unchanged_large_value_comes_from_the_old_row_under_replica_identity_full() {
        let mut relations = HashMap::new();
        decode(&relation_message(), &mut relations).unwrap();
        let mut update = vec![b'U'];
        update.extend(16384_u32.to_be_bytes());
        update.push(b'O');
        update.extend(4_i16.to_be_bytes());
        value(&mut update, "A");
        value(&mut update, "1");
        value(&mut update, "2026-11-26 10:00:00+00");
        value(&mut update, r#"{"big": "x"}"#);
        update.push(b'N');
        update.extend(4_i16.to_be_bytes());
        value(&mut update, "A");
        value(&mut update, "2");
        value(&mut update, "2026-11-26 10:05:00+00");
        update.push(b'u');
        let change = decode(&update, &mut relations).unwrap().unwrap();
        assert_eq!(change.row["payload"], serde_json::json!({"big": "x"}));
        assert_eq!(change.row["n"], 2, "changed values are the new ones");
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let mut relations = HashMap::new();
        for bad in [&b""[..], b"R", b"R\0\0\0\x01ops", b"I\0\0\0\x09N", b"I"] {
            let _ = decode(bad, &mut relations);
        }
        decode(&relation_message(), &mut relations).unwrap();
        let mut short = vec![b'I'];
        short.extend(16384_u32.to_be_bytes());
        short.extend([b'N', 0, 4, b't', 0, 0, 0, 9, b'x']);
        assert!(decode(&short, &mut relations).is_err());
    }

    #[test]
    fn text_values_become_json_like_to_jsonb() {
        assert_eq!(text_to_json(16, "t"), Value::Bool(true));
        assert_eq!(text_to_json(1700, "12.50"), serde_json::json!(12.5));
        assert_eq!(text_to_json(1114, "2026-11-26 10:15:00"), "2026-11-26T10:15:00");
        assert_eq!(text_to_json(1184, "2026-11-26 10:15:00-05"), "2026-11-26T10:15:00-05:00");
        assert_eq!(text_to_json(1184, "infinity"), "infinity");
        assert_eq!(text_to_json(25, "plain"), "plain");
    }
}
