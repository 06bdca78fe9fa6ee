//! Postgres I/O: identifiers, the catalog check, the batched statements and error classification.
//!
//! Every value is bound as a parameter. Identifiers come from the config, are validated by
//! [`Ident::new`] and always quoted; the only other SQL text spliced in is a column type as the
//! catalog's `format_type` spells it.

use std::borrow::Cow;
use std::collections::HashMap;

use herald_sdk::SinkRecord;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::config::{FieldSource, TablePlan};
use crate::error::PostgresSinkError;

/// Rows per `CopyData` message of an append.
const COPY_CHUNK_ROWS: usize = 250;

/// One table's prepared write: the statement and the column types it casts to.
#[derive(Debug)]
pub(crate) struct TableWriter {
    plan: TablePlan,
    sql: String,
    /// `COPY … FROM STDIN` for appends into a plain table: half the server time of the
    /// `INSERT … UNNEST` for the same rows. `None` for upserts, views and tables with rules
    /// (which `COPY` would bypass).
    copy: Option<String>,
    /// The same `COPY` in binary format, with each column's encoding, when every column's type
    /// has one (text, varchar, json, jsonb, int2/4/8, and timestamps fed from the event's
    /// timestamp): the server then parses no text but the JSON. `None`: text format.
    binary_copy: Option<(String, Vec<BinaryColumn>)>,
    /// Indexes into `plan.columns` of the columns fed from arrays (all but constants).
    array_columns: Vec<usize>,
    /// `postgres:<schema>.<table>`, as herald's Postgres source names rows of this table in the
    /// `herald.origin` header: such events came from this table and are not written back.
    origin: String,
    /// Appending to someone else's table: its unique indexes whose columns are all fed from
    /// what repeats between two events of one pair (`source`, `stage`, `event`, `status`,
    /// constants), each as `(index, columns)`. Such an index refuses the second event of a pair.
    pub(crate) repeat_refusing_indexes: Vec<(String, Vec<String>)>,
}

impl TableWriter {
    /// Whether this table keeps the newest event per key (an upsert).
    pub(crate) fn is_newest_wins(&self) -> bool {
        self.plan.upsert.is_some()
    }

