//! Reading the models topic from a position, and fetching a version's weight chunks by their
//! offsets.

use std::time::{Duration, Instant};

use kappa_api::model::WeightChunk;
use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
};
use thiserror::Error;

use kappa_kafka::{KafkaClients, ReaderContext};

const POLL: Duration = Duration::from_millis(200);
/// A chunk read that makes no progress for this long fails instead of hanging its caller.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// A blocking consumer positioned at `from` on partition 0 of `topic`.
pub fn consumer_at(
    config: &KafkaClients,
    group: &str,
    topic: &str,
    from: i64,
) -> Result<BaseConsumer<ReaderContext>, KafkaError> {
    let consumer: BaseConsumer<ReaderContext> = config.log_reader(group).create_with_context(ReaderContext)?;
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
    let (mut last_progress, mut last_error) = (Instant::now(), None::<KafkaError>);
    while next < offsets.len() {
        let message = match consumer.poll(POLL) {
            Some(Ok(m)) => m,
            Some(Err(e)) if !matches!(e, KafkaError::PartitionEOF(_)) && !kappa_kafka::is_transient(&e) => {
                return Err(ChunkReadError::Unavailable(e.to_string()));
            }
            // A broker of the cluster away, or the leader moving: librdkafka reconnects.
            idle => {
                if let Some(Err(e)) = idle
                    && !matches!(e, KafkaError::PartitionEOF(_))
                {
                    last_error = Some(e);
                }
                if last_progress.elapsed() > STALL_LIMIT {
                    let cause = last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
                    return Err(ChunkReadError::Unavailable(format!("no progress for 30 s{cause}")));
                }
                continue;
            }
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
