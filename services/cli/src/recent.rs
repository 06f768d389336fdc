//! What `kappa predictions`, `kappa compare` and `kappa monitor` share: a throw-away reader of
//! a topic's last N seconds, located on every partition by the broker's time index.

use std::time::Duration;

use anyhow::Context as _;
use kappa_dataset::range::PartitionSince;
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
    let consumer: BaseConsumer = kappa_dataset::range::range_consumer(&kafka, purpose)?;
    let since_ms = kappa_runtime::now_ms() - last_seconds as i64 * 1000;
    let located = kappa_dataset::range::partitions_since(&consumer, topic, since_ms, Duration::from_secs(10))
        .with_context(|| format!("cannot reach Kafka at {} (--kafka-bootstrap)", kafka.bootstrap()))?;
    anyhow::ensure!(!located.is_empty(), "topic {topic} has no partitions: {none_yet}");
    Ok((consumer, located, since_ms))
}

/// Reads what `topic` got in the last `last_seconds`, each partition up to the end it had when
/// the read started (60 s at most), handing every record's payload to `on_record` with the start
/// of the range (ms). For the summaries that read a recent window once.
pub fn read_recent(
    kafka: &kappa_kafka::KafkaArgs,
    topic: &str,
    last_seconds: u64,
    purpose: &str,
    none_yet: &str,
    on_record: &mut dyn FnMut(Option<&[u8]>, i64),
) -> anyhow::Result<()> {
    use rdkafka::{Message as _, Offset, TopicPartitionList, consumer::Consumer as _};
    let (consumer, located, since_ms) = recent(kafka, topic, last_seconds, purpose, none_yet)?;
    let mut ends = std::collections::BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in located.iter().filter(|p| p.start < p.high) {
        ends.insert(p.partition, p.high);
        assignment.add_partition_offset(topic, p.partition, Offset::Offset(p.start))?;
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        if let Some(end) = ends.get(&message.partition())
            && message.offset() + 1 >= *end
        {
            ends.remove(&message.partition());
        }
        on_record(message.payload(), since_ms);
    }
    Ok(())
}
