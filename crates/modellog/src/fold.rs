//! The one fold of the models log: every reader (the registry's catalog, a predictor's view of
//! the model it follows) applies the same records with the same rules, so they cannot disagree
//! on what the log says.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use kappa_api::model::{Cutover, VersionRecord, WeightChunk};
use prost::Message as _;
use rdkafka::message::Headers;

use crate::records::{self, LogRecord, UndecodableRecord};

/// Assembled weights a retaining fold keeps: the newest versions, the likely next targets.
const ASSEMBLED_TO_KEEP: usize = 2;

/// What a predictor serves: the highest live version, or whatever an alias points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    Latest,
    Alias(String),
}

impl Follow {
    /// `latest` or an alias name (the alias is validated by the caller's configuration).
    pub fn parse(text: &str) -> Self {
        if text == "latest" {
            Self::Latest
        } else {
            Self::Alias(text.to_owned())
        }
    }
}

impl std::fmt::Display for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Alias(a) => f.write_str(a),
        }
    }
}

/// A live version: its record and the log offset it was written at.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub record: Arc<VersionRecord>,
    pub position: i64,
    /// W3C trace context of the publish (the record's own, else its headers').
    pub trace: BTreeMap<String, String>,
}

/// What the log says about one version number.
#[derive(Debug)]
pub enum Lookup<'a> {
    Live(&'a StoredVersion),
    Deleted,
    Unknown,
}

/// A version whose chunk records are not all in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {version} declares {declared} chunks but {found} are in the log")]
pub struct MissingChunks {
    pub version: u64,
    pub declared: u32,
    pub found: usize,
}

/// Everything the log says about one model name.
#[derive(Debug, Default)]
pub struct ModelState {
    versions: BTreeMap<u64, StoredVersion>,
    /// Highest version ever written, deleted ones included, so numbers are never reused.
    highest_version: u64,
    deleted: BTreeSet<u64>,
    aliases: BTreeMap<String, u64>,
    /// Trace context of each alias's last move.
    alias_traces: HashMap<String, BTreeMap<String, String>>,
    /// The cutover of each alias whose last move applies from an event time on.
    alias_cutovers: HashMap<String, Cutover>,
    idempotency: HashMap<String, u64>,
    /// Log offset of every chunk record, by version and chunk index.
    chunks: HashMap<u64, BTreeMap<u32, i64>>,
    /// Chunk data of versions not yet complete (only in a fold that retains this model).
    pending: HashMap<u64, BTreeMap<u32, Vec<u8>>>,
    assembled: BTreeMap<u64, Arc<Vec<u8>>>,
}