    /// Reads the table's columns from the catalog, checks the mapping against them and builds
    /// the statement.
    pub(crate) async fn prepare(conn: &mut PgConnection, plan: TablePlan) -> Result<Self, PostgresSinkError> {
        let table = plan.table.to_string();
        let rows: Vec<PgRow> = sqlx::query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text, t.typname::text,
                    format_type(a.atttypid, NULL)
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(&table)
        .fetch_all(&mut *conn)
        .await
        .map_err(|source| PostgresSinkError::Catalog { table: table.clone(), source })?;
        if rows.is_empty() {
            if plan.legacy {
                return Err(PostgresSinkError::NoLegacyTable { ddl: plan.fitting_ddl(), table });
            }
            return Err(PostgresSinkError::NoTable { table });
        }
        // name → (type as declared, category, type name, type without modifiers)
        let mut catalog: HashMap<String, (String, String, String, String)> = HashMap::new();
        for row in rows {
            catalog.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?));
        }

        let mut casts = Vec::new();
        let mut binary_columns = Vec::new();
        let mut problems = Vec::new();
        for (column, source) in &plan.columns {
            match catalog.get(column.as_str()) {
                None => problems.push(format!("no column `{}`", column.as_str())),
                Some((sql_type, category, type_name, base_type)) => {
                    if !compatible(source, category, type_name) {
                        problems.push(format!(
                            "column `{}` is `{sql_type}`, which cannot hold {}",
                            column.as_str(),
                            describe(source)
                        ));
                    }
                    // Cast to the type without its modifier: an explicit cast to `varchar(8)` would
                    // silently truncate, while assigning to the column checks the length.
                    casts.push(base_type.clone());
                    binary_columns.push(BinaryColumn::for_column(type_name, source));
                }
            }
        }
        if !problems.is_empty() {
            return Err(PostgresSinkError::Mapping { table, problems });
        }

        let array_columns: Vec<usize> =
            (0..plan.columns.len()).filter(|&i| !matches!(plan.columns[i].1, FieldSource::Constant(_))).collect();
        let sql = build_statement(&plan, &casts, &array_columns);
        let (resolved, plain_table): (String, bool) = sqlx::query_as(
            "SELECT n.nspname || '.' || c.relname, c.relkind IN ('r', 'p') AND NOT c.relhasrules
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass($1)",
        )
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
        let copy = (plan.upsert.is_none() && plain_table).then(|| copy_statement(&plan));
        let binary_columns: Option<Vec<BinaryColumn>> = binary_columns.into_iter().collect();
        let binary_copy = match (&copy, binary_columns) {
            (Some(copy), Some(columns)) => Some((format!("{copy} WITH (FORMAT binary)"), columns)),
            _ => None,
        };
        let repeat_refusing_indexes = if plan.legacy && plan.upsert.is_none() {
            repeat_refusing_indexes(conn, &table, &plan).await?
        } else {
            Vec::new()
        };
        Ok(Self {
            plan,
            sql,
            copy,
            binary_copy,
            array_columns,
            origin: format!("postgres:{resolved}"),
            repeat_refusing_indexes,
        })
    }

    /// What `herald check` and the start of a route should say about this table: an append
    /// that a unique index will refuse from a pair's second event on, and what to write instead.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.repeat_refusing_indexes
            .iter()
            .map(|(index, columns)| {
                let quoted: Vec<String> = columns.iter().map(|column| format!("\"{column}\"")).collect();
                format!(
                    "table {} has unique index `{index}` on ({}), so `mode = \"append\"` is refused from the second \
                     event of a pair on (each then fails or goes to the dead-letter topic); for one row per pair write \
                     `mode = \"upsert\"` with `conflict_key = [{}]`",
                    self.plan.table,
                    columns.join(", "),
                    quoted.join(", ")
                )
            })
            .collect()
    }

    /// The hint for a row this table refused, when an index named in
    /// [`TableWriter::warnings`] refused it.
    pub(crate) fn refusal_hint(&self, error: &sqlx::Error) -> Option<String> {
        let constraint = error.as_database_error()?.constraint()?;
        self.repeat_refusing_indexes.iter().any(|(index, _)| index == constraint).then(|| {
            self.warnings().into_iter().find(|warning| warning.contains(&format!("`{constraint}`"))).unwrap_or_default()
        })
    }

    /// Writes `records` in one statement: `COPY` for an append into a plain table, else
    /// `INSERT … UNNEST` (for an upsert, of the newest per key of them).
    pub(crate) async fn write(&self, conn: &mut PgConnection, records: &[&SinkRecord]) -> Result<(), sqlx::Error> {
        let not_from_here: Vec<&SinkRecord> =
            records.iter().copied().filter(|r| r.origin.as_deref() != Some(self.origin.as_str())).collect();
        let records = match &self.plan.upsert {
            Some(_) => self.newest_per_key(&not_from_here),
            None => not_from_here,
        };
        if records.is_empty() {
            return Ok(());
        }
        if let Some((copy, columns)) = &self.binary_copy {
            // Encoded whole first: a value a column's binary form cannot take (text in an
            // integer column) sends the batch as text instead, where Postgres names the row.
            if let Some(data) = self.binary_rows(columns, &records) {
                let mut copy_in = conn.copy_in_raw(copy).await?;
                for chunk in data.chunks(COPY_CHUNK_ROWS * 384) {
                    copy_in.send(chunk).await?;
                }
                copy_in.finish().await?;
                return Ok(());
            }
        }
        if let Some(copy) = &self.copy {
            // Streamed in chunks: Postgres inserts one while the next is built.
            let mut copy_in = conn.copy_in_raw(copy).await?;
            let mut rows = Vec::with_capacity(COPY_CHUNK_ROWS * 384);
            for chunk in records.chunks(COPY_CHUNK_ROWS) {
                rows.clear();
                for record in chunk {
                    self.copy_row(&mut rows, record);
                }
                copy_in.send(rows.as_slice()).await?;
            }
            copy_in.finish().await?;
            return Ok(());
        }
        let mut query = sqlx::query(&self.sql);
        for &index in &self.array_columns {
            let source = &self.plan.columns[index].1;
            let values: Vec<Option<String>> =
                records.iter().map(|record| value(record, source).map(Cow::into_owned)).collect();
            query = query.bind(values);
        }
        for (_, source) in &self.plan.columns {
            if let FieldSource::Constant(constant) = source {
                query = query.bind(constant.as_str());
            }
        }
        query.execute(conn).await?;
        Ok(())
    }

    /// `records` in `COPY`'s binary format, header and trailer included; `None` when a value
    /// does not fit its column's binary form.
    fn binary_rows(&self, columns: &[BinaryColumn], records: &[&SinkRecord]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(19 + records.len() * 384);
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        out.extend_from_slice(&0_i32.to_be_bytes()); // flags
        out.extend_from_slice(&0_i32.to_be_bytes()); // header extension length
        let fields = i16::try_from(columns.len()).ok()?;
        for record in records {
            out.extend_from_slice(&fields.to_be_bytes());
            for ((_, source), column) in self.plan.columns.iter().zip(columns) {
                column.encode(&mut out, record, source)?;
            }
        }
        out.extend_from_slice(&(-1_i16).to_be_bytes());
        Some(out)
    }

    /// Appends `record` as one line of `COPY`'s text format: tab-separated, `\N` for NULL.
    fn copy_row(&self, out: &mut Vec<u8>, record: &SinkRecord) {
        for (i, (_, source)) in self.plan.columns.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            if let FieldSource::Event = source {
                match record.raw.as_deref() {
                    // The payload as received: it parsed as an event, so it is JSON.
                    Some(raw) => copy_escape(out, raw.as_bytes()),
                    // Serialized straight into the buffer. Writing into a Vec cannot fail, nor
                    // can serializing an event (see `to_json`).
                    None => {
                        let _ = serde_json::to_writer(CopyEscaped(out), &record.event);
                    }
                }
                continue;
            }
            match value(record, source) {
                Some(text) => copy_escape(out, text.as_bytes()),
                None => out.extend_from_slice(b"\\N"),
            }
        }
        out.push(b'\n');
    }

    /// One statement cannot update the same row twice: keep the newest event per conflict key
    /// (timestamp, then Kafka offset), as the database would.
    fn newest_per_key<'a>(&self, records: &[&'a SinkRecord]) -> Vec<&'a SinkRecord> {
        let Some(upsert) = &self.plan.upsert else { return records.to_vec() };
        let key_sources: Vec<&FieldSource> = upsert
            .conflict_key
            .iter()
            .filter_map(|key| self.plan.columns.iter().find(|(column, _)| column == key).map(|(_, source)| source))
            .collect();
        let mut newest: HashMap<Vec<Option<Cow<'_, str>>>, &'a SinkRecord> = HashMap::new();
        let mut order = Vec::new();
        for &record in records {
            let key: Vec<Option<Cow<'_, str>>> = key_sources.iter().map(|&source| value(record, source)).collect();
            match newest.get_mut(&key) {
                Some(current) => {
                    let rank = |r: &SinkRecord| (r.event.instant(), r.offset);
                    if rank(record) >= rank(current) {
                        *current = record;
                    }
                }
                None => {
                    order.push(key.clone());
                    newest.insert(key, record);
                }
            }
        }
        order.iter().filter_map(|key| newest.get(key).copied()).collect()
    }
}

