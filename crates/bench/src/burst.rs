//! A burst into a status table (issue 38): `rows` rows in one `INSERT … SELECT`, or `rows`
//! single-row transactions from one writer as fast as it commits, each under WAL capture and
//! trigger capture. Per run: the time from the last commit to the last event a `read_committed`
//! consumer sees, rows/s from the burst's start to that event, herald's peak RSS and CPU, and
//! the WAL the slot held back at its peak. The floors, in the same round: `pg_recvlogical`
//! decoding the same burst to /dev/null once it is written (the decoding floor: it starts after
//! the last commit and stops at the WAL's end, `--endpos`) and `kcat -P` producing as many events
//! (the Kafka floor).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::load;
use crate::observe::Visible;
use crate::source::{read_committed, Capture, Watched};
use crate::stats::{median, Row};
use crate::Services;

/// How the burst is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One `INSERT … SELECT generate_series`.
    OneTransaction,
    /// One writer, a transaction per row, back to back.
    SingleRows,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::OneTransaction => "one INSERT … SELECT",
            Shape::SingleRows => "single-row transactions",
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Burst {
    /// Last commit → last event visible (or the slot caught up), seconds.
    tail: f64,
    /// Rows / (burst start → last event visible).
    rate: f64,
    /// The writer's own time, start → last commit, seconds.
    write: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    /// The slot's retained WAL at its peak, MiB.
    retained_wal_mib: f64,
}

/// `rounds` × (each shape × WAL, trigger, pg_recvlogical; kcat).
pub async fn run(services: &Services, rows: u64, rounds: usize) -> Result<Vec<Row>> {
    let modes = [Capture::Wal, Capture::Trigger, Capture::PgRecvlogical];
    let shapes = [Shape::OneTransaction, Shape::SingleRows];
    let mut runs: Vec<Vec<Burst>> = vec![Vec::new(); modes.len() * shapes.len()];
    let mut kcat_rates = Vec::new();
    for round in 0..rounds {
        for (s, shape) in shapes.iter().enumerate() {
            for step in 0..modes.len() {
                let m = (round + step) % modes.len();
                runs[s * modes.len() + m].push(burst(services, modes[m], *shape, rows).await?);
            }
        }
        let topic = format!("bench.{}", services.run_name("burst-kcat"));
        herald_kafka::ensure_topic(&services.kafka(), &topic, 1).await.context("creating the kcat topic")?;
        let seconds = load::kcat(&services.brokers, &topic, &services.run_name("burst"), 0..rows)?;
        kcat_rates.push(rows as f64 / seconds);
    }
    let kcat = median(&kcat_rates);
    let mut table = Vec::new();
    for (s, shape) in shapes.iter().enumerate() {
        let floor = median(&runs[s * modes.len() + 2].iter().map(|b| b.rate).collect::<Vec<_>>());
        let slower_floor = floor.min(kcat).max(f64::EPSILON);
        for (m, mode) in modes.iter().enumerate() {
            let bursts = &runs[s * modes.len() + m];
            let of = |pick: fn(&Burst) -> f64| median(&bursts.iter().map(pick).collect::<Vec<_>>());
            let listed = |pick: fn(&Burst) -> f64| {
                bursts.iter().map(|b| format!("{:.2}", pick(b))).collect::<Vec<_>>().join(", ")
            };
            let rate = of(|b| b.rate);
            let herald = *mode != Capture::PgRecvlogical;
            table.push(Row {
                name: format!("burst of {rows}, {}, {}", shape.label(), mode.label()),
                events: rows as usize,
                throughput: rate,
                note: format!(
                    "last commit → last visible {:.2} s ({} s); writer {:.2} s; retained WAL peak {:.1} MiB{}; {:.2}× the slower floor ({})",
                    of(|b| b.tail),
                    listed(|b| b.tail),
                    of(|b| b.write),
                    of(|b| b.retained_wal_mib),
                    if herald {
                        format!("; herald peak RSS {:.1} MiB, {:.2} CPU-s", of(|b| b.peak_rss_mib), of(|b| b.cpu_seconds))
                    } else {
                        String::new()
                    },
                    rate / slower_floor,
                    if floor < kcat { "decoding" } else { "kcat" },
                ),
                ..Row::default()
            });
        }
    }
    table.push(Row {
        name: format!("kcat -P of {rows} events (acks=all), the Kafka floor"),
        events: rows as usize,
        throughput: kcat,
        note: format!(
            "median of {rounds} ({})",
            kcat_rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
        ),
        ..Row::default()
    });
    Ok(table)
}

