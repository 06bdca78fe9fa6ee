//! What a request body holds: inflating a gzip body within bounds, and reading stage events from
//! one JSON document or from NDJSON. Plain functions of bytes, tested without a server.

use std::io::Read;

use herald_sdk::StageEvent;

/// Why a body is refused; each says what to fix, and nothing of the body was published.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than `max_body_bytes`, sent or once inflated.
    #[error("the body is larger than {limit} bytes{inflated} (ingest.max_body_bytes)")]
    TooLarge {
        /// The limit.
        limit: usize,
        /// `" once inflated"` for a gzip body.
        inflated: &'static str,
    },
    /// More events than `max_events_per_request`.
    #[error("the body holds more than {0} events (ingest.max_events_per_request); send them in several requests")]
    TooManyEvents(usize),
    /// A `Content-Encoding` other than gzip or identity.
    #[error("`Content-Encoding: {0}` is not taken; send the body as it is or gzip it")]
    Encoding(String),
    /// A gzip body that does not inflate.
    #[error("the gzip body does not inflate: {0}")]
    Gzip(String),
    /// Not a stage event; `at` says which line of NDJSON, when it is one.
    #[error("{at}not a stage event: {reason}")]
    Event {
        /// `"line 3: "`, or empty for a one-document body.
        at: String,
        /// What is wrong, with the field.
        reason: String,
    },
    /// An empty body.
    #[error("the body is empty")]
    Empty,
}

/// The body as sent, inflated when `Content-Encoding` says gzip; never more than `limit` bytes.
pub fn inflate(body: &[u8], content_encoding: Option<&str>, limit: usize) -> Result<Vec<u8>, BodyError> {
    let encoding = content_encoding.map(|value| value.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok(body.to_vec()),
        Some("gzip" | "x-gzip") => {
            let mut inflated = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            // One byte past the limit tells "at most the limit" from "more".
            let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            flate2::read::GzDecoder::new(body)
                .take(bound)
                .read_to_end(&mut inflated)
                .map_err(|err| BodyError::Gzip(err.to_string()))?;
            if inflated.len() > limit {
                return Err(BodyError::TooLarge { limit, inflated: " once inflated" });
            }
            Ok(inflated)
        }
        Some(other) => Err(BodyError::Encoding(other.to_owned())),
    }
}

/// The stage events of a `POST /events` body: one JSON document (pretty-printed or not), or
/// NDJSON, one event per line (blank lines skipped). All or none: the first line that is no
/// stage event refuses the whole body.
pub fn stage_events(body: &[u8], max_events: usize) -> Result<Vec<StageEvent>, BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|err| BodyError::Event { at: String::new(), reason: format!("not UTF-8 ({err})") })?;
    if text.trim().is_empty() {
        return Err(BodyError::Empty);
    }
    let event_of = |at: String, text: &str| {
        StageEvent::from_json_str(text)
            .map_err(|err| BodyError::Event { at, reason: herald_sdk::error_chain(&err).join(": ") })
    };
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(|(i, line)| (i + 1, line)).collect();
    if lines.len() <= 1 {
        return Ok(vec![event_of(String::new(), text)?]);
    }
    // Several lines: one pretty-printed document, or NDJSON. A document is tried first only
    // when the first line does not hold a whole event on its own.
    if StageEvent::from_json_str(lines[0].1).is_err() {
        if let Ok(event) = StageEvent::from_json_str(text) {
            return Ok(vec![event]);
        }
    }
    if lines.len() > max_events {
        return Err(BodyError::TooManyEvents(max_events));
    }
    lines.into_iter().map(|(number, line)| event_of(format!("line {number}: "), line)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    const EVENT: &str = r#"{"event":"STAGE_COMPLETE","stage":"bronze_ingest","source":"OrdersDB","records":14823,"timestamp":"2026-11-26T10:15:00.123456","status":"SUCCESS"}"#;

    #[test]
    fn gzip_is_inflated_within_the_limit_and_a_bomb_is_refused() {
        assert_eq!(inflate(&gzip(EVENT.as_bytes()), Some("gzip"), 1024).unwrap(), EVENT.as_bytes());
        assert_eq!(inflate(EVENT.as_bytes(), None, 1024).unwrap(), EVENT.as_bytes());
        let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(
            inflate(&bomb, Some("gzip"), 1024 * 1024),
            Err(BodyError::TooLarge { limit: 1024 * 1024, inflated: " once inflated" })
        );
        assert!(matches!(inflate(b"not gzip", Some("gzip"), 1024), Err(BodyError::Gzip(_))));
        assert!(matches!(inflate(b"{}", Some("br"), 1024), Err(BodyError::Encoding(_))));
    }

    #[test]
    fn one_document_or_ndjson_all_or_nothing() {
        assert_eq!(stage_events(EVENT.as_bytes(), 10).unwrap().len(), 1);
        let pretty = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(EVENT).unwrap()).unwrap();
        let events = stage_events(pretty.as_bytes(), 10).unwrap();
        assert_eq!((events.len(), events[0].records), (1, Some(14823)));
        let ndjson = format!("{EVENT}\n\n{}\n", EVENT.replace("OrdersDB", "Billing"));
        let events = stage_events(ndjson.as_bytes(), 10).unwrap();
        assert_eq!(events.iter().map(|event| event.source.as_str()).collect::<Vec<_>>(), ["OrdersDB", "Billing"]);
        let bad = format!("{EVENT}\n{EVENT}\n{}\n", EVENT.replace(r#""records":14823"#, r#""records":"many""#));
        let err = stage_events(bad.as_bytes(), 10).unwrap_err().to_string();
        assert!(err.starts_with("line 3: ") && err.contains("records"), "{err}");
        assert_eq!(stage_events(format!("{EVENT}\n{EVENT}\n{EVENT}").as_bytes(), 2), Err(BodyError::TooManyEvents(2)));
        assert_eq!(stage_events(b" \n ", 2), Err(BodyError::Empty));
        let err = stage_events(br#"{"event":"STAGE_COMPLETE"}"#, 2).unwrap_err().to_string();
        assert!(err.contains("not a stage event") && !err.starts_with("line"), "{err}");
        assert!(stage_events(b"[1,2]", 2).is_err() && stage_events(&[0xff, 0xfe], 2).is_err());
    }
}
