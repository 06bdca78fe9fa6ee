//! Whether the capture went on while herald was not watching: a source that has a cursor in
//! Kafka has published everything up to it, so on every start (and, for a trigger, while
//! running) the capture must still be the one that cursor belongs to. When it is not — a DBA
//! dropped the replication slot (the standard remedy for a slot that pins WAL), a trigger was
//! dropped or disabled, the database was restored or failed over to another copy — the rows
//! written meanwhile were never captured, and going on would be a silent gap.
//!
//! The decisions here are pure functions of what Kafka stored and what the database shows, so
//! they are unit-tested without either.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::error::SourceError;

/// Which server the capture reads: a restore or a failover to another copy shows as another
/// system identifier, a point-in-time recovery or a promotion as another timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerIdentity {
    /// `pg_control_system().system_identifier`: the cluster, fixed at `initdb`.
    pub(crate) system: u64,
    /// The timeline the server writes WAL on: the history it is on.
    pub(crate) timeline: u32,
}

impl ServerIdentity {
    /// The server `conn` is connected to, a primary (every function here is readable by any
    /// role). The timeline is the one of the WAL segment being written, read from its name:
    /// `pg_control_checkpoint()` would still say the old one until the first checkpoint after
    /// a promotion, which finishes in the background, so a source starting meanwhile would not
    /// see the failover.
    pub(crate) async fn read(conn: &mut PgConnection) -> Result<Self, SourceError> {
        let (system, timeline): (String, i32) = sqlx::query_as(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()),
                    ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(SourceError::postgres("reading the server's identity"))?;
        let system = system.parse().map_err(|_| SourceError::Config {
            key: "(server)".into(),
            reason: format!("system identifier `{system}` is not a number"),
        })?;
        Ok(Self { system, timeline: u32::try_from(timeline).unwrap_or(0) })
    }
}

/// What Kafka holds of a source: its position and where and when it was stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Committed<C> {
    /// The position: everything before it is in Kafka.
    pub(crate) position: C,
    /// The server it was read from (absent in positions stored before herald recorded it).
    pub(crate) server: Option<ServerIdentity>,
    /// When it was stored.
    pub(crate) at: Option<DateTime<Utc>>,
}

impl<C> Committed<C> {
    /// The same record with its position changed by `change`.
    pub(crate) fn map<D>(self, change: impl FnOnce(C) -> D) -> Committed<D> {
        Committed { position: change(self.position), server: self.server, at: self.at }
    }
}

/// The trigger capture as the catalog shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TriggerState {
    /// Every trigger of the capture on the table and enabled.
    Enabled,
    /// On the table, one at least disabled (`ALTER TABLE … DISABLE TRIGGER`).
    Disabled,
    /// One at least not on the table.
    Missing,
}

/// What the trigger capture looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TriggerCapture {
    pub(crate) trigger: TriggerState,
    /// The change id sequence's last value (`None` when `herald_changes` is gone).
    pub(crate) last_change_id: Option<i64>,
    /// The database's current transaction id (`pg_current_xact_id()`).
    pub(crate) current_txid: u64,
    pub(crate) server: ServerIdentity,
}

/// What the WAL capture looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalCapture {
    /// The slot's confirmed LSN, or `None` when the slot is gone.
    pub(crate) slot_confirmed: Option<u64>,
    pub(crate) server: ServerIdentity,
    /// After a promotion that kept the slot (a failover slot): where, in the server's timeline
    /// history, the timeline herald's position was stored on ended. `None` when not read.
    pub(crate) timeline_ended: Option<u64>,
}

