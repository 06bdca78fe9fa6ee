//! Reloading the config while `herald run` runs (SIGHUP, or `POST /reload` on the admin API):
//! the file is read and checked as `check --offline` does; if it is invalid, herald runs on
//! with the old one and says why. Otherwise only the routes whose settings changed are stopped
//! (each finishes its batch, commits, leaves its group) and started again, new routes start and
//! removed ones stop; the other routes are not touched, so their groups see no rebalance.
//! Sources likewise: a changed `[[source]]` finishes its transaction and starts again from its
//! cursor, the others run on. Other sections (`[kafka]`, `[admin]`, …) take effect on restart;
//! a reload that changes them says so.

use std::path::PathBuf;

use herald_core::{BoundRoute, RouteChanges, RouteConfig, SourceChanges, SourceSpec};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::Config;
use crate::registry;

/// A request to reload; answered with what changed, or why nothing did.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// Where a reload hands its changes: the route runtime and the source runtime.
pub struct Changes {
    /// To the routes.
    pub routes: mpsc::Sender<RouteChanges>,
    /// To the sources.
    pub sources: mpsc::Sender<SourceChanges>,
}

/// Serves reload requests until every sender is gone: `current` is the config running now.
pub async fn serve(path: PathBuf, mut current: Config, mut requests: mpsc::Receiver<ReloadRequest>, changes: Changes) {
    while let Some(answer) = requests.recv().await {
        let outcome = reload(&path, &mut current, &changes).await;
        match &outcome {
            Ok(summary) => info!(config = %path.display(), "Reloaded: {summary}"),
            Err(why) => warn!(config = %path.display(), "Reload refused; running on with the old config: {why}"),
        }
        let _ = answer.send(outcome);
    }
}

/// One reload: what changed, or why nothing did.
async fn reload(path: &std::path::Path, current: &mut Config, changes: &Changes) -> Result<String, String> {
    let next = Config::load(path).map_err(|err| herald_sdk::error_chain(&err).join(": "))?;
    for route in &next.routes {
        registry::validate(route).map_err(|err| format!("{err:#}"))?;
    }
    // Every source of the new config is parsed (and their claims compared) even if only some
    // start: the new config as a whole must be one herald could start with.
    let mut next_sources = registry::sources(&next.sources).map_err(|err| format!("{err:#}"))?;
    let (stop, start) = route_diff(&current.routes, &next.routes);
    let (stop_sources, start_sources) = diff(&current.sources, &next.sources, |spec: &SourceSpec| &spec.name);
    let mut said = Vec::new();
    let restart_only = sections_needing_restart(current, &next);
    let restart_note =
        (!restart_only.is_empty()).then(|| format!("{} changed but take effect on restart", restart_only.join(", ")));
    if stop.is_empty() && start.is_empty() && stop_sources.is_empty() && start_sources.is_empty() {
        said.push("no route or source changed".to_owned());
        said.extend(restart_note);
        return Ok(said.join("; "));
    }
    // Build every new sink before stopping anything: a sink that cannot be built refuses the
    // whole reload, and the old routes run on.
    let mut bound = Vec::with_capacity(start.len());
    for route in &start {
        let mut sink = registry::build(route, herald_sdk::Purpose::Run).await.map_err(|err| format!("{err:#}"))?;
        if let Err(err) = sink.healthcheck().await {
            warn!(route = %route.name, error = %herald_sdk::error_chain(&err).join(": "), "Sink healthcheck failed; writes will be retried.");
        }
        bound.push(BoundRoute { config: route.clone(), sink });
    }
    if !stop.is_empty() || !bound.is_empty() {
        let (done, outcome) = oneshot::channel();
        let change = RouteChanges { stop: stop.clone(), start: bound, done };
        changes.routes.send(change).await.map_err(|_| "herald is stopping".to_owned())?;
        outcome.await.map_err(|_| "herald is stopping".to_owned())??;
        said.push(describe("route", &stop, &start.iter().map(|route| route.name.clone()).collect::<Vec<_>>()));
    }
    if !stop_sources.is_empty() || !start_sources.is_empty() {
        next_sources.retain(|(name, _)| start_sources.contains(name));
        let (done, outcome) = oneshot::channel();
        let change = SourceChanges { stop: stop_sources.clone(), start: next_sources, done };
        changes.sources.send(change).await.map_err(|_| "herald is stopping".to_owned())?;
        outcome.await.map_err(|_| "herald is stopping".to_owned())?;
        said.push(describe("source", &stop_sources, &start_sources));
        for removed in stop_sources.iter().filter(|name| !start_sources.contains(name)) {
            warn!(
                source_name = %removed,
                "Source removed from the config, but its change capture stays installed (a WAL slot keeps WAL): \
                 put its [[source]] back and run `herald migrate --drop-source {removed}` to retire it."
            );
        }
    }
    let unchanged = next.routes.len() - start.len() + next.sources.len() - start_sources.len();
    said.push(format!("{unchanged} untouched"));
    said.extend(restart_note);
    current.routes = next.routes;
    current.sources = next.sources;
    Ok(said.join("; "))
}

