//! The Postgres sink keeps herald's sink promises (herald_sdk::conformance), appending exactly
//! once and upserting newest-wins, against the real Postgres of `scripts/services up`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use herald_sdk::conformance::{self, Harness, Replay};
use herald_sdk::{BoxError, Sink, SinkError, SinkRecord};
use herald_sink_postgres::{PostgresSinkConfig, Setup};
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

/// A legacy-style table of the test's own: `state varchar(8)` refuses a long status.
struct PostgresHarness {
    pool: PgPool,
    schema: String,
    mode: &'static str,
}

impl PostgresHarness {
    async fn new(mode: &'static str) -> Self {
        let pool = PgPoolOptions::new().max_connections(2).connect(URL).await.unwrap_or_else(|err| {
            panic!("no Postgres at {URL} ({err}): start the test services with `scripts/services up`")
        });
        let schema = format!("conf_{}", rand::rng().random_range(0..u64::MAX) % 1_000_000_000_000);
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
        let unique = if mode == "upsert" { ", UNIQUE (src, step)" } else { "" };
        sqlx::query(&format!(
            "CREATE TABLE {schema}.status (id serial PRIMARY KEY, src text NOT NULL, step text NOT NULL,
             state varchar(8) NOT NULL, row_count bigint, finished_at timestamp{unique})"
        ))
        .execute(&pool)
        .await
        .unwrap();
        Self { pool, schema, mode }
    }

    fn config(&self, url: &str) -> PostgresSinkConfig {
        let mut table = serde_json::json!({
            "name": format!("{}.status", self.schema),
            "columns": { "src": "source", "step": "stage", "state": "status", "row_count": "records", "finished_at": "timestamp" },
        });
        if self.mode == "upsert" {
            table["conflict_key"] = serde_json::json!(["src", "step"]);
        }
        serde_json::from_value(serde_json::json!({
            "url": url, "schema": self.schema, "mode": self.mode, "table": table, "connect_timeout": "2s"
        }))
        .unwrap()
    }
}

#[async_trait]
impl Harness for PostgresHarness {
    fn replay(&self) -> Replay {
        if self.mode == "upsert" {
            Replay::NewestWins
        } else {
            Replay::ExactlyOnce
        }
    }

    async fn sink(&mut self) -> Result<Box<dyn Sink>, BoxError> {
        Ok(self.config(URL).connect("conformance", "conformance-group", Setup::Migrate).await?)
    }

    async fn write_unreachable(&mut self, batch: &[SinkRecord]) -> Option<Result<(), SinkError>> {
        let config = self.config("postgres://herald:herald@127.0.0.1:1/herald");
        Some(match config.connect("conformance", "conformance-group", Setup::CheckOnly).await {
            Ok(mut sink) => sink.write(batch).await.map(drop),
            Err(err) => Err(err.into()),
        })
    }

    fn refused(&self, mut record: SinkRecord) -> Option<SinkRecord> {
        record.event.edit(|event| event.status = "FAR_TOO_LONG_FOR_THE_COLUMN".into());
        Some(record)
    }

    async fn delivered(&mut self) -> Result<Vec<i64>, BoxError> {
        Ok(sqlx::query_scalar(&format!("SELECT row_count FROM {}.status ORDER BY id", self.schema))
            .fetch_all(&self.pool)
            .await?)
    }
}

#[tokio::test]
async fn the_append_sink_keeps_every_promise_exactly_once() {
    let mut harness = PostgresHarness::new("append").await;
    conformance::check(&mut harness).await.unwrap();
}

#[tokio::test]
async fn the_upsert_sink_keeps_every_promise_newest_wins() {
    let mut harness = PostgresHarness::new("upsert").await;
    conformance::check(&mut harness).await.unwrap();
}
