//! `[[expect]]` rules compiled: schedules parsed, time zones resolved, every mistake named by
//! its key.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use crate::config::ExpectConfig;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::error::ExpectError;

/// What makes a stage due.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A schedule of deadlines.
    Schedule {
        /// The deadlines, in `zone`.
        cron: Box<Cron>,
        /// The schedule's time zone.
        zone: Tz,
        /// How long before a deadline a success counts for it (default: since the previous one).
        window: Option<TimeDelta>,
    },
    /// Due `within` after the upstream stage succeeded for the same source.
    After {
        /// The upstream stage.
        upstream: String,
        /// How soon after it.
        within: TimeDelta,
    },
}

/// Checks `[[expect]]` rules as the types cannot, by compiling them: the error names the key.
pub fn validate(rules: &[ExpectConfig]) -> Result<(), herald_config::Invalid> {
    match compile(rules) {
        Ok(_) => Ok(()),
        Err(ExpectError::Rule { key, reason }) => Err(herald_config::Invalid::new(key, reason)),
        Err(other) => Err(herald_config::Invalid::new("expect", other.to_string())),
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its unique name.
    pub name: String,
    /// The stage that must succeed.
    pub stage: String,
    /// The sources it must succeed for (empty: every source whose upstream succeeded).
    pub sources: Vec<String>,
    /// What makes it due.
    pub trigger: Trigger,
    /// How long after a deadline the miss is `STAGE_MISSING` (default: see [`Rule::missing_at`]).
    pub missing_after: Option<TimeDelta>,
    /// The event that counts (with status `SUCCESS`).
    pub event: String,
}

/// With `after`, a miss is missing a day after its deadline unless told otherwise.
const AFTER_MISSING_DEFAULT: TimeDelta = TimeDelta::days(1);

impl Rule {
    /// Whether the rule is about `source`.
    pub fn covers(&self, source: &str) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|s| s == source)
    }

    /// The first deadline strictly after `after`, with the start of its window.
    pub fn deadline_after(&self, after: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let Trigger::Schedule { cron, zone, window } = &self.trigger else { return None };
        let deadline = cron.find_next_occurrence(&after.with_timezone(zone), false).ok()?;
        let from = match window {
            Some(window) => deadline.with_timezone(&Utc) - *window,
            None => cron.find_previous_occurrence(&deadline, false).ok()?.with_timezone(&Utc),
        };
        Some((deadline.with_timezone(&Utc), from))
    }

    /// When a miss of `deadline` becomes `STAGE_MISSING`.
    pub fn missing_at(&self, deadline: DateTime<Utc>) -> DateTime<Utc> {
        if let Some(after) = self.missing_after {
            return deadline + after;
        }
        match &self.trigger {
            Trigger::Schedule { .. } => {
                self.deadline_after(deadline).map_or(deadline + AFTER_MISSING_DEFAULT, |(next, _)| next)
            }
            Trigger::After { .. } => deadline + AFTER_MISSING_DEFAULT,
        }
    }
}

fn delta(duration: Duration, key: String) -> Result<TimeDelta, ExpectError> {
    TimeDelta::from_std(duration).map_err(|_| ExpectError::Rule { key, reason: "too long".into() })
}

/// Compiles `[[expect]]` rules; the error names the key, e.g. `expect[1].by`.
pub fn compile(rules: &[ExpectConfig]) -> Result<Vec<Rule>, ExpectError> {
    let mut names = BTreeSet::new();
    rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let key = |field: &str| format!("expect[{index}].{field}");
            let invalid = |field: &str, reason: String| ExpectError::Rule { key: key(field), reason };
            if rule.name.is_empty() || !names.insert(rule.name.as_str()) {
                return Err(invalid("name", format!("`{}` must be non-empty and unique", rule.name)));
            }
            if rule.stage.is_empty() {
                return Err(invalid("stage", "the stage that must succeed is required".into()));
            }
            let trigger = match (&rule.by, &rule.after) {
                (Some(_), Some(_)) => {
                    return Err(invalid("after", "give either `by` (a schedule) or `after` (an upstream stage)".into()))
                }
                (None, None) => {
                    return Err(invalid("by", "give `by` (a schedule) or `after` (an upstream stage)".into()))
                }
                (Some(by), None) => {
                    let cron =
                        Cron::from_str(by).map_err(|err| invalid("by", format!("`{by}` is not a schedule: {err}")))?;
                    let zone_name = rule.timezone.as_deref().unwrap_or("UTC");
                    let zone = Tz::from_str(zone_name).map_err(|_| {
                        invalid("timezone", format!("`{zone_name}` is not a time zone, e.g. \"Europe/Berlin\""))
                    })?;
                    if rule.sources.is_empty() {
                        return Err(invalid(
                            "sources",
                            "a schedule needs the sources it expects, e.g. [\"OrdersDB\"]".into(),
                        ));
                    }
                    if rule.within.is_some() {
                        return Err(invalid("within", "`within` goes with `after`; a schedule has `window`".into()));
                    }
                    if cron.find_next_occurrence(&Utc::now().with_timezone(&zone), false).is_err() {
                        return Err(invalid("by", format!("`{by}` never happens")));
                    }
                    let window = rule.window.map(|w| delta(w, key("window"))).transpose()?;
                    Trigger::Schedule { cron: Box::new(cron), zone, window }
                }
                (None, Some(upstream)) => {
                    let Some(within) = rule.within else {
                        return Err(invalid("within", "`after` needs `within`, e.g. \"30m\"".into()));
                    };
                    if upstream == &rule.stage {
                        return Err(invalid("after", "a stage cannot follow itself".into()));
                    }
                    if rule.window.is_some() || rule.timezone.is_some() {
                        return Err(invalid("window", "`window` and `timezone` go with `by`".into()));
                    }
                    Trigger::After { upstream: upstream.clone(), within: delta(within, key("within"))? }
                }
            };
            Ok(Rule {
                name: rule.name.clone(),
                stage: rule.stage.clone(),
                sources: rule.sources.clone(),
                trigger,
                missing_after: rule.missing_after.map(|d| delta(d, key("missing_after"))).transpose()?,
                event: rule.event.clone(),
            })
        })
        .collect()
}
