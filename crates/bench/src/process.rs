//! The herald process under test: started from its binary on a generated config, its log
//! watched, its memory and CPU read from `/proc`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::observe::Visible;

/// Linux's `USER_HZ`, the unit of `utime`/`stime` in `/proc/<pid>/stat`; 100 on every mainstream
/// architecture.
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// A running `herald run`.
pub struct HeraldProcess {
    child: Child,
    /// When the process was spawned.
    pub spawned: Instant,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    config: PathBuf,
    /// The admin API's address, once read from the log.
    admin: Option<String>,
}

/// What herald used, read from `/proc`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Resident memory now, MiB.
    pub rss_mib: f64,
    /// Peak resident memory since start (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// User + system CPU time since start, seconds.
    pub cpu_seconds: f64,
}

impl HeraldProcess {
    /// Writes `config` to a file and starts `binary run` on it. With `stdout_events`, every line
    /// herald prints on stdout is an event, timestamped as it arrives; otherwise stdout is dropped.
    pub fn start(binary: &Path, name: &str, config: &str, stdout_events: Option<Arc<Visible>>) -> Result<Self> {
        if !binary.exists() {
            bail!("{} does not exist; build it first with `cargo build --release -p herald`", binary.display());
        }
        let path = std::env::temp_dir().join(format!("herald-bench-{name}.toml"));
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let spawned = Instant::now();
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&path)
            .env("HERALD_LOG", std::env::var("HERALD_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()))
            .stdin(Stdio::null())
            .stdout(if stdout_events.is_some() { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap_or_else(PoisonError::into_inner).push((Instant::now(), line));
                }
            });
        }
        if let (Some(stdout), Some(visible)) = (child.stdout.take(), stdout_events) {
            std::thread::spawn(move || {
                for line in BufReader::with_capacity(1 << 20, stdout).lines().map_while(Result::ok) {
                    visible.saw_payload(&line);
                }
            });
        }
        Ok(Self { child, spawned, log, config: path, admin: None })
    }

    /// When a log line containing `text` appeared, waiting up to `patience` for it.
    pub fn wait_for_log(&mut self, text: &str, patience: Duration) -> Result<Instant> {
        self.wait_for_logs(text, 1, patience)
    }

    /// When the `count`-th log line containing `text` appeared.
    pub fn wait_for_logs(&mut self, text: &str, count: usize, patience: Duration) -> Result<Instant> {
        let deadline = Instant::now() + patience;
        loop {
            let found = {
                let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                log.iter().filter(|(_, line)| line.contains(text)).nth(count - 1).map(|(at, _)| *at)
            };
            if let Some(at) = found {
                return Ok(at);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("herald exited ({status}) before logging {text:?}; its log:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("herald did not log {text:?} within {patience:?}; its log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The admin API's address, from its log line (the config binds port 0).
    /// Read from the log once: `Watch::Accepted` asks for it every few milliseconds.
    pub fn admin_address(&mut self) -> Result<String> {
        if let Some(address) = &self.admin {
            return Ok(address.clone());
        }
        let address = self.logged_address("Admin API listening.")?;
        self.admin = Some(address.clone());
        Ok(address)
    }

    /// The address on the log line that says `listening` (e.g. `"Ingest listener listening."`).
    pub fn logged_address(&mut self, listening: &str) -> Result<String> {
        self.wait_for_log(listening, Duration::from_secs(30))?;
        let log = self.log_text();
        let line = log.lines().find(|line| line.contains(listening)).unwrap_or_default();
        let address = line.split("address=").nth(1).and_then(|rest| rest.split_whitespace().next());
        address.map(str::to_owned).with_context(|| format!("no address in {line:?}"))
    }

    /// `POST path` to the admin API.
    pub fn admin_post(&mut self, path: &str) -> Result<()> {
        self.admin_request("POST", path).map(drop)
    }

    /// How many events the route's sink has accepted, from `GET /routes`.
    pub fn delivered(&mut self) -> Result<u64> {
        let body = self.admin_request("GET", "/routes")?;
        let routes: serde_json::Value = serde_json::from_str(&body).context("GET /routes is not JSON")?;
        routes[0]["delivered"].as_u64().with_context(|| format!("no delivered count in {body}"))
    }

    /// Events delivered by all routes together (at least `routes` of them must be listed).
    pub fn delivered_total(&mut self, routes: usize) -> Result<u64> {
        let body = self.admin_request("GET", "/routes")?;
        let listed: Vec<serde_json::Value> = serde_json::from_str(&body).context("GET /routes is not JSON")?;
        if listed.len() < routes {
            return Ok(0);
        }
        Ok(listed.iter().filter_map(|route| route["delivered"].as_u64()).sum())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One request to the admin API, its body back: a one-shot HTTP/1.1 exchange, all this
    /// harness needs.
    fn admin_request(&mut self, method: &str, path: &str) -> Result<String> {
        use std::io::{Read, Write};
        let address = self.admin_address()?;
        let mut stream = std::net::TcpStream::connect(&address).with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.split_whitespace().nth(1).unwrap_or_default();
        anyhow::ensure!(status.starts_with('2'), "{method} {path} answered {status}");
        Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
    }

    /// Usage after `idle` with nothing to do, following `settle`, and the share of a core (%)
    /// herald used over `idle`.
    pub async fn idle_usage(&self, settle: Duration, idle: Duration) -> Result<(Usage, f64)> {
        tokio::time::sleep(settle).await;
        let before = self.usage()?;
        tokio::time::sleep(idle).await;
        let after = self.usage()?;
        Ok((after, (after.cpu_seconds - before.cpu_seconds) / idle.as_secs_f64() * 100.0))
    }

    /// Everything herald logged so far.
    pub fn log_text(&self) -> String {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().map(|(_, line)| line.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// Memory and CPU now.
    pub fn usage(&self) -> Result<Usage> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/<pid>/status")?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/<pid>/stat")?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
        Ok(Usage {
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
            cpu_seconds: (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND,
        })
    }

    /// SIGKILL, as a crash or the OOM killer ends a process: nothing is committed or left.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill().context("killing herald")?;
        self.child.wait().context("reaping herald")?;
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("herald did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.config);
    }
}
