//! Reloading the config while `herald run` runs (SIGHUP, or `POST /reload` on the admin API):
//! the file is read whole until two reads agree (never mid-write), and checked as `herald run`
//! checks it; if it is invalid, has
//! nothing to run, or would move a source's change capture, herald runs on with the old one and
//! says why. Otherwise only the routes whose settings changed are stopped
//! (each finishes its batch, commits, leaves its group) and started again, new routes start and
//! removed ones stop; the other routes are not touched, so their groups see no rebalance.
//! Sources likewise: a changed `[[source]]` finishes its transaction and starts again from its
//! cursor, the others run on. Other sections (`[kafka]`, `[admin]`, …) take effect on restart;
//! a reload that changes them says so.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use herald_admin::Control;
use herald_core::changes::{changed_by_name, moved_capture_settings, new_group_warnings, route_diff};
use herald_core::{Observer, RouteChanges, RouteConfig, SourceChanges, SourceSpec};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::Config;
use crate::registry;

/// A request from SIGHUP or the admin API, with where its answer goes.
pub type ControlRequest = (Control, oneshot::Sender<Result<String, String>>);

/// Where a reload hands its changes: the route runtime and the source runtime.
pub struct Changes {
    /// To the routes.
    pub routes: mpsc::Sender<RouteChanges>,
    /// To the sources.
    pub sources: mpsc::Sender<SourceChanges>,
}

/// Serves reload and restart requests until every sender is gone: `current` is the config
/// running now, `observer` says which routes and sources have failed.
pub async fn serve(
    path: PathBuf,
    mut current: Config,
    mut requests: mpsc::Receiver<ControlRequest>,
    changes: Changes,
    observer: Arc<Observer>,
) {
    while let Some((request, answer)) = requests.recv().await {
        if let Control::Redrive { route, since, filter, dry_run } = request {
            // Runs beside the others: a long redrive holds no reload up.
            tokio::spawn(redrive(current.clone(), route, since, filter, dry_run, answer));
            continue;
        }
        let outcome = match &request {
            Control::Reload => reload(&path, &mut current, &changes, &observer).await,
            Control::RestartRoute(name) => restart_route(&current, name, &changes).await,
            Control::RestartSource(name) => restart_source(&current, name, &changes).await,
            Control::Offsets(name) => route_offsets(&current, name).await,
            Control::ResetOffsets { route, to, dry_run } => {
                reset_offsets(&current, route, to, *dry_run, &changes, &observer).await
            }
            Control::Redrive { .. } => continue,
        };
        // Whatever a library put in an answer, a secret of the config does not leave herald.
        let outcome = outcome
            .map(|said| herald_config::redact(&said).into_owned())
            .map_err(|why| herald_config::redact(&why).into_owned());
        match (&request, &outcome) {
            (Control::Reload, Ok(summary)) => info!(config = %path.display(), "Reloaded: {summary}"),
            (Control::Reload, Err(why)) => {
                warn!(config = %path.display(), "Reload refused; running on with the old config: {why}")
            }
            (_, Ok(done)) => info!("Restarted: {done}"),
            (_, Err(why)) => warn!("Restart refused: {why}"),
        }
        let _ = answer.send(outcome);
    }
}

/// Stops route `name` if it runs and starts it again with its settings in `current`.
async fn restart_route(current: &Config, name: &str, changes: &Changes) -> Result<String, String> {
    let Some(route) = current.routes.iter().find(|route| route.name == name) else {
        return Err(format!("no route `{name}` in the running config"));
    };
    let start = vec![registry::bind(route).await.map_err(|err| format!("{err:#}"))?];
    let (done, outcome) = oneshot::channel();
    let change = RouteChanges { stop: vec![name.to_owned()], start, done };
    changes.routes.send(change).await.map_err(|_| "herald is stopping".to_owned())?;
    outcome.await.map_err(|_| "herald is stopping".to_owned())??;
    Ok(format!("route `{name}`"))
}

