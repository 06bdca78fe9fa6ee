//! Start-up: how soon herald has connected every sink and joined every consumer group, and how
//! much memory it holds while idle.

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::PgPool;

use crate::process::HeraldProcess;
use crate::stats::Row;
use crate::Services;

/// One route per sink kind (stdout, Postgres, Redis, SNS) on one herald.
pub async fn run(services: &Services) -> Result<Row> {
    let run = services.run_name("startup");
    let schema = Services::schema_for(&run);
    let pool = PgPool::connect(&services.postgres).await.context("connecting to Postgres")?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.context("creating the schema")?;
    let topic_arn = crate::sinks::sns_topic(services, &run).await?;
    let mut config = format!("[kafka]\nbootstrap.servers = \"{}\"\n", services.brokers);
    let sinks = [
        ("stdout", "type = \"stdout\"".to_owned()),
        ("postgres", format!("type = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"", services.postgres)),
        ("redis", format!("type = \"redis\"\nurl = \"{}\"\npublish = {{}}", services.redis)),
        (
            "sns",
            format!(
                "type = \"sns\"\ntopic_arn = \"{topic_arn}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
                 access_key_id = \"test\"\nsecret_access_key = \"test\"",
                services.aws_endpoint
            ),
        ),
    ];
    for (name, sink) in &sinks {
        let topic = format!("bench.{run}.{name}");
        herald_kafka::ensure_topic(&services.kafka(), &topic, 3).await.context("creating a topic")?;
        config.push_str(&format!("\n[[route]]\nname = \"{name}\"\ntopics = [\"{topic}\"]\n[route.sink]\n{sink}\n"));
    }
    let mut herald = HeraldProcess::start(&services.herald, &run, &config, None)?;
    let connected = herald.wait_for_log("Starting herald.", Duration::from_secs(60))?;
    let assigned = herald.wait_for_logs("Partitions assigned.", sinks.len(), Duration::from_secs(60))?;
    let ms = |at: std::time::Instant| at.duration_since(herald.spawned).as_secs_f64() * 1000.0;
    let (connected_ms, assigned_ms) = (ms(connected), ms(assigned));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = herald.usage()?;
    herald.stop()?;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.context("dropping the schema")?;
    Ok(Row {
        name: format!("start-up and idle, {} routes (stdout, Postgres, Redis, SNS)", sinks.len()),
        events: 0,
        offered_rate: None,
        throughput: 0.0,
        drain_rate: None,
        latency: None,
        usage: Some(idle),
        cpu_percent: None,
        note: format!(
            "all sinks connected {connected_ms:.0} ms after exec; all partitions assigned at {assigned_ms:.0} ms; \
             idle RSS {:.1} MiB",
            idle.rss_mib
        ),
    })
}
