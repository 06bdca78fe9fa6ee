//! OpenLineage `RunEvent`s as stage events: what Airflow, dbt, Spark, Dagster and Flink emit for
//! every run, over HTTP (herald's ingest listener) or to a Kafka topic (a route with `input =
//! "openlineage"`). One mapping serves both, so a run reads the same whichever way it came.
//!
//! The default mapping: `source` = `job.namespace`, `stage` = `job.name`, `timestamp` =
//! `eventTime`, `records` = the sum of the outputs' `outputStatistics.rowCount` (when any says);
//! `COMPLETE` → `STAGE_COMPLETE`/`SUCCESS`, `FAIL` and `ABORT` → `STAGE_COMPLETE`/`FAILED` (with
//! the `errorMessage` facet's message as `error_message`), `START` and `RUNNING` →
//! `STAGE_STARTED`/`RUNNING`. The run id, the OpenLineage event type, the producer and the output
//! datasets are kept as fields (`run_id`, `event_type`, `producer`, `outputs`). `source` and
//! `stage` are templates over [`LINEAGE_FIELDS`], for a team whose source is the output dataset
//! or the Airflow DAG (`{parent.job.name}`).
//!
//! Only the fields the mapping reads are parsed; every facet it does not read (schemas, SQL,
//! column lineage) is skipped without being built.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::event::{EventTimestamp, StageEvent, STAGE_COMPLETE};
use crate::sink::EventFields;
use crate::template::{RenderError, Template};

/// The names a mapping template may use, each read from the `RunEvent`: `job.namespace`,
/// `job.name`, `run.runId`, `eventType`, `producer`, the first output dataset's
/// `output.namespace` and `output.name`, and the parent run's (Airflow: the DAG run's)
/// `parent.job.namespace`, `parent.job.name` and `parent.run.runId`.
pub const LINEAGE_FIELDS: [&str; 10] = [
    "job.namespace",
    "job.name",
    "run.runId",
    "eventType",
    "producer",
    "output.namespace",
    "output.name",
    "parent.job.namespace",
    "parent.job.name",
    "parent.run.runId",
];

/// How a `RunEvent` becomes a stage event: templates for its `source` and `stage`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageMapping {
    /// The stage event's `source` (also its Kafka key). Default `"{job.namespace}"`; e.g.
    /// `"{output.name}"` for the dataset a job wrote, or `"{parent.job.name}"` for the DAG.
    #[serde(default = "default_source")]
    pub source: Template,
    /// The stage event's `stage`. Default `"{job.name}"` (Airflow: `dag_id.task_id`).
    #[serde(default = "default_stage")]
    pub stage: Template,
}

fn default_source() -> Template {
    Template::of_field("job.namespace")
}

fn default_stage() -> Template {
    Template::of_field("job.name")
}

impl Default for LineageMapping {
    fn default() -> Self {
        Self { source: default_source(), stage: default_stage() }
    }
}