/// `herald redrive` of route `name` in the running config; the answer is its report as JSON.
async fn redrive(
    current: Config,
    name: String,
    since: Option<std::time::Duration>,
    filter: Vec<(String, String)>,
    dry_run: bool,
    answer: oneshot::Sender<Result<String, String>>,
) {
    let outcome = async {
        let Some(route) = current.routes.iter().find(|route| route.name == name) else {
            return Err(format!("no route `{name}` in the running config"));
        };
        let since = since.and_then(|ago| chrono::Duration::from_std(ago).ok()).map(|ago| chrono::Utc::now() - ago);
        let choice = herald_offsets::letters::Choice { since, fields: filter };
        let report = crate::cli::redrive::redrive_route(&current, route, choice, dry_run)
            .await
            .map_err(|err| herald_config::redact(&format!("{err:#}")).into_owned())?;
        info!(route = %name, "Redrive done: {}", serde_json::to_string(&report).unwrap_or_default());
        serde_json::to_string(&report).map_err(|err| err.to_string())
    }
    .await;
    if let Err(why) = &outcome {
        warn!(route = %name, "Redrive refused or failed: {why}");
    }
    let _ = answer.send(outcome);
}

/// Where route `name` resumes, as `offsets show --json` prints it.
async fn route_offsets(current: &Config, name: &str) -> Result<String, String> {
    let Some(route) = current.routes.iter().find(|route| route.name == name) else {
        return Err(format!("no route `{name}` in the running config"));
    };
    let positions = crate::cli::offsets::positions_json(current, route).await.map_err(|err| format!("{err:#}"))?;
    Ok(positions.to_string())
}

/// Moves where route `name` resumes, as `offsets reset` does, for a route paused or stopped
/// here (Kafka Connect's offsets API likewise needs the connector stopped). A paused route
/// leaves its group for the move and starts again, still paused; a running one is refused.
async fn reset_offsets(
    current: &Config,
    name: &str,
    to: &herald_offsets::ResetTo,
    dry_run: bool,
    changes: &Changes,
    observer: &Observer,
) -> Result<String, String> {
    let Some(route) = current.routes.iter().find(|route| route.name == name) else {
        return Err(format!("no route `{name}` in the running config"));
    };
    let status = observer.routes().into_iter().find(|shared| shared.name == name).map(|shared| shared.state().status);
    let paused = match status {
        Some("paused") => true,
        Some("stopped" | "failed") | None => false,
        Some(status) => {
            return Err(format!(
                "route `{name}` is {status}: pause it first (POST /routes/{name}/pause); its offsets move only while it is paused or stopped"
            ))
        }
    };
    if paused && !dry_run {
        let (done, outcome) = oneshot::channel();
        let change = RouteChanges { stop: vec![name.to_owned()], start: Vec::new(), done };
        changes.routes.send(change).await.map_err(|_| "herald is stopping".to_owned())?;
        outcome.await.map_err(|_| "herald is stopping".to_owned())??;
    }
    let reset = crate::cli::offsets::reset_route(current, route, to, dry_run).await.map_err(|err| format!("{err:#}"));
    if paused && !dry_run {
        // Started again whatever the reset said: paused before it starts (a stopped route's
        // state is forgotten), so it reads nothing until resumed, from where its offsets now are.
        observer.route(name).set_paused(true);
        let start = vec![registry::bind(route).await.map_err(|err| format!("{err:#}"))?];
        let (done, outcome) = oneshot::channel();
        let change = RouteChanges { stop: Vec::new(), start, done };
        changes.routes.send(change).await.map_err(|_| "herald is stopping".to_owned())?;
        outcome.await.map_err(|_| "herald is stopping".to_owned())??;
    }
    let reset = reset?;
    serde_json::to_string(&reset).map_err(|err| err.to_string())
}