/// How a capture was lost, and so what herald cannot know it published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The replication slot is gone: WAL written since it was dropped was never decoded.
    SlotMissing { slot: String },
    /// The slot has moved past herald's position, which herald never lets it do: it was
    /// advanced, or dropped and created again.
    SlotAhead { slot: String, slot_lsn: u64, position: u64 },
    /// The capture trigger is not on the table, or disabled: rows written meanwhile were not
    /// recorded.
    Trigger { table: String, state: TriggerState },
    /// The change ids started over (`herald_changes` was dropped and created again).
    ChangesRestarted { last_change_id: Option<i64>, position: i64 },
    /// The database's transaction ids are behind herald's position: a restore of an older copy.
    TransactionsBehind { current: u64, position: u64 },
    /// Another cluster (a restore or a failover to another copy) or another timeline
    /// (point-in-time recovery, a promoted replica).
    ServerChanged { was: ServerIdentity, now: ServerIdentity },
    /// A promotion kept the slot, but herald's position is past where its timeline ended in the
    /// promoted server's history: herald published changes that server never had.
    PastPromotion { was: u32, now: u32, ended: u64, position: u64 },
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::SlotMissing { slot } => write!(f, "replication slot `{slot}` is gone"),
            Lost::SlotAhead { slot, slot_lsn, position } => write!(
                f,
                "replication slot `{slot}` is at {}, past herald's position {}: it was advanced, or dropped and created again",
                lsn(*slot_lsn),
                lsn(*position)
            ),
            Lost::Trigger { table, state: TriggerState::Disabled } => {
                write!(f, "a capture trigger (`herald_capture` or `herald_capture_update`) on {table} is disabled")
            }
            Lost::Trigger { table, .. } => write!(f, "a capture trigger (`herald_capture` or `herald_capture_update`) on {table} is gone"),
            Lost::ChangesRestarted { last_change_id, position } => write!(
                f,
                "herald_changes started over (its last change id is {}, herald's position is {position})",
                last_change_id.map_or_else(|| "none: the table is gone".to_owned(), |id| id.to_string())
            ),
            Lost::TransactionsBehind { current, position } => write!(
                f,
                "the database's transaction id {current} is behind herald's position {position}: a restore of an older copy"
            ),
            Lost::ServerChanged { was, now } if was.system != now.system => write!(
                f,
                "the database is another cluster (system identifier {}, was {}): a restore or a failover to another copy",
                now.system, was.system
            ),
            Lost::ServerChanged { was, now } => write!(
                f,
                "the database is on timeline {}, was {}: a point-in-time recovery or a promoted replica",
                now.timeline, was.timeline
            ),
            Lost::PastPromotion { was, now, ended, position } => write!(
                f,
                "the database was promoted to timeline {now}, and timeline {was} ended at {} in its history, before \
                 herald's position {}: herald published changes the promoted server never had (its standby was behind)",
                lsn(*ended),
                lsn(*position)
            ),
        }
    }
}

/// An LSN as Postgres writes it (`16/B374D848`).
pub(crate) fn lsn(value: u64) -> String {
    format!("{:X}/{:X}", value >> 32, value & 0xFFFF_FFFF)
}

/// Whether the WAL capture is the one `committed` belongs to. A promotion (the same cluster
/// on a later timeline) that kept the slot — a failover slot — loses nothing when herald's
/// position lies in the promoted server's history: at or before where the old timeline ended.
pub(crate) fn check_wal(committed: &Committed<u64>, slot: &str, now: &WalCapture) -> Option<Lost> {
    match server_changed(committed.server, now.server) {
        Some(Lost::ServerChanged { was, now: server }) if is_promotion(was, server) && now.slot_confirmed.is_some() => {
            match now.timeline_ended {
                Some(ended) if committed.position <= ended => {}
                Some(ended) => {
                    let (was, now) = (was.timeline, server.timeline);
                    return Some(Lost::PastPromotion { was, now, ended, position: committed.position });
                }
                None => return Some(Lost::ServerChanged { was, now: server }),
            }
        }
        Some(lost) => return Some(lost),
        None => {}
    }
    match now.slot_confirmed {
        None => Some(Lost::SlotMissing { slot: slot.to_owned() }),
        Some(slot_lsn) if slot_lsn > committed.position => {
            Some(Lost::SlotAhead { slot: slot.to_owned(), slot_lsn, position: committed.position })
        }
        Some(_) => None,
    }
}

