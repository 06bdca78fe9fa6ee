//! Planning a batch: wait for a first message, take what is already fetched, linger up to
//! `max_wait` (counted from the batch's first message) for more, stop at `max_events`, at
//! cancellation or at a pause request. The messages come from a [`BatchSource`]: the route's
//! consumer, or a channel in the tests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::error::KafkaError;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::fetched::FetchedMessage;
use crate::error::RouteError;

/// Where a route's messages come from.
///
/// The methods return their futures unboxed: they run once per message.
pub(crate) trait BatchSource: Send {
    /// The next fetched message. Must be cancel-safe: a batch that ends while this waits loses
    /// nothing, and so does a poll that finds nothing yet.
    fn recv(&mut self) -> impl Future<Output = Result<FetchedMessage, KafkaError>> + Send;

    /// Whether `message` joins `batch`; may also drop messages already in `batch` (after a
    /// seek). Runs to completion once a message is received.
    fn admit(
        &mut self,
        message: &FetchedMessage,
        batch: &mut Vec<FetchedMessage>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<BatchAdmission, RouteError>> + Send;

    /// What the inbox waits on, besides messages, while a batch waits for one.
    fn idle_wakeups(&self) -> IdleWakeups;

    /// Does the work [`BatchSource::idle_wakeups`] announced (a rebalance to act on, a seek to retry);
    /// may drop messages of `batch`. Returns whether the batch ends here.
    fn attend(
        &mut self,
        batch: &mut Vec<FetchedMessage>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<bool, RouteError>> + Send;
}

/// What an idle batch waits on besides messages: a signal, and a retry after a delay.
#[derive(Debug, Default)]
pub(crate) struct IdleWakeups {
    /// Signalled when there is work; a stored permit counts.
    pub(crate) signal: Option<Arc<Notify>>,
    /// Work postponed, to try again after this long.
    pub(crate) retry_after: Option<Duration>,
}

impl IdleWakeups {
    /// Resolves when the signal fires or the retry is due; never, when there is neither.
    async fn due(self) {
        let signalled = async {
            match &self.signal {
                Some(signal) => signal.notified().await,
                None => std::future::pending().await,
            }
        };
        let retry = async {
            match self.retry_after {
                Some(delay) => sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = signalled => {}
            () = retry => {}
        }
    }
}

/// What becomes of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchAdmission {
    /// It joins the batch.
    Join,
    /// It is dropped (it will be read again from elsewhere, e.g. after a seek).
    Skip,
    /// The batch ends before it; it is held and offered first to the next batch.
    HoldBack,
}

/// What woke a batch waiting for a message.
enum Woken {
    Received(Result<FetchedMessage, KafkaError>),
    IdleWakeups,
}

/// The route's name for logs, and the limits of one batch.
pub(crate) struct Limits<'a> {
    /// The route, for logs.
    pub(crate) route: &'a str,
    /// Most messages in one batch.
    pub(crate) max_events: usize,
    /// How long a batch lingers for more, from its first message.
    pub(crate) max_wait: Duration,
}

/// Fills a batch, offering the messages in `held` (kept from a pause or an earlier batch) first;
/// admitted held messages start the linger at once. A message held back goes into `held`
/// again, with the rest after it.
pub(crate) async fn gather(
    inbox: &mut impl BatchSource,
    held: &mut Vec<FetchedMessage>,
    limits: Limits<'_>,
    pause_requests: &mut watch::Receiver<bool>,
    cancel: &CancellationToken,
) -> Result<Vec<FetchedMessage>, RouteError> {
    let mut offered = std::mem::take(held).into_iter();
    let mut batch = Vec::with_capacity(offered.len());
    while let Some(message) = offered.next() {
        match inbox.admit(&message, &mut batch, cancel).await? {
            BatchAdmission::Join => batch.push(message),
            BatchAdmission::Skip => {}
            BatchAdmission::HoldBack => {
                held.push(message);
                held.extend(offered);
                return Ok(batch);
            }
        }
    }
    let mut deadline = (!batch.is_empty()).then(|| Instant::now() + limits.max_wait);
    while batch.len() < limits.max_events {
        // Cancellation and a pause request (the caller pauses) end the batch here.
        if cancel.is_cancelled() || pause_requests.has_changed().unwrap_or(true) {
            break;
        }
        // What is already fetched joins the batch even when the linger is over, so a backlog is
        // written in full batches; taken without a timer or a wake-up, as a backlog is read.
        let received = match inbox.recv().now_or_never() {
            Some(received) => {
                // Still yield to the other routes now and then (tokio's task budget), as waiting
                // on a channel would: 50 routes draining a backlog, each taking a whole batch
                // without yielding, peaked 60 MiB higher.
                tokio::task::consume_budget().await;
                received
            }
            None => {
                let attention = inbox.idle_wakeups();
                let woken = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    _ = pause_requests.changed() => break,
                    received = inbox.recv() => Woken::Received(received),
                    () = attention.due() => Woken::IdleWakeups,
                    _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break,
                };
                match woken {
                    Woken::Received(received) => received,
                    Woken::IdleWakeups => {
                        // A rebalance is acted on now, not when a message of it first arrives:
                        // at `latest`, none may come for a long time.
                        if inbox.attend(&mut batch, cancel).await? {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        match received {
            Ok(message) => match inbox.admit(&message, &mut batch, cancel).await? {
                BatchAdmission::Join => {
                    batch.push(message);
                    deadline.get_or_insert_with(|| Instant::now() + limits.max_wait);
                }
                BatchAdmission::Skip => {}
                BatchAdmission::HoldBack => {
                    held.push(message);
                    break;
                }
            },
            Err(err) => {
                if let Some(folded) = herald_kafka::fold::fold(&format!("route {}: consume: {err}", limits.route)) {
                    let repeated = herald_kafka::fold::repeated(folded);
                    warn!(route = %limits.route, error = %err, "Kafka consumer error{repeated}; librdkafka will retry.");
                }
                // Errors such as an unknown topic repeat at once: don't spin on them.
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    //! Batch planning fed from a channel, with tokio's clock paused: lingers are measured on the
    //! paused clock, so no test waits for real.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use tokio::sync::mpsc;

    use super::*;
    use crate::config::BatchConfig;

    /// Messages sent by the test; `skip` offsets are refused by `admit`, `hold_back` ones end
    /// the batch (once each). `signal` asks for attention; `retries` more attentions follow, each
    /// after a retry delay; attending ends the batch when `end_on_attend`.
    struct ChannelInbox {
        messages: mpsc::UnboundedReceiver<FetchedMessage>,
        skip: Vec<i64>,
        hold_back: Vec<i64>,
        signal: Arc<Notify>,
        retries: usize,
        end_on_attend: bool,
        /// When each attention was attended to, on the paused clock.
        attended: Vec<Instant>,
    }

    impl BatchSource for ChannelInbox {
        async fn recv(&mut self) -> Result<FetchedMessage, KafkaError> {
            match self.messages.recv().await {
                Some(message) => Ok(message),
                None => std::future::pending().await,
            }
        }

        async fn admit(
            &mut self,
            message: &FetchedMessage,
            _batch: &mut Vec<FetchedMessage>,
            _cancel: &CancellationToken,
        ) -> Result<BatchAdmission, RouteError> {
            if let Some(at) = self.hold_back.iter().position(|&offset| offset == message.offset()) {
                self.hold_back.remove(at);
                return Ok(BatchAdmission::HoldBack);
            }
            Ok(if self.skip.contains(&message.offset()) { BatchAdmission::Skip } else { BatchAdmission::Join })
        }

        fn idle_wakeups(&self) -> IdleWakeups {
            IdleWakeups {
                signal: Some(Arc::clone(&self.signal)),
                retry_after: (self.retries > 0).then_some(Duration::from_millis(50)),
            }
        }

        async fn attend(
            &mut self,
            _batch: &mut Vec<FetchedMessage>,
            _cancel: &CancellationToken,
        ) -> Result<bool, RouteError> {
            self.retries = self.retries.saturating_sub(1);
            self.attended.push(Instant::now());
            Ok(self.end_on_attend)
        }
    }

    fn message(offset: i64) -> FetchedMessage {
        FetchedMessage::test(0, offset, b"{}")
    }

    fn inbox() -> (mpsc::UnboundedSender<FetchedMessage>, ChannelInbox) {
        let (sender, messages) = mpsc::unbounded_channel();
        let inbox = ChannelInbox {
            messages,
            skip: Vec::new(),
            hold_back: Vec::new(),
            signal: Arc::new(Notify::new()),
            retries: 0,
            end_on_attend: false,
            attended: Vec::new(),
        };
        (sender, inbox)
    }

    /// Sends `offset` after `after` on the paused clock.
    fn send_later(sender: &mpsc::UnboundedSender<FetchedMessage>, offset: i64, after: Duration) {
        let sender = sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = sender.send(message(offset));
        });
    }

    async fn batch_of(inbox: &mut ChannelInbox, held: Vec<i64>, config: &BatchConfig) -> Vec<i64> {
        let mut held = held.into_iter().map(message).collect();
        let batch = batch_holding(inbox, &mut held, config).await;
        assert!(held.is_empty(), "nothing held back");
        batch
    }

    async fn batch_holding(inbox: &mut ChannelInbox, held: &mut Vec<FetchedMessage>, config: &BatchConfig) -> Vec<i64> {
        let (_pause, mut pause_requests) = watch::channel(false);
        let limits = Limits { route: "r", max_events: config.max_events.unwrap(), max_wait: config.max_wait };
        let batch = gather(inbox, held, limits, &mut pause_requests, &CancellationToken::new()).await.unwrap();
        batch.iter().map(FetchedMessage::offset).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_cut_into_full_batches_in_order() {
        let (sender, mut inbox) = inbox();
        (0..7).for_each(|offset| sender.send(message(offset)).unwrap());
        let config = BatchConfig { max_events: Some(3), max_wait: Duration::ZERO };
        assert_eq!(batch_of(&mut inbox, vec![], &config).await, [0, 1, 2]);
        assert_eq!(batch_of(&mut inbox, vec![], &config).await, [3, 4, 5]);
        // max_wait 0: what is fetched is taken, and the batch goes without waiting for more.
        let started = tokio::time::Instant::now();
        assert_eq!(batch_of(&mut inbox, vec![], &config).await, [6]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_lingers_from_its_first_message_and_no_longer() {
        let (sender, mut inbox) = inbox();
        let config = BatchConfig { max_events: Some(100), max_wait: Duration::from_millis(100) };
        send_later(&sender, 0, Duration::from_millis(1000)); // the first message starts the linger…
        send_later(&sender, 1, Duration::from_millis(1060)); // …this one is inside it…
        send_later(&sender, 2, Duration::from_millis(1150)); // …this one is not.
        let started = tokio::time::Instant::now();
        assert_eq!(batch_of(&mut inbox, vec![], &config).await, [0, 1]);
        assert_eq!(started.elapsed(), Duration::from_millis(1100), "an idle route waits for a first message");
        assert_eq!(batch_of(&mut inbox, vec![], &config).await, [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn held_messages_start_the_linger_and_refused_ones_are_left_out() {
        let (sender, mut inbox) = inbox();
        inbox.skip = vec![11];
        let config = BatchConfig { max_events: Some(100), max_wait: Duration::from_millis(50) };
        send_later(&sender, 11, Duration::from_millis(10));
        send_later(&sender, 12, Duration::from_millis(20));
        send_later(&sender, 13, Duration::from_millis(80));
        let started = tokio::time::Instant::now();
        assert_eq!(batch_of(&mut inbox, vec![9, 10], &config).await, [9, 10, 12]);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_request_or_shutdown_ends_the_batch_with_what_it_has() {
        let (sender, mut inbox) = inbox();
        sender.send(message(0)).unwrap();
        let config = BatchConfig { max_events: Some(100), max_wait: Duration::from_secs(3600) };
        let (pause, mut pause_requests) = watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pause.send_replace(true);
            std::future::pending::<()>().await;
        });
        let limits = Limits { route: "r", max_events: config.max_events.unwrap(), max_wait: config.max_wait };
        let batch =
            gather(&mut inbox, &mut Vec::new(), limits, &mut pause_requests, &CancellationToken::new()).await.unwrap();
        assert_eq!(batch.len(), 1, "the pause request ended an hour's linger");

        let cancel = CancellationToken::new();
        cancel.cancel();
        let limits = Limits { route: "r", max_events: config.max_events.unwrap(), max_wait: config.max_wait };
        let batch = gather(&mut inbox, &mut Vec::new(), limits, &mut pause_requests, &cancel).await.unwrap();
        assert!(batch.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetched_backlog_does_not_delay_a_pause_request_or_shutdown() {
        let (sender, mut inbox) = inbox();
        (0..10).for_each(|offset| sender.send(message(offset)).unwrap());
        let limits = || Limits { route: "r", max_events: 100, max_wait: Duration::ZERO };
        let (pause, mut pause_requests) = watch::channel(false);
        pause.send_replace(true);
        let batch = gather(&mut inbox, &mut Vec::new(), limits(), &mut pause_requests, &CancellationToken::new())
            .await
            .unwrap();
        assert!(batch.is_empty(), "a pause request is seen before what is fetched");

        pause_requests.borrow_and_update();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let batch = gather(&mut inbox, &mut Vec::new(), limits(), &mut pause_requests, &cancel).await.unwrap();
        assert!(batch.is_empty(), "so is shutdown");

        let batch = gather(&mut inbox, &mut Vec::new(), limits(), &mut pause_requests, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            batch.iter().map(FetchedMessage::offset).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>(),
            "nothing lost"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_held_back_ends_the_batch_and_is_offered_first_to_the_next() {
        let (sender, mut inbox) = inbox();
        (0..6).for_each(|offset| sender.send(message(offset)).unwrap());
        inbox.hold_back = vec![2, 4];
        inbox.skip = vec![5];
        let config = BatchConfig { max_events: Some(100), max_wait: Duration::ZERO };
        let mut held = Vec::new();
        assert_eq!(batch_holding(&mut inbox, &mut held, &config).await, [0, 1]);
        assert_eq!(held.iter().map(FetchedMessage::offset).collect::<Vec<_>>(), [2]);
        // The held message goes through admission like any other: offered again, it joins.
        assert_eq!(batch_holding(&mut inbox, &mut held, &config).await, [2, 3]);
        assert_eq!(held.iter().map(FetchedMessage::offset).collect::<Vec<_>>(), [4]);
        // Held messages are admitted too: a refused one is dropped, not delivered unchecked.
        held.push(message(5));
        inbox.hold_back = vec![];
        assert_eq!(batch_holding(&mut inbox, &mut held, &config).await, [4]);
        assert!(held.is_empty());
    }

    /// Signals the inbox's attention after `after` on the paused clock.
    fn signal_later(inbox: &ChannelInbox, after: Duration) {
        let signal = Arc::clone(&inbox.signal);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            signal.notify_one();
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_batch_attends_to_a_rebalance_without_waiting_for_a_message() {
        let (sender, mut inbox) = inbox();
        let started = Instant::now();
        signal_later(&inbox, Duration::from_millis(300));
        send_later(&sender, 0, Duration::from_millis(1000));
        let config = BatchConfig { max_events: Some(10), max_wait: Duration::ZERO };
        assert_eq!(batch_of(&mut inbox, vec![], &config).await, [0], "attending does not end the batch");
        assert_eq!(inbox.attended, [started + Duration::from_millis(300)], "at the signal, before any message");
    }

    #[tokio::test(start_paused = true)]
    async fn postponed_work_is_retried_while_the_batch_waits() {
        let (sender, mut inbox) = inbox();
        let started = Instant::now();
        inbox.retries = 2;
        send_later(&sender, 0, Duration::from_millis(1000));
        let config = BatchConfig { max_events: Some(10), max_wait: Duration::ZERO };
        assert_eq!(batch_of(&mut inbox, vec![], &config).await, [0]);
        let at: Vec<Duration> = inbox.attended.iter().map(|t| *t - started).collect();
        assert_eq!(at, [Duration::from_millis(50), Duration::from_millis(100)], "every 50 ms until none is left");
    }

    #[tokio::test(start_paused = true)]
    async fn an_inbox_that_hands_a_rebalance_over_ends_the_batch_keeping_what_it_has() {
        let (sender, mut inbox) = inbox();
        inbox.end_on_attend = true;
        sender.send(message(0)).unwrap();
        signal_later(&inbox, Duration::from_millis(100));
        send_later(&sender, 1, Duration::from_millis(200));
        let config = BatchConfig { max_events: Some(10), max_wait: Duration::from_secs(1) };
        let started = Instant::now();
        assert_eq!(batch_of(&mut inbox, vec![], &config).await, [0]);
        assert_eq!(started.elapsed(), Duration::from_millis(100), "ended at the signal, not the linger");
        assert_eq!(batch_of(&mut inbox, vec![], &config).await, [1], "the next message is still there");
    }
}
