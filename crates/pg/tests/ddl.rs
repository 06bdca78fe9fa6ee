//! herald's DDL against a real Postgres: it steps out of the lock queue instead of stalling
//! writers, names who holds the lock, and succeeds once the lock is free.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use herald_pg::{Ddl, PgError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

async fn pool() -> PgPool {
    PgPoolOptions::new().max_connections(4).connect(URL).await.unwrap_or_else(|err| {
        panic!("no Postgres at {URL} ({err}): start the test services with `scripts/services up`")
    })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", rand::random::<u32>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_behind_an_open_transaction_lets_writers_pass_names_the_holder_and_succeeds_later() {
    let pool = pool().await;
    let table = unique("ddl_target");
    sqlx::query(&format!("CREATE TABLE {table} (id serial PRIMARY KEY, status text)")).execute(&pool).await.unwrap();

    // A legacy job: its transaction wrote a row and is still working.
    let holder_options: PgConnectOptions = URL.parse::<PgConnectOptions>().unwrap().application_name("legacy-job");
    let mut holder = PgConnection::connect_with(&holder_options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(&format!("INSERT INTO {table} (status) VALUES ('RUNNING')")).execute(&mut holder).await.unwrap();

    let mut ddl_conn = PgConnection::connect(URL).await.unwrap();
    let statement = format!("CREATE INDEX ON {table} (status)");
    let ddl = Ddl { lock_timeout: Duration::from_millis(200), give_up_after: Duration::from_millis(1500) };
    let relations = vec![format!("\"{table}\"")];
    let attempt = ddl.execute(&mut ddl_conn, "indexing the status table", &relations, None, &statement);
    // Another writer while the DDL keeps trying: never queued behind it for long.
    let writers = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(URL.parse::<PgConnectOptions>().unwrap().options([("statement_timeout", "1s")]))
        .await
        .unwrap();
    let writer = async {
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let started = Instant::now();
            sqlx::query(&format!("INSERT INTO {table} (status) VALUES ('SUCCESS')"))
                .execute(&writers)
                .await
                .expect("a writer must never wait a second behind herald's DDL");
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slowest
    };
    let (result, slowest) = tokio::join!(attempt, writer);
    let err = result.expect_err("the lock is held the whole time");
    assert!(slowest < Duration::from_secs(1), "a writer waited {slowest:?}");
    match &err {
        PgError::LockNotGranted { blockers, .. } => {
            assert!(
                blockers.iter().any(|b| b.application == "legacy-job" && b.mode == "RowExclusiveLock"),
                "the holder is named: {blockers:?}"
            );
        }
        other => panic!("expected LockNotGranted, got {other:?}"),
    }
    assert!(err.is_transient());
    assert!(err.to_string().contains("legacy-job"), "{err}");
    let inserted: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&pool).await.unwrap();
    assert_eq!(inserted, 10, "every writer's row is there; the holder's is not committed yet");

    // The job finishes; the same DDL now goes through, and the session keeps no lock_timeout.
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    ddl.execute(&mut ddl_conn, "indexing the status table", &relations, None, &statement).await.unwrap();
    let indexes: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE tablename = $1")
        .bind(&table)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(indexes, 2, "primary key and the new index");
    let timeout: String = sqlx::query_scalar("SHOW lock_timeout").fetch_one(&mut ddl_conn).await.unwrap();
    assert_eq!(timeout, "0");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.unwrap();
}
