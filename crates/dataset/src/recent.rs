//! A topic's last N seconds, located on every partition by the broker's time index, read once
//! up to the end each partition had when the read started: what `kappa predictions`, `kappa
//! compare` and the trainer's Compare read.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use kappa_kafka::KafkaClients;
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
    error::KafkaError,
};

use crate::range::{PartitionSince, partitions_since, range_consumer};

/// A consumer and where each partition of `topic` reaches `since_ms`; the partitions are empty
/// when the topic has none (nothing wrote to it yet).
pub fn locate(
    clients: &KafkaClients,
    topic: &str,
    since_ms: i64,
    purpose: &str,
    timeout: Duration,
) -> Result<(BaseConsumer, Vec<PartitionSince>), KafkaError> {
    let consumer = range_consumer(clients, purpose)?;
    let located = partitions_since(&consumer, topic, since_ms, timeout)?;
    Ok((consumer, located))
}

/// Reads what `topic` got since `since_ms`, each partition up to the end it had when the read
/// started, for at most `budget`, handing every record's payload to `on_record`. Returns false
/// when the topic has no partitions.
pub fn read_since(
    clients: &KafkaClients,
    topic: &str,
    since_ms: i64,
    purpose: &str,
    budget: Duration,
    on_record: &mut dyn FnMut(Option<&[u8]>),
) -> Result<bool, KafkaError> {
    let (consumer, located) = locate(clients, topic, since_ms, purpose, Duration::from_secs(10))?;
    if located.is_empty() {
        return Ok(false);
    }
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in located.iter().filter(|p| p.start < p.high) {
        ends.insert(p.partition, p.high);
        assignment.add_partition_offset(topic, p.partition, Offset::Offset(p.start))?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + budget;
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        if let Some(end) = ends.get(&message.partition())
            && message.offset() + 1 >= *end
        {
            ends.remove(&message.partition());
        }
        on_record(message.payload());
    }
    Ok(true)
}