/// What one OpenLineage event is to herald.
#[derive(Debug, Clone, PartialEq)]
pub enum Lineage {
    /// A run's transition, as a stage event.
    Event(Box<StageEvent>),
    /// An event that says nothing of a run's state (a `DatasetEvent`, a `JobEvent`, or a
    /// `RunEvent` of type `OTHER` or none): nothing to publish, and why.
    NotARun(&'static str),
}

/// An OpenLineage event herald cannot read: the body is wrong, not the service.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    /// Not JSON, or a field of the wrong type; `path` says where.
    #[error("not an OpenLineage event at `{path}`")]
    Invalid {
        /// Where in the document, e.g. `outputs[0].outputFacets.outputStatistics.rowCount`.
        path: String,
        /// What serde found there.
        #[source]
        source: serde_json::Error,
    },
    /// `eventTime` is not an ISO 8601 time.
    #[error("`eventTime` is not a time")]
    Time(#[from] crate::event::TimestampError),
    /// A mapping template needs a field this event lacks.
    #[error("the mapping cannot be filled from this event")]
    Mapping(#[from] RenderError),
    /// A required value is empty.
    #[error("`{0}` is empty")]
    Empty(&'static str),
    /// The rowCounts do not add up to a number herald can hold.
    #[error("the outputs' `rowCount`s add up to more than 2^63")]
    TooManyRows,
}

impl LineageMapping {
    /// Checks that the templates name only [`LINEAGE_FIELDS`]; the error names the template
    /// (`source` or `stage`) and the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (setting, template) in [("source", &self.source), ("stage", &self.stage)] {
            if let Some(field) = template.fields().find(|field| !LINEAGE_FIELDS.contains(field)) {
                return Err((
                    setting,
                    format!(
                        "`{{{field}}}` is no OpenLineage field herald reads; the fields are {}",
                        LINEAGE_FIELDS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads one OpenLineage event (JSON) and maps it.
    pub fn map(&self, body: &[u8]) -> Result<Lineage, LineageError> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let event: RunEvent = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|err| LineageError::Invalid { path: err.path().to_string(), source: err.into_inner() })?;
        deserializer.end().map_err(|source| LineageError::Invalid { path: ".".into(), source })?;
        self.map_event(&event)
    }

    fn map_event(&self, lineage: &RunEvent) -> Result<Lineage, LineageError> {
        let (Some(run), Some(job)) = (&lineage.run, &lineage.job) else {
            return Ok(Lineage::NotARun("a DatasetEvent or JobEvent: it names no run"));
        };
        let (event, status) = match lineage.event_type.as_deref() {
            Some("COMPLETE") => (STAGE_COMPLETE, "SUCCESS"),
            Some("FAIL" | "ABORT") => (STAGE_COMPLETE, "FAILED"),
            Some("START" | "RUNNING") => ("STAGE_STARTED", "RUNNING"),
            Some(_) => return Ok(Lineage::NotARun("its eventType is none of START, RUNNING, COMPLETE, FAIL, ABORT")),
            None => return Ok(Lineage::NotARun("it has no eventType")),
        };
        let time = lineage.event_time.as_deref().ok_or(LineageError::Empty("eventTime"))?;
        let timestamp = EventTimestamp::parse(time)?;
        let fields = Fields { lineage, run, job };
        let source = self.source.render(&fields)?;
        let stage = self.stage.render(&fields)?;
        if source.is_empty() {
            return Err(LineageError::Empty("source"));
        }
        if stage.is_empty() {
            return Err(LineageError::Empty("stage"));
        }
        let outputs = lineage.outputs.as_deref().unwrap_or_default();
        let mut records: Option<i64> = None;
        for count in outputs.iter().filter_map(Dataset::row_count) {
            records = Some(records.unwrap_or(0).checked_add(count).ok_or(LineageError::TooManyRows)?);
        }
        let mut extra = Map::new();
        extra.insert("run_id".into(), Value::String(run.run_id.clone()));
        extra.insert("event_type".into(), Value::String(lineage.event_type.clone().unwrap_or_default()));
        if let Some(producer) = &lineage.producer {
            extra.insert("producer".into(), Value::String(producer.clone()));
        }
        if !outputs.is_empty() {
            let names = outputs.iter().map(|output| json!({"namespace": output.namespace, "name": output.name}));
            extra.insert("outputs".into(), Value::Array(names.collect()));
        }
        if status == "FAILED" {
            let message = run.facets.as_ref().and_then(|facets| facets.error_message.as_ref());
            if let Some(message) = message.and_then(|facet| facet.message.clone()) {
                extra.insert("error_message".into(), Value::String(message));
            }
        }
        Ok(Lineage::Event(Box::new(StageEvent {
            event: event.to_owned(),
            stage,
            source,
            records,
            timestamp,
            status: status.to_owned(),
            extra,
        })))
    }
}

/// The parts of an OpenLineage event the mapping reads (RunEvent, DatasetEvent and JobEvent
/// alike: the last two have no `run`). Everything else is skipped unbuilt.
#[derive(Debug, Deserialize)]
struct RunEvent {
    #[serde(rename = "eventType")]
    event_type: Option<String>,
    #[serde(rename = "eventTime")]
    event_time: Option<String>,
    run: Option<Run>,
    job: Option<Job>,
    outputs: Option<Vec<Dataset>>,
    producer: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Run {
    #[serde(rename = "runId")]
    run_id: String,
    facets: Option<RunFacets>,
}

#[derive(Debug, Deserialize)]
struct RunFacets {
    #[serde(rename = "errorMessage")]
    error_message: Option<ErrorMessage>,
    parent: Option<Parent>,
}

#[derive(Debug, Deserialize)]
struct ErrorMessage {
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Parent {
    job: Option<Job>,
    run: Option<ParentRun>,
}

#[derive(Debug, Deserialize)]
struct ParentRun {
    #[serde(rename = "runId")]
    run_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Job {
    namespace: String,
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Dataset {
    namespace: String,
    name: String,
    #[serde(rename = "outputFacets", skip_serializing)]
    output_facets: Option<OutputFacets>,
}

impl Dataset {
    fn row_count(&self) -> Option<i64> {
        self.output_facets.as_ref()?.output_statistics.as_ref()?.row_count
    }
}

#[derive(Debug, Deserialize)]
struct OutputFacets {
    #[serde(rename = "outputStatistics")]
    output_statistics: Option<OutputStatistics>,
}

#[derive(Debug, Deserialize)]
struct OutputStatistics {
    #[serde(rename = "rowCount")]
    row_count: Option<i64>,
}

/// A run event's [`LINEAGE_FIELDS`], for the mapping's templates.
struct Fields<'a> {
    lineage: &'a RunEvent,
    run: &'a Run,
    job: &'a Job,
}

impl Fields<'_> {
    fn parent(&self) -> Option<&Parent> {
        self.run.facets.as_ref()?.parent.as_ref()
    }

    fn first_output(&self) -> Option<&Dataset> {
        self.lineage.outputs.as_deref()?.first()
    }
}

impl EventFields for Fields<'_> {
    fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        let text: &str = match name {
            "job.namespace" => &self.job.namespace,
            "job.name" => &self.job.name,
            "run.runId" => &self.run.run_id,
            "eventType" => self.lineage.event_type.as_deref()?,
            "producer" => self.lineage.producer.as_deref()?,
            "output.namespace" => &self.first_output()?.namespace,
            "output.name" => &self.first_output()?.name,
            "parent.job.namespace" => &self.parent()?.job.as_ref()?.namespace,
            "parent.job.name" => &self.parent()?.job.as_ref()?.name,
            "parent.run.runId" => self.parent()?.run.as_ref()?.run_id.as_deref()?,
            _ => return None,
        };
        Some(Cow::Borrowed(text))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A run event as openlineage-python 1.x writes it (trimmed of schema URLs).
    fn run_event(event_type: &str) -> Value {
        json!({
            "eventType": event_type,
            "eventTime": "2026-12-07T10:15:00.123456+00:00",
            "run": {"runId": "0191b5a2-0000-7000-8000-000000000001", "facets": {
                "parent": {"job": {"namespace": "airflow", "name": "orders_dag"}, "run": {"runId": "dag-run-1"}},
                "errorMessage": {"message": "division by zero", "programmingLanguage": "python", "stackTrace": "…"}
            }},
            "job": {"namespace": "OrdersDB", "name": "bronze_ingest", "facets": {"sql": {"query": "select 1"}}},
            "inputs": [{"namespace": "postgres://db:5432", "name": "orders.raw"}],
            "outputs": [
                {"namespace": "s3://lake", "name": "bronze/orders", "outputFacets": {"outputStatistics": {"rowCount": 14000, "size": 1}}},
                {"namespace": "s3://lake", "name": "bronze/lines", "outputFacets": {"outputStatistics": {"rowCount": 823}}},
                {"namespace": "s3://lake", "name": "bronze/none"}
            ],
            "producer": "https://github.com/OpenLineage/OpenLineage/tree/1.54.0/client/python",
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
        })
    }

    fn mapped(mapping: &LineageMapping, body: &Value) -> StageEvent {
        match mapping.map(body.to_string().as_bytes()).unwrap() {
            Lineage::Event(event) => *event,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_default_mapping_parses() {
        let mapping = LineageMapping::default();
        assert_eq!(mapping.source.as_str(), "{job.namespace}");
        assert_eq!(mapping.stage.as_str(), "{job.name}");
        assert!(mapping.check().is_ok());
    }

    #[test]
    fn a_complete_run_is_a_successful_stage_with_its_rows() {
        let event = mapped(&LineageMapping::default(), &run_event("COMPLETE"));
        assert_eq!((event.event.as_str(), event.status.as_str()), ("STAGE_COMPLETE", "SUCCESS"));
        assert_eq!((event.source.as_str(), event.stage.as_str()), ("OrdersDB", "bronze_ingest"));
        assert_eq!(event.records, Some(14823));
        assert_eq!(event.timestamp.as_str(), "2026-12-07T10:15:00.123456+00:00");
        assert_eq!(event.extra["run_id"], "0191b5a2-0000-7000-8000-000000000001");
        assert_eq!(event.extra["event_type"], "COMPLETE");
        assert_eq!(event.extra["outputs"][1], json!({"namespace": "s3://lake", "name": "bronze/lines"}));
        assert!(!event.extra.contains_key("error_message"), "only a failed run says why");
        assert!(event.is_outcome());
    }

    #[test]
    fn start_and_running_begin_a_run_and_fail_and_abort_end_it_failed() {
        let mapping = LineageMapping::default();
        for kind in ["START", "RUNNING"] {
            let event = mapped(&mapping, &run_event(kind));
            assert!(event.starts_a_run() && !event.is_outcome(), "{kind}");
            assert_eq!((event.event.as_str(), event.status.as_str()), ("STAGE_STARTED", "RUNNING"));
        }
        for kind in ["FAIL", "ABORT"] {
            let event = mapped(&mapping, &run_event(kind));
            assert!(event.is_outcome(), "{kind}");
            assert_eq!(event.status, "FAILED");
            assert_eq!(event.extra["error_message"], "division by zero");
            assert_eq!(event.extra["event_type"], kind);
        }
    }

    #[test]
    fn no_row_count_is_no_records_and_events_of_no_run_are_named() {
        let mut body = run_event("COMPLETE");
        body["outputs"] = json!([]);
        assert_eq!(mapped(&LineageMapping::default(), &body).records, None);
        let dataset_event = json!({"eventTime": "2026-12-07T10:15:00Z", "dataset": {"namespace": "n", "name": "d"},
                                   "producer": "p", "schemaURL": "s"});
        assert!(matches!(
            LineageMapping::default().map(dataset_event.to_string().as_bytes()).unwrap(),
            Lineage::NotARun(_)
        ));
        let other = run_event("OTHER");
        assert!(matches!(LineageMapping::default().map(other.to_string().as_bytes()).unwrap(), Lineage::NotARun(_)));
    }

    #[test]
    fn templates_choose_source_and_stage_from_the_run() {
        let mapping: LineageMapping =
            serde_json::from_value(json!({"source": "{parent.job.name}", "stage": "{job.name}:{output.name}"}))
                .unwrap();
        assert!(mapping.check().is_ok());
        let event = mapped(&mapping, &run_event("COMPLETE"));
        assert_eq!((event.source.as_str(), event.stage.as_str()), ("orders_dag", "bronze_ingest:bronze/orders"));
        let mut no_parent = run_event("COMPLETE");
        no_parent["run"]["facets"] = Value::Null;
        let err = crate::error_chain(&mapping.map(no_parent.to_string().as_bytes()).unwrap_err()).join(": ");
        assert!(err.contains("parent.job.name"), "{err}");
        let typo: LineageMapping = serde_json::from_value(json!({"source": "{job.namespce}"})).unwrap();
        let (setting, why) = typo.check().unwrap_err();
        assert!(setting == "source" && why.contains("job.namespce"), "{why}");
        assert!(serde_json::from_value::<LineageMapping>(json!({"sorce": "x"})).is_err());
    }

    #[test]
    fn a_body_that_is_no_run_event_says_where() {
        let mapping = LineageMapping::default();
        for (body, expected) in [
            ("not json", "at `.`: expected"),
            (r#"{"eventType":"COMPLETE","run":{"runId":7},"job":{"namespace":"n","name":"j"}}"#, "run.runId"),
            (
                r#"{"eventType":"COMPLETE","eventTime":"2026-12-07T10:00:00Z","run":{"runId":"r"},"job":{"namespace":"n","name":"j"},
                   "outputs":[{"namespace":"n","name":"d","outputFacets":{"outputStatistics":{"rowCount":"many"}}}]}"#,
                "outputs[0].outputFacets.outputStatistics.rowCount",
            ),
            (
                r#"{"eventType":"COMPLETE","eventTime":"yesterday","run":{"runId":"r"},"job":{"namespace":"n","name":"j"}}"#,
                "eventTime",
            ),
            (
                r#"{"eventType":"COMPLETE","eventTime":"2026-12-07T10:00:00Z","run":{"runId":"r"},"job":{"namespace":"","name":"j"}}"#,
                "source",
            ),
            (
                r#"{"eventType":"COMPLETE","eventTime":"2026-12-07T10:00:00Z","run":{"runId":"r"},"job":{"namespace":"n","name":"j"}} {}"#,
                "at `.`",
            ),
        ] {
            let err = crate::error_chain(&mapping.map(body.as_bytes()).unwrap_err()).join(": ");
            assert!(err.contains(expected), "{body}: {err}");
        }
        let huge = r#"{"eventType":"COMPLETE","eventTime":"2026-12-07T10:00:00Z","run":{"runId":"r"},"job":{"namespace":"n","name":"j"},
            "outputs":[{"namespace":"n","name":"a","outputFacets":{"outputStatistics":{"rowCount":9223372036854775807}}},
                       {"namespace":"n","name":"b","outputFacets":{"outputStatistics":{"rowCount":1}}}]}"#;
        assert!(matches!(mapping.map(huge.as_bytes()), Err(LineageError::TooManyRows)));
    }
}