async fn burst(services: &Services, capture: Capture, shape: Shape, rows: u64) -> Result<Burst> {
    let herald = capture != Capture::PgRecvlogical;
    // The decoding floor's slot is made now and read after the burst, to its end, by a
    // pg_recvlogical that exits there (`--endpos`): its running time is the decoding's alone,
    // not rounded up to its 1 s progress reports.
    let watched = Watched::create(services, if herald { capture } else { Capture::Off }).await?;
    if !herald {
        let (schema, slot) = (&watched.schema, &watched.slot);
        sqlx::query(&format!("CREATE PUBLICATION {slot} FOR TABLE {schema}.status WITH (publish = 'insert, update')"))
            .execute(&watched.pool)
            .await
            .context("creating the publication")?;
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(slot)
            .execute(&watched.pool)
            .await
            .context("creating the slot")?;
    }
    let visible = Arc::new(Visible::default());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = herald
        .then(|| read_committed(&services.brokers, &watched.topic, Arc::clone(&visible), Arc::clone(&stop)))
        .transpose()?;
    let schema = &watched.schema;
    let insert =
        format!("INSERT INTO {schema}.status (source, stage, status, seq) VALUES ($1, 'bench', 'SUCCESS', $2)");
    // Warm: one row all the way through.
    sqlx::query(&insert)
        .bind("source-warmup")
        .bind(i64::try_from(load::WARMUP_SEQ).unwrap_or(i64::MAX))
        .execute(&watched.pool)
        .await
        .context("inserting the warm-up row")?;
    if herald {
        visible.wait_for(1, Duration::from_secs(60)).await?;
        visible.clear();
    } else {
        recvlogical_to_end(services, &watched).await?;
    }
    let retained = Arc::new(AtomicI64::new(0));
    let watcher = tokio::spawn(watch_retained_wal(
        watched.pool.clone(),
        watched.slot.clone(),
        Arc::clone(&retained),
        Arc::clone(&stop),
    ));
    let before = watched.herald.as_ref().map(|h| h.usage()).transpose()?;
    let started = Instant::now();
    match shape {
        Shape::OneTransaction => {
            sqlx::query(&format!(
                "INSERT INTO {schema}.status (source, stage, status, seq) \
                 SELECT 'source-' || (g % {}), 'bench', 'SUCCESS', g FROM generate_series(0, {}) g",
                load::SOURCES,
                rows - 1
            ))
            .execute(&watched.pool)
            .await
            .context("the burst")?;
        }
        Shape::SingleRows => {
            let mut writer = watched.pool.acquire().await.context("connecting the writer")?;
            for seq in 0..rows {
                sqlx::query(&insert)
                    .bind(format!("source-{}", seq % load::SOURCES))
                    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                    .execute(&mut *writer)
                    .await
                    .context("inserting a row")?;
            }
        }
    }
    let committed = Instant::now();
    let last = if herald {
        visible.wait_for(rows as usize, Duration::from_secs(300)).await?;
        visible.first_seen().iter().map(|(_, at)| *at).max().unwrap_or_else(Instant::now)
    } else {
        recvlogical_to_end(services, &watched).await?;
        Instant::now()
    };
    let after = watched.herald.as_ref().map(|h| h.usage()).transpose()?;
    if std::env::var_os("HERALD_BENCH_SHOW_LOG").is_some() {
        if let Some(herald) = &watched.herald {
            eprintln!("{}", herald.log_text());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.await;
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    watched.drop().await?;
    Ok(Burst {
        tail: last.saturating_duration_since(committed).as_secs_f64(),
        rate: rows as f64 / last.saturating_duration_since(started).as_secs_f64().max(f64::EPSILON),
        write: committed.duration_since(started).as_secs_f64(),
        peak_rss_mib: after.map_or(0.0, |usage| usage.peak_rss_mib),
        cpu_seconds: match (before, after) {
            (Some(before), Some(after)) => after.cpu_seconds - before.cpu_seconds,
            _ => 0.0,
        },
        retained_wal_mib: retained.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0),
    })
}

/// `pg_recvlogical` reading the slot from where it stands to the server's position now, to
/// /dev/null, exec to exit.
async fn recvlogical_to_end(services: &Services, watched: &Watched) -> Result<()> {
    let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&watched.pool)
        .await
        .context("reading the WAL position")?;
    let slot = &watched.slot;
    let status = std::process::Command::new("pg_recvlogical")
        .args(["--dbname", &services.postgres, "--slot", slot, "--start", "--file", "/dev/null", "--no-loop"])
        .args(["--option", "proto_version=1", "--option", &format!("publication_names={slot}")])
        .args(["--endpos", &end])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running pg_recvlogical (Debian package postgresql-client)")?;
    anyhow::ensure!(status.success(), "pg_recvlogical failed: {status}");
    Ok(())
}

/// The most WAL the slot held back (server's position − the slot's restart LSN), every 50 ms
/// until `stop`; nothing for a trigger-capture run (no slot).
async fn watch_retained_wal(pool: sqlx::PgPool, slot: String, peak: Arc<AtomicI64>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let held: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&slot)
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten();
        if let Some(Some(bytes)) = held {
            peak.fetch_max(bytes, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
