//! `run_sources`: every `[[source]]` at work until shutdown, each stopped and started on its own
//! when a reload changes it.

use std::collections::{BTreeMap, BTreeSet};

use herald_kafka::KafkaProperties;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::observe::Observer;
use crate::source::Source;
use herald_sdk::sink::BoxError;

/// A source ready to run, under its `[[source]]` name.
pub type NamedSource = (String, Box<dyn Source>);

/// A change to the running sources, from a reload: those named in `stop` finish their
/// transaction and close their producer, then those in `start` start (a changed source is in
/// both, under one name, so its transactional id fences nothing that still runs). The sources
/// in neither are not touched.
pub struct SourceChanges {
    /// Sources to stop, by name.
    pub stop: Vec<String>,
    /// Sources to start once those are stopped.
    pub start: Vec<NamedSource>,
    /// Told when the change is done.
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// Why [`run_sources`] returned an error. A source that fails is not one: it stops alone and
/// shows `failed` in the observer.
#[derive(Debug, thiserror::Error)]
pub enum SourceRunError {
    /// A source's task panicked or was aborted.
    #[error("a source's task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
}

/// Runs every source until `cancel` fires, applying each [`SourceChanges`] that arrives on
/// `changes` meanwhile (a reload, or a restart of one source). A source that fails stops
/// alone: it shows `failed` in the observer with its error, and the others run on.
pub async fn run_sources(
    kafka: &KafkaProperties,
    sources: Vec<NamedSource>,
    observer: &Observer,
    mut changes: tokio::sync::mpsc::Receiver<SourceChanges>,
    cancel: CancellationToken,
) -> Result<(), SourceRunError> {
    let stop_all = cancel.child_token();
    let mut running = RunningSources { kafka, observer, stop_all, tasks: JoinSet::new(), tokens: BTreeMap::new() };
    for source in sources {
        running.start(source);
    }
    let mut first_error = None;
    let mut changes_open = true;
    // Whether everything is stopping (shutdown, or a source failed): then no change is taken,
    // and the loop ends once every task has.
    let mut stopping = false;
    loop {
        if stopping && running.tasks.is_empty() {
            break;
        }
        tokio::select! {
            // Waited on even with no source running: with none, nothing else would end the loop.
            () = running.stop_all.cancelled(), if !stopping => {
                // Every token is a child of `stop_all`: the tasks are ending; collect them below.
                stopping = true;
                running.tokens.clear();
            }
            change = changes.recv(), if changes_open && !stopping => match change {
                Some(change) => {
                    if let Err(failure) = running.apply(change.stop, change.start).await {
                        first_error.get_or_insert(failure);
                        running.stop_all.cancel();
                    }
                    let _ = change.done.send(());
                }
                None => changes_open = false,
            },
            Some(joined) = running.tasks.join_next(), if !running.tasks.is_empty() => {
                if let Err(failure) = running.settle(joined) {
                    first_error.get_or_insert(failure);
                    running.stop_all.cancel();
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The sources at work.
struct RunningSources<'a> {
    kafka: &'a KafkaProperties,
    observer: &'a Observer,
    /// Stops every source: shutdown, or one failed.
    stop_all: CancellationToken,
    tasks: JoinSet<(String, Result<(), BoxError>)>,
    /// What stops each running source alone.
    tokens: BTreeMap<String, CancellationToken>,
}

impl RunningSources<'_> {
    fn start(&mut self, (name, source): NamedSource) {
        let token = self.stop_all.child_token();
        self.tokens.insert(name.clone(), token.clone());
        let (kafka, metrics) = (self.kafka.clone(), self.observer.source(&name));
        self.tasks.spawn(async move {
            let outcome = source.run(&kafka, metrics, token).await;
            (name, outcome)
        });
    }

    /// How a source's task ended: an error is the source's failure.
    fn settle(
        &mut self,
        joined: Result<(String, Result<(), BoxError>), tokio::task::JoinError>,
    ) -> Result<Option<String>, SourceRunError> {
        match joined {
            Ok((name, Ok(()))) => {
                self.tokens.remove(&name);
                Ok(Some(name))
            }
            Ok((name, Err(source))) => {
                // It stops alone: the other sources and every route run on.
                self.tokens.remove(&name);
                let reason = herald_sdk::error_chain(source.as_ref()).join(": ");
                error!(source_name = %name, error = %reason, "Source failed; the others run on.");
                if let Some((_, metrics)) = self.observer.sources().into_iter().find(|(known, _)| known == &name) {
                    metrics.stopped_on(reason);
                }
                Ok(Some(name))
            }
            Err(join) => Err(SourceRunError::Task(join)),
        }
    }

    /// Stops the sources named in `stop` and waits for them, then starts those in `start`.
    async fn apply(&mut self, stop: Vec<String>, start: Vec<NamedSource>) -> Result<(), SourceRunError> {
        let mut stopping: BTreeSet<String> = BTreeSet::new();
        let stopped = stop.clone();
        for name in stop {
            if let Some(token) = self.tokens.get(&name) {
                info!(source_name = %name, "Reload: stopping the source.");
                token.cancel();
                stopping.insert(name);
            }
        }
        while !stopping.is_empty() {
            let Some(joined) = self.tasks.join_next().await else { break };
            if let Some(name) = self.settle(joined)? {
                stopping.remove(&name);
            }
        }
        for name in removed_by(&stopped, &start) {
            // Removed from the config: no longer this process's to show or to be ready for.
            self.observer.forget_source(&name);
        }
        for source in start {
            info!(source_name = %source.0, "Reload: starting the source.");
            self.start(source);
        }
        Ok(())
    }
}

/// The names in `stopped` that `start` does not start again.
fn removed_by(stopped: &[String], start: &[NamedSource]) -> Vec<String> {
    stopped.iter().filter(|name| !start.iter().any(|(started, _)| started == *name)).cloned().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::observe::SourceMetrics;

    /// A source that runs until cancelled, or fails after `fails_after`.
    struct Fake {
        fails_after: Option<Duration>,
    }

    #[async_trait]
    impl Source for Fake {
        async fn check(&self, _: &KafkaProperties) -> Result<String, BoxError> {
            Ok(String::new())
        }
        async fn migrate(&self, _: &KafkaProperties) -> Result<String, BoxError> {
            Ok(String::new())
        }
        async fn retire(&self, _: &KafkaProperties) -> Result<bool, BoxError> {
            Ok(false)
        }
        async fn run(&self, _: &KafkaProperties, _: SourceMetrics, cancel: CancellationToken) -> Result<(), BoxError> {
            match self.fails_after {
                Some(after) => {
                    tokio::time::sleep(after).await;
                    Err("the fake source broke".into())
                }
                None => {
                    cancel.cancelled().await;
                    Ok(())
                }
            }
        }
    }

    fn fake(name: &str, fails_after: Option<Duration>) -> NamedSource {
        (name.to_owned(), Box::new(Fake { fails_after }))
    }

    async fn run_for(sources: Vec<NamedSource>, cancel_after: Duration) -> Result<(), SourceRunError> {
        run_observed(sources, cancel_after, Observer::new().unwrap()).await
    }

    async fn run_observed(
        sources: Vec<NamedSource>,
        cancel_after: Duration,
        observer: Arc<Observer>,
    ) -> Result<(), SourceRunError> {
        let (_keep_open, changes) = tokio::sync::mpsc::channel(1);
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(cancel_after).await;
            canceller.cancel();
        });
        let kafka = KafkaProperties::default();
        let run = run_sources(&kafka, sources, &observer, changes, cancel);
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("run_sources ended")
    }

    #[tokio::test]
    async fn with_no_source_and_the_change_channel_open_a_shutdown_still_ends_it() {
        run_for(Vec::new(), Duration::from_millis(50)).await.unwrap();
    }

    #[tokio::test]
    async fn sources_stop_on_shutdown() {
        run_for(vec![fake("a", None), fake("b", None)], Duration::from_millis(50)).await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_source_stops_alone_and_is_named() {
        let observer = Observer::new().unwrap();
        let sources = vec![fake("steady", None), fake("broken", Some(Duration::from_millis(20)))];
        run_observed(sources, Duration::from_millis(500), Arc::clone(&observer)).await.unwrap();
        let states: Vec<(String, &str)> =
            observer.sources().into_iter().map(|(name, metrics)| (name, metrics.state().status)).collect();
        assert!(states.contains(&("broken".to_owned(), "failed")), "{states:?}");
        assert!(!states.contains(&("steady".to_owned(), "failed")), "{states:?}");
        let (failed, units) = observer.failures();
        assert_eq!((failed.len(), units), (1, 2), "{failed:?}");
        assert!(observer.render().contains("herald_source_failed{source=\"broken\"} 1"));
    }

    #[tokio::test]
    async fn a_change_stops_and_starts_only_the_named_sources() {
        let observer = Observer::new().unwrap();
        let (changes_in, changes) = tokio::sync::mpsc::channel(1);
        let cancel = CancellationToken::new();
        let running = {
            let (observer, cancel) = (Arc::clone(&observer), cancel.clone());
            tokio::spawn(async move {
                let kafka = KafkaProperties::default();
                run_sources(&kafka, vec![fake("a", None), fake("b", None)], &observer, changes, cancel).await
            })
        };
        let (done, applied) = tokio::sync::oneshot::channel();
        changes_in.send(SourceChanges { stop: vec!["b".into()], start: vec![fake("c", None)], done }).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), applied).await.unwrap().unwrap();
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap().unwrap();
    }
}
