//! WatchMonitoring: the predictors' monitoring windows for one model, read from the monitoring
//! topic they write to, for clients without a Kafka client of their own (the Python package).
//! Each watch holds a consumer on a blocking thread: at most MAX_WATCHES at once, and a slow
//! reader holds the consumer back rather than queueing windows (a bounded channel).

use std::{pin::Pin, sync::Arc, time::Duration};

use kappa_api::{events::MonitoringWindow, trainer::WatchMonitoringRequest};
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::Status;

use crate::{error::TrainerError, service::TrainerService};

pub type WindowStream = Pin<Box<dyn Stream<Item = Result<MonitoringWindow, Status>> + Send>>;

/// Watches held at once across callers; each is a consumer and a thread.
pub const MAX_WATCHES: usize = 16;
const DEFAULT_TOPIC: &str = "model-monitoring";
const MAX_LAST_SECONDS: u32 = 7 * 24 * 3600;

/// The permits for watches, shared by the service.
pub fn watches() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_WATCHES))
}

impl TrainerService {
    pub(crate) async fn watch_monitoring_inner(
        &self,
        request: WatchMonitoringRequest,
    ) -> Result<WindowStream, TrainerError> {
        if request.model.is_empty() {
            return Err(TrainerError::InvalidSpec(
                "name the model whose windows to watch".into(),
            ));
        }
        if request.last_seconds > MAX_LAST_SECONDS {
            return Err(TrainerError::InvalidSpec(format!(
                "last_seconds {} is more than a week ({MAX_LAST_SECONDS})",
                request.last_seconds
            )));
        }
        let permit = Arc::clone(&self.monitor_watches)
            .try_acquire_owned()
            .map_err(|_| TrainerError::TooManyWatches(MAX_WATCHES))?;
        let topic = if request.topic.is_empty() {
            DEFAULT_TOPIC.to_owned()
        } else {
            request.topic
        };
        if !self.topic_exists(&topic).await? {
            return Err(TrainerError::UnknownMonitoringTopic(topic));
        }
        let since_ms = kappa_runtime::now_ms() - i64::from(request.last_seconds) * 1000;
        let consumer = kappa_dataset::range::range_consumer(&self.context.kafka, "trainer-monitor")
            .map_err(|e| TrainerError::Kafka(e.to_string()))?;
        let (tx, rx) = mpsc::channel(16);
        let (model, timeout) = (request.model, self.context.kafka_timeout);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = follow(&consumer, &topic, &model, since_ms, timeout, &tx, permit) {
                // The caller may be gone already; nothing else to tell.
                let _ = tx.blocking_send(Err(Status::unavailable(format!(
                    "reading the monitoring topic {topic} failed: {e}; watch again once Kafka is reachable"
                ))));
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Sends `model`'s windows that closed at or after `since_ms`, then each new one, until the
/// receiver is dropped (the caller hung up).
fn follow(
    consumer: &BaseConsumer,
    topic: &str,
    model: &str,
    since_ms: i64,
    timeout: Duration,
    tx: &mpsc::Sender<Result<MonitoringWindow, Status>>,
    _permit: OwnedSemaphorePermit,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut assignment = TopicPartitionList::new();
    for p in kappa_dataset::range::partitions_since(consumer, topic, since_ms, timeout)? {
        assignment.add_partition_offset(topic, p.partition, Offset::Offset(p.start))?;
    }
    consumer.assign(&assignment)?;
    while !tx.is_closed() {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let Some(window) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<MonitoringWindow>(p).ok())
            .filter(|w| w.model_name == model)
            // A late record of an older window is not what was asked for.
            .filter(|w| w.window_end_ms >= since_ms)
        else {
            continue;
        };
        if tx.blocking_send(Ok(window)).is_err() {
            break;
        }
    }
    Ok(())
}
