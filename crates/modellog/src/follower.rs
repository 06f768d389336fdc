//! The one follower of the models log: replays the topic from the beginning into a shared
//! [`ModelLog`], says when it has caught up with the end of the log, then keeps applying every
//! committed record as it arrives. Readers take the lock briefly; writers wait on `applied` for
//! their own records to come back through the fold.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use kappa_kafka::{KafkaClients, ReaderContext};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{ModelLog, records::RefusedRecord};

/// What a follower's owner hears about: progress for its metrics, records it must count.
pub trait Observer: Send + Sync + 'static {
    /// Every record below `next` has been applied.
    fn applied(&self, _next: i64) {}
    /// A record was refused (undecodable, unsigned, replayed, out of bounds) and changed nothing.
    fn refused(&self, error: &RefusedRecord) {
        tracing::error!(error = %error, "skipping a models-topic record");
    }
    /// The replay reached the end of the log for the first time.
    fn caught_up(&self, seconds: f64, position: i64) {
        tracing::info!(seconds, position, "replayed the models topic");
    }
}

/// An observer that only logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOnly;

impl Observer for LogOnly {}

/// Progress of a follower.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Offset of the next record to apply: every record below it is in the fold.
    pub applied: watch::Receiver<i64>,
    /// Becomes true once the follower has reached the end of the log at least once.
    pub caught_up: watch::Receiver<bool>,
}

impl Progress {
    /// Waits until the record at `offset` has been applied, or the follower stops.
    pub async fn wait_applied(&self, offset: i64) -> bool {
        let mut applied = self.applied.clone();
        applied.wait_for(|next| *next > offset).await.is_ok()
    }

    /// Waits until the replay has caught up, or the follower stops.
    pub async fn wait_caught_up(&self) -> bool {
        let mut caught_up = self.caught_up.clone();
        caught_up.wait_for(|c| *c).await.is_ok()
    }
}

/// How often consumer errors are logged while they last (an outage produces many).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// A follower whose consumer is assigned but not yet reading: what can fail (a configuration
/// librdkafka refuses) has failed or not by now.
pub struct Opened {
    consumer: StreamConsumer<ReaderContext>,
    log: Arc<RwLock<ModelLog>>,
    observer: Arc<dyn Observer>,
    applied: watch::Sender<i64>,
    caught_up: watch::Sender<bool>,
}

/// Opens a follower of `topic` (partition 0, from the beginning) into `log`.
pub fn open(
    clients: &KafkaClients,
    topic: &str,
    group: &str,
    log: Arc<RwLock<ModelLog>>,
    observer: Arc<dyn Observer>,
) -> Result<Opened, KafkaError> {
    let consumer: StreamConsumer<ReaderContext> = clients.log_reader(group).create_with_context(ReaderContext)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    Ok(Opened {
        consumer,
        log,
        observer,
        applied: watch::channel(0_i64).0,
        caught_up: watch::channel(false).0,
    })
}

impl Opened {
    /// How far the follower has read, once it runs.
    pub fn progress(&self) -> Progress {
        Progress {
            applied: self.applied.subscribe(),
            caught_up: self.caught_up.subscribe(),
        }
    }

    /// Starts reading, until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> Progress {
        let progress = self.progress();
        let Self {
            consumer,
            log,
            observer,
            applied: applied_tx,
            caught_up: caught_up_tx,
        } = self;
        let started = Instant::now();
        tokio::spawn(async move {
            let (mut last_logged, mut suppressed) = (None, 0_u64);
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => break,
                    received = consumer.recv() => received,
                };
                match received {
                    Ok(message) => {
                        let offset = message.offset();
                        let result = log.write().expect("models log lock poisoned").apply(
                            offset,
                            message.key(),
                            message.payload(),
                            message.headers(),
                        );
                        if let Err(e) = result {
                            observer.refused(&e);
                        }
                        observer.applied(offset + 1);
                        applied_tx.send_replace(offset + 1);
                    }
                    Err(KafkaError::PartitionEOF(_)) => {
                        if !*caught_up_tx.borrow() {
                            observer.caught_up(started.elapsed().as_secs_f64(), *applied_tx.borrow());
                            caught_up_tx.send_replace(true);
                        }
                    }
                    // librdkafka reconnects by itself; its errors (AllBrokersDown while the broker
                    // is away) only say so. They queue up during an outage, so waiting after each
                    // one would drain the backlog for minutes after the broker is back: log them,
                    // at most every 10 s, and go on.
                    Err(e) => {
                        suppressed += 1;
                        if last_logged.is_none_or(|at: Instant| at.elapsed() >= ERROR_LOG_EVERY) {
                            tracing::warn!(error = %e, errors = suppressed, "models-topic consumer errors; librdkafka keeps reconnecting");
                            last_logged = Some(Instant::now());
                            suppressed = 0;
                        }
                        tokio::task::yield_now().await;
                    }
                }
            }
            tracing::debug!("models-topic follower stopped");
        });
        progress
    }
}
