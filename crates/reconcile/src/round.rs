//! One reconcile: read both sides, compare, and repair what this side can.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_board::{agrees, compare, Board, Cell, Compared, Divergence, Snapshot, Verdict};
use herald_core::RouteConfig;
use herald_kafka::reader::{Read, TopicReader};
use herald_kafka::KafkaProperties;
use herald_sdk::StageEvent;
use herald_sdk::{LazyEvent, SinkRecord};
use herald_sink_postgres::{RouteTable, Written};
use herald_source_postgres::{PostgresSource, RowToPublish, TableRow, UnreadableRow};
use serde::Serialize;

use crate::error::ReconcileError;

/// How much earlier than `since` the topic is read: an event is published after the instant it
/// carries, but the producer's and the broker's clocks may disagree (as `max_clock_skew`).
const PUBLISH_SLACK: Duration = Duration::from_secs(3600);

/// What is reconciled: a status table and the topic on its other side.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A Postgres source: its table against the topic it publishes to.
    Source(PostgresSource),
    /// A Postgres sink route: the topics it reads against its table.
    Route {
        /// The route (its topics, filter and consumer group).
        route: Box<RouteConfig>,
        /// The table its sink writes.
        table: RouteTable,
    },
}

impl Subject {
    /// `source:<name>` or `route:<name>`: the metric's label, the board's mark.
    pub fn label(&self) -> String {
        match self {
            Subject::Source(source) => format!("source:{}", source.name()),
            Subject::Route { route, .. } => format!("route:{}", route.name),
        }
    }

    /// The table compared, as written in the config.
    pub fn table(&self) -> String {
        match self {
            Subject::Source(source) => {
                let config = source.config();
                config.table.clone().unwrap_or_else(|| format!("{}.pipeline_status", config.schema))
            }
            Subject::Route { table, .. } => {
                let sink = table.config();
                sink.table
                    .as_ref()
                    .map_or_else(|| format!("{}.pipeline_status_latest", sink.schema), |t| t.name.clone())
            }
        }
    }

    /// The topics compared.
    pub fn topics(&self) -> Vec<String> {
        match self {
            Subject::Source(source) => vec![source.config().topic.clone()],
            Subject::Route { route, .. } => route.topics.clone(),
        }
    }
}

/// A pair whose newest row in the table cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// The row's source column, as text.
    pub source: String,
    /// The row's stage column, as text.
    pub stage: String,
    /// Why, naming the column.
    pub reason: String,
}

impl From<UnreadableRow> for Unreadable {
    fn from(row: UnreadableRow) -> Self {
        Unreadable { source: row.source, stage: row.stage, reason: row.reason }
    }
}

/// What a reconcile found, and did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `source:<name>` or `route:<name>`.
    pub subject: String,
    /// The table compared.
    pub table: String,
    /// The topics compared.
    pub topics: Vec<String>,
    /// The window's start.
    pub since: DateTime<Utc>,
    /// Pairs on either side.
    pub pairs: usize,
    /// Every pair on which they differ.
    pub divergences: Vec<Divergence>,
    /// Of the divergences, how many this side can repair (`--repair` writes or publishes them).
    pub repairable: usize,
    /// Of the divergences, how many the repair repaired.
    pub repaired: usize,
    /// Divergences this side cannot repair (it is the other side that lacks, or a row herald's
    /// own sink wrote), and pairs whose newest row cannot become an event: one per line of
    /// `cannot_repair`.
    pub unrepairable: usize,
    /// Why each pair that cannot be repaired from this side cannot: `source/stage: reason`.
    pub cannot_repair: Vec<String>,
    /// Pairs whose newest row cannot become an event (a NULL status or timestamp): neither
    /// compared as agreeing nor dropped, and not repairable by herald.
    pub unreadable: Vec<Unreadable>,
    /// Route only: events the route has not reached yet (beyond its stored offsets), not compared.
    pub in_flight: usize,
    /// Route only: of the refused events, how many are in the route's dead-letter topic.
    pub dead_lettered: usize,
    /// Route only: the route's dead-letter topic, if it has one.
    pub dead_letter_topic: Option<String>,
    /// Route only: the events of the window the table refused (recorded in
    /// `herald_rejections`), not compared: each with its reason and where its dead letter is.
    pub refused: Vec<Refused>,
}

/// An event the table refused, as `herald_rejections` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// The topic it was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Why the table refused it.
    pub reason: String,
    /// Whether its dead letter is in the route's dead-letter topic (read to see). `false` with
    /// no dead-letter topic: the route stops on it until one is set.
    pub in_dead_letter_topic: bool,
}

