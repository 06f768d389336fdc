//! Reading the models topic from a position: the consumer settings every Kappa reader uses, and
//! fetching a version's weight chunks by their offsets.

use std::time::{Duration, Instant};

use kappa_api::model::WeightChunk;
use prost::Message as _;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
};
use thiserror::Error;

use crate::{KafkaClients, ReaderContext};

const POLL: Duration = Duration::from_millis(200);
/// A chunk read that makes no progress for this long fails instead of hanging its caller.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// Consumer settings every reader of the models topic uses: only committed records, no offsets
/// committed to a group (each reader positions itself), and end-of-partition events; those are
/// what the readers rely on, so an operator's properties cannot turn them off.
pub fn reader_config(clients: &KafkaClients, group: &str) -> ClientConfig {
    clients.config_with(
        &[
            ("auto.offset.reset", "earliest"),
            // The broker holds an empty fetch this long; it bounds how late a reader learns it
            // has reached the end of the log (start-up replay), not how late it sees new records.
            ("fetch.wait.max.ms", "50"),
        ],
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
        ],
    )
}

/// A blocking consumer positioned at `from` on partition 0 of `topic`.
pub fn consumer_at(
    config: &KafkaClients,
    group: &str,
    topic: &str,
    from: i64,
) -> Result<BaseConsumer<ReaderContext>, KafkaError> {
    let consumer: BaseConsumer<ReaderContext> = reader_config(config, group).create_with_context(ReaderContext)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

#[derive(Debug, Error)]
pub enum ChunkReadError {
    #[error("reading the model's chunks from Kafka failed: {0}")]
    Unavailable(String),
    #[error("{0}")]
    DataLoss(String),
}

/// Reads the chunks at `offsets` (in index order) and hands each one's bytes to `on_chunk`,
/// which returns false to stop early. Blocking: call from a blocking thread.
pub fn read_chunks(
    config: &KafkaClients,
    group: &str,
    topic: &str,
    offsets: &[i64],
    mut on_chunk: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), ChunkReadError> {
    let Some(&first) = offsets.first() else { return Ok(()) };
    let consumer = consumer_at(config, group, topic, first).map_err(|e| ChunkReadError::Unavailable(e.to_string()))?;
    let mut next = 0;
    let mut last_progress = Instant::now();
    while next < offsets.len() {
        let message = match consumer.poll(POLL) {
            Some(Ok(m)) => m,
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                if last_progress.elapsed() > STALL_LIMIT {
                    return Err(ChunkReadError::Unavailable("no progress for 30 s".into()));
                }
                continue;
            }
            Some(Err(e)) => return Err(ChunkReadError::Unavailable(e.to_string())),
        };
        let offset = message.offset();
        if offset < offsets[next] {
            continue;
        }
        if offset > offsets[next] {
            return Err(ChunkReadError::DataLoss(format!(
                "chunk {next} expected at offset {} is gone from the models topic",
                offsets[next]
            )));
        }
        let chunk = WeightChunk::decode(message.payload().unwrap_or_default())
            .map_err(|e| ChunkReadError::DataLoss(format!("chunk at offset {offset} is corrupt: {e}")))?;
        if chunk.index as usize != next {
            return Err(ChunkReadError::DataLoss(format!(
                "offset {offset} holds chunk {} where chunk {next} belongs",
                chunk.index
            )));
        }
        if !on_chunk(chunk.data) {
            return Ok(());
        }
        next += 1;
        last_progress = Instant::now();
    }
    Ok(())
}
