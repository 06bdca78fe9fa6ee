//! An event's timestamp: the text as written and the instant it names, read by hand in the
//! usual ISO shapes (chrono reads the rest); and the clock-skew check of newest-wins sinks.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The default `max_clock_skew` of newest-wins sinks: how far ahead of this host's clock an
/// event may be dated.
pub const DEFAULT_MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(3600);

/// An event dated further ahead of this host's clock than a newest-wins destination allows.
/// Kept, it would stay "newest" over every real event after it (a year-9999 timestamp would pin
/// its key forever), so it goes to the dead-letter topic instead.
#[derive(Debug, thiserror::Error)]
#[error(
    "the event is dated {at}, more than {max_clock_skew:?} (`max_clock_skew`) ahead of this host's clock \
     ({now}); kept, it would stay newest over every later event of its key"
)]
pub struct AheadOfClock {
    /// The event's instant.
    pub at: DateTime<Utc>,
    /// This host's clock when the event was checked.
    pub now: DateTime<Utc>,
    /// The allowance.
    pub max_clock_skew: std::time::Duration,
}

/// Refuses an instant more than `max_clock_skew` ahead of this host's clock.
pub fn check_clock_skew(at: DateTime<Utc>, max_clock_skew: std::time::Duration) -> Result<(), AheadOfClock> {
    let now = Utc::now();
    let limit = chrono::TimeDelta::from_std(max_clock_skew).ok().and_then(|skew| now.checked_add_signed(skew));
    match limit {
        Some(limit) if at > limit => Err(AheadOfClock { at, now, max_clock_skew }),
        _ => Ok(()),
    }
}

/// An event's timestamp: the text as the producer wrote it, and the instant it names.
///
/// Accepts RFC 3339 (`2026-11-26T10:15:00.123456+01:00`, `…Z`) and offset-less ISO 8601
/// (`2026-11-26T10:15:00.123456`, as Python's `datetime.utcnow().isoformat()` writes), the latter
/// read as UTC. A space may stand for the `T`.
#[derive(Clone, PartialEq, Eq)]
pub struct EventTimestamp {
    raw: String,
    instant: DateTime<Utc>,
}

impl EventTimestamp {
    /// Parses a timestamp; the error says what formats are accepted.
    pub fn parse(raw: &str) -> Result<Self, TimestampError> {
        Self::parse_owned(raw.to_owned())
    }

    fn parse_owned(raw: String) -> Result<Self, TimestampError> {
        match read_instant(&raw) {
            Some(instant) => Ok(Self { raw, instant }),
            None => Err(TimestampError { raw }),
        }
    }

    /// A timestamp for this instant, written as RFC 3339 with microseconds and `+00:00`, which
    /// Python's `datetime.fromisoformat` reads on every supported version.
    pub fn from_instant(instant: DateTime<Utc>) -> Self {
        // Truncate to what the text can say, so parsing the text gives back the same instant.
        let instant = instant.trunc_subsecs(6);
        let raw = instant.to_rfc3339_opts(SecondsFormat::Micros, false);
        Self { raw, instant }
    }

    /// Now, in UTC.
    pub fn now() -> Self {
        Self::from_instant(Utc::now())
    }

    /// The instant, in UTC.
    pub fn instant(&self) -> DateTime<Utc> {
        self.instant
    }

    /// The text exactly as the producer wrote it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Debug for EventTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Display for EventTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for EventTimestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for EventTimestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        EventTimestamp::parse_owned(raw).map_err(serde::de::Error::custom)
    }
}

