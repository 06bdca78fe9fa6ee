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
    /// On the table and enabled.
    Enabled,
    /// On the table, disabled (`ALTER TABLE … DISABLE TRIGGER`).
    Disabled,
    /// Not on the table.
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
                write!(f, "the capture trigger `herald_capture` on {table} is disabled")
            }
            Lost::Trigger { table, .. } => write!(f, "the capture trigger `herald_capture` on {table} is gone"),
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
        }
    }
}

/// An LSN as Postgres writes it (`16/B374D848`).
pub(crate) fn lsn(value: u64) -> String {
    format!("{:X}/{:X}", value >> 32, value & 0xFFFF_FFFF)
}

/// Whether the WAL capture is the one `committed` belongs to.
pub(crate) fn check_wal(committed: &Committed<u64>, slot: &str, now: &WalCapture) -> Option<Lost> {
    if let Some(lost) = server_changed(committed.server, now.server) {
        return Some(lost);
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

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: ServerIdentity = ServerIdentity { system: 7642011472967116994, timeline: 1 };

    fn committed<C>(position: C) -> Committed<C> {
        Committed { position, server: Some(SERVER), at: None }
    }

    #[test]
    fn a_wal_capture_is_lost_when_its_slot_is_gone_ahead_or_on_another_server() {
        let at = |slot_confirmed| WalCapture { slot_confirmed, server: SERVER };
        assert_eq!(check_wal(&committed(0x500), "s", &at(Some(0x500))), None);
        assert_eq!(check_wal(&committed(0x500), "s", &at(Some(0x400))), None, "behind: herald skips what it has");
        assert_eq!(check_wal(&committed(0x500), "s", &at(None)), Some(Lost::SlotMissing { slot: "s".into() }));
        let ahead = check_wal(&committed(0x500), "s", &at(Some(0x900))).unwrap();
        assert_eq!(ahead, Lost::SlotAhead { slot: "s".into(), slot_lsn: 0x900, position: 0x500 });
        assert!(ahead.to_string().contains("0/900") && ahead.to_string().contains("0/500"), "{ahead}");
        let failed_over = WalCapture { slot_confirmed: Some(0x500), server: ServerIdentity { timeline: 2, ..SERVER } };
        let lost = check_wal(&committed(0x500), "s", &failed_over).unwrap();
        assert!(lost.to_string().contains("timeline 2, was 1"), "{lost}");
        let restored = WalCapture { slot_confirmed: Some(0x500), server: ServerIdentity { system: 1, ..SERVER } };
        assert!(check_wal(&committed(0x500), "s", &restored).unwrap().to_string().contains("another cluster"));
        // A position stored before herald recorded the server: the slot alone decides.
        let old = Committed { position: 0x500, server: None, at: None };
        assert_eq!(check_wal(&old, "s", &restored), None);
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
