//! Reading the models topic from a position, and fetching a version's weight chunks by their
//! offsets.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use kappa_api::model::WeightChunk;
use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
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
    assign_at(&consumer, topic, from)?;
    Ok(consumer)
}

/// Assigns partition 0 of `topic` from `from`, replacing what `consumer` read before.
fn assign_at(consumer: &BaseConsumer<ReaderContext>, topic: &str, from: i64) -> Result<(), KafkaError> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(from))?;
    consumer.assign(&assignment)
}

#[derive(Debug, Error)]
pub enum ChunkReadError {
    #[error("reading the model's chunks from Kafka failed: {0}")]
    Unavailable(String),
    #[error("{0}")]
    DataLoss(String),
}

fn chunk_consumer(config: &KafkaClients, group: &str) -> Result<BaseConsumer<ReaderContext>, ChunkReadError> {
    config
        .log_reader(group)
        .create_with_context(ReaderContext)
        .map_err(|e| ChunkReadError::Unavailable(e.to_string()))
}

/// Chunk readers kept between reads: a new consumer costs a connection, a metadata round trip
/// and the first fetch's wait, which for a model of tens of MiB is most of a read from page
/// cache. At most `keep` idle consumers are kept; a read that failed drops its consumer.
pub struct ChunkReaders {
    config: KafkaClients,
    group: String,
    keep: usize,
    idle: Mutex<Vec<BaseConsumer<ReaderContext>>>,
}

impl ChunkReaders {
    pub fn new(config: KafkaClients, group: impl Into<String>, keep: usize) -> Self {
        Self {
            config,
            group: group.into(),
            keep,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Reads the chunks at `offsets` (in index order) on an idle consumer when there is one,
    /// and hands each one's bytes to `on_chunk`, which returns false to stop early. Blocking:
    /// call from a blocking thread.
    pub fn read(
        &self,
        topic: &str,
        offsets: &[i64],
        on_chunk: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<(), ChunkReadError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let idle = self.idle.lock().expect("chunk reader pool poisoned").pop();
        let consumer = match idle {
            Some(consumer) => consumer,
            None => chunk_consumer(&self.config, &self.group)?,
        };
        let result = read_with(&consumer, topic, offsets, on_chunk);
        // An idle consumer must not go on fetching (and holding) records: unassigned, it drops
        // what it fetched ahead and fetches nothing until the next read assigns it.
        if result.is_ok() && consumer.unassign().is_ok() {
            let mut idle = self.idle.lock().expect("chunk reader pool poisoned");
            if idle.len() < self.keep {
                idle.push(consumer);
            }
        }
        result
    }
}

fn read_with(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    offsets: &[i64],
    mut on_chunk: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), ChunkReadError> {
    assign_at(consumer, topic, offsets[0]).map_err(|e| ChunkReadError::Unavailable(e.to_string()))?;
    let mut next = 0;
    let (mut last_progress, mut last_error) = (Instant::now(), None::<KafkaError>);
    while next < offsets.len() {
        let message = match consumer.poll(POLL) {
            Some(Ok(m)) => m,
            // A record whose CRC-32C does not match its bytes: corrupt at rest or on the way.
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BadMessage))) => {
                return Err(ChunkReadError::DataLoss(format!(
                    "a record of the models topic from offset {} on fails its CRC check",
                    offsets[next]
                )));
            }
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

/// The record value of one weight chunk: the protobuf encoding of [`WeightChunk`], written from
/// the slice (building a `WeightChunk` would copy every chunk once more before encoding it).
pub fn encode_chunk(index: u32, data: &[u8]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let mut value = Vec::with_capacity(
        2 + encoded_len_varint(u64::from(index)) + encoded_len_varint(data.len() as u64) + data.len(),
    );
    // proto3 leaves a zero field out, as prost's own encoder does.
    if index != 0 {
        encode_key(1, WireType::Varint, &mut value);
        encode_varint(u64::from(index), &mut value);
    }
    if !data.is_empty() {
        encode_key(2, WireType::LengthDelimited, &mut value);
        encode_varint(data.len() as u64, &mut value);
        value.extend_from_slice(data);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_encode_as_prost_encodes_them_and_decode_back() {
        for (index, data) in [
            (0, vec![]),
            (0, vec![7; 3]),
            (1, vec![1, 2, 3]),
            (300, vec![9; 200]),
            (u32::MAX, vec![0; 1 << 16]),
        ] {
            let encoded = encode_chunk(index, &data);
            let expected = WeightChunk {
                index,
                data: data.clone(),
            };
            assert_eq!(
                encoded,
                expected.encode_to_vec(),
                "chunk {index} of {} bytes",
                data.len()
            );
            assert_eq!(WeightChunk::decode(encoded.as_slice()).unwrap(), expected);
        }
    }
}
