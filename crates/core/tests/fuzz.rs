//! Property tests of everything that reads outside input: the event parser, filters, templates
//! and the config loader. None may panic, whatever it is given; what parses must round-trip.
//!
//! CI runs proptest's default 256 cases per property; a longer run:
//! `PROPTEST_CASES=200000 cargo test --release -p herald-core --test fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use herald_core::Filter;
use herald_sdk::{StageEvent, Template};
use proptest::prelude::*;

/// JSON-ish text: objects and arrays of stage-event-like fields, nested, sometimes broken.
fn jsonish() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n}")),
        "[a-zA-Z0-9 _:.+-]{0,30}".prop_map(|s| format!("{s:?}")),
        Just("\"2026-11-26T10:15:00.123456\"".to_owned()),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("event"),
                        Just("stage"),
                        Just("source"),
                        Just("records"),
                        Just("timestamp"),
                        Just("status"),
                        Just("x")
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|fields| format!(
                "{{{}}}",
                fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect::<Vec<_>>().join(",")
            )),
        ]
    })
}

fn valid_event() -> impl Strategy<Value = StageEvent> {
    (
        "[A-Z_]{1,20}",
        "[a-z_]{1,20}",
        "[A-Za-z0-9]{1,20}",
        proptest::option::of(any::<i64>()),
        0i64..4_000_000_000,
        "[A-Z]{1,10}",
        proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,20}", 0..4),
    )
        .prop_map(|(event, stage, source, records, secs, status, extra)| {
            let mut json = serde_json::json!({
                "event": event, "stage": stage, "source": source, "status": status,
                "timestamp": chrono::DateTime::from_timestamp(secs, 0).unwrap().naive_utc().format("%Y-%m-%dT%H:%M:%S").to_string(),
            });
            if let Some(records) = records {
                json["records"] = records.into();
            }
            for (key, value) in extra {
                if json.get(&key).is_none() {
                    json[key] = value.into();
                }
            }
            StageEvent::from_json(json.to_string().as_bytes()).unwrap()
        })
}

proptest! {
    #[test]
    fn the_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = StageEvent::from_json(&bytes);
    }

    #[test]
    fn the_parser_never_panics_on_jsonish_text(text in jsonish()) {
        let _ = StageEvent::from_json(text.as_bytes());
    }

    #[test]
    fn valid_events_round_trip(event in valid_event()) {
        let again = StageEvent::from_json(event.to_json().as_bytes()).unwrap();
        prop_assert_eq!(again, event);
    }

    #[test]
    fn filters_never_panic_and_an_equality_filter_matches_its_own_event(text in jsonish(), event in valid_event()) {
        if let Ok(filter) = serde_json::from_str::<Filter>(&text) {
            let _ = filter.matches(&event);
        }
        let own: Filter = serde_json::from_value(serde_json::json!({ "source": event.source, "status": [event.status] })).unwrap();
        prop_assert!(own.matches(&event));
    }

    #[test]
    fn templates_never_panic_and_render_literals_verbatim(text in "[ -~]{0,40}", event in valid_event()) {
        if let Ok(template) = Template::parse(&text) {
            let _ = template.render(&event);
        }
        let literal = text.replace('{', "{{").replace('}', "}}");
        let template = Template::parse(&literal).unwrap();
        prop_assert_eq!(template.render(&event).unwrap(), text);
    }

}
