//! Follows one model in the models topic: its versions, its aliases and, for the newest
//! versions only, the weight chunks themselves (so a fresh publish loads without a second read).
//! After the first catch-up it announces the version to serve whenever that changes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use kappa_api::model::{VersionRecord, WeightChunk};
use kappa_kafka::{
    ReaderContext,
    chunks::reader_config,
    records::{self, LogRecord},
    trace_headers,
};
use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    message::Headers,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Assembled weights kept in memory: the newest versions, which are the likely next targets.
const ASSEMBLED_TO_KEEP: usize = 2;

/// A version the predictor should serve.
#[derive(Debug, Clone)]
pub struct Target {
    pub version: u64,
    pub record: Arc<VersionRecord>,
    pub chunk_offsets: Vec<i64>,
    /// The weights, when the follower still holds them.
    pub bytes: Option<Arc<Vec<u8>>>,
    /// Trace context of the change that made this the target (the publish or the alias move),
    /// which the load continues.
    pub trace: BTreeMap<String, String>,
}

#[derive(Debug)]
struct FollowState {
    name: String,
    follow: String,
    versions: BTreeMap<u64, Arc<VersionRecord>>,
    chunk_offsets: HashMap<u64, BTreeMap<u32, i64>>,
    pending: HashMap<u64, BTreeMap<u32, Vec<u8>>>,
    assembled: BTreeMap<u64, Arc<Vec<u8>>>,
    aliases: HashMap<String, u64>,
    last_change_trace: BTreeMap<String, String>,
}

impl FollowState {
    fn apply(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>, headers: Option<&impl Headers>) {
        let record = match records::decode(offset, key, value) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "skipping an undecodable models-topic record");
                return;
            }
        };
        match record {
            LogRecord::Chunk { name, version, index } if name == self.name => {
                self.chunk_offsets.entry(version).or_default().insert(index, offset);
                if let Some(chunk) = value.and_then(|v| WeightChunk::decode(v).ok()) {
                    self.pending.entry(version).or_default().insert(index, chunk.data);
                }
            }
            LogRecord::ChunkTombstone { name, version, index } if name == self.name => {
                if let Some(c) = self.chunk_offsets.get_mut(&version) {
                    c.remove(&index);
                }
            }
            LogRecord::Version { name, version, record } if name == self.name => {
                let chunks = self.pending.remove(&version);
                if record.deleted {
                    self.versions.remove(&version);
                    self.assembled.remove(&version);
                    self.chunk_offsets.remove(&version);
                    return;
                }
                if let Some(chunks) = chunks.filter(|c| c.len() == record.chunk_count as usize) {
                    let bytes: Vec<u8> = chunks.into_values().flatten().collect();
                    self.assembled.insert(version, Arc::new(bytes));
                    while self.assembled.len() > ASSEMBLED_TO_KEEP {
                        self.assembled.pop_first();
                    }
                }
                self.last_change_trace = if record.trace_context.is_empty() {
                    trace_headers::trace_map(headers)
                } else {
                    record.trace_context.clone()
                };
                self.versions.insert(version, Arc::from(record));
            }
            LogRecord::VersionTombstone { name, version } if name == self.name => {
                self.versions.remove(&version);
                self.assembled.remove(&version);
            }
            LogRecord::Alias { name, alias, version } if name == self.name => {
                if alias == self.follow {
                    self.last_change_trace = trace_headers::trace_map(headers);
                }
                self.aliases.insert(alias, version);
            }
            LogRecord::AliasTombstone { name, alias } if name == self.name => {
                self.aliases.remove(&alias);
            }
            _ => {}
        }
    }

    fn target_version(&self) -> Option<u64> {
        if self.follow == "latest" {
            self.versions.keys().next_back().copied()
        } else {
            self.aliases.get(&self.follow).copied()
        }
    }

    fn target(&self) -> Option<Target> {
        let version = self.target_version()?;
        let record = self.versions.get(&version)?;
        let offsets = self.chunk_offsets.get(&version);
        Some(Target {
            version,
            record: Arc::clone(record),
            chunk_offsets: (0..record.chunk_count)
                .filter_map(|i| offsets.and_then(|o| o.get(&i)).copied())
                .collect(),
            bytes: self.assembled.get(&version).cloned(),
            trace: self.last_change_trace.clone(),
        })
    }
}

