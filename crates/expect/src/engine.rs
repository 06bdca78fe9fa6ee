//! The evaluation, with no Kafka in sight: what each (rule, source) pair is owed, which events
//! pay it, and which alerts a moment in time calls for. The evaluator feeds it events and ticks
//! and persists the pairs it changed; unit tests feed it a scripted timeline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use herald_sdk::StageEvent;
use serde::{Deserialize, Serialize};

use crate::rules::{Rule, Trigger};

/// The names of the events herald publishes; they never pay a deadline.
pub const STAGE_LATE: &str = "STAGE_LATE";
/// See [`STAGE_LATE`].
pub const STAGE_MISSING: &str = "STAGE_MISSING";
/// See [`STAGE_LATE`].
pub const STAGE_RECOVERED: &str = "STAGE_RECOVERED";

/// A deadline a pair is watched for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Due {
    /// A success from this time on counts.
    pub from: DateTime<Utc>,
    /// When `STAGE_LATE` is due without one.
    pub deadline: DateTime<Utc>,
    /// When `STAGE_MISSING` is due without one, and the window closes.
    pub missing_at: DateTime<Utc>,
    /// Whether `STAGE_LATE` was published for it.
    pub late_sent: bool,
}

/// What the evaluator remembers of one (rule, source); persisted in the state topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairState {
    /// The success that last paid a deadline: each success pays one.
    pub counted: Option<DateTime<Utc>>,
    /// The deadline watched now.
    pub due: Option<Due>,
    /// The pair's last event (any status), as JSON, for alerts.
    pub last_event: Option<String>,
    /// The instant of the newest run start seen (`STAGE_STARTED`, or `RUNNING`): a success
    /// dated before it is a superseded run's, and does not count (the newest event decides, as
    /// a poller of the table sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
}

/// A (rule name, source).
pub type PairKey = (String, String);

/// What an alert says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// The deadline passed without a success.
    Late,
    /// The window closed without one.
    Missing,
    /// A success arrived after `Late`.
    Recovered,
}

/// An alert to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Which.
    pub kind: AlertKind,
    /// The rule.
    pub rule: String,
    /// The source (the Kafka key).
    pub source: String,
    /// The stage.
    pub stage: String,
    /// The deadline it is about.
    pub expected_by: DateTime<Utc>,
    /// The pair's last event, as JSON.
    pub last_event: Option<String>,
}

impl Alert {
    /// The alert as a stage event, stamped `now`.
    pub fn to_json(&self, now: DateTime<Utc>) -> String {
        let (event, status) = match self.kind {
            AlertKind::Late => (STAGE_LATE, "LATE"),
            AlertKind::Missing => (STAGE_MISSING, "MISSING"),
            AlertKind::Recovered => (STAGE_RECOVERED, "RECOVERED"),
        };
        let last_event = self
            .last_event
            .as_deref()
            .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
            .unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "event": event,
            "stage": self.stage,
            "source": self.source,
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
            "status": status,
            "rule": self.rule,
            "expected_by": self.expected_by.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
            "last_event": last_event,
        })
        .to_string()
    }
}

/// Every pair this process owns, and what they are owed.
#[derive(Debug)]
pub struct Engine {
    rules: Arc<Vec<Rule>>,
    pairs: BTreeMap<PairKey, PairState>,
    /// Pairs changed since [`Engine::take_changed`].
    changed: BTreeSet<PairKey>,
}

impl Engine {
    /// An engine owning nothing yet.
    pub fn new(rules: Arc<Vec<Rule>>) -> Self {
        Self { rules, pairs: BTreeMap::new(), changed: BTreeSet::new() }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Takes over `pairs` (restored from the state topic) and starts watching the scheduled
    /// pairs of `sources` that have no state yet. `now` places their first deadline.
    pub fn adopt(&mut self, pairs: Vec<(PairKey, PairState)>, sources: impl Fn(&str) -> bool, now: DateTime<Utc>) {
        for (key, state) in pairs {
            if self.rules.iter().any(|rule| rule.name == key.0) {
                self.pairs.insert(key, state);
            }
        }
        let rules = Arc::clone(&self.rules);
        for rule in rules.iter().filter(|rule| matches!(rule.trigger, Trigger::Schedule { .. })) {
            for source in rule.sources.iter().filter(|source| sources(source)) {
                let key = (rule.name.clone(), source.clone());
                if self.pairs.get(&key).is_none_or(|state| state.due.is_none()) {
                    let state = self.pairs.entry(key.clone()).or_default();
                    state.due = next_due(rule, now, now);
                    self.changed.insert(key);
                }
            }
        }
    }

    /// Forgets the pairs of sources this process no longer owns.
    pub fn release(&mut self, owned: impl Fn(&str) -> bool) {
        self.pairs.retain(|(_, source), _| owned(source));
        self.changed.retain(|(_, source)| owned(source));
    }

    /// How many pairs it watches.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether it watches none.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// One pair's state.
    pub fn pair(&self, key: &PairKey) -> Option<&PairState> {
        self.pairs.get(key)
    }

    /// The pairs changed since the last call, with their state, to persist.
    pub fn take_changed(&mut self) -> Vec<(PairKey, PairState)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .filter_map(|key| self.pairs.get(&key).cloned().map(|state| (key, state)))
            .collect()
    }

