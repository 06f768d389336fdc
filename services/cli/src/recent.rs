//! What `kappa predictions` and `kappa monitor` share: a throw-away reader of a topic's last
//! N seconds, located on every partition by the broker's time index.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use kappa_kafka::range::PartitionSince;
use rdkafka::consumer::BaseConsumer;

/// A consumer and where each partition of `topic` reaches `last_seconds` ago, plus that time;
/// fails with `none_yet` when the topic has no partitions (nothing wrote to it yet).
pub fn recent(
    kafka: &kappa_kafka::KafkaArgs,
    topic: &str,
    last_seconds: u64,
    purpose: &str,
    none_yet: &str,
) -> anyhow::Result<(BaseConsumer, Vec<PartitionSince>, i64)> {
    let kafka = kafka.clients().map_err(anyhow::Error::msg)?;
    let consumer: BaseConsumer = kappa_kafka::range::range_consumer(&kafka, purpose)?;
    let since_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 - last_seconds as i64 * 1000;
    let located = kappa_kafka::range::partitions_since(&consumer, topic, since_ms, Duration::from_secs(10))
        .with_context(|| format!("cannot reach Kafka at {} (--kafka-bootstrap)", kafka.bootstrap()))?;
    anyhow::ensure!(!located.is_empty(), "topic {topic} has no partitions: {none_yet}");
    Ok((consumer, located, since_ms))
}