impl Report {
    /// The report of `subject` with these findings (nothing set aside).
    fn new(
        subject: &Subject,
        since: DateTime<Utc>,
        pairs: usize,
        divergences: Vec<Divergence>,
        repaired: usize,
    ) -> Self {
        Report {
            subject: subject.label(),
            table: subject.table(),
            topics: subject.topics(),
            since,
            pairs,
            unrepairable: 0,
            repairable: 0,
            cannot_repair: Vec::new(),
            unreadable: Vec::new(),
            divergences,
            repaired,
            in_flight: 0,
            dead_lettered: 0,
            dead_letter_topic: None,
            refused: Vec::new(),
        }
    }
}

/// Compares `subject`'s table with its topics over the window from `since`, reading the topics
/// for at most `timeout`; with `repair`, makes them agree where this side can.
pub async fn reconcile(
    kafka: &KafkaProperties,
    subject: &Subject,
    since: DateTime<Utc>,
    timeout: Duration,
    repair: bool,
) -> Result<Report, ReconcileError> {
    match subject {
        Subject::Source(source) => reconcile_source(kafka, subject, source, since, timeout, repair).await,
        Subject::Route { route, table } => reconcile_route(kafka, subject, route, table, since, timeout, repair).await,
    }
}

async fn reconcile_source(
    kafka: &KafkaProperties,
    subject: &Subject,
    source: &PostgresSource,
    since: DateTime<Utc>,
    timeout: Duration,
    repair: bool,
) -> Result<Report, ReconcileError> {
    // One cell per pair (and for a repair the row's text): the events are dropped once on the board.
    let table = Board::new();
    let mut rows_by_pair: BTreeMap<(String, String), RowToPublish> = BTreeMap::new();
    let mut unreadable: Vec<Unreadable> = Vec::new();
    source
        .latest_rows(Some(since), |row| match row {
            Ok(TableRow { event, row }) => {
                table.apply(&event);
                // The row itself only for a repair, which may publish it; whether herald's
                // sink wrote it always (that row is never published back).
                if repair || row.from_kafka {
                    rows_by_pair.insert((event.source, event.stage), row);
                }
            }
            Err(row) => unreadable.push(row.into()),
        })
        .await?;
    let topic = read_topic(kafka, &subject.topics(), since, timeout, false, |_| true).await?;
    let (table, topic_cells) = (table.snapshot(), topic.board.snapshot());
    let divergences = compare(&table, &topic_cells, Compared::ALL);
    let mut cannot_repair = Vec::new();
    let mut repairable: Vec<RowToPublish> = Vec::new();
    // Without --repair the rows are not kept: those divergences are counted as repairable.
    let mut repairable_unkept = 0;
    for divergence in &divergences {
        let pair = format!("{}/{}", divergence.source, divergence.stage);
        match divergence.verdict {
            Verdict::TableOnly | Verdict::TableNewer | Verdict::Differs => {
                match rows_by_pair.get(&(divergence.source.clone(), divergence.stage.clone())) {
                    Some(row) if row.from_kafka => cannot_repair.push(format!(
                        "{pair}: the table's newest row was written by herald's sink (it carries the `skip_when` \
                         marker), so it came from Kafka and is not published back; reconcile the route that wrote it"
                    )),
                    Some(row) => repairable.push(row.clone()),
                    None => repairable_unkept += 1,
                }
            }
            Verdict::TopicOnly | Verdict::TopicNewer => cannot_repair.push(format!(
                "{pair}: the topic is ahead of the table (its row is gone: lost by a failover to a standby that was \
                 behind, or a restore; or another producer published the event); a source publishes the table, it \
                 does not write it"
            )),
        }
    }
    for row in &unreadable {
        cannot_repair
            .push(format!("{}/{}: the newest row cannot become an event: {}", row.source, row.stage, row.reason));
    }
    let mut repaired = 0;
    if repair && !repairable.is_empty() {
        repaired = source.repair(kafka, &repairable).await?;
    }
    let mut report = Report::new(subject, since, pairs(&table, &topic_cells, &unreadable), divergences, repaired);
    report.unrepairable = cannot_repair.len();
    report.repairable = repairable.len() + repairable_unkept;
    report.cannot_repair = cannot_repair;
    report.unreadable = unreadable;
    Ok(report)
}

