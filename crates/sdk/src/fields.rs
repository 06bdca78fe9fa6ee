//! The event fields a config may name: in a route's filter, a template, a column mapping. A name
//! that is no field matches nothing, so a typo (`evnt`) would make a route skip every event,
//! silently; naming one is a config error instead, with the nearest field as a suggestion.

/// The fields of a stage event (`records` is optional). Any other field an event carries is an
/// extra, which a route declares in `extra_fields` before naming it.
pub const EVENT_FIELDS: [&str; 6] = ["event", "stage", "source", "status", "timestamp", "records"];

/// Whether `name` is an event field or one of the route's `extra_fields`; if not, why, with the
/// nearest name when one is close (`did you mean `event`?`).
pub fn check_field(name: &str, extra_fields: &[String]) -> Result<(), String> {
    let known = EVENT_FIELDS.iter().copied().chain(extra_fields.iter().map(String::as_str));
    if known.clone().any(|field| field == name) {
        return Ok(());
    }
    let nearest = known
        .map(|field| (strsim::damerau_levenshtein(&name.to_ascii_lowercase(), field), field))
        .filter(|(distance, field)| *distance <= (field.len() / 3).max(1))
        .min();
    let suggestion = nearest.map(|(_, field)| format!(" (did you mean `{field}`?)")).unwrap_or_default();
    Err(format!(
        "`{name}` is not a stage event field{suggestion}: the fields are {}; name any other field events carry in \
         the route's `extra_fields`",
        EVENT_FIELDS.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_declared_extras_pass_and_near_misses_are_named() {
        let extra = vec!["run_id".to_owned()];
        for name in ["event", "records", "run_id"] {
            assert_eq!(check_field(name, &extra), Ok(()));
        }
        for (typo, meant) in [("evnt", "event"), ("Source", "source"), ("stauts", "status"), ("run-id", "run_id")] {
            let err = check_field(typo, &extra).err().unwrap_or_default();
            assert!(err.contains(&format!("did you mean `{meant}`?")), "{typo}: {err}");
        }
        let err = check_field("colour", &extra).err().unwrap_or_default();
        assert!(!err.contains("did you mean") && err.contains("extra_fields"), "{err}");
    }
}
