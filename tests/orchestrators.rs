//! Stage events out to an orchestrator: the http sink recipe of docs/orchestrators.md against a
//! real Dagster webserver (installed by `scripts/services up`, started here on a port of its own),
//! read back through Dagster's GraphQL API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A Dagster webserver with an empty code location, its home in a temporary directory.
struct Dagster {
    dir: PathBuf,
    port: u16,
    child: Child,
}

impl Dagster {
    fn start() -> Self {
        let webserver = installed("dagster-venv/bin/dagster-webserver");
        let dir = std::env::temp_dir().join(unique("herald-dagster"));
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::write(dir.join("home/dagster.yaml"), "telemetry:\n  enabled: false\n").unwrap();
        std::fs::write(
            dir.join("definitions.py"),
            "import dagster as dg\ndefs = dg.Definitions(assets=[dg.AssetSpec(key=\"OrdersDB\")])\n",
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(webserver)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-f", "definitions.py"])
            .current_dir(&dir)
            .env("DAGSTER_HOME", dir.join("home"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("webserver.log")).unwrap()))
            .spawn()
            .unwrap();
        let dagster = Self { dir, port, child };
        let deadline = Instant::now() + PATIENCE;
        let answers = |address: &str| {
            std::net::TcpStream::connect(address).is_ok() && http(address, "GET", "/server_info").0 == 200
        };
        while !answers(&dagster.address()) {
            assert!(
                Instant::now() < deadline,
                "Dagster never answered; its log:\n{}",
                std::fs::read_to_string(dagster.dir.join("webserver.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        dagster
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The materializations of `asset`, oldest first (Dagster lists the newest first):
    /// (description, data version, the `records` metadata entry as an integer).
    fn materializations(&self, asset: &str) -> Vec<(String, String, Option<i64>)> {
        let query = format!(
            r#"{{ assetOrError(assetKey: {{path: ["{asset}"]}}) {{ ... on Asset {{ assetMaterializations(limit: 100) {{ timestamp description tags {{ key value }} metadataEntries {{ label ... on IntMetadataEntry {{ intValue }} }} }} }} }} }}"#
        );
        let body = serde_json::json!({ "query": query }).to_string();
        let (status, answer) =
            request_with_body(&self.address(), "POST", "/graphql", "Content-Type: application/json\r\n", &body);
        assert_eq!(status, 200, "{answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let mut found: Vec<(String, String, Option<i64>)> = answer["data"]["assetOrError"]["assetMaterializations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                let version = m["tags"]
                    .as_array()
                    .and_then(|tags| tags.iter().find(|tag| tag["key"] == "dagster/data_version"))
                    .map(|tag| tag["value"].as_str().unwrap().to_owned())
                    .unwrap_or_default();
                let records = m["metadataEntries"]
                    .as_array()
                    .and_then(|entries| entries.iter().find(|entry| entry["label"] == "records"))
                    .and_then(|entry| entry["intValue"].as_i64());
                (m["description"].as_str().unwrap_or_default().to_owned(), version, records)
            })
            .collect();
        found.reverse();
        found
    }
}

impl Drop for Dagster {
    fn drop(&mut self) {
        // SIGTERM: the webserver stops its code server child too.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_stages_become_dagster_asset_materializations_through_the_http_sink() {
    let dagster = Dagster::start();
    let topic = unique("stages");
    create_topic(&topic, 1).await;
    let asset = unique("Orders");
    // Two successes, a failure the filter keeps out, a third success; another source between.
    let events = [
        (asset.as_str(), "bronze_ingest", "SUCCESS", 1),
        (asset.as_str(), "silver_build", "FAILED", 2),
        ("Billing", "bronze_ingest", "SUCCESS", 3),
        (asset.as_str(), "silver_build", "SUCCESS", 4),
        (asset.as_str(), "gold_report", "SUCCESS", 5),
    ];
    let payloads: Vec<(String, String)> = events
        .iter()
        .map(|(source, stage, status, seq)| (source.to_string(), event_json(source, stage, status, *seq)))
        .collect();
    let messages: Vec<(Option<&str>, &[u8])> =
        payloads.iter().map(|(key, json)| (Some(key.as_str()), json.as_bytes())).collect();
    produce(&topic, &messages).await;

    // The recipe of docs/orchestrators.md, pointed at this Dagster.
    let sink = format!(
        r#"[route.sink]
type = "http"
body = "event"
url = "http://{}/report_asset_materialization/{{source}}"
body_template = {{ description = "{{stage}}", data_version = "{{timestamp}}", metadata = {{ records = "{{records}}", status = "{{status}}" }} }}"#,
        dagster.address()
    );
    let route =
        route_config(&unique("route"), &topic, "filter = { event = \"STAGE_COMPLETE\", status = \"SUCCESS\" }", &sink);
    let config = TempConfig::new(&route);
    let herald = Herald::run(&config);
    let deadline = Instant::now() + PATIENCE;
    let mut seen = dagster.materializations(&asset);
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "{seen:?}; herald's log:\n{}", herald.log());
        std::thread::sleep(Duration::from_millis(300));
        seen = dagster.materializations(&asset);
    }
    // Exactly the three successes of this source, in order, each with its stage, its time and
    // its records (an integer entry: the body template kept the number a number).
    let expected: Vec<(String, String, Option<i64>)> = [("bronze_ingest", 1), ("silver_build", 4), ("gold_report", 5)]
        .iter()
        .map(|(stage, seq)| (stage.to_string(), format!("2026-11-26T10:15:00.{seq:06}"), Some(*seq as i64)))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dagster.materializations(&asset), expected);
    assert_eq!(dagster.materializations("Billing").len(), 1);
    herald.signal("TERM");
}
