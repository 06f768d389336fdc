//! Reads from the models topic on behalf of one request: a version's weight chunks for
//! `GetModel`, or the event stream of `WatchModels`. Each read has its own consumer on a blocking
//! thread (librdkafka's poll blocks) and hands results over a bounded channel, so a slow client
//! slows its own read and nothing else.

use std::time::{Duration, Instant};

use kappa_api::{model::WeightChunk, registry as pb};
use kappa_kafka::ReaderContext;
use prost::Message as _;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Status;

use crate::{
    follower::reader_config,
    records::{self, LogRecord},
};

const POLL: Duration = Duration::from_millis(200);
/// A chunk read that makes no progress for this long fails instead of hanging the client.
const STALL_LIMIT: Duration = Duration::from_secs(30);

fn assigned_consumer(config: &ClientConfig, topic: &str, from: i64) -> Result<BaseConsumer<ReaderContext>, KafkaError> {
    let consumer: BaseConsumer<ReaderContext> =
        reader_config(config, "kappa-registry-reader").create_with_context(ReaderContext)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Sends the chunks found at `offsets` in order, then checks the bytes against `sha256`.
pub fn stream_chunks(
    config: &ClientConfig,
    topic: &str,
    offsets: &[i64],
    sha256: &str,
    tx: &mpsc::Sender<Result<pb::GetModelResponse, Status>>,
) -> Result<(), Status> {
    let Some(&first) = offsets.first() else { return Ok(()) };
    let consumer = assigned_consumer(config, topic, first).map_err(|e| Status::unavailable(e.to_string()))?;
    let mut hasher = Sha256::new();
    let mut next = 0;
    let mut last_progress = Instant::now();
    while next < offsets.len() {
        if tx.is_closed() {
            return Ok(());
        }
        let message = match consumer.poll(POLL) {
            Some(Ok(m)) => m,
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                if last_progress.elapsed() > STALL_LIMIT {
                    return Err(Status::unavailable(
                        "reading the model's chunks from Kafka stalled; retry",
                    ));
                }
                continue;
            }
            Some(Err(e)) => return Err(Status::unavailable(format!("reading the model from Kafka failed: {e}"))),
        };
        let offset = message.offset();
        if offset < offsets[next] {
            continue;
        }
        if offset > offsets[next] {
            return Err(Status::data_loss(format!(
                "chunk {next} expected at offset {} is gone from the models topic",
                offsets[next]
            )));
        }
        let chunk = WeightChunk::decode(message.payload().unwrap_or_default())
            .map_err(|e| Status::data_loss(format!("chunk at offset {offset} is corrupt: {e}")))?;
        if chunk.index as usize != next {
            return Err(Status::data_loss(format!(
                "offset {offset} holds chunk {} where chunk {next} belongs",
                chunk.index
            )));
        }
        hasher.update(&chunk.data);
        let response = pb::GetModelResponse {
            part: Some(pb::get_model_response::Part::Chunk(chunk.data)),
        };
        if tx.blocking_send(Ok(response)).is_err() {
            return Ok(());
        }
        next += 1;
        last_progress = Instant::now();
    }
    let actual = hex::encode(hasher.finalize());
    if actual != sha256 {
        return Err(Status::data_loss(format!(
            "the weights read from Kafka hash to {actual}, not the recorded {sha256}"
        )));
    }
    Ok(())
}

/// Streams version and alias events from `from` onwards until the client goes away.
pub fn stream_events(
    config: &ClientConfig,
    topic: &str,
    from: i64,
    name_filter: &str,
    tx: &mpsc::Sender<Result<pb::WatchModelsResponse, Status>>,
) -> Result<(), Status> {
    let consumer = assigned_consumer(config, topic, from).map_err(|e| Status::unavailable(e.to_string()))?;
    while !tx.is_closed() {
        let message = match consumer.poll(POLL) {
            Some(Ok(m)) => m,
            Some(Err(KafkaError::PartitionEOF(_))) | None => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watch consumer error; retrying");
                continue;
            }
        };
        let offset = message.offset();
        let record = match records::decode(offset, message.key(), message.payload()) {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watch skips an undecodable record");
                continue;
            }
        };
        let Some(event) = to_event(record, offset, name_filter) else {
            continue;
        };
        let response = pb::WatchModelsResponse {
            position: offset,
            event: Some(event),
        };
        if tx.blocking_send(Ok(response)).is_err() {
            break;
        }
    }
    Ok(())
}

fn to_event(record: LogRecord, offset: i64, name_filter: &str) -> Option<pb::watch_models_response::Event> {
    use pb::watch_models_response::Event;
    let event = match record {
        LogRecord::Version { name, version, record } if record.deleted => {
            Event::Deleted(pb::VersionDeleted { name, version })
        }
        LogRecord::Version { record, .. } => {
            let manifest = record.manifest.unwrap_or_default();
            Event::Published(pb::VersionPublished {
                version: Some(pb::ModelVersion {
                    name: manifest.name.clone(),
                    version: manifest.version,
                    weights_sha256: manifest.weights_sha256.clone(),
                    weights_size: manifest.weights_size,
                    created_at_ms: manifest.created_at_ms,
                    aliases: Vec::new(),
                    manifest: Some(manifest),
                    position: offset,
                }),
            })
        }
        LogRecord::VersionTombstone { name, version } => Event::Deleted(pb::VersionDeleted { name, version }),
        LogRecord::Alias { name, alias, version } => Event::AliasSet(pb::AliasSet { name, alias, version }),
        LogRecord::AliasTombstone { name, alias } => Event::AliasDeleted(pb::AliasDeleted { name, alias }),
        LogRecord::Chunk { .. } | LogRecord::ChunkTombstone { .. } => return None,
    };
    let name = match &event {
        Event::Published(p) => p.version.as_ref().map_or("", |v| v.name.as_str()),
        Event::Deleted(d) => &d.name,
        Event::AliasSet(a) => &a.name,
        Event::AliasDeleted(a) => &a.name,
    };
    (name_filter.is_empty() || name == name_filter).then_some(event)
}