/// Stops source `name` if it runs and starts it again with its settings in `current`.
async fn restart_source(current: &Config, name: &str, changes: &Changes) -> Result<String, String> {
    let Some(spec) = current.sources.iter().find(|spec| spec.name == name) else {
        return Err(format!("no source `{name}` in the running config"));
    };
    let source = registry::source(spec).map_err(|err| format!("{err:#}"))?;
    let (done, outcome) = oneshot::channel();
    let change = SourceChanges { stop: vec![name.to_owned()], start: vec![(name.to_owned(), source)], done };
    changes.sources.send(change).await.map_err(|_| "herald is stopping".to_owned())?;
    outcome.await.map_err(|_| "herald is stopping".to_owned())?;
    Ok(format!("source `{name}`"))
}

/// What a reload does, worked out from the running config and the new one before anything is
/// touched: `check --diff OLD` prints it, a reload applies it.
pub struct Plan {
    /// Routes to stop, by name: removed or changed.
    pub stop_routes: Vec<String>,
    /// Routes to start: new or changed.
    pub start_routes: Vec<RouteConfig>,
    /// Sources to stop, by name: removed or changed.
    pub stop_sources: Vec<String>,
    /// Sources to start, by name, and built: new or changed.
    pub start_sources: Vec<(String, Box<dyn herald_core::source::Source>)>,
    /// What an operator should know before it happens (a route that starts a consumer group of
    /// its own reads from `start_from`; a removed source's capture stays installed).
    pub warnings: Vec<String>,
    /// Sections that changed but take effect only on restart.
    pub restart_only: Vec<&'static str>,
    /// Routes and sources left running as they are.
    pub untouched: usize,
}

impl Plan {
    /// Whether nothing would stop or start.
    pub fn is_empty(&self) -> bool {
        self.stop_routes.is_empty()
            && self.start_routes.is_empty()
            && self.stop_sources.is_empty()
            && self.start_sources.is_empty()
    }

    /// One line: what restarts, starts and stops, what is untouched, what waits for a restart.
    pub fn summary(&self) -> String {
        let mut said = Vec::new();
        if self.is_empty() {
            said.push("no route or source changed".to_owned());
        } else {
            let started: Vec<String> = self.start_routes.iter().map(|route| route.name.clone()).collect();
            if !self.stop_routes.is_empty() || !started.is_empty() {
                said.push(describe("route", &self.stop_routes, &started));
            }
            let started: Vec<String> = self.start_sources.iter().map(|(name, _)| name.clone()).collect();
            if !self.stop_sources.is_empty() || !started.is_empty() {
                said.push(describe("source", &self.stop_sources, &started));
            }
            said.push(format!("{} untouched", self.untouched));
        }
        if !self.restart_only.is_empty() {
            said.push(format!("{} changed but take effect on restart", self.restart_only.join(", ")));
        }
        said.join("; ")
    }

    /// The summary and every warning: what a reload answers.
    pub fn answer(&self) -> String {
        let mut said = vec![self.summary()];
        said.extend(self.warnings.iter().map(|warning| format!("warning: {warning}")));
        said.join("; ")
    }
}

