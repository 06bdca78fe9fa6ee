//! The exec sink: a program per event, or one long-running program per route.

use std::process::Stdio;

use async_trait::async_trait;
use herald_sdk::{Rejection, Sink, SinkError, SinkRecord, WriteOutcome};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tracing::{info, warn};

use crate::config::{Ack, ExecMode, ExecSinkConfig};
use crate::error::ExecSinkError;
use crate::EXIT_RETRY;

/// How much of a refusing program's standard error goes into the dead letter's reason.
const STDERR_EXCERPT: usize = 300;

/// Hands events to the configured program.
pub(crate) struct ExecSink {
    config: ExecSinkConfig,
    /// Stream mode: the running command, started with the first batch (and again after it died).
    running: Option<Running>,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
}

impl ExecSink {
    pub(crate) fn new(config: ExecSinkConfig) -> Self {
        Self { config, running: None }
    }

    fn program(&self) -> String {
        self.config.command.first().cloned().unwrap_or_default()
    }

    /// The command, as configured: the argument list as is, no shell.
    fn command(&self) -> Command {
        let mut command = Command::new(self.program());
        command.args(self.config.command.iter().skip(1)).envs(&self.config.env).kill_on_drop(true);
        if let Some(dir) = &self.config.working_dir {
            command.current_dir(dir);
        }
        command
    }

