/*!
herald-sdk: what a sink author needs, and nothing of Kafka.

A herald sink receives batches of *stage events* — the small JSON messages pipeline stages publish
when they finish a unit of work — and delivers them somewhere that cannot read Kafka. This crate
is everything such a sink depends on: the event model ([`StageEvent`]), the [`Sink`] trait with
its records, outcomes and error classes, and `{field}` [`Template`]s. It does not link librdkafka:
a sink crate that depends only on it builds and tests without Kafka.

The one decision to know: **[`Sink::write`] returning `Ok` means the sink has durably accepted
the whole batch** (except the records it hands back as rejected). The runtime (herald-core)
advances Kafka offsets only after that, so a sink that returns `Ok` early loses events on a
crash, and a sink that returns a retriable error gets the same batch again.

# Layout
- [`event`]: [`StageEvent`], its parsing and timestamps.
- [`sink`]: the [`Sink`] trait, [`SinkRecord`], [`WriteOutcome`], [`SinkError`].
- [`conformance`]: the promises every sink keeps, checked by each sink's own tests.
- [`offsets`]: where each partition resumes after a batch.
- [`factory`]: a sink kind as a plug-in ([`SinkPlugin`]), registered in the binary with one line.
- [`template`]: `{field}` templates for channels, keys, topics and URLs, values encoded for
  where they go.
- [`openlineage`]: OpenLineage `RunEvent`s mapped to stage events ([`LineageMapping`]).
- [`printable`]: producer values made safe to show in a terminal or a log line.
*/
#![deny(missing_docs)]

pub mod conformance;
pub mod event;
pub mod factory;
pub mod fields;
pub mod offsets;
pub mod openlineage;
pub mod printable;
pub mod sink;
pub mod template;

pub use event::{check_clock_skew, AheadOfClock, EventError, EventTimestamp, StageEvent, DEFAULT_MAX_CLOCK_SKEW};
pub use factory::{
    parse_settings, FactoryError, Purpose, Registered, Settings, SettingsError, SinkContext, SinkFactory, SinkPlugin,
};
pub use fields::{check_field, EVENT_FIELDS};
pub use offsets::next_offsets;
pub use openlineage::{Lineage, LineageError, LineageMapping, LINEAGE_FIELDS};
pub use sink::{
    BoxError, EventFields, LazyEvent, Pending, Rejection, Settled, Sink, SinkError, SinkRecord, Unfinished,
    WriteOutcome,
};
pub use template::{Escaping, RenderError, Template};

/// Every message in an error's chain of causes, outermost first: what logs and dead-letter
/// headers show of an error.
pub fn error_chain(error: &dyn std::error::Error) -> Vec<String> {
    let mut chain = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(err) = cause {
        chain.push(err.to_string());
        cause = err.source();
    }
    chain
}