fn build_statement(plan: &TablePlan, casts: &[String], array_columns: &[usize]) -> String {
    let target: Vec<String> = plan.columns.iter().map(|(column, _)| column.to_string()).collect();
    let mut constant_param = array_columns.len();
    let selected: Vec<String> = plan
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, source))| match source {
            FieldSource::Constant(_) => {
                constant_param += 1;
                format!("CAST(${constant_param}::text AS {})", casts[i])
            }
            _ => {
                let position = array_columns.iter().position(|&c| c == i).map_or(0, |p| p + 1);
                format!("CAST(u.c{position} AS {})", casts[i])
            }
        })
        .collect();
    let arrays: Vec<String> = (1..=array_columns.len()).map(|p| format!("${p}::text[]")).collect();
    let aliases: Vec<String> = (1..=array_columns.len()).map(|p| format!("c{p}")).collect();
    let mut sql = format!(
        "INSERT INTO {} AS t ({}) SELECT {} FROM UNNEST({}) AS u({})",
        plan.table,
        target.join(", "),
        selected.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    );
    if let Some(upsert) = &plan.upsert {
        let keys: Vec<String> = upsert.conflict_key.iter().map(ToString::to_string).collect();
        let updates: Vec<String> = plan
            .columns
            .iter()
            .filter(|(column, _)| !upsert.conflict_key.contains(column))
            .map(|(column, _)| format!("{column} = EXCLUDED.{column}"))
            .collect();
        let action =
            if updates.is_empty() { "NOTHING".to_owned() } else { format!("UPDATE SET {}", updates.join(", ")) };
        sql.push_str(&format!(" ON CONFLICT ({}) DO {action}", keys.join(", ")));
        if let (false, Some(time)) = (updates.is_empty(), &upsert.time_column) {
            // An older or replayed event never replaces a newer one: timestamp, then offset.
            let tie = match &upsert.offset_column {
                Some(offset) => {
                    format!("(t.{time} = EXCLUDED.{time} AND (t.{offset} IS NULL OR t.{offset} <= EXCLUDED.{offset}))")
                }
                None => format!("t.{time} = EXCLUDED.{time}"),
            };
            sql.push_str(&format!(" WHERE t.{time} IS NULL OR t.{time} < EXCLUDED.{time} OR {tie}"));
        }
    }
    sql
}