    /// Reads one event of an owned source; returns the alerts it calls for (`Recovered`).
    pub fn on_event(&mut self, event: &StageEvent, now: DateTime<Utc>) -> Vec<Alert> {
        if [STAGE_LATE, STAGE_MISSING, STAGE_RECOVERED].contains(&event.event.as_str()) {
            return Vec::new();
        }
        let success = event.status == "SUCCESS";
        let at = event.timestamp.instant();
        let mut alerts = Vec::new();
        let rules = Arc::clone(&self.rules);
        for rule in rules.iter().filter(|rule| rule.covers(&event.source)) {
            let key = (rule.name.clone(), event.source.clone());
            if rule.stage == event.stage {
                let scheduled = matches!(rule.trigger, Trigger::Schedule { .. });
                if !scheduled && !self.pairs.contains_key(&key) {
                    // An `after` pair starts with its upstream success.
                    continue;
                }
                let state = self.pairs.entry(key.clone()).or_default();
                state.last_event = Some(event.to_json());
                self.changed.insert(key.clone());
                if event.starts_a_run() && state.started_at.is_none_or(|started| at > started) {
                    state.started_at = Some(at);
                }
                if !(success && event.event == rule.event) {
                    continue;
                }
                if state.started_at.is_some_and(|started| started > at) {
                    // A newer run began after this success: the stage is running, not done.
                    continue;
                }
                let Some(due) = state.due.clone() else { continue };
                let fresh = state.counted.is_none_or(|counted| at > counted);
                if !(fresh && at >= due.from && at < due.missing_at) {
                    continue;
                }
                if due.late_sent {
                    alerts.push(alert(AlertKind::Recovered, rule, &key.1, &due, state));
                }
                state.counted = Some(at);
                state.due = next_due(rule, due.deadline, now);
            } else if let Trigger::After { upstream, within } = &rule.trigger {
                if *upstream != event.stage || !success || event.event != rule.event {
                    continue;
                }
                let state = self.pairs.entry(key.clone()).or_default();
                let paid_already = state.counted.is_some_and(|counted| counted >= at);
                if state.due.is_none() && !paid_already {
                    let deadline = at + *within;
                    state.due =
                        Some(Due { from: at, deadline, missing_at: rule.missing_at(deadline), late_sent: false });
                    self.changed.insert(key);
                }
            }
        }
        alerts
    }

    /// The alerts `now` calls for. `caught_up(source)` says whether everything published to
    /// the source's partition before now has been read: a deadline is judged only then, so a
    /// success waiting unread is never reported missing.
    pub fn on_tick(&mut self, now: DateTime<Utc>, caught_up: impl Fn(&str) -> bool) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let rules = Arc::clone(&self.rules);
        for (key, state) in self.pairs.iter_mut() {
            let Some(due) = state.due.clone() else { continue };
            if now < due.deadline || !caught_up(&key.1) {
                continue;
            }
            let Some(rule) = rules.iter().find(|rule| rule.name == key.0) else { continue };
            if !due.late_sent {
                alerts.push(alert(AlertKind::Late, rule, &key.1, &due, state));
                if let Some(due) = state.due.as_mut() {
                    due.late_sent = true;
                }
                self.changed.insert(key.clone());
            }
            if now >= due.missing_at {
                alerts.push(alert(AlertKind::Missing, rule, &key.1, &due, state));
                state.due = next_due(rule, due.deadline, now);
                self.changed.insert(key.clone());
            }
        }
        alerts
    }

    /// When [`Engine::on_tick`] has something to do next.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.pairs
            .values()
            .filter_map(|state| state.due.as_ref())
            .map(|due| if due.late_sent { due.missing_at } else { due.deadline })
            .min()
    }
}

fn alert(kind: AlertKind, rule: &Rule, source: &str, due: &Due, state: &PairState) -> Alert {
    Alert {
        kind,
        rule: rule.name.clone(),
        source: source.to_owned(),
        stage: rule.stage.clone(),
        expected_by: due.deadline,
        last_event: state.last_event.clone(),
    }
}

