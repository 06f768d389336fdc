//! What the predictors report about live traffic, for clients without a Kafka client of their
//! own (the Python package): WatchMonitoring follows one model's monitoring windows;
//! CompareShadow sums up a shadow version's answers against the live one's.
//! Each watch holds a consumer on a blocking thread: at most MAX_WATCHES at once, and a slow
//! reader holds the consumer back rather than queueing windows (a bounded channel).

use std::{pin::Pin, sync::Arc, time::Duration};

use kappa_api::{
    events::MonitoringWindow,
    trainer::{CompareShadowRequest, CompareShadowResponse, ShadowWindow, WatchMonitoringRequest},
};
use kappa_backtest::shadow::ShadowSummary;
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
const DEFAULT_SHADOW_TOPIC: &str = "shadow-predictions";
/// How far back a watch or a comparison may start: a week.
const MAX_LAST_SECONDS: u32 = 7 * 24 * 3600;
/// How long a comparison may read.
const COMPARE_BUDGET: Duration = Duration::from_secs(60);

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

impl TrainerService {
    pub(crate) async fn compare_shadow_inner(
        &self,
        request: CompareShadowRequest,
    ) -> Result<CompareShadowResponse, TrainerError> {
        if request.model.is_empty() {
            return Err(TrainerError::InvalidSpec(
                "name the model whose shadow answers to compare".into(),
            ));
        }
        if request.last_seconds > MAX_LAST_SECONDS {
            return Err(TrainerError::InvalidSpec(format!(
                "last_seconds {} is more than a week ({MAX_LAST_SECONDS})",
                request.last_seconds
            )));
        }
        let topic = if request.topic.is_empty() {
            DEFAULT_SHADOW_TOPIC.to_owned()
        } else {
            request.topic
        };
        if !self.topic_exists(&topic).await? {
            return Err(TrainerError::UnknownTopic(topic));
        }
        let last_seconds = if request.last_seconds == 0 {
            300
        } else {
            request.last_seconds
        };
        let window_seconds = if request.window_seconds == 0 {
            60
        } else {
            request.window_seconds
        };
        let since_ms = kappa_runtime::now_ms() - i64::from(last_seconds) * 1000;
        let kafka = self.context.kafka.clone();
        let summary = tokio::task::spawn_blocking(move || {
            let mut summary = ShadowSummary::new(&request.model, since_ms, i64::from(window_seconds) * 1000);
            kappa_dataset::recent::read_since(&kafka, &topic, since_ms, "trainer-compare", COMPARE_BUDGET, &mut |p| {
                summary.add(p)
            })
            .map(|_| summary)
        })
        .await
        .map_err(|e| TrainerError::Kafka(e.to_string()))?
        .map_err(|e| TrainerError::Kafka(format!("reading the shadow answers: {e}")))?;
        let unreadable = summary.unreadable;
        let windows = summary
            .finish()
            .into_iter()
            .map(|w| ShadowWindow {
                window_start_ms: w.window_start_ms,
                live_version: w.live_version,
                shadow_version: w.shadow_version,
                answers: w.answers,
                agreement: w.agreement,
                live_only: w.live_only,
                shadow_only: w.shadow_only,
                mean_delta: w.mean_delta,
                mean_abs_delta: w.mean_abs_delta,
            })
            .collect();
        Ok(CompareShadowResponse { windows, unreadable })
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