/// `COPY <table> (<columns>) FROM STDIN` in the plan's column order, text format.
fn copy_statement(plan: &TablePlan) -> String {
    let target: Vec<String> = plan.columns.iter().map(|(column, _)| column.to_string()).collect();
    format!("COPY {} ({}) FROM STDIN", plan.table, target.join(", "))
}

/// Writes `bytes` as a `COPY` text-format value: backslash, tab, newline and carriage return
/// escaped, so a value can neither end its column or row early nor read as `\N`. Runs between
/// those bytes are copied whole, found with `memchr` (carriage returns are rare: one scan says
/// whether the slower four-byte search is needed).
fn copy_escape(out: &mut Vec<u8>, bytes: &[u8]) {
    let has_carriage_return = memchr::memchr(b'\r', bytes).is_some();
    let next_special = |rest: &[u8]| {
        if has_carriage_return {
            rest.iter().position(|&byte| matches!(byte, b'\\' | b'\t' | b'\n' | b'\r'))
        } else {
            memchr::memchr3(b'\\', b'\t', b'\n', rest)
        }
    };
    let mut start = 0;
    while let Some(found) = next_special(&bytes[start..]) {
        let at = start + found;
        out.extend_from_slice(&bytes[start..at]);
        out.extend_from_slice(match bytes[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Escapes what is written through it for `COPY`'s text format.
struct CopyEscaped<'a>(&'a mut Vec<u8>);

impl std::io::Write for CopyEscaped<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        copy_escape(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a column is written in `COPY`'s binary format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryColumn {
    /// text, varchar, json: the UTF-8 bytes.
    Text,
    /// jsonb: a version byte, then the JSON text.
    Jsonb,
    /// int2, int4, int8: big-endian, of that many bytes.
    Integer(usize),
    /// timestamptz, timestamp: microseconds since 2000-01-01 UTC, from the event's timestamp.
    Timestamp,
}

/// Microseconds from the Unix epoch to Postgres's, 2000-01-01.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl BinaryColumn {
    /// The encoding for a column of type `type_name` fed from `source`; `None` when there is
    /// none here (the table is then written in text format).
    fn for_column(type_name: &str, source: &FieldSource) -> Option<Self> {
        match type_name {
            "text" | "varchar" | "json" => Some(Self::Text),
            "jsonb" => Some(Self::Jsonb),
            "int2" => Some(Self::Integer(2)),
            "int4" => Some(Self::Integer(4)),
            "int8" => Some(Self::Integer(8)),
            "timestamptz" | "timestamp" if matches!(source, FieldSource::Field(name) if name == "timestamp") => {
                Some(Self::Timestamp)
            }
            _ => None,
        }
    }

    /// Appends the value of `source` for `record` (length, then bytes; length -1 for NULL), or
    /// `None` when it does not fit.
    fn encode(self, out: &mut Vec<u8>, record: &SinkRecord, source: &FieldSource) -> Option<()> {
        let put = |out: &mut Vec<u8>, bytes: &[u8], prefix: Option<u8>| -> Option<()> {
            let length = i32::try_from(bytes.len() + usize::from(prefix.is_some())).ok()?;
            out.extend_from_slice(&length.to_be_bytes());
            out.extend(prefix);
            out.extend_from_slice(bytes);
            Some(())
        };
        match self {
            Self::Timestamp => {
                let micros = record.event.instant().timestamp_micros().checked_sub(POSTGRES_EPOCH_MICROS)?;
                put(out, &micros.to_be_bytes(), None)
            }
            Self::Integer(size) => {
                let number = match source {
                    FieldSource::Partition => Some(i64::from(record.partition)),
                    FieldSource::Offset => Some(record.offset),
                    // Already a number: not written as text to be parsed back.
                    FieldSource::Field(name) if name == "records" => record.event.records(),
                    _ => match value(record, source) {
                        Some(text) => Some(text.parse::<i64>().ok()?),
                        None => None,
                    },
                };
                let Some(number) = number else {
                    out.extend_from_slice(&(-1_i32).to_be_bytes());
                    return Some(());
                };
                match size {
                    2 => put(out, &i16::try_from(number).ok()?.to_be_bytes(), None),
                    4 => put(out, &i32::try_from(number).ok()?.to_be_bytes(), None),
                    _ => put(out, &number.to_be_bytes(), None),
                }
            }
            Self::Text | Self::Jsonb => {
                let prefix = (self == Self::Jsonb).then_some(1_u8);
                match value(record, source) {
                    Some(text) => put(out, text.as_bytes(), prefix),
                    None => {
                        out.extend_from_slice(&(-1_i32).to_be_bytes());
                        Some(())
                    }
                }
            }
        }
    }
}

/// The text a column receives for `record`; Postgres converts it to the column's type.
fn value<'a>(record: &'a SinkRecord, source: &'a FieldSource) -> Option<Cow<'a, str>> {
    match source {
        // Normalised to UTC with an explicit offset, so `timestamptz` and `timestamp` columns
        // both receive the instant regardless of the session's TimeZone.
        FieldSource::Field(name) if name == "timestamp" => {
            Some(Cow::Owned(record.event.instant().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)))
        }
        FieldSource::Field(name) => record.event.field(name),
        FieldSource::Event => Some(match record.raw.as_deref() {
            Some(raw) => Cow::Borrowed(raw),
            None => Cow::Owned(record.event.to_json()),
        }),
        FieldSource::Topic => Some(Cow::Borrowed(&record.topic)),
        FieldSource::Partition => Some(Cow::Owned(record.partition.to_string())),
        FieldSource::Offset => Some(Cow::Owned(record.offset.to_string())),
        FieldSource::Constant(value) => Some(Cow::Borrowed(value)),
    }
}

/// Whether a column of this type category can hold the source's values (pg_type.typcategory:
/// S string, N numeric, D date/time, E enum, U user-defined such as json, B boolean).
fn compatible(source: &FieldSource, category: &str, type_name: &str) -> bool {
    match source {
        FieldSource::Field(name) if name == "timestamp" => matches!(category, "D" | "S"),
        FieldSource::Field(name) if name == "records" => matches!(category, "N" | "S"),
        FieldSource::Field(name) if matches!(name.as_str(), "event" | "stage" | "source" | "status") => {
            matches!(category, "S" | "E")
        }
        FieldSource::Event => matches!(type_name, "json" | "jsonb") || category == "S",
        FieldSource::Topic => category == "S",
        FieldSource::Partition | FieldSource::Offset => matches!(category, "N" | "S"),
        FieldSource::Field(_) | FieldSource::Constant(_) => true,
    }
}

fn describe(source: &FieldSource) -> String {
    match source {
        FieldSource::Field(name) => format!("event field `{name}`"),
        FieldSource::Event => "the event JSON".into(),
        FieldSource::Topic => "the Kafka topic".into(),
        FieldSource::Partition => "the Kafka partition".into(),
        FieldSource::Offset => "the Kafka offset".into(),
        FieldSource::Constant(value) => format!("the constant `{value}`"),
    }
}

/// The unique indexes (primary key included) of `table` whose every column is fed, by `plan`,
/// from what two events of one pair share: such an index lets an append write one row per pair.
async fn repeat_refusing_indexes(
    conn: &mut PgConnection,
    table: &str,
    plan: &TablePlan,
) -> Result<Vec<(String, Vec<String>)>, PostgresSinkError> {
    let indexes: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text,
                array_agg(a.attname::text ORDER BY k.ordinality)
         FROM pg_index i
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ordinality)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
         GROUP BY i.indexrelid",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(|source| PostgresSinkError::Catalog { table: table.to_owned(), source })?;
    let repeats = |column: &str| {
        plan.columns.iter().any(|(name, source)| {
            name.as_str() == column
                && match source {
                    FieldSource::Field(field) => matches!(field.as_str(), "source" | "stage" | "event" | "status"),
                    FieldSource::Constant(_) => true,
                    _ => false,
                }
        })
    };
    Ok(indexes
        .into_iter()
        .filter(|(_, columns)| !columns.is_empty() && columns.iter().all(|column| repeats(column)))
        .map(|(index, columns)| {
            // The constraint a violation names is the index's own name, without its schema.
            let name = index.rsplit('.').next().unwrap_or(&index).trim_matches('"').to_owned();
            (name, columns)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpsertPlan;
    use herald_pg::{Ident, QualifiedName};

    #[test]
    fn copy_values_cannot_break_out_of_their_column() {
        let mut out = Vec::new();
        copy_escape(&mut out, "a\tb\nc\rd\\N".as_bytes());
        assert_eq!(out, b"a\\tb\\nc\\rd\\\\N");
        // Without a carriage return the search takes the memchr path: same escapes, and the
        // runs between them (multi-byte characters included) are copied whole.
        out.clear();
        copy_escape(&mut out, "{\"é\":\"x\\\"y\"}\t\\N\n".as_bytes());
        assert_eq!(out, "{\"é\":\"x\\\\\"y\"}\\t\\\\N\\n".as_bytes());
        out.clear();
        copy_escape(&mut out, b"plain");
        assert_eq!(out, b"plain");
    }

    #[test]
    fn binary_copy_covers_the_greenfield_types_and_leaves_the_rest_to_text() {
        let timestamp = FieldSource::Field("timestamp".into());
        let other = FieldSource::Field("finished".into());
        assert_eq!(BinaryColumn::for_column("jsonb", &FieldSource::Event), Some(BinaryColumn::Jsonb));
        assert_eq!(BinaryColumn::for_column("int8", &FieldSource::Offset), Some(BinaryColumn::Integer(8)));
        assert_eq!(BinaryColumn::for_column("timestamptz", &timestamp), Some(BinaryColumn::Timestamp));
        // A timestamp column fed from another field would need its text parsed: text format.
        assert_eq!(BinaryColumn::for_column("timestamptz", &other), None);
        for type_name in ["numeric", "date", "bool", "bpchar", "uuid", "my_enum"] {
            assert_eq!(BinaryColumn::for_column(type_name, &other), None, "{type_name}");
        }
    }

    #[test]
    fn binary_values_are_length_prefixed_big_endian_and_refuse_what_does_not_fit() {
        let event = herald_sdk::StageEvent::from_json(
            br#"{"event":"E","stage":"s","source":"A","records":70000,"timestamp":"2000-01-01T00:00:01Z","status":"S","word":"three"}"#,
        )
        .unwrap();
        let record =
            SinkRecord { event: event.into(), topic: "t".into(), partition: 3, offset: 9, origin: None, raw: None };
        let mut out = Vec::new();
        BinaryColumn::Timestamp.encode(&mut out, &record, &FieldSource::Field("timestamp".into())).unwrap();
        assert_eq!(out, [&8_i32.to_be_bytes()[..], &1_000_000_i64.to_be_bytes()].concat());
        out.clear();
        BinaryColumn::Integer(4).encode(&mut out, &record, &FieldSource::Partition).unwrap();
        assert_eq!(out, [&4_i32.to_be_bytes()[..], &3_i32.to_be_bytes()].concat());
        out.clear();
        BinaryColumn::Jsonb.encode(&mut out, &record, &FieldSource::Constant("{}".into())).unwrap();
        assert_eq!(out, [&3_i32.to_be_bytes()[..], &[1], b"{}"].concat());
        out.clear();
        BinaryColumn::Text.encode(&mut out, &record, &FieldSource::Field("absent".into())).unwrap();
        assert_eq!(out, (-1_i32).to_be_bytes(), "NULL");
        // Text in an integer column, and 70,000 in an int2: the batch goes as text instead.
        assert_eq!(BinaryColumn::Integer(4).encode(&mut out, &record, &FieldSource::Field("word".into())), None);
        assert_eq!(BinaryColumn::Integer(2).encode(&mut out, &record, &FieldSource::Field("records".into())), None);
    }

    #[test]
    fn upsert_statement_binds_values_and_keeps_the_newest() {
        let plan = TablePlan {
            table: QualifiedName::parse("ops.job_status").unwrap(),
            columns: vec![
                (Ident::new("src").unwrap(), FieldSource::Field("source".into())),
                (Ident::new("at").unwrap(), FieldSource::Field("timestamp".into())),
                (Ident::new("by").unwrap(), FieldSource::Constant("herald".into())),
            ],
            upsert: Some(UpsertPlan {
                conflict_key: vec![Ident::new("src").unwrap()],
                time_column: Some(Ident::new("at").unwrap()),
                offset_column: None,
            }),
            legacy: true,
        };
        let sql = build_statement(&plan, &["text".into(), "timestamp with time zone".into(), "text".into()], &[0, 1]);
        assert_eq!(
            sql,
            "INSERT INTO \"ops\".\"job_status\" AS t (\"src\", \"at\", \"by\") \
             SELECT CAST(u.c1 AS text), CAST(u.c2 AS timestamp with time zone), CAST($3::text AS text) \
             FROM UNNEST($1::text[], $2::text[]) AS u(c1, c2) \
             ON CONFLICT (\"src\") DO UPDATE SET \"at\" = EXCLUDED.\"at\", \"by\" = EXCLUDED.\"by\" \
             WHERE t.\"at\" IS NULL OR t.\"at\" < EXCLUDED.\"at\" OR t.\"at\" = EXCLUDED.\"at\""
        );
    }
}
