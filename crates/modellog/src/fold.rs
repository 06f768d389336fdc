//! The one fold of the models log: every reader (the registry's catalog, a predictor's view of
//! the model it follows) applies the same records with the same rules, so they cannot disagree
//! on what the log says.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use kappa_api::model::{Cutover, VersionRecord, WeightChunk};
use kappa_model::signing::{Pointer, TrustedKeys};
use prost::Message as _;
use rdkafka::message::Headers;

use crate::records::{self, LogRecord, Refusal, RefusedRecord};

/// Assembled weights a retaining fold keeps: the newest versions, the likely next targets.
const ASSEMBLED_TO_KEEP: usize = 2;

/// Versions of one model whose chunks are kept before their record arrives (an honest log has
/// one at a time).
const UNFINISHED_TO_KEEP: usize = 4;

/// The most chunks a version may have: the registry refuses a --max-model-bytes that would need
/// more at its --chunk-bytes.
pub const MAX_CHUNKS: u32 = 1 << 20;

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
    /// Sequence of each alias's last move, kept when the alias is deleted: a move at or below
    /// it is an old one written again.
    alias_sequences: HashMap<String, u64>,
    /// Log offset of every chunk record, by version and chunk index.
    chunks: BTreeMap<u64, BTreeMap<u32, i64>>,
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

    /// The sequence the next alias move must exceed: the highest any move of this model had.
    pub fn highest_sequence(&self) -> u64 {
        self.alias_sequences.values().copied().max().unwrap_or(0)
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

    /// Forgets the chunks of versions below `version` that never got a record: the registry
    /// numbers versions in order and a reader sees a transaction whole, so none ever will.
    fn forget_unfinished_below(&mut self, version: u64) {
        let versions = &self.versions;
        self.chunks.retain(|v, _| *v >= version || versions.contains_key(v));
        self.pending.retain(|v, _| *v >= version);
    }

    /// Whether a chunk of `version` at `index` can belong to a publish still being written. The
    /// registry writes a version's chunks just before its record, numbers each version above
    /// every earlier one, and a reader sees a transaction whole; compaction removes records but
    /// never reorders them. So a chunk of a version at or below the highest seen is forged, and
    /// of the unfinished versions (chunks, no record yet) an honest log has one: past
    /// [`UNFINISHED_TO_KEEP`], the highest-numbered are forgotten (a forger picks numbers, the
    /// registry the lowest free one).
    fn accepts_chunk(&mut self, version: u64, index: u32) -> Result<(), String> {
        if index >= MAX_CHUNKS {
            return Err(format!(
                "chunk index {index} is beyond any publish ({MAX_CHUNKS} chunks at most)"
            ));
        }
        if version <= self.highest_version {
            return Err(format!(
                "version {version} is written or deleted already, and a version's chunks come before its record"
            ));
        }
        if self.chunks.contains_key(&version) {
            return Ok(());
        }
        let highest = self.highest_version;
        let unfinished = self.chunks.range(highest + 1..).count();
        if unfinished >= UNFINISHED_TO_KEEP {
            let top = *self.chunks.keys().next_back().expect("unfinished versions are there");
            if version > top {
                return Err(format!("too many unfinished versions; {version} is the highest"));
            }
            self.chunks.remove(&top);
            self.pending.remove(&top);
        }
        Ok(())
    }
}

/// The state of the whole models log, as of the records applied so far.
#[derive(Debug, Default)]
pub struct ModelLog {
    models: BTreeMap<String, ModelState>,
    /// The one model this fold holds, with its chunk data (a predictor's), if any.
    retain: Option<String>,
    /// Largest chunk data kept for one unfinished version of the retained model.
    retain_bytes: usize,
    /// When set, what moves a reader is applied only when signed by one of these keys.
    verifier: Option<TrustedKeys>,
}

impl ModelLog {
    /// A fold that keeps positions only: weights stay in Kafka (the registry).
    pub fn new() -> Self {
        Self::default()
    }

    /// A fold of `name` alone that also assembles the weights of its newest versions as they
    /// pass, up to `max_bytes` a version, so a fresh publish loads without a second read (a
    /// predictor).
    pub fn retaining(name: &str, max_bytes: u64) -> Self {
        Self {
            retain: Some(name.to_owned()),
            retain_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            ..Self::default()
        }
    }