impl ModelState {
    /// No live version and no alias: the name is unknown to readers.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.aliases.is_empty()
    }

    pub fn lookup(&self, version: u64) -> Lookup<'_> {
        match self.versions.get(&version) {
            Some(v) => Lookup::Live(v),
            None if self.deleted.contains(&version) => Lookup::Deleted,
            None => Lookup::Unknown,
        }
    }

    pub fn versions(&self) -> impl DoubleEndedIterator<Item = (u64, &StoredVersion)> {
        self.versions.iter().map(|(v, s)| (*v, s))
    }

    pub fn latest(&self) -> Option<u64> {
        self.versions.keys().next_back().copied()
    }

    /// The version the next publish gets: never one used before, even by a deleted version.
    pub fn next_version(&self) -> u64 {
        self.highest_version + 1
    }

    pub fn aliases(&self) -> &BTreeMap<String, u64> {
        &self.aliases
    }

    pub fn alias(&self, alias: &str) -> Option<u64> {
        self.aliases.get(alias).copied()
    }

    pub fn aliases_of(&self, version: u64) -> Vec<String> {
        self.aliases
            .iter()
            .filter(|(_, v)| **v == version)
            .map(|(a, _)| a.clone())
            .collect()
    }

    pub fn version_for_idempotency_key(&self, key: &str) -> Option<u64> {
        self.idempotency.get(key).copied()
    }

    /// The version `follow` designates now, if it is live.
    pub fn resolve(&self, follow: &Follow) -> Option<u64> {
        let version = match follow {
            Follow::Latest => self.latest()?,
            Follow::Alias(a) => self.alias(a)?,
        };
        self.versions.contains_key(&version).then_some(version)
    }

    /// The cutover of `follow`'s last move, when it applies from an event time on (only
    /// aliases move that way).
    pub fn cutover(&self, follow: &Follow) -> Option<Cutover> {
        match follow {
            Follow::Latest => None,
            Follow::Alias(a) => self.alias_cutovers.get(a).copied(),
        }
    }

    /// Trace context of the change that made `follow` point where it does: the publish for
    /// `latest`, the alias move for an alias.
    pub fn change_trace(&self, follow: &Follow) -> BTreeMap<String, String> {
        match follow {
            Follow::Latest => self
                .latest()
                .and_then(|v| self.versions.get(&v))
                .map(|s| s.trace.clone())
                .unwrap_or_default(),
            Follow::Alias(a) => self.alias_traces.get(a).cloned().unwrap_or_default(),
        }
    }

    /// Log offsets of a version's chunks in index order; an error when any is missing. The work
    /// is bounded by the chunks present, whatever count the version record declares.
    pub fn chunk_offsets(&self, version: u64) -> Result<Vec<i64>, MissingChunks> {
        let declared = self.versions.get(&version).map_or(0, |s| s.record.chunk_count);
        let present = self.chunks.get(&version);
        // Indices are ordered: chunks 0..declared are all there when the first `declared` keys
        // are exactly those indices.
        let offsets: Vec<i64> = present
            .into_iter()
            .flatten()
            .take_while(|(index, _)| **index < declared)
            .enumerate()
            .take_while(|(position, (index, _))| *position as u64 == u64::from(**index))
            .map(|(_, (_, offset))| *offset)
            .collect();
        if offsets.len() as u64 == u64::from(declared) {
            Ok(offsets)
        } else {
            Err(MissingChunks {
                version,
                declared,
                found: present.map_or(0, |c| c.range(..declared).count()),
            })
        }
    }

    /// Indices of the chunk records present for a version (deleting a version tombstones them).
    pub fn chunk_indices(&self, version: u64) -> Vec<u32> {
        self.chunks
            .get(&version)
            .map_or_else(Vec::new, |c| c.keys().copied().collect())
    }

    /// The weights of a recent version, when a retaining fold assembled them.
    pub fn assembled(&self, version: u64) -> Option<Arc<Vec<u8>>> {
        self.assembled.get(&version).cloned()
    }

    fn remove_version(&mut self, version: u64) {
        if self.versions.remove(&version).is_some() {
            self.idempotency.retain(|_, v| *v != version);
        }
        self.deleted.insert(version);
        self.assembled.remove(&version);
        self.pending.remove(&version);
    }
}

/// The state of the whole models log, as of the records applied so far.
#[derive(Debug, Default)]
pub struct ModelLog {
    models: BTreeMap<String, ModelState>,
    /// The model whose chunk data this fold keeps (a predictor's), if any.
    retain: Option<String>,
}

impl ModelLog {
    /// A fold that keeps positions only: weights stay in Kafka (the registry).
    pub fn new() -> Self {
        Self::default()
    }

    /// A fold that also assembles the weights of `name`'s newest versions as they pass, so a
    /// fresh publish loads without a second read (a predictor).
    pub fn retaining(name: &str) -> Self {
        Self {
            retain: Some(name.to_owned()),
            ..Self::default()
        }
    }