/// The instant a timestamp names, in any of the forms [`EventTimestamp`] accepts.
pub(super) fn read_instant(raw: &str) -> Option<DateTime<Utc>> {
    // Every event has a timestamp, and the seed's offset-less form failed chrono's RFC 3339
    // parser before its ISO one took it: a tenth of a stdout route's CPU. The usual shapes are
    // read by hand; anything else goes through chrono as before.
    if let Some(instant) = parse_iso_fast(raw.as_bytes()) {
        return Some(instant);
    }
    let trimmed = raw.trim();
    // The two common forms first, with chrono's fixed-format parsers; the format strings (parsed
    // anew on every call) only for the rarer spellings.
    DateTime::parse_from_rfc3339(trimmed)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| trimmed.parse::<NaiveDateTime>().map(|naive| naive.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f").map(|naive| naive.and_utc()))
        .or_else(|_| DateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f%:z").map(|t| t.with_timezone(&Utc)))
        .ok()
}

/// `YYYY-MM-DDTHH:MM:SS`, then optionally `.` and 1–9 digits, then optionally `Z` or `±HH:MM`,
/// and nothing else: the instant it names, as chrono reads it. `None` for any other text (which
/// chrono then reads, or refuses), including a leap second, so that chrono alone decides those.
fn parse_iso_fast(text: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(text: &[u8], at: usize, count: usize) -> Option<u32> {
        let part = text.get(at..at + count)?;
        part.iter().try_fold(0u32, |n, &b| b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0')))
    }
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, byte)| text.get(at) != Some(&byte)) {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(digits(text, 0, 4)?).ok()?,
        digits(text, 5, 2)?,
        digits(text, 8, 2)?,
    )?;
    let (hour, minute, second) = (digits(text, 11, 2)?, digits(text, 14, 2)?, digits(text, 17, 2)?);
    let mut at = 19;
    let mut nanos = 0;
    if text.get(at) == Some(&b'.') {
        let count = text[at + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=9).contains(&count) {
            return None;
        }
        nanos = digits(text, at + 1, count)? * 10u32.pow(9 - count as u32);
        at += 1 + count;
    }
    if second > 59 {
        return None;
    }
    let naive = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    let offset_seconds = match text.get(at..)? {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (digits(text, at + 1, 2)?, digits(text, at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    Some(naive.checked_sub_signed(chrono::TimeDelta::seconds(offset_seconds))?.and_utc())
}

/// A timestamp in none of the accepted formats.
#[derive(Debug, thiserror::Error)]
#[error(
    "timestamp `{raw}` is not ISO 8601: expected e.g. `2026-11-26T10:15:00.123456` (read as UTC) \
     or `2026-11-26T10:15:00Z` / `+01:00`"
)]
pub struct TimestampError {
    raw: String,
}

impl TimestampError {
    /// `raw` is not a timestamp.
    pub(super) fn new(raw: &str) -> Self {
        Self { raw: raw.to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_reading(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| text.parse::<NaiveDateTime>().map(|naive| naive.and_utc()))
            .ok()
    }

    #[test]
    fn the_fast_timestamp_reading_agrees_with_chrono_or_leaves_the_text_to_it() {
        let taken = [
            "2026-11-26T10:15:00.123456",
            "2026-11-26T10:15:00",
            "2026-11-26T10:15:00Z",
            "2026-11-26T10:15:00.1Z",
            "2026-11-26T10:15:00.123456789",
            "2026-11-26T23:59:59.999999+01:00",
            "2026-01-01T00:30:00-05:30",
            "2024-02-29T12:00:00.000001+00:00",
            "0001-01-01T00:00:00",
            "9999-12-31T23:59:59.5-23:59",
        ];
        for text in taken {
            let fast = parse_iso_fast(text.as_bytes());
            assert!(fast.is_some(), "{text} is read by hand");
            assert_eq!(fast, chrono_reading(text), "{text}");
        }
        let left = [
            "2026-11-26 10:15:00.123456",
            "2026-11-26T10:15:60",
            "2026-11-26T10:15:00.1234567890",
            "2026-11-26T10:15:00.",
            "2026-11-26T10:15:00z",
            "2026-11-26T10:15:00+0100",
            "2026-11-26T10:15:00+24:00",
            " 2026-11-26T10:15:00",
            "2026-11-26T10:15:00 ",
            "2026-02-30T10:15:00",
            "2026-11-26T25:15:00",
            "2026-11-26T10:15",
            "+2026-11-26T10:15:00",
            "2026-1a-26T10:15:00",
            "",
        ];
        for text in left {
            assert_eq!(parse_iso_fast(text.as_bytes()), None, "{text} is left to chrono");
        }
        // …and the whole parser still takes what chrono takes there.
        for text in ["2026-11-26 10:15:00.123456", "2026-11-26T10:15:00z", " 2026-11-26T10:15:00 "] {
            assert!(EventTimestamp::parse(text).is_ok(), "{text}");
        }
        for text in ["2026-02-30T10:15:00", "2026-11-26T25:15:00", "2026-11-26T10:15"] {
            assert!(EventTimestamp::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn timestamps_with_offsets_are_converted_to_utc() {
        let plus_one = EventTimestamp::parse("2026-11-26T11:15:00+01:00").unwrap();
        let zulu = EventTimestamp::parse("2026-11-26T10:15:00Z").unwrap();
        let naive = EventTimestamp::parse("2026-11-26T10:15:00").unwrap();
        assert_eq!(plus_one.instant(), zulu.instant());
        assert_eq!(naive.instant(), zulu.instant());
        assert_eq!(plus_one.as_str(), "2026-11-26T11:15:00+01:00");
    }

    #[test]
    fn generated_timestamps_round_trip() {
        let now = EventTimestamp::now();
        assert!(now.as_str().ends_with("+00:00"), "{now}");
        assert_eq!(EventTimestamp::parse(now.as_str()).unwrap().instant(), now.instant());
    }
}
