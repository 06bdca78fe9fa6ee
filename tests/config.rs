//! Config and reload cannot be turned against herald: an environment value is one value and
//! never config, no output shows a secret, a reload is all or nothing, and `check` reads what
//! `run` reads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::source::{greenfield, insert, pool, read_committed, source_config};
use common::*;

/// `herald <args…> --config <config>` with `env`; exit code and stdout + stderr.
fn herald_output(args: &[&str], config: &TempConfig, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = herald().args(args).arg("--config").arg(&config.path).envs(env.iter().copied()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

fn with_admin(config: &str, admin: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n{config}")
}

/// A value holding quotes, a line break and a whole `[[route]]` with an exec sink stays the
/// value of the key it was written in: refused there (a token cannot hold a line break), never a
/// second route. Quotes and backslashes, as real passwords hold them, arrive character for
/// character: the token they make opens the admin API.
#[test]
fn an_environment_value_is_one_value_and_never_config() {
    let topic = unique("cfg-inject");
    let marker = std::env::temp_dir().join(unique("herald-injected"));
    let config = TempConfig::new(&with_admin(
        &stdout_route_config("r", &topic, ""),
        "token = \"${ADMIN_TOKEN}\"\nauth = \"all\"",
    ));
    let injection = format!(
        "0123456789abcdef\"\n[[route]]\nname = \"evil\"\ntopics = [\"{topic}\"]\nsink = {{ type = \"exec\", command = [\"touch\", \"{}\"] }}\n#",
        marker.display()
    );
    let (code, out) = herald_output(&["check", "--offline"], &config, &[("ADMIN_TOKEN", &injection)]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("admin.token") && out.contains("`ADMIN_TOKEN`"), "names key and variable: {out}");
    assert!(!out.contains("evil") && !out.contains("touch"), "the value is not shown: {out}");

    // Quotes, backslashes, `\t` as two characters, `#` and `${…}`: all kept as written.
    let token = r#"q"uo\te\t#${HOME}'x-0123456789"#;
    let (code, out) = herald_output(&["check", "--offline"], &config, &[("ADMIN_TOKEN", token)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("(1 routes)") && !out.contains(token), "{out}");
    create_topic(&topic, 1).await_blocking();
    let mut herald = Herald::run_with_env(&config, &[("ADMIN_TOKEN", token)]);
    let admin = admin_address(&mut herald);
    let (status, _) = request(&admin, "GET", "/routes", "");
    assert_eq!(status, 401, "auth = all");
    let (status, body) = request(&admin, "GET", "/routes", &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(status, 200, "the token is exactly the variable's text: {body}");
    let routes: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(routes.as_array().unwrap().len(), 1, "{body}");
    // The scheme is case-insensitive, and liveness needs no token.
    let (status, _) = request(&admin, "GET", "/routes", &format!("Authorization: bearer {token}\r\n"));
    assert_eq!(status, 200);
    assert_eq!(request(&admin, "GET", "/health/live", "").0, 200);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    assert!(!herald.log().contains(token), "{}", herald.log());
    assert!(!marker.exists());
}

/// A secret planted in a Postgres URL (in the file, and from the environment) and in the admin
/// token never shows: not on a syntax error's line, not in `check`'s lines when the database
/// refuses the password, not in `run`'s log, not in a refused reload's answer or log line, not
/// in the error `run` exits with.
#[test]
fn no_output_shows_a_planted_secret() {
    const SECRET: &str = "Pl4nted-S3cret";
    const TOKEN: &str = "Pl4nted-admin-token-0123";
    let topic = unique("cfg-secret");
    create_topic(&topic, 1).await_blocking();
    let bad_url = format!("postgres://herald:{SECRET}@127.0.0.1:5432/herald");
    let schema = unique("secret").replace('-', "_");
    let sink = |url: &str, tail: &str| {
        format!("[route.sink]\ntype = \"postgres\"\nurl = \"{url}\"{tail}\nschema = \"{schema}\"\n")
    };
    let file = |url: &str, tail: &str| {
        with_admin(&route_config("pg", &topic, "", &sink(url, tail)), &format!("token = \"{TOKEN}\""))
    };
    let mut outputs = Vec::new();

    // A syntax error on the line that holds the secret.
    let config = TempConfig::new(&file(&bad_url, " x"));
    let (code, out) = herald_output(&["check", "--offline"], &config, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("line ") && out.contains("`url`"), "says where: {out}");
    outputs.push(("check --offline, syntax error", out));
    let (code, out) = herald_output(&["run"], &config, &[]);
    assert_eq!(code, Some(1), "{out}");
    outputs.push(("run, syntax error", out));

    // The database refuses the password: check's line and run's log.
    let config = TempConfig::new(&file(&bad_url, ""));
    let (code, out) = herald_output(&["check"], &config, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL") && out.contains("route pg"), "{out}");
    outputs.push(("check, wrong password", out));
    // From the environment: the same URL through `${PG_URL}`.
    let from_env = TempConfig::new(&file("${PG_URL}", ""));
    let (code, out) = herald_output(&["check"], &from_env, &[("PG_URL", &bad_url)]);
    assert_eq!(code, Some(1), "{out}");
    outputs.push(("check, wrong password from the environment", out));

    // A database that refuses the password at start: run's error.
    let (code, out) = herald_output(&["run"], &from_env, &[("PG_URL", &bad_url)]);
    assert_eq!(code, Some(1), "{out}");
    outputs.push(("run, wrong password from the environment", out));

    // A herald running with the right password; then reloads that hold the planted one.
    let good = |tail: &str| file("${PG_URL}", tail);
    std::fs::write(&from_env.path, good("")).unwrap();
    let env = [("PG_URL", common::source::URL), ("BAD_URL", bad_url.as_str())];
    let mut herald = Herald::run_with_env(&from_env, &env);
    let admin = admin_address(&mut herald);
    let bearer = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    let reloads = [
        ("a syntax error on the secret's line", file(&bad_url, " x")),
        ("a value from the environment where an enum is expected", good("\nmode = \"${BAD_URL}\"")),
        ("a database that refuses the password", file("${BAD_URL}", "")),
    ];
    for (what, text) in reloads {
        std::fs::write(&from_env.path, text).unwrap();
        let (status, body) = request(&admin, "POST", "/reload", &bearer);
        assert_eq!(status, 422, "{what}: {body}");
        outputs.push((what, body));
    }
    herald.wait_for_log("Reload refused");
    herald.signal("TERM");
    herald.wait_exit();
    outputs.push(("run log", herald.log()));

    for (what, out) in &outputs {
        assert!(!out.contains(SECRET) && !out.contains(TOKEN), "{what} shows a secret:\n{out}");
    }
}

/// An empty or half-written file (an editor mid-write) is refused on SIGHUP and on `POST
/// /reload`: every route runs on and stays ready. A route removed by a reload is gone from
/// `/routes` and readiness; a renamed route's new group is warned about, by the reload and by
/// `check --diff` before it.
#[test]
fn a_bad_reload_changes_nothing_and_readiness_tells_the_truth() {
    let topic = unique("cfg-reload");
    create_topic(&topic, 1).await_blocking();
    let two_routes = with_admin(
        &format!(
            "{}\n[[route]]\nname = \"b\"\ntopics = [\"{topic}\"]\nsink = {{ type = \"stdout\" }}\n",
            stdout_route_config("a", &topic, "")
        ),
        "",
    );
    let config = TempConfig::new(&two_routes);
    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    let json = "Content-Type: application/json\r\n";
    let running = |admin: &str| -> Vec<(String, String)> {
        let (_, body) = request(admin, "GET", "/routes", "");
        let routes: serde_json::Value = serde_json::from_str(&body).unwrap();
        routes
            .as_array()
            .unwrap()
            .iter()
            .map(|route| (route["name"].as_str().unwrap().to_owned(), route["status"].as_str().unwrap().to_owned()))
            .collect()
    };
    let deadline = Instant::now() + PATIENCE;
    while request(&admin, "GET", "/health/ready", "").0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {:?}\n{}", running(&admin), herald.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Empty, then cut mid-line: refused both ways, nothing stopped.
    std::fs::write(&config.path, "").unwrap();
    herald.signal("HUP");
    herald.wait_for_log("Reload refused");
    let (status, body) = request(&admin, "POST", "/reload", json);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("nothing to run"), "{body}");
    std::fs::write(&config.path, &two_routes[..two_routes.len() - 20]).unwrap();
    let (status, body) = request(&admin, "POST", "/reload", json);
    assert_eq!(status, 422, "{body}");
    assert_eq!(running(&admin).len(), 2, "{:?}", running(&admin));
    assert!(running(&admin).iter().all(|(_, status)| status != "stopped"), "{:?}", running(&admin));
    assert_eq!(request(&admin, "GET", "/health/ready", "").0, 200);

    // `b` renamed to `c`: check --diff says what the reload will do, the reload warns the same.
    let renamed = two_routes.replace("name = \"b\"", "name = \"c\"");
    let old = TempConfig::new(&two_routes);
    std::fs::write(&config.path, &renamed).unwrap();
    let out = common::herald()
        .args(["check", "--offline", "--config"])
        .arg(&config.path)
        .arg("--diff")
        .arg(&old.path)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("started [\"c\"], stopped [\"b\"]"), "{printed}");
    assert!(
        printed.contains("route `c` starts consumer group `herald.c`") && printed.contains("group_id = \"herald.b\""),
        "{printed}"
    );
    let (status, body) = request(&admin, "POST", "/reload", json);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("starts consumer group `herald.c`"), "{body}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = running(&admin);
        let names: Vec<&str> = now.iter().map(|(name, _)| name.as_str()).collect();
        if names == ["a", "c"] && request(&admin, "GET", "/health/ready", "").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{now:?}: `b` is forgotten, `c` runs, ready\n{}", herald.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

/// A reload that changes a source's capture mode would move its change capture: refused with what to
/// run instead (commands with `--config`), and the source runs on and publishes the next row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_would_move_a_capture_is_refused_and_the_source_runs_on() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("cfg-capture");
    let text = with_admin(&source_config("orders", &schema, &topic, ""), "");
    let config = TempConfig::new(&text);
    let (code, out) = herald_output(&["migrate"], &config, &[]);
    assert_eq!(code, Some(0), "{out}");
    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    std::fs::write(&config.path, text.replace("poll_interval", "capture = \"wal\"\npoll_interval")).unwrap();
    let (status, body) = request(&admin, "POST", "/reload", "Content-Type: application/json\r\n");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("`capture`") && body.contains("moves its change capture"), "{body}");
    assert!(
        body.contains(&format!("herald migrate --config {} --drop-source orders", config.path.display())),
        "{body}"
    );
    insert(&pool, &schema, "OrdersDB", "bronze", "SUCCESS", 7).await;
    let published = read_committed(&topic, 1);
    assert_eq!(published.len(), 1, "{}", herald.log());
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

/// `check` reads `[admin] token_file` as `run` does: missing or too short fails both; and
/// Kafka's certificate files.
#[test]
fn check_reads_the_token_file_as_run_does() {
    let topic = unique("cfg-token");
    let file = std::env::temp_dir().join(unique("herald-token"));
    let config = TempConfig::new(&with_admin(
        &stdout_route_config("r", &topic, ""),
        &format!("token_file = \"{}\"", file.display()),
    ));
    for content in [None, Some("short\n")] {
        if let Some(content) = content {
            std::fs::write(&file, content).unwrap();
        }
        let (code, out) = herald_output(&["check", "--offline"], &config, &[]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("FAIL  admin token"), "{out}");
        let (code, out) = herald_output(&["run"], &config, &[]);
        assert_eq!(code, Some(1), "{out}");
    }
    std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
    let (code, out) = herald_output(&["check", "--offline"], &config, &[]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::remove_file(&file).unwrap();
    // Kafka's certificate files, which librdkafka reads when `run` starts, are read by `check`.
    let text = stdout_route_config("r", &topic, "")
        .replace("[kafka]\n", "[kafka]\nssl.ca.location = \"/nonexistent/ca.pem\"\n");
    let (code, out) = herald_output(&["check", "--offline"], &TempConfig::new(&text), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  kafka") && out.contains("ssl.ca.location"), "{out}");
}

/// Runs a future to completion from a plain test.
trait Blocking: std::future::Future + Sized {
    fn await_blocking(self) -> Self::Output {
        tokio::runtime::Runtime::new().unwrap().block_on(self)
    }
}

impl<F: std::future::Future> Blocking for F {}