/// Starts following; the receiver yields targets once the topic has been replayed.
pub fn spawn(
    config: &kappa_kafka::KafkaClients,
    topic: &str,
    name: &str,
    follow: &str,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Option<Target>>, KafkaError> {
    let consumer: StreamConsumer<ReaderContext> =
        reader_config(config, "kappa-predictor-follower").create_with_context(ReaderContext)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let mut state = FollowState {
        name: name.to_owned(),
        follow: follow.to_owned(),
        versions: BTreeMap::new(),
        chunk_offsets: HashMap::new(),
        pending: HashMap::new(),
        assembled: BTreeMap::new(),
        aliases: HashMap::new(),
        last_change_trace: BTreeMap::new(),
    };
    let (tx, rx) = watch::channel(None);
    let started = Instant::now();
    tokio::spawn(async move {
        let mut caught_up = false;
        let mut announced: Option<(u64, String)> = None;
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                received = consumer.recv() => received,
            };
            match received {
                Ok(message) => {
                    state.apply(message.offset(), message.key(), message.payload(), message.headers());
                    if !caught_up {
                        continue;
                    }
                }
                Err(KafkaError::PartitionEOF(_)) => {
                    if !caught_up {
                        caught_up = true;
                        tracing::info!(
                            seconds = started.elapsed().as_secs_f64(),
                            versions = state.versions.len(),
                            "replayed the models topic"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "models-topic consumer error; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            let target = state.target();
            let identity = target.as_ref().map(|t| {
                let sha = t
                    .record
                    .manifest
                    .as_ref()
                    .map(|m| m.weights_sha256.clone())
                    .unwrap_or_default();
                (t.version, sha)
            });
            if identity != announced {
                match &target {
                    Some(t) => tracing::info!(version = t.version, follow = %state.follow, "new target version"),
                    None => {
                        tracing::warn!(model = %state.name, follow = %state.follow, "nothing to serve: no such version or alias yet")
                    }
                }
                announced = identity;
                if target.is_some() {
                    tx.send_replace(target);
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappa_api::model::ModelManifest;
    use kappa_kafka::ModelKey;
    use rdkafka::message::OwnedHeaders;

    const NO_HEADERS: Option<&OwnedHeaders> = None;

    fn state(follow: &str) -> FollowState {
        FollowState {
            name: "m".into(),
            follow: follow.into(),
            versions: BTreeMap::new(),
            chunk_offsets: HashMap::new(),
            pending: HashMap::new(),
            assembled: BTreeMap::new(),
            aliases: HashMap::new(),
            last_change_trace: BTreeMap::new(),
        }
    }

    fn put_version(s: &mut FollowState, offset: &mut i64, name: &str, version: u64, data: &[u8]) {
        let chunk = WeightChunk {
            index: 0,
            data: data.to_vec(),
        }
        .encode_to_vec();
        let key = ModelKey::Chunk {
            name: name.into(),
            version,
            index: 0,
        }
        .to_string();
        s.apply(*offset, Some(key.as_bytes()), Some(&chunk), NO_HEADERS);
        *offset += 1;
        let record = VersionRecord {
            manifest: Some(ModelManifest {
                name: name.into(),
                version,
                ..Default::default()
            }),
            chunk_count: 1,
            ..Default::default()
        }
        .encode_to_vec();
        let key = ModelKey::Version {
            name: name.into(),
            version,
        }
        .to_string();
        s.apply(*offset, Some(key.as_bytes()), Some(&record), NO_HEADERS);
        *offset += 1;
    }

    #[test]
    fn follows_latest_or_an_alias_and_buffers_only_its_own_model() {
        let mut offset = 0;
        let mut s = state("latest");
        put_version(&mut s, &mut offset, "m", 1, b"one");
        put_version(&mut s, &mut offset, "other", 1, b"xx");
        put_version(&mut s, &mut offset, "m", 2, b"two");
        put_version(&mut s, &mut offset, "m", 3, b"three");
        let t = s.target().unwrap();
        assert_eq!(t.version, 3);
        assert_eq!(t.bytes.as_deref().map(Vec::as_slice), Some(&b"three"[..]));
        assert_eq!(s.assembled.len(), ASSEMBLED_TO_KEEP, "old versions' bytes are dropped");
        assert!(s.pending.is_empty(), "other models' chunks are never buffered");

        let mut s = state("production");
        put_version(&mut s, &mut offset, "m", 1, b"one");
        assert!(s.target().is_none());
        let alias = kappa_api::model::AliasRecord {
            name: "m".into(),
            alias: "production".into(),
            version: 1,
            updated_at_ms: 0,
        };
        s.apply(
            offset,
            Some(b"alias/m/production"),
            Some(&alias.encode_to_vec()),
            NO_HEADERS,
        );
        let t = s.target().unwrap();
        assert_eq!((t.version, t.chunk_offsets.clone()), (1, vec![offset - 2]));
    }
}