/// Whether the trigger capture is the one `committed` (txid, change id) belongs to.
pub(crate) fn check_trigger(committed: &Committed<(u64, i64)>, table: &str, now: &TriggerCapture) -> Option<Lost> {
    if let Some(lost) = server_changed(committed.server, now.server) {
        return Some(lost);
    }
    if now.trigger != TriggerState::Enabled {
        return Some(Lost::Trigger { table: table.to_owned(), state: now.trigger });
    }
    let (txid, id) = committed.position;
    if now.last_change_id.is_none_or(|last| last < id) {
        return Some(Lost::ChangesRestarted { last_change_id: now.last_change_id, position: id });
    }
    if now.current_txid < txid {
        return Some(Lost::TransactionsBehind { current: now.current_txid, position: txid });
    }
    None
}

fn server_changed(was: Option<ServerIdentity>, now: ServerIdentity) -> Option<Lost> {
    was.filter(|was| *was != now).map(|was| Lost::ServerChanged { was, now })
}

/// Whether `now` is `was`'s cluster on a later timeline: a promoted standby (or a
/// point-in-time recovery, which the timeline history tells apart by where it forked).
pub(crate) fn is_promotion(was: ServerIdentity, now: ServerIdentity) -> bool {
    was.system == now.system && now.timeline > was.timeline
}