async fn reconcile_route(
    kafka: &KafkaProperties,
    subject: &Subject,
    route: &RouteConfig,
    sink: &RouteTable,
    since: DateTime<Utc>,
    timeout: Duration,
    repair: bool,
) -> Result<Report, ReconcileError> {
    let written = sink.written(&route.group_id()).await?;
    let mut in_flight = 0;
    let mut refused_in_window: Vec<(String, i32, i64)> = Vec::new();
    let topic = read_topic(kafka, &route.topics, since, timeout, true, |read| {
        let Some(event) = &read.event else { return false };
        if !route.filter.matches(event) || event.timestamp.instant() < since {
            return false;
        }
        // What the route has handled and the table took; the rest is not the table's to have yet.
        let next = written.next_offsets.get(&(read.topic.clone(), read.partition)).copied().unwrap_or(0);
        if read.offset >= next {
            in_flight += 1;
            return false;
        }
        let coordinates = (read.topic.clone(), read.partition, read.offset);
        if written.rejected.contains_key(&coordinates) {
            refused_in_window.push(coordinates);
            return false;
        }
        true
    })
    .await?;
    let fields = Compared {
        event: sink.keeps_field("event"),
        status: sink.keeps_field("status"),
        records: sink.keeps_field("records"),
    };
    // The table's newest row per pair; where rows tie (a table without the offset), the one
    // that is the topic's event if it is there: the table holds it, whichever a reader sees.
    let table = Board::new();
    let mut unreadable: Vec<Unreadable> = Vec::new();
    let topic_cells = topic.board.snapshot();
    for rows in sink.latest_rows().await? {
        if let Some(reason) = rows.unreadable.filter(|_| rows.events.is_empty()) {
            unreadable.push(Unreadable { source: rows.source, stage: rows.stage, reason });
            continue;
        }
        let topic_cell = topic_cells.cells.iter().find(|c| c.source == rows.source && c.stage == rows.stage);
        let chosen = rows
            .events
            .iter()
            .find(|event| topic_cell.is_some_and(|cell| agrees(&Cell::of(event), cell, fields)))
            .or_else(|| rows.events.first());
        if let Some(event) = chosen.filter(|event| event.timestamp.instant() >= since) {
            table.apply(event);
        }
    }
    let table = table.snapshot();
    let divergences = compare(&table, &topic_cells, fields);
    let repairable: Vec<&Divergence> = divergences
        .iter()
        .filter(|d| matches!(d.verdict, Verdict::TopicOnly | Verdict::TopicNewer | Verdict::Differs))
        .filter(|d| !unreadable.iter().any(|u| u.source == d.source && u.stage == d.stage))
        .collect();
    let repairable_count = repairable.len();
    let mut repaired = 0;
    let mut altered: Vec<String> = Vec::new();
    if repair && !repairable.is_empty() {
        let records: Vec<SinkRecord> = repairable
            .iter()
            .filter_map(|d| topic.latest.get(&(d.source.clone(), d.stage.clone())))
            .filter_map(|read| Some((read, StageEvent::from_json_str(&read.event).ok()?)))
            .map(|(read, event)| SinkRecord {
                event: LazyEvent::from(event),
                topic: Arc::from(read.topic.as_str()),
                partition: read.partition,
                offset: read.offset,
                origin: read.origin.clone(),
                raw: None,
            })
            .collect();
        let outcome = sink.repair(&records).await?;
        repaired = outcome.written;
        for index in outcome.already_there {
            if let Some(record) = records.get(index) {
                altered.push(format!(
                    "{}/{}: the table holds this event ({}:{}@{}) with other values; someone changed the row, and \
                     herald does not append an event twice",
                    record.event.source, record.event.stage, record.topic, record.partition, record.offset
                ));
            }
        }
    }
    let refused = refused_events(kafka, route, &written, refused_in_window, since, timeout).await?;
    let mut cannot_repair: Vec<String> = divergences
        .iter()
        .filter(|d| matches!(d.verdict, Verdict::TableOnly | Verdict::TableNewer))
        .map(|d| {
            format!(
                "{}/{}: the table is ahead of the topic; a route writes the table from the topic, it does not \
                 publish (a row written by someone else: reconcile the source that publishes the table)",
                d.source, d.stage
            )
        })
        .collect();
    cannot_repair.extend(altered);
    for row in &unreadable {
        cannot_repair.push(format!(
            "{}/{}: the table's newest row cannot become an event ({}); fix or delete the row",
            row.source, row.stage, row.reason
        ));
    }
    let mut report = Report::new(subject, since, pairs(&table, &topic_cells, &unreadable), divergences, repaired);
    report.repairable = repairable_count;
    report.unrepairable = cannot_repair.len();
    report.cannot_repair = cannot_repair;
    report.unreadable = unreadable;
    report.in_flight = in_flight;
    report.dead_lettered = refused.iter().filter(|r| r.in_dead_letter_topic).count();
    report.refused = refused;
    report.dead_letter_topic = route.dead_letter_topic.clone();
    Ok(report)
}

