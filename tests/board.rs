//! The status board in a real browser: headless Chromium loads `/board` from a running `herald
//! run`, and a cell changes when an event is produced. Chromium comes from the Debian package
//! `scripts/services up` installs; the test drives it over the DevTools protocol.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A headless Chromium with one page open.
struct Browser {
    child: Child,
    profile: std::path::PathBuf,
    /// The DevTools HTTP endpoint, `127.0.0.1:<port>`.
    devtools: String,
}

impl Browser {
    fn open(url: &str) -> Self {
        let profile = std::env::temp_dir().join(unique("herald-chromium"));
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=900,420",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start chromium ({err}): `scripts/services up` installs it"));
        // Chromium names its DevTools port on stderr; keep draining stderr after that.
        let (found, port) = std::sync::mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("DevTools listening on ws://") {
                    let _ = found.send(rest.split('/').next().unwrap_or_default().to_owned());
                }
            }
        });
        let devtools = port.recv_timeout(Duration::from_secs(60)).expect("chromium never opened its DevTools port");
        Self { child, profile, devtools }
    }

    /// The DevTools WebSocket of the page showing `path`.
    async fn page(&self, path: &str) -> Page {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let list = devtools_get(&self.devtools, "/json/list");
            let targets: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
            let page = targets.as_array().into_iter().flatten().find(|target| {
                target["type"] == "page" && target["url"].as_str().is_some_and(|url| url.ends_with(path))
            });
            if let Some(ws) = page.and_then(|page| page["webSocketDebuggerUrl"].as_str()) {
                let (socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
                return Page { socket, next_id: 0 };
            }
            assert!(Instant::now() < deadline, "chromium never showed {path}: {list}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One page, driven over the DevTools protocol.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket.send(WsMessage::text(request.to_string())).await.unwrap();
        while let Some(message) = self.socket.next().await {
            if let WsMessage::Text(text) = message.unwrap() {
                let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
                if answer["id"] == id {
                    assert!(answer.get("error").is_none(), "{method}: {answer}");
                    return answer["result"].clone();
                }
            }
        }
        panic!("the DevTools connection closed");
    }

    /// What `expression` evaluates to in the page.
    async fn evaluate(&mut self, expression: &str) -> serde_json::Value {
        let result =
            self.call("Runtime.evaluate", serde_json::json!({ "expression": expression, "returnByValue": true })).await;
        result["result"]["value"].clone()
    }

    /// The status a person sees in the cell of `source` and `stage` (null: no such cell).
    async fn cell(&mut self, source: &str, stage: &str) -> serde_json::Value {
        self.evaluate(&format!(
            "(() => {{ const td = [...document.querySelectorAll('td[data-stage]')].find(t => t.dataset.source === {} && t.dataset.stage === {}); return td ? td.querySelector('.st')?.textContent ?? td.textContent : null; }})()",
            serde_json::Value::from(source),
            serde_json::Value::from(stage)
        ))
        .await
    }

    /// Polls the cell every 10 ms until it shows `status`; how long that took.
    async fn wait_for_cell(&mut self, source: &str, stage: &str, status: &str) -> Duration {
        let started = Instant::now();
        loop {
            let shown = self.cell(source, stage).await;
            if shown == status {
                return started.elapsed();
            }
            assert!(started.elapsed() < PATIENCE, "cell {source}/{stage} shows {shown}, never {status}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_in_a_real_browser_shows_each_source_and_stage_and_changes_live() {
    let topic = unique("board");
    create_topic(&topic, 2).await;
    let before = [
        ("OrdersDB", "bronze", "SUCCESS", 1),
        ("Payments", "bronze", "FAILED", 2),
        ("OrdersDB", "silver", "RUNNING", 3),
    ];
    for (source, stage, status, seq) in before {
        produce(&topic, &[(Some(source), event_json(source, stage, status, seq).as_bytes())]).await;
    }
    let config = TempConfig::new(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[board]\ntopics = [\"{topic}\"]\n",
        kafka_section()
    ));
    let mut herald = Herald::run(&config);
    let address = admin_address(&mut herald);

    // The page itself: small, nothing loaded from elsewhere (its style and script come from
    // this server, the only place the content security policy allows), no inline script.
    let (status, page) = http(&address, "GET", "/board");
    assert_eq!(status, 200);
    assert!(page.len() <= 100 * 1024, "the page is {} bytes", page.len());
    for external in ["http://", "https://", "//cdn", "@import", "<script>", "style="] {
        assert!(!page.contains(external), "the page refers to `{external}`");
    }
    for (path, media_type) in
        [("/board", "text/html"), ("/board/board.css", "text/css"), ("/board/board.js", "text/javascript")]
    {
        assert!(path == "/board" || page.contains(&format!("\"{path}\"")), "the page loads {path}");
        let head = http_head(&address, path);
        assert!(head.contains(&format!("content-type: {media_type}")), "{path}: {head}");
        for header in [
            "x-content-type-options: nosniff",
            "x-frame-options: DENY",
            "frame-ancestors 'none'",
            "default-src 'none'; script-src 'self'",
        ] {
            assert!(head.contains(header), "{path} lacks `{header}`: {head}");
        }
    }

    let browser = Browser::open(&format!("http://{address}/board"));
    let mut tab = browser.page("/board").await;
    tab.wait_for_cell("OrdersDB", "silver", "RUNNING").await;
    assert_eq!(tab.cell("OrdersDB", "bronze").await, "SUCCESS");
    assert_eq!(tab.cell("Payments", "bronze").await, "FAILED");
    assert_eq!(tab.cell("Payments", "silver").await, "–", "no event of that pair yet");
    assert_eq!(tab.evaluate("document.getElementById('conn').textContent").await, "live");
    let header = tab.evaluate("[...document.querySelectorAll('thead th')].map(th => th.textContent)").await;
    assert_eq!(header, serde_json::json!(["source", "bronze", "silver"]), "stages in first-seen order");

    // A change produced now shows in the open page, without a reload.
    // (A producer made beforehand: setting one up takes longer than the board's update.)
    let producer = producer();
    let warm_up = event_json("Payments", "bronze", "FAILED", 2); // already on the board: changes nothing
    let record = rdkafka::producer::FutureRecord::to(&topic).key("Payments").payload(warm_up.as_bytes());
    producer.send(record, Duration::from_secs(30)).await.map_err(|(err, _)| err).unwrap();
    let event = event_json("OrdersDB", "silver", "SUCCESS", 4);
    let sent = Instant::now();
    let record = rdkafka::producer::FutureRecord::to(&topic).key("OrdersDB").payload(event.as_bytes());
    producer.send(record, Duration::from_secs(30)).await.map_err(|(err, _)| err).unwrap();
    let acknowledged = sent.elapsed();
    tab.wait_for_cell("OrdersDB", "silver", "SUCCESS").await;
    println!(
        "board cell updated {:.1} ms after the event was sent (acknowledged after {:.1} ms)",
        sent.elapsed().as_secs_f64() * 1000.0,
        acknowledged.as_secs_f64() * 1000.0
    );
    // A new source gets a row; an older event read late changes nothing.
    produce(&topic, &[(Some("UsersDB"), event_json("UsersDB", "gold", "SUCCESS", 5).as_bytes())]).await;
    produce(&topic, &[(Some("OrdersDB"), event_json("OrdersDB", "silver", "FAILED", 0).as_bytes())]).await;
    tab.wait_for_cell("UsersDB", "gold", "SUCCESS").await;
    assert_eq!(tab.cell("OrdersDB", "silver").await, "SUCCESS", "the newer event stays");
    let rows = tab.evaluate("[...document.querySelectorAll('tbody th')].map(th => th.textContent)").await;
    assert_eq!(rows, serde_json::json!(["OrdersDB", "Payments", "UsersDB"]));

    // An expectation's alert marks its cell; the RECOVERED that follows a late success does not
    // hide the success itself.
    let late = r#"{"event":"STAGE_LATE","stage":"bronze","source":"Payments","timestamp":"2026-11-26T10:15:00.000009","status":"LATE","rule":"r","expected_by":"2026-11-26T10:15:00"}"#;
    produce(&topic, &[(Some("Payments"), late.as_bytes())]).await;
    tab.wait_for_cell("Payments", "bronze", "LATE").await;
    let class = tab
        .evaluate("[...document.querySelectorAll('td[data-stage]')].find(t => t.dataset.source === 'Payments' && t.dataset.stage === 'bronze').classList.contains('alert')")
        .await;
    assert_eq!(class, true, "a late cell is highlighted");
    produce(&topic, &[(Some("Payments"), event_json("Payments", "bronze", "SUCCESS", 10).as_bytes())]).await;
    let recovered = r#"{"event":"STAGE_RECOVERED","stage":"bronze","source":"Payments","timestamp":"2026-11-26T10:15:00.000011","status":"RECOVERED"}"#;
    produce(&topic, &[(Some("Payments"), recovered.as_bytes())]).await;
    tab.wait_for_cell("Payments", "bronze", "SUCCESS").await;
    // A later event of the same partition shown means the RECOVERED was read, and passed over.
    produce(&topic, &[(Some("Payments"), event_json("Payments", "gold", "RUNNING", 12).as_bytes())]).await;
    tab.wait_for_cell("Payments", "gold", "RUNNING").await;
    assert_eq!(tab.cell("Payments", "bronze").await, "SUCCESS");

    // What a person sees, for the docs.
    let shot = tab.call("Page.captureScreenshot", serde_json::json!({ "format": "png" })).await;
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("board.png");
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());

    // SIGTERM with the page still open: the live stream ends and herald stops cleanly.
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

/// The status line and headers of a GET to `path`.
fn http_head(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split_once("\r\n\r\n").map(|(head, _)| head.to_owned()).unwrap_or(answer)
}

/// A GET to Chromium's DevTools HTTP endpoint, which keeps connections open: the body is read
/// by its `Content-Length`.
fn devtools_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// Standard base64, as DevTools sends screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {byte}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|&b| b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0_u32, |n, (i, &b)| n | (value(b) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_reconcile_marks_the_cells_where_the_table_differs_and_counts_them() {
    const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";
    let topic = unique("board-rec");
    create_topic(&topic, 1).await;
    let schema = unique("boardrec").replace('-', "_");
    let route = unique("to-table");
    // OrdersDB's silver is seen before any bronze: `[board] stages` puts bronze first anyway.
    produce(&topic, &[(Some("OrdersDB"), event_json("OrdersDB", "silver", "SUCCESS", 9).as_bytes())]).await;
    for (seq, source) in ["OrdersDB", "Payments", "UsersDB"].into_iter().enumerate() {
        produce(&topic, &[(Some(source), event_json(source, "bronze", "SUCCESS", seq).as_bytes())]).await;
    }
    let config = TempConfig::new(&format!(
        "{kafka}[admin]\nlisten = \"127.0.0.1:0\"\n[board]\ntopics = [\"{topic}\"]\nstages = [\"bronze\", \"silver\"]\n\
         [reconcile]\nevery = \"1s\"\nsince = \"3650d\"\n\
         [[route]]\nname = \"{route}\"\ntopics = [\"{topic}\"]\n[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\n",
        kafka = kafka_section()
    ));
    let mut herald = Herald::run(&config);
    let address = admin_address(&mut herald);
    let pool = sqlx::PgPool::connect(URL).await.unwrap();
    let metric = format!("herald_reconcile_divergent{{subject=\"route:{route}\"}}");
    let wait_for_metric = |value: &'static str| {
        let (address, metric) = (address.clone(), metric.clone());
        async move {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let (_, metrics) = http(&address, "GET", "/metrics");
                if metrics.lines().any(|line| line == format!("{metric} {value}")) {
                    return;
                }
                assert!(Instant::now() < deadline, "{metric} never {value}: {metrics}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_for_metric("0").await;

    // Someone deletes a row the route wrote, and rewrites another as a failure: the table now
    // lacks one event and contradicts another.
    sqlx::query(&format!("DELETE FROM {schema}.pipeline_status_latest WHERE source = 'Payments'"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "UPDATE {schema}.pipeline_status_latest SET status = 'FAILED', records = 4242 WHERE source = 'UsersDB'"
    ))
    .execute(&pool)
    .await
    .unwrap();
    wait_for_metric("2").await;
    let browser = Browser::open(&format!("http://{address}/board"));
    let mut tab = browser.page("/board").await;
    tab.wait_for_cell("Payments", "bronze", "SUCCESS").await;
    let marked = "(() => [...document.querySelectorAll('td.diverged')].map(td => td.dataset.source + ' | ' + \
                  td.textContent + ' | ' + td.title))()";
    let deadline = Instant::now() + PATIENCE;
    let marks = loop {
        let marks = tab.evaluate(marked).await;
        if marks.as_array().is_some_and(|marks| marks.len() == 2) {
            break marks;
        }
        assert!(Instant::now() < deadline, "not two cells marked: {marks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let marks: Vec<&str> = marks.as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    // Both sides in the cell: the topic's SUCCESS, and the table's value and which is newer.
    assert!(marks[0].starts_with("Payments | SUCCESS") && marks[0].contains("≠ not in the table"), "{marks:?}");
    assert!(marks[0].contains(&format!("route:{route}: only in the topic")), "{marks:?}");
    assert!(
        marks[1].starts_with("UsersDB | SUCCESS") && marks[1].contains("≠ table: FAILED (4242) · same instant"),
        "{marks:?}"
    );
    let header = tab
        .evaluate("[...document.querySelectorAll('thead th')].map(th => th.textContent).join(',') + ' | ' + \
                   document.getElementById('diverged').textContent + ' | ' + document.getElementById('reconciled').textContent + \
                   ' | ' + document.querySelectorAll('#legend li').length")
        .await;
    let header = header.as_str().unwrap();
    assert!(header.starts_with("source,bronze,silver | 2 diverged | reconciled "), "{header}");
    assert!(header.ends_with(" ago | 5"), "{header}");
    let shot = tab.call("Page.captureScreenshot", serde_json::json!({ "format": "png" })).await;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("board-diverged.png");
    std::fs::write(&path, base64_decode(shot["data"].as_str().unwrap())).unwrap();
    println!("screenshot: {}", path.display());

    // `herald reconcile --repair` puts the row back; the next round clears the mark, live.
    let out = common::herald()
        .args(["reconcile", "--since", "3650d", "--route", &route, "--repair", "--config"])
        .arg(&config.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    wait_for_metric("0").await;
    let deadline = Instant::now() + PATIENCE;
    while tab.evaluate("document.querySelectorAll('td.diverged').length").await != 0 {
        assert!(Instant::now() < deadline, "the mark stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

/// A page from another origin (another local port, as any site the operator has open could be)
/// tries every way a browser lets it send a change without asking: a `no-cors` fetch, a
/// `text/plain` body, a submitted form. The admin API refuses each, and the route runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_from_another_origin_cannot_pause_a_route() {
    let topic = unique("xorigin");
    let route = unique("route");
    create_topic(&topic, 1).await;
    let config =
        TempConfig::new(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", stdout_route_config(&route, &topic, "")));
    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    let pause = format!("http://{admin}/routes/{route}/pause");
    let attack = format!(
        r#"<!doctype html><title>attack</title>
<form id="f" method="POST" action="{pause}" target="sink"><input name="a" value="b"></form>
<iframe name="sink"></iframe>
<script>
(async () => {{
  await fetch("{pause}", {{ method: "POST", mode: "no-cors" }}).catch(() => {{}});
  await fetch("{pause}", {{ method: "POST", mode: "no-cors", headers: {{ "Content-Type": "text/plain" }}, body: "x" }}).catch(() => {{}});
  await fetch("{pause}", {{ method: "POST", mode: "no-cors", credentials: "include" }}).catch(() => {{}});
  document.getElementById("f").submit();
  document.title = "sent";
}})();
</script>"#
    );
    let site = serve_forever(attack);
    let browser = Browser::open(&format!("http://{site}/attack"));
    let mut tab = browser.page("/attack").await;
    let deadline = Instant::now() + PATIENCE;
    while tab.evaluate("document.title").await != "sent" {
        assert!(Instant::now() < deadline, "the attacking page never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each of the four reached herald and was refused.
    let deadline = Instant::now() + PATIENCE;
    while herald.log().matches("Admin API refused a request.").count() < 4 {
        assert!(Instant::now() < deadline, "not every request was refused:\n{}", herald.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let routes: serde_json::Value = serde_json::from_str(&http(&admin, "GET", "/routes").1).unwrap();
    assert_ne!(routes[0]["status"], "paused", "{routes}");
    assert!(!herald.log().contains("Route pause state changed"), "{}", herald.log());
    produce_events(&topic, &["A"], 3).await;
    herald.wait_for_lines(3);
    // The same request from the API's own origin (a shell on this machine) is taken.
    assert_eq!(http(&admin, "POST", &format!("/routes/{route}/pause")).0, 202);
}

/// Serves `page` to every request on a free loopback port, for the rest of the test.
fn serve_forever(page: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = [0; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    address
}