/// Where `timeline` ended in a timeline history file (`TIMELINE_HISTORY`: one line per
/// ancestor, `<timeline>\t<switch point LSN>\t<reason>`), if it is an ancestor there.
pub(crate) fn timeline_ended(history: &str, timeline: u32) -> Option<u64> {
    history.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let ancestor: u32 = fields.next()?.parse().ok()?;
        let (high, low) = fields.next()?.split_once('/')?;
        let switch = (u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?;
        (ancestor == timeline).then_some(switch)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: ServerIdentity = ServerIdentity { system: 7642011472967116994, timeline: 1 };

    fn committed<C>(position: C) -> Committed<C> {
        Committed { position, server: Some(SERVER), at: None }
    }

    #[test]
    fn a_wal_capture_is_lost_when_its_slot_is_gone_ahead_or_on_another_server() {
        let at = |slot_confirmed| WalCapture { slot_confirmed, server: SERVER, timeline_ended: None };
        assert_eq!(check_wal(&committed(0x500), "s", &at(Some(0x500))), None);
        assert_eq!(check_wal(&committed(0x500), "s", &at(Some(0x400))), None, "behind: herald skips what it has");
        assert_eq!(check_wal(&committed(0x500), "s", &at(None)), Some(Lost::SlotMissing { slot: "s".into() }));
        let ahead = check_wal(&committed(0x500), "s", &at(Some(0x900))).unwrap();
        assert_eq!(ahead, Lost::SlotAhead { slot: "s".into(), slot_lsn: 0x900, position: 0x500 });
        assert!(ahead.to_string().contains("0/900") && ahead.to_string().contains("0/500"), "{ahead}");
        let failed_over = WalCapture {
            slot_confirmed: Some(0x500),
            server: ServerIdentity { timeline: 2, ..SERVER },
            timeline_ended: None,
        };
        let lost = check_wal(&committed(0x500), "s", &failed_over).unwrap();
        assert!(lost.to_string().contains("timeline 2, was 1"), "{lost}");
        let restored = WalCapture {
            slot_confirmed: Some(0x500),
            server: ServerIdentity { system: 1, ..SERVER },
            timeline_ended: Some(0x900),
        };
        assert!(check_wal(&committed(0x500), "s", &restored).unwrap().to_string().contains("another cluster"));
        // A position stored before herald recorded the server: the slot alone decides.
        let old = Committed { position: 0x500, server: None, at: None };
        assert_eq!(check_wal(&old, "s", &restored), None);
    }

    #[test]
    fn a_promotion_that_kept_the_slot_loses_nothing_when_herald_s_position_is_in_the_new_history() {
        let promoted = ServerIdentity { timeline: 3, ..SERVER };
        let at = |slot_confirmed, timeline_ended| WalCapture { slot_confirmed, server: promoted, timeline_ended };
        // Timeline 1 ended at 0/700 (then 2 at 0/900): a position up to 0/700 is in the history.
        let history = "1\t0/700\tno recovery target specified\n\n2\t0/900\tno recovery target specified\n";
        assert_eq!(timeline_ended(history, 1), Some(0x700));
        assert_eq!(timeline_ended(history, 2), Some(0x900));
        assert_eq!(timeline_ended(history, 4), None);
        assert_eq!(timeline_ended("1\tA/B0000028\tbefore 2026-12-07\n", 1), Some(0xA_B000_0028));
        assert_eq!(check_wal(&committed(0x500), "s", &at(Some(0x400), Some(0x700))), None);
        assert_eq!(check_wal(&committed(0x700), "s", &at(Some(0x700), Some(0x700))), None, "the switch point itself");
        let past = check_wal(&committed(0x800), "s", &at(Some(0x400), Some(0x700))).unwrap();
        assert_eq!(past, Lost::PastPromotion { was: 1, now: 3, ended: 0x700, position: 0x800 });
        assert!(past.to_string().contains("timeline 1 ended at 0/700") && past.to_string().contains("0/800"), "{past}");
        // The slot did not come along, or the history was not read: lost, as any new timeline.
        let changed = Some(Lost::ServerChanged { was: SERVER, now: promoted });
        assert_eq!(check_wal(&committed(0x500), "s", &at(None, Some(0x700))), changed);
        assert!(matches!(check_wal(&committed(0x500), "s", &at(Some(0x400), None)), Some(Lost::ServerChanged { .. })));
        // A slot that came along but moved past herald's position is still a slot ahead.
        assert!(matches!(
            check_wal(&committed(0x500), "s", &at(Some(0x600), Some(0x700))),
            Some(Lost::SlotAhead { .. })
        ));
        // An older timeline is a restore, never a promotion.
        let older = WalCapture { slot_confirmed: Some(0x400), server: SERVER, timeline_ended: Some(0x700) };
        let on_three = Committed { position: 0x500, server: Some(promoted), at: None };
        assert!(matches!(check_wal(&on_three, "s", &older), Some(Lost::ServerChanged { .. })));
    }

    #[test]
    fn a_trigger_capture_is_lost_when_its_trigger_ids_or_transactions_went_away() {
        let now = TriggerCapture {
            trigger: TriggerState::Enabled,
            last_change_id: Some(40),
            current_txid: 900,
            server: SERVER,
        };
        assert_eq!(check_trigger(&committed((800, 40)), "t", &now), None);
        for state in [TriggerState::Missing, TriggerState::Disabled] {
            let lost = check_trigger(&committed((800, 40)), "t", &TriggerCapture { trigger: state, ..now }).unwrap();
            assert_eq!(lost, Lost::Trigger { table: "t".into(), state });
        }
        let restarted = TriggerCapture { last_change_id: Some(3), ..now };
        assert!(matches!(check_trigger(&committed((800, 40)), "t", &restarted), Some(Lost::ChangesRestarted { .. })));
        let gone = TriggerCapture { last_change_id: None, ..now };
        assert!(check_trigger(&committed((800, 40)), "t", &gone).unwrap().to_string().contains("the table is gone"));
        let older = TriggerCapture { current_txid: 700, ..now };
        assert!(matches!(check_trigger(&committed((800, 40)), "t", &older), Some(Lost::TransactionsBehind { .. })));
    }
}
