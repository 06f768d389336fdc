//! Following a topic from a while ago, on a thread of its own: records are decoded and folded
//! into the pages' summaries there, off the async workers that answer the browsers.

use std::{sync::Arc, time::Duration};

use kappa_kafka::KafkaClients;
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
    message::{BorrowedMessage, Message as _},
};
use tokio_util::sync::CancellationToken;

use crate::status::TopicStatus;

/// How long the follower waits before looking again for a topic nothing has written yet, or
/// after the broker failed it.
const RETRY: Duration = Duration::from_secs(2);

/// Follows `topic` from `lookback` ago until `stop`, handing each record to `on_record`. Errors
/// are said in `status` (and the log) and retried; the thread ends only with `stop`.
pub fn follow(
    kafka: KafkaClients,
    topic: String,
    lookback: Duration,
    status: Arc<TopicStatus>,
    stop: CancellationToken,
    mut on_record: impl FnMut(&BorrowedMessage<'_>) + Send + 'static,
) {
    let name = format!("follow-{topic}");
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        while !stop.is_cancelled() {
            match assigned(&kafka, &topic, lookback) {
                Ok(Some(consumer)) => {
                    status.following();
                    poll(&consumer, &status, &stop, &mut on_record);
                }
                Ok(None) => status.problem(format!("topic {topic} does not exist yet (nothing wrote to it)")),
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cannot follow the topic; retrying");
                    status.problem(format!("cannot read topic {topic}: {e}"));
                }
            }
            std::thread::sleep(RETRY);
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a topic follower thread");
    }
}

/// A consumer assigned to every partition of `topic` from `lookback` ago; `None` when the
/// topic has no partitions yet.
fn assigned(
    kafka: &KafkaClients,
    topic: &str,
    lookback: Duration,
) -> Result<Option<BaseConsumer>, rdkafka::error::KafkaError> {
    let since_ms = kappa_runtime::now_ms() - lookback.as_millis() as i64;
    let group = format!("kappa-console-{}", kappa_runtime::now_ms());
    let consumer: BaseConsumer = kafka
        .config_with(
            &[
                kappa_kafka::FETCH_QUEUE_BACKOFF,
                // What waits in librdkafka's queue while the folding falls behind is memory too:
                // a few fetches' worth, not its default 64 MiB a partition.
                ("queued.max.messages.kbytes", "8192"),
            ],
            &[("group.id", &group), ("enable.auto.commit", "false")],
        )
        .create()?;
    let located = kappa_dataset::range::partitions_since(&consumer, topic, since_ms, Duration::from_secs(10))?;
    if located.is_empty() {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    for p in &located {
        assignment.add_partition_offset(topic, p.partition, Offset::Offset(p.start))?;
    }
    consumer.assign(&assignment)?;
    Ok(Some(consumer))
}

fn poll(
    consumer: &BaseConsumer,
    status: &TopicStatus,
    stop: &CancellationToken,
    on_record: &mut impl FnMut(&BorrowedMessage<'_>),
) {
    while !stop.is_cancelled() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                status.record(message.offset());
                on_record(&message);
            }
            Some(Err(e)) if kappa_kafka::is_transient(&e) => {
                tracing::debug!(error = %e, "transient consumer error");
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the topic's consumer failed; starting over");
                status.problem(e.to_string());
                return;
            }
        }
    }
}
