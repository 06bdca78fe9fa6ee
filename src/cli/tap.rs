//! `herald tap`: each message a running route handles, with its outcome, as `herald run`'s
//! admin API streams it (`GET /routes/{name}/tap`). Like `vector tap`: for debugging, sampled
//! when the route is fast (the route never waits for the tap), bounded by `--limit`.
//!
//! With several processes sharing the route's group, each serves the partitions it holds:
//! `--admin` picks the process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use secrecy::ExposeSecret;

/// Arguments of `herald tap`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// The config `herald run` runs: names the route and where its admin API listens.
    #[arg(long, short, env = "HERALD_CONFIG")]
    pub config: PathBuf,
    /// The route to watch.
    #[arg(long, value_name = "NAME")]
    pub route: String,
    /// Stop after N messages. Default: until interrupted.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// At most N messages a second (1 to 20,000); the others are counted as not shown.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub rate: u32,
    /// One JSON object per message (and `{"missed": N}` lines), for `jq`.
    #[arg(long)]
    pub json: bool,
    /// The admin API to ask, `HOST:PORT`. Default: the config's `[admin] listen` (on loopback when
    /// it listens on every address).
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<String>,
}

pub async fn tap(args: TapArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    super::find_route(&config, &args.route, &args.config)?;
    let address = match (&args.admin, config.admin.listen) {
        (Some(address), _) => address.clone(),
        (None, Some(listen)) if listen.ip().is_unspecified() => format!("127.0.0.1:{}", listen.port()),
        (None, Some(listen)) => listen.to_string(),
        (None, None) => bail!(
            "{}: [admin] listen is not set, so there is no running herald to tap; set it (e.g. \"127.0.0.1:9464\") \
             and restart herald, or name one with --admin HOST:PORT",
            args.config.display()
        ),
    };
    let token = config.admin.resolve_token().context("cannot read admin.token_file")?;
    let mut url = format!("http://{address}/routes/{}/tap?rate={}", args.route, args.rate);
    if let Some(limit) = args.limit {
        url.push_str(&format!("&limit={limit}"));
    }
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
    let mut request = client.get(&url).header("accept", "text/event-stream");
    if let Some(token) = &token {
        request = request.bearer_auth(token.expose_secret());
    }
    let mut response = request
        .send()
        .await
        .with_context(|| format!("cannot reach herald's admin API at {address}: is `herald run` running?"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("{url} answered {status}: {}", body.trim());
    }
    // On stderr, so `--json` output stays one object per line.
    eprintln!("tapping route `{}` at {address} (Ctrl-C to stop)", args.route);
    let mut stream = EventStream::default();
    while let Some(chunk) = response.chunk().await.context("the tap's stream broke")? {
        for (event, data) in stream.push(&chunk) {
            print_event(&event, &data, args.json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One `tapped` or `missed` event, as a line.
fn print_event(event: &str, data: &str, json: bool) {
    if json {
        println!("{data}");
        return;
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(data) else { return };
    match event {
        "missed" => println!(
            "… {} messages not shown so far (sampled: the route is faster than the tap's rate)",
            value["missed"]
        ),
        "tapped" => {
            let text = |key: &str| value[key].as_str().unwrap_or("").to_owned();
            let mut line = format!(
                "{} {}[{}]@{} {:<13}",
                text("at"),
                text("topic"),
                value["partition"],
                value["offset"],
                text("outcome")
            );
            if let Some(error) = value["error"].as_str() {
                line.push_str(&format!(" error: {error}"));
            }
            if let Some(event) = value["event"].as_str() {
                line.push_str(&format!(" {event}"));
            }
            println!("{line}");
        }
        _ => {}
    }
}

/// Server-sent events read from a stream of bytes: `event:` and `data:` lines, an empty line
/// ending each event.
#[derive(Default)]
struct EventStream {
    pending: Vec<u8>,
    event: String,
    data: String,
}

impl EventStream {
    /// Takes `bytes` and returns the events they complete, as (event name, data).
    fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push((std::mem::take(&mut self.event), std::mem::take(&mut self.data)));
                }
                self.event.clear();
            } else if let Some(name) = line.strip_prefix("event:") {
                self.event = name.trim_start().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(data.strip_prefix(' ').unwrap_or(data));
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_put_together() {
        let mut stream = EventStream::default();
        assert!(stream.push(b"event: tapped\ndata: {\"a\"").is_empty());
        let events = stream.push(b":1}\n\n:keep-alive\n\nevent: missed\r\ndata: {\"missed\":3}\r\n\r\n");
        assert_eq!(
            events,
            [("tapped".to_owned(), "{\"a\":1}".to_owned()), ("missed".to_owned(), "{\"missed\":3}".to_owned())]
        );
    }
}