/// The refused events of the window, each with its reason and whether its dead letter is in the
/// route's dead-letter topic (read to see, not assumed).
async fn refused_events(
    kafka: &KafkaProperties,
    route: &RouteConfig,
    written: &Written,
    refused_in_window: Vec<(String, i32, i64)>,
    since: DateTime<Utc>,
    timeout: Duration,
) -> Result<Vec<Refused>, ReconcileError> {
    if refused_in_window.is_empty() {
        return Ok(Vec::new());
    }
    let mut letters: HashSet<(String, i32, i64)> = HashSet::new();
    if let Some(queue) = &route.dead_letter_topic {
        let from = since - chrono::Duration::from_std(PUBLISH_SLACK).unwrap_or_default();
        let mut reader = TopicReader::open(kafka, std::slice::from_ref(queue), from, "reconcile").await?;
        let read_letters = async {
            while !reader.history_done() {
                let Some(read) = reader.next().await? else { break };
                if let Some((from_route, topic, partition, offset)) = read.dead_letter_of {
                    if read.in_history && from_route == route.name {
                        letters.insert((topic, partition, offset));
                    }
                }
            }
            Ok::<_, herald_kafka::reader::HistoryError>(())
        };
        match tokio::time::timeout(timeout, read_letters).await {
            Ok(read) => read?,
            Err(_) => return Err(ReconcileError::TimedOut { topics: queue.clone(), after: timeout }),
        }
    }
    Ok(refused_in_window
        .into_iter()
        .map(|coordinates| {
            let reason = written.rejected.get(&coordinates).cloned().unwrap_or_default();
            let in_dead_letter_topic = letters.contains(&coordinates);
            let (topic, partition, offset) = coordinates;
            Refused { topic, partition, offset, reason, in_dead_letter_topic }
        })
        .collect())
}

/// The latest event of each pair on some topics.
struct TopicSide {
    board: Board,
    /// Where each pair's latest event was read, and the event.
    latest: BTreeMap<(String, String), LatestRead>,
}

struct LatestRead {
    /// The event's instant.
    at: DateTime<Utc>,
    /// The event as JSON text (a parsed event takes several times the memory).
    event: String,
    topic: String,
    partition: i32,
    offset: i64,
    origin: Option<String>,
}

/// Reads `topics` from a little before `since` to their end when reading starts, keeping the
/// latest event per pair dated at or after `since` among those `keep` takes; with
/// `keep_events`, also each pair's latest event itself and where it was read (for a repair).
async fn read_topic(
    kafka: &KafkaProperties,
    topics: &[String],
    since: DateTime<Utc>,
    timeout: Duration,
    keep_events: bool,
    mut keep: impl FnMut(&Read) -> bool,
) -> Result<TopicSide, ReconcileError> {
    let from = since - chrono::Duration::from_std(PUBLISH_SLACK).unwrap_or_default();
    let mut reader = TopicReader::open(kafka, topics, from, "reconcile").await?;
    let board = Board::new();
    let mut latest = BTreeMap::new();
    let read_history = async {
        while !reader.history_done() {
            let Some(read) = reader.next().await? else { break };
            if !read.in_history || !keep(&read) {
                continue;
            }
            let Some(event) = &read.event else { continue };
            let instant = event.timestamp.instant();
            if instant < since {
                continue;
            }
            let applied = board.apply(event);
            if !keep_events {
                continue;
            }
            let pair = (event.source.clone(), event.stage.clone());
            // The board keeps the first of two identical events (a producer's retry); where it
            // was read is the later's, which is what the route's table holds (offset breaks ties).
            let repeated =
                event.event != "STAGE_RECOVERED" && latest.get(&pair).is_some_and(|l: &LatestRead| instant >= l.at);
            if !(applied || repeated) {
                continue;
            }
            let at = LatestRead {
                at: instant,
                event: event.to_json(),
                topic: read.topic.clone(),
                partition: read.partition,
                offset: read.offset,
                origin: read.origin.clone(),
            };
            latest.insert(pair, at);
        }
        Ok::<_, herald_kafka::reader::HistoryError>(())
    };
    match tokio::time::timeout(timeout, read_history).await {
        Ok(read) => read?,
        Err(_) => return Err(ReconcileError::TimedOut { topics: topics.join(", "), after: timeout }),
    }
    Ok(TopicSide { board, latest })
}

/// How many (source, stage) pairs are on either side, counting those whose newest row cannot
/// be read.
fn pairs(table: &Snapshot, topic: &Snapshot, unreadable: &[Unreadable]) -> usize {
    let keys: std::collections::BTreeSet<(&str, &str)> = table
        .cells
        .iter()
        .chain(&topic.cells)
        .map(|cell| (cell.source.as_str(), cell.stage.as_str()))
        .chain(unreadable.iter().map(|row| (row.source.as_str(), row.stage.as_str())))
        .collect();
    keys.len()
}
