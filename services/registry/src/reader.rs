//! Reads from the models topic on behalf of one request: a version's weight chunks for
//! `GetModel`, or the event stream of `WatchModels`. Each read has its own consumer on a blocking
//! thread (librdkafka's poll blocks) and hands results over a bounded channel, so a slow client
//! slows its own read and nothing else.

use std::time::Duration;

use kappa_api::registry as pb;
use kappa_kafka::KafkaClients;
use kappa_modellog::{
    chunks::{self, ChunkReadError},
    records::{self, LogRecord},
};
use rdkafka::{Message, error::KafkaError};
use tokio::sync::mpsc;
use tonic::Status;

use crate::RegistryError;

const POLL: Duration = Duration::from_millis(200);
const READER_GROUP: &str = "kappa-registry-reader";
/// Idle chunk consumers kept for the next GetModel (each holds a broker connection).
const IDLE_CHUNK_READERS: usize = 4;

pub fn chunk_readers(config: KafkaClients) -> chunks::ChunkReaders {
    chunks::ChunkReaders::new(config, READER_GROUP, IDLE_CHUNK_READERS)
}

/// Sends the chunks found at `offsets` in order. Their bytes are checked on the way in against
/// each record's CRC-32C (see [`KafkaClients::log_reader`]), in order and complete against the
/// catalog's offsets; the SHA-256 of the whole is the client's to check, as the header carries it.
pub fn stream_chunks(
    readers: &chunks::ChunkReaders,
    topic: &str,
    offsets: &[i64],
    tx: &mpsc::Sender<Result<pb::GetModelResponse, Status>>,
) -> Result<(), RegistryError> {
    readers
        .read(topic, offsets, |data| {
            let response = pb::GetModelResponse {
                part: Some(pb::get_model_response::Part::Chunk(data)),
            };
            tx.blocking_send(Ok(response)).is_ok()
        })
        .map_err(|e| match e {
            ChunkReadError::Unavailable(m) => RegistryError::KafkaRead(m),
            ChunkReadError::DataLoss(m) => RegistryError::DataLoss(m),
        })
}

/// Streams version and alias events from `from` onwards until the client goes away.
pub fn stream_events(
    config: &KafkaClients,
    topic: &str,
    from: i64,
    name_filter: &str,
    tx: &mpsc::Sender<Result<pb::WatchModelsResponse, Status>>,
) -> Result<(), RegistryError> {
    let consumer =
        chunks::consumer_at(config, READER_GROUP, topic, from).map_err(|e| RegistryError::KafkaRead(e.to_string()))?;
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
                    published_by: record.published_by,
                    signing_key_id: record.signing_key_id,
                }),
            })
        }
        LogRecord::VersionTombstone { name, version } => Event::Deleted(pb::VersionDeleted { name, version }),
        LogRecord::Alias { name, alias, record } => Event::AliasSet(pb::AliasSet {
            name,
            alias,
            version: record.version,
            cutover: record.cutover,
            updated_at_ms: record.updated_at_ms,
            updated_by: record.updated_by,
        }),
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