/// The plan from `current` to `next` (read from `path`), or why `next` cannot be applied live:
/// it is checked as `herald run` would check it (a file with nothing to run, as an editor
/// leaves it mid-write, is refused), and a source whose capture would have to move is refused
/// with what to run instead.
pub fn plan(current: &Config, next: &Config, path: &Path, failed: &Failed) -> Result<Plan, String> {
    if let Some(why) = next.nothing_to_run(path) {
        return Err(why);
    }
    for route in &next.routes {
        registry::validate(route).map_err(|err| format!("{err:#}"))?;
    }
    // Every source of the new config is parsed (and their claims compared) even if only some
    // start: the new config as a whole must be one herald could start with.
    let mut next_sources = registry::sources(&next.sources).map_err(|err| format!("{err:#}"))?;
    let (mut stop_routes, mut start_routes) = route_diff(&current.routes, &next.routes);
    let (mut stop_sources, mut start_names) =
        changed_by_name(&current.sources, &next.sources, |spec: &SourceSpec| &spec.name);
    // A failed route or source of the new config starts again, changed or not: a reload is
    // how a fixed cause is picked up.
    for route in next.routes.iter().filter(|route| failed.routes.contains(&route.name)) {
        if !start_routes.iter().any(|started| started.name == route.name) {
            stop_routes.push(route.name.clone());
            start_routes.push(route.clone());
        }
    }
    for spec in next.sources.iter().filter(|spec| failed.sources.contains(&spec.name)) {
        if !start_names.contains(&spec.name) {
            stop_sources.push(spec.name.clone());
            start_names.push(spec.name.clone());
        }
    }
    for (name, source) in next_sources.iter().filter(|(name, _)| start_names.contains(name)) {
        let Some(spec) = current.sources.iter().find(|spec| &spec.name == name) else { continue };
        let running = registry::source(spec).map_err(|err| format!("{err:#}"))?;
        let moved = moved_capture_settings(running.as_ref(), source.as_ref());
        if !moved.is_empty() {
            return Err(capture_move_refusal(name, &moved, path));
        }
    }
    next_sources.retain(|(name, _)| start_names.contains(name));
    let mut warnings = new_group_warnings(&current.routes, &stop_routes, &start_routes);
    for removed in stop_sources.iter().filter(|name| !start_names.contains(name)) {
        warnings.push(format!(
            "source `{removed}` is removed from the config, but its change capture stays installed (a WAL slot keeps \
             WAL): put its [[source]] back and run `herald migrate --config {} --drop-source {removed}` to retire it",
            path.display()
        ));
    }
    let untouched = next.routes.len() - start_routes.len() + next.sources.len() - start_names.len();
    Ok(Plan {
        stop_routes,
        start_routes,
        stop_sources,
        start_sources: next_sources,
        warnings,
        restart_only: sections_needing_restart(current, next),
        untouched,
    })
}

/// The routes and sources that are `failed` now, by name: a reload starts them again.
#[derive(Debug, Default)]
pub struct Failed {
    /// Failed routes.
    pub routes: Vec<String>,
    /// Failed sources.
    pub sources: Vec<String>,
}

impl Failed {
    /// What `observer` shows failed.
    pub fn from(observer: &Observer) -> Self {
        Self {
            routes: observer
                .routes()
                .iter()
                .filter(|route| route.state().status == "failed")
                .map(|route| route.name.clone())
                .collect(),
            sources: observer
                .sources()
                .into_iter()
                .filter(|(_, source)| source.state().status == "failed")
                .map(|(name, _)| name)
                .collect(),
        }
    }
}

/// Why a source's capture cannot move on a reload, and what to run instead.
fn capture_move_refusal(name: &str, moved: &[&str], path: &Path) -> String {
    let settings: Vec<String> = moved.iter().map(|setting| format!("`{setting}`")).collect();
    let config = path.display();
    format!(
        "source `{name}`: {} changed, which moves its change capture; a reload cannot do that (the running \
         source would read a capture that was never installed). Either stop herald, run `herald migrate --config \
         {config} --drop-source {name}` with the old settings, then `herald migrate --config {config}` with the new \
         ones, and start herald; or keep this [[source]] as it is and add the new settings as another [[source]] \
         under a new name, then `herald migrate --config {config}` and reload",
        settings.join(", ")
    )
}