    /// The state of `name`, when the log holds anything for it.
    pub fn model(&self, name: &str) -> Option<&ModelState> {
        self.models.get(name)
    }

    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelState)> {
        self.models.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// Decodes and applies the record at `offset`. Records outside Kappa's key scheme are
    /// ignored; an undecodable one is reported and changes nothing.
    pub fn apply<H: Headers>(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<&H>,
    ) -> Result<(), UndecodableRecord> {
        if let Some(record) = records::decode(offset, key, value)? {
            self.apply_record(offset, record, value, || {
                kappa_runtime::propagation::kafka_headers::trace_map(headers)
            });
        }
        Ok(())
    }

    /// Applies a decoded record; `value` is its raw value (chunk data for a retained model) and
    /// `trace` reads the record's trace headers when a change needs them.
    pub fn apply_record(
        &mut self,
        offset: i64,
        record: LogRecord,
        value: Option<&[u8]>,
        trace: impl FnOnce() -> BTreeMap<String, String>,
    ) {
        match record {
            LogRecord::Version { name, version, record } => {
                let entry = self.models.entry(name).or_default();
                entry.highest_version = entry.highest_version.max(version);
                let pending = entry.pending.remove(&version);
                if record.deleted {
                    entry.remove_version(version);
                    return;
                }
                if !record.idempotency_key.is_empty() {
                    entry.idempotency.insert(record.idempotency_key.clone(), version);
                }
                entry.deleted.remove(&version);
                if let Some(chunks) = pending.filter(|c| c.len() == record.chunk_count as usize) {
                    let bytes: Vec<u8> = chunks.into_values().flatten().collect();
                    entry.assembled.insert(version, Arc::new(bytes));
                    while entry.assembled.len() > ASSEMBLED_TO_KEEP {
                        entry.assembled.pop_first();
                    }
                }
                let trace = if record.trace_context.is_empty() {
                    trace()
                } else {
                    record.trace_context.clone()
                };
                entry.versions.insert(
                    version,
                    StoredVersion {
                        record: Arc::from(record),
                        position: offset,
                        trace,
                    },
                );
            }
            LogRecord::VersionTombstone { name, version } => {
                if let Some(entry) = self.models.get_mut(&name) {
                    entry.remove_version(version);
                }
            }
            LogRecord::Chunk { name, version, index } => {
                let retained = self.retain.as_deref() == Some(name.as_str());
                let entry = self.models.entry(name).or_default();
                entry.chunks.entry(version).or_default().insert(index, offset);
                if retained && let Some(chunk) = value.and_then(|v| WeightChunk::decode(v).ok()) {
                    entry.pending.entry(version).or_default().insert(index, chunk.data);
                }
            }
            LogRecord::ChunkTombstone { name, version, index } => {
                if let Some(chunks) = self.models.get_mut(&name).and_then(|e| e.chunks.get_mut(&version)) {
                    chunks.remove(&index);
                }
            }
            LogRecord::Alias {
                name,
                alias,
                version,
                cutover,
            } => {
                let entry = self.models.entry(name).or_default();
                entry.alias_traces.insert(alias.clone(), trace());
                match cutover {
                    Some(cutover) => entry.alias_cutovers.insert(alias.clone(), cutover),
                    None => entry.alias_cutovers.remove(&alias),
                };
                entry.aliases.insert(alias, version);
            }
            LogRecord::AliasTombstone { name, alias } => {
                if let Some(entry) = self.models.get_mut(&name) {
                    entry.aliases.remove(&alias);
                    entry.alias_traces.remove(&alias);
                    entry.alias_cutovers.remove(&alias);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kappa_api::model::{AliasRecord, ModelManifest};
    use rdkafka::message::OwnedHeaders;

    use super::*;
    use crate::ModelKey;

    const NO_HEADERS: Option<&OwnedHeaders> = None;

    fn put_version(log: &mut ModelLog, offset: &mut i64, name: &str, version: u64, data: &[u8], key: &str) {
        let chunk = WeightChunk {
            index: 0,
            data: data.to_vec(),
        }
        .encode_to_vec();
        let chunk_key = ModelKey::Chunk {
            name: name.into(),
            version,
            index: 0,
        }
        .to_string();
        log.apply(*offset, Some(chunk_key.as_bytes()), Some(&chunk), NO_HEADERS)
            .unwrap();
        *offset += 1;
        let record = VersionRecord {
            manifest: Some(ModelManifest {
                name: name.into(),
                version,
                ..Default::default()
            }),
            chunk_count: 1,
            idempotency_key: key.into(),
            ..Default::default()
        };
        put_record(log, offset, name, version, &record);
    }

    fn put_record(log: &mut ModelLog, offset: &mut i64, name: &str, version: u64, record: &VersionRecord) {
        let key = ModelKey::Version {
            name: name.into(),
            version,
        }
        .to_string();
        log.apply(*offset, Some(key.as_bytes()), Some(&record.encode_to_vec()), NO_HEADERS)
            .unwrap();
        *offset += 1;
    }

    fn put_alias(log: &mut ModelLog, offset: &mut i64, name: &str, alias: &str, version: Option<u64>) {
        let key = format!("alias/{name}/{alias}");
        let value = version.map(|version| {
            AliasRecord {
                name: name.into(),
                alias: alias.into(),
                version,
                ..AliasRecord::default()
            }
            .encode_to_vec()
        });
        log.apply(*offset, Some(key.as_bytes()), value.as_deref(), NO_HEADERS)
            .unwrap();
        *offset += 1;
    }

    #[test]
    fn a_retaining_fold_assembles_only_its_models_newest_weights() {
        let (mut log, mut offset) = (ModelLog::retaining("m"), 0);
        put_version(&mut log, &mut offset, "m", 1, b"one", "");
        put_version(&mut log, &mut offset, "other", 1, b"xx", "");
        put_version(&mut log, &mut offset, "m", 2, b"two", "");
        put_version(&mut log, &mut offset, "m", 3, b"three", "");
        let m = log.model("m").unwrap();
        assert_eq!(m.resolve(&Follow::Latest), Some(3));
        assert_eq!(m.assembled(3).as_deref().map(Vec::as_slice), Some(&b"three"[..]));
        assert!(m.assembled(1).is_none(), "old versions' bytes are dropped");
        assert!(
            log.model("other").unwrap().assembled(1).is_none(),
            "other models are not kept"
        );
        assert!(log.model("m").unwrap().pending.is_empty());
        // A fold that retains nothing still knows where every chunk is.
        let (mut plain, mut offset) = (ModelLog::new(), 0);
        put_version(&mut plain, &mut offset, "m", 1, b"one", "");
        assert!(plain.model("m").unwrap().assembled(1).is_none());
        assert_eq!(plain.model("m").unwrap().chunk_offsets(1), Ok(vec![0]));
    }

    #[test]
    fn deleted_versions_keep_their_number_and_aliases_follow_the_last_record() {
        let (mut log, mut offset) = (ModelLog::new(), 0);
        put_version(&mut log, &mut offset, "m", 1, b"one", "k1");
        put_version(&mut log, &mut offset, "m", 2, b"two", "k2");
        put_alias(&mut log, &mut offset, "m", "production", Some(1));
        let follow = Follow::parse("production");
        assert_eq!(log.model("m").unwrap().resolve(&follow), Some(1));
        put_alias(&mut log, &mut offset, "m", "production", Some(2));
        assert_eq!(log.model("m").unwrap().resolve(&follow), Some(2));
        put_record(
            &mut log,
            &mut offset,
            "m",
            2,
            &VersionRecord {
                deleted: true,
                ..Default::default()
            },
        );
        let m = log.model("m").unwrap();
        assert!(matches!(m.lookup(2), Lookup::Deleted));
        assert!(matches!(m.lookup(7), Lookup::Unknown));
        assert_eq!(m.next_version(), 3, "a deleted number is never reused");
        assert_eq!(m.version_for_idempotency_key("k2"), None);
        assert_eq!(m.version_for_idempotency_key("k1"), Some(1));
        assert_eq!(m.resolve(&follow), None, "an alias on a deleted version serves nothing");
        assert_eq!(m.resolve(&Follow::Latest), Some(1));
        put_alias(&mut log, &mut offset, "m", "production", None);
        assert_eq!(log.model("m").unwrap().alias("production"), None);
    }

    #[test]
    fn a_version_missing_a_chunk_is_reported_not_silently_shortened() {
        let (mut log, mut offset) = (ModelLog::new(), 0);
        let record = VersionRecord {
            manifest: Some(ModelManifest {
                name: "m".into(),
                version: 1,
                ..Default::default()
            }),
            chunk_count: 2,
            ..Default::default()
        };
        put_record(&mut log, &mut offset, "m", 1, &record);
        assert_eq!(
            log.model("m").unwrap().chunk_offsets(1),
            Err(MissingChunks {
                version: 1,
                declared: 2,
                found: 0
            })
        );
        // A forged count costs what the chunks present cost, not what the record declares.
        let forged = VersionRecord {
            chunk_count: u32::MAX,
            manifest: Some(ModelManifest {
                name: "m".into(),
                version: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        put_record(&mut log, &mut offset, "m", 2, &forged);
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert!(log.model("m").unwrap().chunk_offsets(2).is_err());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