    /// Applies only what a trusted key signed: versions (their manifest signature), deletions
    /// and alias moves (the registry's signature), the latter only when newer than the last
    /// move of the same alias. Version tombstones, which the registry never writes, are refused.
    pub fn verified_by(self, keys: TrustedKeys) -> Self {
        Self {
            verifier: Some(keys),
            ..self
        }
    }

    /// The state of `name`, when the log holds anything for it.
    pub fn model(&self, name: &str) -> Option<&ModelState> {
        self.models.get(name)
    }

    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelState)> {
        self.models.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// Decodes and applies the record at `offset`. Records outside Kappa's key scheme (and, in
    /// a retaining fold, of other models) are ignored; a refused one is reported and changes
    /// nothing. A signature is checked before the record costs anything more.
    pub fn apply<H: Headers>(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<&H>,
    ) -> Result<(), RefusedRecord> {
        let Some(record) = records::decode(offset, key, value)? else {
            return Ok(());
        };
        if self.retain.as_deref().is_some_and(|name| name != record.name()) {
            return Ok(());
        }
        let refuse = |(kind, reason): (Refusal, String)| RefusedRecord {
            offset,
            key: String::from_utf8_lossy(key.unwrap_or_default())
                .chars()
                .take(300)
                .collect(),
            kind,
            reason,
        };
        if let Some(keys) = &self.verifier
            && let Err(refusal) = self.verify(&record, keys)
        {
            if let LogRecord::Version { name, version, .. } = &record
                && let Some(model) = self.models.get_mut(name)
            {
                // The chunks a forged version came with are never needed.
                model.pending.remove(version);
            }
            return Err(refuse(refusal));
        }
        self.apply_record(offset, record, value, || {
            kappa_runtime::propagation::kafka_headers::trace_map(headers)
        })
        .map_err(refuse)
    }

    /// Why a verifying fold refuses `record`, if it does.
    fn verify(&self, record: &LogRecord, keys: &TrustedKeys) -> Result<(), (Refusal, String)> {
        let unverified = |e: kappa_model::signing::SignatureError| (Refusal::Unverified, e.to_string());
        match record {
            LogRecord::Version { name, version, record } if record.deleted => keys
                .verify_pointer(
                    Pointer::Deletion {
                        name,
                        version: *version,
                    },
                    &record.signature,
                    &record.signing_key_id,
                )
                .map_err(unverified),
            LogRecord::Version { record, .. } => {
                let manifest = record
                    .manifest
                    .as_ref()
                    .ok_or_else(|| (Refusal::Unverified, "the version record carries no manifest".to_owned()))?;
                keys.verify(manifest, &record.signature, &record.signing_key_id)
                    .map_err(unverified)
            }
            LogRecord::VersionTombstone { .. } => Err((
                Refusal::Unverified,
                "a version is deleted by the registry's signed marker, never by a tombstone".to_owned(),
            )),
            LogRecord::Alias { name, alias, record } => {
                keys.verify_pointer(Pointer::Alias(record), &record.signature, &record.signing_key_id)
                    .map_err(unverified)?;
                let last = self
                    .models
                    .get(name)
                    .and_then(|m| m.alias_sequences.get(alias))
                    .copied()
                    .unwrap_or(0);
                if record.sequence <= last {
                    return Err((
                        Refusal::Replayed,
                        format!(
                            "its sequence {} is not above {last}, that of the alias's last move: an old move written again",
                            record.sequence
                        ),
                    ));
                }
                Ok(())
            }
            LogRecord::AliasTombstone { .. } | LogRecord::Chunk { .. } | LogRecord::ChunkTombstone { .. } => Ok(()),
        }
    }

    /// Applies a decoded record; `value` is its raw value (chunk data for a retained model) and
    /// `trace` reads the record's trace headers when a change needs them. A chunk record no
    /// publish could have written is refused.
    pub fn apply_record(
        &mut self,
        offset: i64,
        record: LogRecord,
        value: Option<&[u8]>,
        trace: impl FnOnce() -> BTreeMap<String, String>,
    ) -> Result<(), (Refusal, String)> {
        match record {
            LogRecord::Version { name, version, record } => {
                let entry = self.models.entry(name).or_default();
                if !record.deleted {
                    // The registry writes a version once, and never after deleting it: another
                    // record for the number is an old one written again.
                    if entry.deleted.contains(&version) {
                        return Err((
                            Refusal::Replayed,
                            format!("version {version} was deleted, and a deleted version stays deleted"),
                        ));
                    }
                    if entry
                        .versions
                        .get(&version)
                        .is_some_and(|stored| *stored.record != *record)
                    {
                        return Err((
                            Refusal::Replayed,
                            format!("version {version} is written already, and a version is written once"),
                        ));
                    }
                }
                entry.highest_version = entry.highest_version.max(version);
                let pending = entry.pending.remove(&version);
                entry.forget_unfinished_below(version);
                if record.deleted {
                    entry.remove_version(version);
                    return Ok(());
                }
                if !record.idempotency_key.is_empty() {
                    entry.idempotency.insert(record.idempotency_key.clone(), version);
                }
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
                let limit = self.retain_bytes;
                let entry = self.models.entry(name).or_default();
                entry
                    .accepts_chunk(version, index)
                    .map_err(|reason| (Refusal::OutOfBounds, reason))?;
                entry.chunks.entry(version).or_default().insert(index, offset);
                if retained && let Some(chunk) = value.and_then(|v| WeightChunk::decode(v).ok()) {
                    let pending = entry.pending.entry(version).or_default();
                    let held: usize = pending.values().map(Vec::len).sum();
                    if held + chunk.data.len() > limit {
                        // More than this predictor loads: the load reads the chunks from Kafka
                        // and refuses the version for its size there.
                        entry.pending.remove(&version);
                    } else {
                        pending.insert(index, chunk.data);
                    }
                }
            }
            LogRecord::ChunkTombstone { name, version, index } => {
                if let Some(chunks) = self.models.get_mut(&name).and_then(|e| e.chunks.get_mut(&version)) {
                    chunks.remove(&index);
                }
            }
            LogRecord::Alias { name, alias, record } => {
                let entry = self.models.entry(name).or_default();
                entry.alias_traces.insert(alias.clone(), trace());
                match record.cutover {
                    Some(cutover) => entry.alias_cutovers.insert(alias.clone(), cutover),
                    None => entry.alias_cutovers.remove(&alias),
                };
                let last = entry.alias_sequences.entry(alias.clone()).or_default();
                *last = (*last).max(record.sequence);
                entry.aliases.insert(alias, record.version);
            }
            LogRecord::AliasTombstone { name, alias } => {
                if let Some(entry) = self.models.get_mut(&name) {
                    entry.aliases.remove(&alias);
                    entry.alias_traces.remove(&alias);
                    entry.alias_cutovers.remove(&alias);
                }
            }
        }
        Ok(())
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
        let (mut log, mut offset) = (ModelLog::retaining("m", 1 << 20), 0);
        put_version(&mut log, &mut offset, "m", 1, b"one", "");
        put_version(&mut log, &mut offset, "other", 1, b"xx", "");
        put_version(&mut log, &mut offset, "m", 2, b"two", "");
        put_version(&mut log, &mut offset, "m", 3, b"three", "");
        let m = log.model("m").unwrap();
        assert_eq!(m.resolve(&Follow::Latest), Some(3));
        assert_eq!(m.assembled(3).as_deref().map(Vec::as_slice), Some(&b"three"[..]));
        assert!(m.assembled(1).is_none(), "old versions' bytes are dropped");
        assert!(log.model("other").is_none(), "other models are not kept");
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

    #[test]
    fn a_verifying_fold_applies_only_what_trusted_keys_signed_and_never_an_old_move_again() {
        use kappa_model::signing::{ModelSigner, Pointer};
        let (publisher, registry) = (ModelSigner::generate(), ModelSigner::generate());
        let keys = TrustedKeys::default().with(&publisher).with(&registry);
        let (mut log, mut offset) = (ModelLog::retaining("m", 1 << 20).verified_by(keys), 0);
        let signed = |version: u64| {
            let manifest = ModelManifest {
                name: "m".into(),
                version,
                ..Default::default()
            };
            let (signature, signing_key_id) = publisher.sign(&manifest);
            VersionRecord {
                manifest: Some(manifest),
                chunk_count: 0,
                signature,
                signing_key_id,
                ..Default::default()
            }
        };
        let mut apply = |log: &mut ModelLog, key: String, value: Option<Vec<u8>>| {
            offset += 1;
            log.apply(offset, Some(key.as_bytes()), value.as_deref(), NO_HEADERS)
                .map_err(|e| e.kind)
        };
        for v in [1, 2] {
            apply(&mut log, format!("model/m/{v}"), Some(signed(v).encode_to_vec())).unwrap();
        }
        // A signed version under another number, and an unsigned one, change nothing.
        let mut replayed = signed(1);
        replayed.manifest.as_mut().unwrap().version = 3;
        assert_eq!(
            apply(&mut log, "model/m/3".into(), Some(replayed.encode_to_vec())),
            Err(Refusal::Unverified)
        );
        let unsigned = VersionRecord {
            signature: Vec::new(),
            ..signed(3)
        };
        assert_eq!(
            apply(&mut log, "model/m/3".into(), Some(unsigned.encode_to_vec())),
            Err(Refusal::Unverified)
        );
        assert_eq!(log.model("m").unwrap().latest(), Some(2));
        assert_eq!(log.model("m").unwrap().next_version(), 3);
        // Nor does a tombstone, or an unsigned deletion; a signed one does.
        assert_eq!(apply(&mut log, "model/m/2".into(), None), Err(Refusal::Unverified));
        let marker = |signature: Vec<u8>, signing_key_id: String| VersionRecord {
            deleted: true,
            signature,
            signing_key_id,
            ..Default::default()
        };
        assert_eq!(
            apply(
                &mut log,
                "model/m/2".into(),
                Some(marker(Vec::new(), String::new()).encode_to_vec())
            ),
            Err(Refusal::Unverified)
        );
        assert_eq!(log.model("m").unwrap().latest(), Some(2));
        let (signature, id) = registry.sign_pointer(Pointer::Deletion { name: "m", version: 2 });
        apply(
            &mut log,
            "model/m/2".into(),
            Some(marker(signature, id).encode_to_vec()),
        )
        .unwrap();
        assert_eq!(log.model("m").unwrap().latest(), Some(1));
        // A deleted version written again stays deleted.
        assert_eq!(
            apply(&mut log, "model/m/2".into(), Some(signed(2).encode_to_vec())),
            Err(Refusal::Replayed)
        );

        // Alias moves: signed, and each above the last.
        let alias = |version: u64, sequence: u64| {
            let mut record = AliasRecord {
                name: "m".into(),
                alias: "production".into(),
                version,
                sequence,
                ..AliasRecord::default()
            };
            (record.signature, record.signing_key_id) = registry.sign_pointer(Pointer::Alias(&record));
            record
        };
        let production = Follow::parse("production");
        let old = alias(1, 10);
        apply(&mut log, "alias/m/production".into(), Some(old.encode_to_vec())).unwrap();
        apply(
            &mut log,
            "alias/m/production".into(),
            Some(alias(1, 20).encode_to_vec()),
        )
        .unwrap();
        assert_eq!(
            apply(&mut log, "alias/m/production".into(), Some(old.encode_to_vec())),
            Err(Refusal::Replayed)
        );
        let forged = AliasRecord {
            sequence: 30,
            ..old.clone()
        };
        assert_eq!(
            apply(&mut log, "alias/m/production".into(), Some(forged.encode_to_vec())),
            Err(Refusal::Unverified)
        );
        // Deleting the alias does not reset its floor.
        apply(&mut log, "alias/m/production".into(), None).unwrap();
        assert_eq!(
            apply(&mut log, "alias/m/production".into(), Some(old.encode_to_vec())),
            Err(Refusal::Replayed)
        );
        assert_eq!(log.model("m").unwrap().resolve(&production), None);
        assert_eq!(log.model("m").unwrap().highest_sequence(), 20);

        // Chunks only for the next version, below the bound.
        let chunk = WeightChunk {
            index: 0,
            data: vec![1],
        }
        .encode_to_vec();
        assert_eq!(
            apply(&mut log, "model/m/2/chunk/0".into(), Some(chunk.clone())),
            Err(Refusal::OutOfBounds)
        );
        for forged in 10..20 {
            let _ = apply(&mut log, format!("model/m/{forged}/chunk/0"), Some(chunk.clone()));
        }
        assert!(log.model("m").unwrap().chunks.len() <= 2 + UNFINISHED_TO_KEEP);
        assert_eq!(
            apply(&mut log, format!("model/m/3/chunk/{MAX_CHUNKS}"), Some(chunk.clone())),
            Err(Refusal::OutOfBounds)
        );
        apply(&mut log, "model/m/3/chunk/0".into(), Some(chunk)).unwrap();
    }
}