/// "restarted route [..], started [..], stopped [..]" from what stopped and what started.
fn describe(what: &str, stopped: &[String], started: &[String]) -> String {
    let restarted: Vec<&String> = started.iter().filter(|name| stopped.contains(name)).collect();
    let added: Vec<&String> = started.iter().filter(|name| !stopped.contains(name)).collect();
    let removed: Vec<&String> = stopped.iter().filter(|name| !started.contains(name)).collect();
    format!("{what}s: restarted {restarted:?}, started {added:?}, stopped {removed:?}")
}

/// The names to stop (removed or changed) and to start (new or changed), of items named by
/// `name` (routes, sources).
fn diff<T: PartialEq>(current: &[T], next: &[T], name: impl Fn(&T) -> &str) -> (Vec<String>, Vec<String>) {
    let find = |items: &[T], wanted: &str| items.iter().position(|item| name(item) == wanted);
    let changed = |item: &T, others: &[T]| find(others, name(item)).is_none_or(|at| &others[at] != item);
    let stop = current.iter().filter(|item| changed(item, next)).map(|item| name(item).to_owned()).collect();
    let start = next.iter().filter(|item| changed(item, current)).map(|item| name(item).to_owned()).collect();
    (stop, start)
}

/// The routes to stop, by name, and those to start.
fn route_diff(current: &[RouteConfig], next: &[RouteConfig]) -> (Vec<String>, Vec<RouteConfig>) {
    let (stop, start) = diff(current, next, |route| &route.name);
    (stop, next.iter().filter(|route| start.contains(&route.name)).cloned().collect())
}

/// The sections other than `[[route]]` and `[[source]]` that differ (compared as printed: secrets, printed
/// redacted, are not compared).
fn sections_needing_restart(current: &Config, next: &Config) -> Vec<&'static str> {
    let differ = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut sections = Vec::new();
    for (name, changed) in [
        ("[kafka]", differ(&current.kafka, &next.kafka)),
        ("[runtime]", differ(&current.runtime, &next.runtime)),
        ("[admin]", differ(&current.admin, &next.admin)),
        ("[board]", differ(&current.board, &next.board)),
        (
            "[expectations]/[[expect]]",
            differ(&(&current.expectations, &current.expect), &(&next.expectations, &next.expect)),
        ),
        ("[reconcile]", differ(&current.reconcile, &next.reconcile)),
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

    fn routes(text: &str) -> Vec<RouteConfig> {
        Config::from_toml(text, std::path::Path::new("t.toml")).unwrap().routes
    }

    #[test]
    fn only_changed_new_and_removed_routes_are_touched() {
        let before = routes(
            "[[route]]\nname = \"a\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n\
             [[route]]\nname = \"b\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n\
             [[route]]\nname = \"c\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n",
        );
        let after = routes(
            "[[route]]\nname = \"a\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n\
             [[route]]\nname = \"b\"\ntopics = [\"t\"]\nfilter = { status = \"FAILED\" }\nsink = { type = \"stdout\" }\n\
             [[route]]\nname = \"d\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n",
        );
        let (stop, start) = route_diff(&before, &after);
        assert_eq!(stop, vec!["b", "c"]);
        assert_eq!(start.iter().map(|route| route.name.as_str()).collect::<Vec<_>>(), vec!["b", "d"]);
        let (stop, start) = route_diff(&after, &after);
        assert!(stop.is_empty() && start.is_empty());
    }
}
