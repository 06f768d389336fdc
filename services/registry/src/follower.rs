//! Tails the models topic and applies every committed record to the catalog. It is the only
//! writer of the catalog, so the registry's state is always a function of the log.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use kappa_kafka::ReaderContext;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{catalog::Catalog, metrics::RegistryMetrics};
use kappa_kafka::{chunks::reader_config, records};

/// Progress of the follower, observed by writers waiting for their records and by the health
/// service waiting for the replay.
#[derive(Debug, Clone)]
pub struct FollowerProgress {
    /// Offset of the next record to apply: every record below it is in the catalog.
    pub applied: watch::Receiver<i64>,
    /// Becomes true once the follower has reached the end of the log at least once.
    pub caught_up: watch::Receiver<bool>,
}

impl FollowerProgress {
    /// Waits until the record at `offset` has been applied, or the follower stops.
    pub async fn wait_applied(&self, offset: i64) -> bool {
        let mut applied = self.applied.clone();
        applied.wait_for(|next| *next > offset).await.is_ok()
    }
}

pub fn spawn(
    consumer_config: &kappa_kafka::KafkaClients,
    topic: &str,
    catalog: Arc<RwLock<Catalog>>,
    metrics: Arc<RegistryMetrics>,
    shutdown: CancellationToken,
) -> Result<FollowerProgress, KafkaError> {
    let consumer: StreamConsumer<ReaderContext> =
        reader_config(consumer_config, "kappa-registry-follower").create_with_context(ReaderContext)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;

    let (applied_tx, applied) = watch::channel(0_i64);
    let (caught_up_tx, caught_up) = watch::channel(false);
    let started = Instant::now();
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                received = consumer.recv() => received,
            };
            match received {
                Ok(message) => {
                    let offset = message.offset();
                    match records::decode(offset, message.key(), message.payload()) {
                        Ok(Some(record)) => catalog.write().expect("catalog lock poisoned").apply(offset, record),
                        Ok(None) => {}
                        Err(e) => {
                            metrics.undecodable_records.inc();
                            tracing::error!(error = %e, "skipping a models-topic record the registry cannot decode");
                        }
                    }
                    metrics.log_position.set(offset + 1);
                    applied_tx.send_replace(offset + 1);
                }
                Err(KafkaError::PartitionEOF(_)) => {
                    if !*caught_up_tx.borrow() {
                        let seconds = started.elapsed().as_secs_f64();
                        metrics.replay_seconds.set(seconds);
                        tracing::info!(
                            seconds,
                            position = *applied_tx.borrow(),
                            "replayed the models topic; serving"
                        );
                        caught_up_tx.send_replace(true);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "models-topic consumer error; retrying in 1 s");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        tracing::debug!("models-topic follower stopped");
    });
    Ok(FollowerProgress { applied, caught_up })
}
