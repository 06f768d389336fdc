//! What `kappa predictions`, `kappa compare` and `kappa monitor` share: a throw-away reader of
//! a topic's last N seconds (`kappa_dataset::recent`), with the CLI's messages.

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
    let since_ms = kappa_runtime::now_ms() - last_seconds as i64 * 1000;
    let (consumer, located) = kappa_dataset::recent::locate(&kafka, topic, since_ms, purpose, Duration::from_secs(10))
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
    let clients = kafka.clients().map_err(anyhow::Error::msg)?;
    let since_ms = kappa_runtime::now_ms() - last_seconds as i64 * 1000;
    let found = kappa_dataset::recent::read_since(
        &clients,
        topic,
        since_ms,
        purpose,
        Duration::from_secs(60),
        &mut |payload| on_record(payload, since_ms),
    )
    .with_context(|| format!("cannot reach Kafka at {} (--kafka-bootstrap)", clients.bootstrap()))?;
    anyhow::ensure!(found, "topic {topic} has no partitions: {none_yet}");
    Ok(())
}