/// One reload: what changed, or why nothing did. The file is read whole until two reads agree
/// (a file caught mid-write is not taken), and checked as `run` checks it; every new sink is
/// built before anything stops.
async fn reload(path: &Path, current: &mut Config, changes: &Changes, observer: &Observer) -> Result<String, String> {
    let reading = path.to_owned();
    let next = tokio::task::spawn_blocking(move || Config::load_settled(&reading))
        .await
        .map_err(|err| format!("reading the config: {err}"))?
        .map_err(|err| herald_sdk::error_chain(&err).join(": "))?;
    let plan = plan(current, &next, path, &Failed::from(observer))?;
    for warning in &plan.warnings {
        warn!(config = %path.display(), "Reload: {warning}");
    }
    if plan.is_empty() {
        return Ok(plan.answer());
    }
    // Build every new sink before stopping anything: a sink that cannot be built refuses the
    // whole reload, and the old routes run on.
    let mut bound = Vec::with_capacity(plan.start_routes.len());
    for route in &plan.start_routes {
        bound.push(registry::bind(route).await.map_err(|err| format!("{err:#}"))?);
    }
    let summary = plan.answer();
    if !plan.stop_routes.is_empty() || !bound.is_empty() {
        let (done, outcome) = oneshot::channel();
        let change = RouteChanges { stop: plan.stop_routes.clone(), start: bound, done };
        changes.routes.send(change).await.map_err(|_| "herald is stopping".to_owned())?;
        outcome.await.map_err(|_| "herald is stopping".to_owned())??;
    }
    if !plan.stop_sources.is_empty() || !plan.start_sources.is_empty() {
        let (done, outcome) = oneshot::channel();
        let change = SourceChanges { stop: plan.stop_sources, start: plan.start_sources, done };
        changes.sources.send(change).await.map_err(|_| "herald is stopping".to_owned())?;
        outcome.await.map_err(|_| "herald is stopping".to_owned())?;
    }
    current.routes = next.routes;
    current.sources = next.sources;
    Ok(summary)
}

/// "restarted route [..], started [..], stopped [..]" from what stopped and what started.
fn describe(what: &str, stopped: &[String], started: &[String]) -> String {
    let restarted: Vec<&String> = started.iter().filter(|name| stopped.contains(name)).collect();
    let added: Vec<&String> = started.iter().filter(|name| !stopped.contains(name)).collect();
    let removed: Vec<&String> = stopped.iter().filter(|name| !started.contains(name)).collect();
    format!("{what}s: restarted {restarted:?}, started {added:?}, stopped {removed:?}")
}

/// The sections other than `[[route]]` and `[[source]]` that differ, compared by value
/// (secrets too: a changed password alone is a change).
fn sections_needing_restart(current: &Config, next: &Config) -> Vec<&'static str> {
    let mut sections = Vec::new();
    for (name, changed) in [
        ("[kafka]", current.kafka.iter().ne(next.kafka.iter())),
        ("[runtime]", current.runtime != next.runtime),
        ("[admin]", current.admin != next.admin),
        ("[ingest]", current.ingest != next.ingest),
        ("[board]", current.board != next.board),
        ("[expectations]/[[expect]]", current.expectations != next.expectations || current.expect != next.expect),
        ("[reconcile]", current.reconcile != next.reconcile),
    ] {
        if changed {
            sections.push(name);
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_changed_secret_alone_is_a_change_that_takes_effect_on_restart() {
        let load = |password: &str, token: &str| {
            let text = format!(
                "[kafka]\nsasl.password = \"{password}\"\n[admin]\ntoken = \"{token}\"\n\
                 [[route]]\nname = \"a\"\ntopics = [\"t\"]\nsink = {{ type = \"stdout\" }}\n"
            );
            Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap()
        };
        let before = load("old-password", "0123456789abcdef-old");
        assert!(sections_needing_restart(&before, &load("old-password", "0123456789abcdef-old")).is_empty());
        assert_eq!(sections_needing_restart(&before, &load("new-password", "0123456789abcdef-old")), ["[kafka]"]);
        assert_eq!(sections_needing_restart(&before, &load("old-password", "0123456789abcdef-new")), ["[admin]"]);
    }
}