/// The next deadline of a scheduled rule after `after` whose window is still open at `now`
/// (deadlines whose whole window passed while no herald watched are skipped, not reported);
/// `None` for an `after` rule, which waits for its next upstream success.
fn next_due(rule: &Rule, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<Due> {
    let mut after = after;
    loop {
        let (deadline, from) = rule.deadline_after(after)?;
        let missing_at = rule.missing_at(deadline);
        if missing_at > now {
            return Some(Due { from, deadline, missing_at, late_sent: false });
        }
        after = deadline;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::ExpectConfig;
    use crate::rules::compile;

    fn rules(json: &str) -> Arc<Vec<Rule>> {
        let rules: Vec<ExpectConfig> = serde_json::from_str(json).unwrap();
        Arc::new(compile(&rules).unwrap())
    }

    fn at(text: &str) -> DateTime<Utc> {
        format!("2026-12-01T{text}Z").parse().unwrap()
    }

    fn event(source: &str, stage: &str, status: &str, time: &str) -> StageEvent {
        let json = format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"{stage}","source":"{source}","timestamp":"2026-12-01T{time}","status":"{status}"}}"#
        );
        StageEvent::from_json(json.as_bytes()).unwrap()
    }

    fn kinds(alerts: &[Alert]) -> Vec<(AlertKind, &str, String)> {
        alerts.iter().map(|a| (a.kind, a.source.as_str(), a.expected_by.format("%H:%M:%S").to_string())).collect()
    }

    const BY_SIX: &str = r#"[{"name": "bronze-by-six", "stage": "bronze", "sources": ["OrdersDB", "Payments"],
        "by": "0 6 * * *", "window": "12h", "missing_after": "2h"}]"#;

    #[test]
    fn a_scheduled_stage_alerts_late_then_missing_once_each_and_a_success_in_time_alerts_nothing() {
        let mut engine = Engine::new(rules(BY_SIX));
        engine.adopt(Vec::new(), |_| true, at("01:00:00"));
        assert_eq!(engine.next_wakeup(), Some(at("06:00:00")));
        assert!(engine.on_event(&event("OrdersDB", "bronze", "SUCCESS", "05:10:00"), at("05:10:01")).is_empty());
        assert!(engine.on_tick(at("05:59:59"), |_| true).is_empty());
        let late = engine.on_tick(at("06:00:00"), |_| true);
        assert_eq!(kinds(&late), [(AlertKind::Late, "Payments", "06:00:00".into())]);
        assert!(engine.on_tick(at("06:30:00"), |_| true).is_empty(), "one alert per miss");
        let missing = engine.on_tick(at("08:00:00"), |_| true);
        assert_eq!(kinds(&missing), [(AlertKind::Missing, "Payments", "06:00:00".into())]);
        assert!(engine.on_tick(at("09:00:00"), |_| true).is_empty());
        // Both pairs now watch tomorrow's deadline.
        let tomorrow = "2026-12-02T06:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(engine.next_wakeup(), Some(tomorrow));
    }

    #[test]
    fn a_success_superseded_by_a_newer_run_is_not_done_and_the_rerun_s_success_is() {
        let mut engine = Engine::new(rules(BY_SIX));
        engine.adopt(Vec::new(), |_| true, at("01:00:00"));
        // A re-run started at 05:30; the 05:10 success read after it (another partition's
        // lag, a replay) is the superseded run's: OrdersDB is running at the deadline.
        engine.on_event(&event("OrdersDB", "bronze", "RUNNING", "05:30:00"), at("05:30:01"));
        engine.on_event(&event("OrdersDB", "bronze", "SUCCESS", "05:10:00"), at("05:31:00"));
        engine.on_event(&event("Payments", "bronze", "SUCCESS", "05:40:00"), at("05:40:01"));
        let late = engine.on_tick(at("06:00:00"), |_| true);
        assert_eq!(kinds(&late), [(AlertKind::Late, "OrdersDB", "06:00:00".into())]);
        // The re-run's own success recovers it.
        let recovered = engine.on_event(&event("OrdersDB", "bronze", "SUCCESS", "06:10:00"), at("06:10:01"));
        assert_eq!(kinds(&recovered), [(AlertKind::Recovered, "OrdersDB", "06:00:00".into())]);
    }

    #[test]
    fn a_late_success_recovers_and_pays_only_its_own_deadline() {
        let mut engine = Engine::new(rules(BY_SIX));
        engine.adopt(Vec::new(), |source| source == "OrdersDB", at("01:00:00"));
        assert_eq!(engine.len(), 1, "only the owned source");
        assert_eq!(
            kinds(&engine.on_tick(at("06:00:00"), |_| true)),
            [(AlertKind::Late, "OrdersDB", "06:00:00".into())]
        );
        let recovered = engine.on_event(&event("OrdersDB", "bronze", "SUCCESS", "07:00:00"), at("07:00:01"));
        assert_eq!(kinds(&recovered), [(AlertKind::Recovered, "OrdersDB", "06:00:00".into())]);
        assert!(recovered[0].last_event.as_deref().unwrap().contains("07:00:00"));
        // A FAILED run does not pay; the next deadline wants a success after 07:00.
        assert!(engine.on_event(&event("OrdersDB", "bronze", "FAILED", "20:00:00"), at("20:00:01")).is_empty());
        let late = engine.on_tick("2026-12-02T06:00:00Z".parse().unwrap(), |_| true);
        assert_eq!(kinds(&late), [(AlertKind::Late, "OrdersDB", "06:00:00".into())]);
        let json: serde_json::Value = serde_json::from_str(&late[0].to_json(at("06:00:00"))).unwrap();
        assert_eq!((json["event"].as_str(), json["status"].as_str()), (Some("STAGE_LATE"), Some("LATE")));
        assert_eq!(json["last_event"]["status"], "FAILED", "the alert carries the pair's last event");
    }

    #[test]
    fn a_deadline_is_judged_only_once_the_partition_is_read_up_to_now() {
        let mut engine = Engine::new(rules(BY_SIX));
        engine.adopt(Vec::new(), |source| source == "OrdersDB", at("01:00:00"));
        assert!(engine.on_tick(at("06:00:01"), |_| false).is_empty(), "a success may be waiting unread");
        assert!(engine.on_event(&event("OrdersDB", "bronze", "SUCCESS", "05:59:00"), at("06:00:02")).is_empty());
        assert!(engine.on_tick(at("06:00:03"), |_| true).is_empty(), "it was in time");
    }

    #[test]
    fn a_stage_after_its_upstream_is_due_within_its_time_and_state_survives_a_restart() {
        let rules =
            rules(r#"[{"name": "silver-after-bronze", "stage": "silver", "after": "bronze", "within": "30m"}]"#);
        let mut engine = Engine::new(Arc::clone(&rules));
        engine.adopt(Vec::new(), |_| true, at("09:00:00"));
        assert!(engine.is_empty(), "an `after` pair starts with its upstream");
        assert!(engine.on_event(&event("A", "silver", "SUCCESS", "09:01:00"), at("09:01:00")).is_empty());
        engine.on_event(&event("A", "bronze", "SUCCESS", "10:00:00"), at("10:00:00"));
        engine.on_event(&event("B", "bronze", "SUCCESS", "10:05:00"), at("10:05:00"));
        engine.on_event(&event("B", "silver", "SUCCESS", "10:20:00"), at("10:20:00"));
        let late = engine.on_tick(at("10:30:00"), |_| true);
        assert_eq!(kinds(&late), [(AlertKind::Late, "A", "10:30:00".into())]);

        // A restart: a new engine from the persisted states alerts nothing again.
        let persisted = engine.take_changed();
        let mut restarted = Engine::new(rules);
        restarted.adopt(persisted, |_| true, at("10:31:00"));
        assert!(restarted.on_tick(at("10:40:00"), |_| true).is_empty(), "LATE was sent before the restart");
        let recovered = restarted.on_event(&event("A", "silver", "SUCCESS", "10:45:00"), at("10:45:00"));
        assert_eq!(kinds(&recovered), [(AlertKind::Recovered, "A", "10:30:00".into())]);
        assert_eq!(restarted.next_wakeup(), None, "nothing owed until the next upstream success");
    }

    #[test]
    fn alerts_and_deadlines_whose_window_passed_while_nobody_watched_are_not_replayed() {
        let mut engine = Engine::new(rules(BY_SIX));
        let key = ("bronze-by-six".to_owned(), "OrdersDB".to_owned());
        let stale = PairState {
            counted: None,
            due: Some(Due {
                from: at("18:00:00"),
                deadline: at("06:00:00"),
                missing_at: at("08:00:00"),
                late_sent: true,
            }),
            last_event: None,
            started_at: None,
        };
        engine.adopt(
            vec![(key.clone(), stale)],
            |source| source == "OrdersDB",
            "2026-12-05T12:00:00Z".parse().unwrap(),
        );
        // The restored deadline is reported missing once; the days in between are skipped.
        let alerts = engine.on_tick("2026-12-05T12:00:01Z".parse().unwrap(), |_| true);
        assert_eq!(kinds(&alerts), [(AlertKind::Missing, "OrdersDB", "06:00:00".into())]);
        let next = engine.pair(&key).unwrap().due.clone().unwrap();
        assert_eq!(next.deadline, "2026-12-06T06:00:00Z".parse::<DateTime<Utc>>().unwrap());
    }
}