    /// Per-event mode: runs the command for `record`, event JSON on stdin, fields in `HERALD_*`.
    /// Values that cannot be passed to a process (a NUL, more than the environment takes)
    /// refuse the event, not the route.
    async fn run_once(&self, record: &SinkRecord) -> Result<(), ExecSinkError> {
        let program = self.program();
        let event = &record.event;
        for (name, value) in [
            ("HERALD_EVENT", &event.event),
            ("HERALD_SOURCE", &event.source),
            ("HERALD_STAGE", &event.stage),
            ("HERALD_STATUS", &event.status),
        ] {
            if value.contains('\0') {
                let reason = format!("{name} would hold a NUL character, which no process environment can");
                return Err(ExecSinkError::Unpassable { program, reason });
            }
        }
        let mut command = self.command();
        command
            .env("HERALD_EVENT", &event.event)
            .env("HERALD_SOURCE", &event.source)
            .env("HERALD_STAGE", &event.stage)
            .env("HERALD_STATUS", &event.status)
            .env("HERALD_TIMESTAMP", event.timestamp.to_string())
            .env("HERALD_TOPIC", &*record.topic)
            .env("HERALD_PARTITION", record.partition.to_string())
            .env("HERALD_OFFSET", record.offset.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match event.records {
            Some(records) => command.env("HERALD_RECORDS", records.to_string()),
            None => command.env_remove("HERALD_RECORDS"),
        };
        let mut child = command.spawn().map_err(|source| spawn_error(&program, source))?;
        if let Some(mut stdin) = child.stdin.take() {
            let mut json = event.to_json().into_bytes();
            json.push(b'\n');
            // A program that does not read its input may exit before taking it: not an error.
            let _ = stdin.write_all(&json).await;
        }
        let output = match tokio::time::timeout(self.config.timeout, child.wait_with_output()).await {
            Ok(output) => {
                output.map_err(|err| ExecSinkError::Failed { program: program.clone(), what: err.to_string() })?
            }
            // Dropping the wait drops the child, which kill_on_drop kills.
            Err(_) => {
                return Err(ExecSinkError::Failed {
                    program,
                    what: format!("did not finish within {:?}; killed", self.config.timeout),
                })
            }
        };
        log_output(&program, &output.stdout, &output.stderr);
        match output.status.code() {
            Some(0) => Ok(()),
            Some(EXIT_RETRY) => Err(ExecSinkError::Retry { program }),
            Some(code) => {
                let stderr = &output.stderr[..output.stderr.len().min(STDERR_EXCERPT)];
                Err(ExecSinkError::Refused { program, code, stderr: String::from_utf8_lossy(stderr).trim().to_owned() })
            }
            None => Err(ExecSinkError::Failed { program, what: "killed by a signal".into() }),
        }
    }

    /// Stream mode: the running command, started if it is not.
    fn running(&mut self) -> Result<&mut Running, ExecSinkError> {
        if self.running.is_none() {
            let program = self.program();
            let mut command = self.command();
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child =
                command.spawn().map_err(|source| ExecSinkError::Spawn { program: program.clone(), source })?;
            let failed = |what: &str| ExecSinkError::Failed { program: program.clone(), what: what.to_owned() };
            let stdin = child.stdin.take().ok_or_else(|| failed("no standard input"))?;
            let stdout = child.stdout.take().ok_or_else(|| failed("no standard output"))?;
            if let Some(stderr) = child.stderr.take() {
                tokio::spawn(log_lines(program.clone(), stderr));
            }
            info!(program = %program, pid = child.id(), "Stream command started.");
            self.running = Some(Running { child, stdin, answers: BufReader::new(stdout).lines() });
        }
        let program = self.program();
        // Just set when it was None.
        self.running.as_mut().ok_or(ExecSinkError::Failed { program, what: "not running".into() })
    }

    async fn stream(&mut self, batch: &[SinkRecord]) -> Result<(), ExecSinkError> {
        let program = self.program();
        let (ack, timeout) = (self.config.ack, self.config.timeout);
        let mut lines = Vec::with_capacity(batch.len() * 200 + 3);
        for record in batch {
            lines.extend_from_slice(record.event.to_json().as_bytes());
            lines.push(b'\n');
        }
        if ack == Ack::Line {
            lines.extend_from_slice(b"--\n");
        }
        let running = self.running()?;
        let sent = async {
            running.stdin.write_all(&lines).await?;
            running.stdin.flush().await
        };
        if let Err(err) = sent.await {
            self.running = None;
            return Err(ExecSinkError::Failed { program, what: format!("its input is closed ({err}); restarting it") });
        }
        if ack == Ack::None {
            return Ok(());
        }
        let answer = tokio::time::timeout(timeout, async {
            loop {
                match running.answers.next_line().await {
                    Ok(Some(line)) if line.trim() == "ok" => return Ok(true),
                    Ok(Some(line)) if line.trim() == "retry" => return Ok(false),
                    // Anything else it prints is its own output: logged, and the wait goes on.
                    Ok(Some(line)) => info!(program = %program, output = %line, "Stream command output."),
                    Ok(None) => return Err("it closed its output (exited?)".to_owned()),
                    Err(err) => return Err(err.to_string()),
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(ExecSinkError::Retry { program }),
            Ok(Err(what)) => {
                self.running = None;
                Err(ExecSinkError::Failed { program, what: format!("{what}; restarting it") })
            }
            Err(_) => {
                self.running = None;
                Err(ExecSinkError::Failed { program, what: format!("no answer within {timeout:?}; restarting it") })
            }
        }
    }
}

/// Why a per-event run did not start: the event's values (too large for a process's
/// environment, or unencodable) or the program itself (missing, not executable).
fn spawn_error(program: &str, source: std::io::Error) -> ExecSinkError {
    /// `E2BIG`: the arguments and environment exceed what `execve` takes.
    const E2BIG: i32 = 7;
    if source.raw_os_error() == Some(E2BIG) || source.kind() == std::io::ErrorKind::InvalidInput {
        return ExecSinkError::Unpassable { program: program.to_owned(), reason: source.to_string() };
    }
    ExecSinkError::Spawn { program: program.to_owned(), source }
}

/// Logs what a per-event run printed.
fn log_output(program: &str, stdout: &[u8], stderr: &[u8]) {
    for line in String::from_utf8_lossy(stdout).lines().filter(|line| !line.is_empty()) {
        info!(program, output = %line, "Command output.");
    }
    for line in String::from_utf8_lossy(stderr).lines().filter(|line| !line.is_empty()) {
        warn!(program, output = %line, "Command error output.");
    }
}

async fn log_lines(program: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        warn!(program = %program, output = %line, "Stream command error output.");
    }
}

#[async_trait]
impl Sink for ExecSink {
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        // Running the program would act on a fake event: check that it is there to run.
        let program = self.program();
        crate::config::find_program(&program, self.config.working_dir.as_deref())
            .map(drop)
            .map_err(|reason| SinkError::Fatal(Box::new(ExecSinkError::Config { key: "command", reason })))
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        match self.config.mode {
            ExecMode::Stream => {
                self.stream(batch).await?;
                Ok(WriteOutcome::all_accepted())
            }
            ExecMode::PerEvent => {
                let mut rejected = Vec::new();
                for (index, record) in batch.iter().enumerate() {
                    match self.run_once(record).await {
                        Ok(()) => {}
                        Err(err) if err.is_the_events() => {
                            rejected.push(Rejection { index, error: Box::new(err) });
                        }
                        // The events before it are done: only the rest is run again.
                        Err(err) if err.is_retriable() => {
                            return WriteOutcome::partial(
                                batch.len(),
                                rejected,
                                (index..batch.len()).collect(),
                                Box::new(err),
                            );
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
                Ok(WriteOutcome { rejected, unfinished: None })
            }
        }
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some(mut running) = self.running.take() {
            // End of input: the command finishes what it has and exits.
            let _ = running.stdin.shutdown().await;
            drop(running.stdin);
            match tokio::time::timeout(self.config.timeout, running.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => warn!(program = %self.program(), %status, "Stream command exited with an error."),
                _ => warn!(program = %self.program(), "Stream command did not exit in time; killed."),
            }
        }
        Ok(())
    }
}
