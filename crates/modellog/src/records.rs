//! Models-topic records, both ways: [`Put`] is every record the registry writes, [`decode`] the
//! one function the registry, its watch streams and the predictors read the log through, so
//! writers and readers agree on what a record means.

use crate::ModelKey;
use kappa_api::model::{AliasRecord, VersionRecord};
use prost::Message;

/// One record to write to the models topic: its key, and its value (`None`: a tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct Put {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

impl Put {
    /// The record that makes a version exist, written after its `chunk_count` chunks: readers
    /// take it as the sign that every chunk before it is there.
    pub fn version(name: &str, version: u64, record: &VersionRecord) -> Self {
        Self {
            key: ModelKey::Version {
                name: name.to_owned(),
                version,
            }
            .to_string(),
            value: Some(record.encode_to_vec()),
        }
    }

    /// A deleted version: not a tombstone, so the version number stays taken after compaction.
    /// `signature` and `signing_key_id` are the registry's signature of the deletion, if it signs.
    pub fn deleted_version(name: &str, version: u64, signature: Vec<u8>, signing_key_id: String) -> Self {
        let marker = VersionRecord {
            deleted: true,
            signature,
            signing_key_id,
            ..VersionRecord::default()
        };
        Self::version(name, version, &marker)
    }

    /// One chunk of a version's weights.
    pub fn chunk(name: &str, version: u64, index: u32, data: &[u8]) -> Self {
        Self {
            value: Some(crate::chunks::encode_chunk(index, data)),
            ..Self::chunk_tombstone(name, version, index)
        }
    }

    pub fn chunk_tombstone(name: &str, version: u64, index: u32) -> Self {
        Self {
            key: ModelKey::Chunk {
                name: name.to_owned(),
                version,
                index,
            }
            .to_string(),
            value: None,
        }
    }

    /// An alias moved to `record.version`.
    pub fn alias(record: &AliasRecord) -> Self {
        Self {
            value: Some(record.encode_to_vec()),
            ..Self::alias_tombstone(&record.name, &record.alias)
        }
    }

    pub fn alias_tombstone(name: &str, alias: &str) -> Self {
        Self {
            key: ModelKey::Alias {
                name: name.to_owned(),
                alias: alias.to_owned(),
            }
            .to_string(),
            value: None,
        }
    }
}

/// One record of the models topic, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    Version {
        name: String,
        version: u64,
        record: Box<VersionRecord>,
    },
    /// A null value on a version key; the registry itself writes a `deleted` record instead.
    VersionTombstone {
        name: String,
        version: u64,
    },
    Chunk {
        name: String,
        version: u64,
        index: u32,
    },
    ChunkTombstone {
        name: String,
        version: u64,
        index: u32,
    },
    /// An alias moved: to `record.version`, from `record.cutover`'s event time on when set.
    Alias {
        name: String,
        alias: String,
        record: Box<AliasRecord>,
    },
    AliasTombstone {
        name: String,
        alias: String,
    },
}

impl LogRecord {
    /// The model the record is about.
    pub fn name(&self) -> &str {
        match self {
            Self::Version { name, .. }
            | Self::VersionTombstone { name, .. }
            | Self::Chunk { name, .. }
            | Self::ChunkTombstone { name, .. }
            | Self::Alias { name, .. }
            | Self::AliasTombstone { name, .. } => name,
        }
    }
}

/// A record a reader did not apply, and why: it changed nothing.
#[derive(Debug, thiserror::Error)]
#[error("record at offset {offset} with key {key:?} is refused ({}): {reason}", kind.as_str())]
pub struct RefusedRecord {
    pub offset: i64,
    pub key: String,
    pub kind: Refusal,
    pub reason: String,
}

/// The kinds of refused record, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a record Kappa writes, or one that contradicts its key.
    Undecodable,
    /// Not signed by a trusted key, where a reader verifies.
    Unverified,
    /// A signed alias move not newer than the last one followed: written again.
    Replayed,
    /// Beyond what any publish writes (a chunk index, chunks of a finished version).
    OutOfBounds,
}

impl Refusal {
    pub const ALL: [Self; 4] = [Self::Undecodable, Self::Unverified, Self::Replayed, Self::OutOfBounds];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Unverified => "unverified",
            Self::Replayed => "replayed",
            Self::OutOfBounds => "out_of_bounds",
        }
    }
}

/// The highest version number a record may name: far beyond any count of publishes, and low
/// enough that the next number never wraps. A record past it is forged.
pub const MAX_VERSION: u64 = 1 << 53;

/// The highest sequence an alias record may carry: the registry's are milliseconds since the
/// Unix epoch or just above the last, so a record past it is forged and would exhaust the
/// numbers of every later move.
pub const MAX_SEQUENCE: u64 = 1 << 53;

/// Decodes a record. `Ok(None)` for keys outside Kappa's scheme, which readers skip. A record
/// is undecodable, and changes nothing, when what it says contradicts its key: a version number
/// past [`MAX_VERSION`], a manifest naming another model or version than the key, an alias
/// record for another alias, or an alias moved past [`MAX_VERSION`].
pub fn decode(offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<LogRecord>, RefusedRecord> {
    let Some(parsed) = key.and_then(ModelKey::parse) else {
        return Ok(None);
    };
    let fail = |reason: String| RefusedRecord {
        offset,
        key: parsed.to_string(),
        kind: Refusal::Undecodable,
        reason,
    };
    if let ModelKey::Version { version, .. } | ModelKey::Chunk { version, .. } = parsed
        && version > MAX_VERSION
    {
        return Err(fail(format!("version {version} is beyond any the registry assigns")));
    }
    let record = match (parsed.clone(), value) {
        (ModelKey::Version { name, version }, Some(bytes)) => {
            let record = VersionRecord::decode(bytes).map_err(|e| fail(e.to_string()))?;
            if let Some(manifest) = &record.manifest
                && (manifest.name != name || manifest.version != version)
            {
                return Err(fail(format!(
                    "its manifest names {:?} version {}, not the key's",
                    manifest.name, manifest.version
                )));
            }
            LogRecord::Version {
                name,
                version,
                record: Box::new(record),
            }
        }
        (ModelKey::Version { name, version }, None) => LogRecord::VersionTombstone { name, version },
        (ModelKey::Chunk { name, version, index }, Some(_)) => LogRecord::Chunk { name, version, index },
        (ModelKey::Chunk { name, version, index }, None) => LogRecord::ChunkTombstone { name, version, index },
        (ModelKey::Alias { name, alias }, Some(bytes)) => {
            let record = AliasRecord::decode(bytes).map_err(|e| fail(e.to_string()))?;
            if (!record.name.is_empty() && record.name != name) || (!record.alias.is_empty() && record.alias != alias) {
                return Err(fail(format!(
                    "it moves {:?}@{:?}, not the key's alias",
                    record.name, record.alias
                )));
            }
            if record.version > MAX_VERSION {
                return Err(fail(format!(
                    "it points at version {}, beyond any the registry assigns",
                    record.version
                )));
            }
            if record.sequence > MAX_SEQUENCE {
                return Err(fail(format!(
                    "its sequence {} is beyond any the registry assigns",
                    record.sequence
                )));
            }
            LogRecord::Alias {
                name,
                alias,
                record: Box::new(record),
            }
        }
        (ModelKey::Alias { name, alias }, None) => LogRecord::AliasTombstone { name, alias },
    };
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(put: &Put) -> LogRecord {
        decode(7, Some(put.key.as_bytes()), put.value.as_deref())
            .unwrap()
            .expect("a key in Kappa's scheme")
    }

    #[test]
    fn every_record_the_registry_writes_reads_back_as_what_it_meant() {
        let version = VersionRecord {
            chunk_count: 2,
            idempotency_key: "k".into(),
            ..VersionRecord::default()
        };
        assert_eq!(
            read(&Put::version("fleet", 3, &version)),
            LogRecord::Version {
                name: "fleet".into(),
                version: 3,
                record: Box::new(version)
            }
        );
        let LogRecord::Version { record, .. } = read(&Put::deleted_version("fleet", 3, Vec::new(), String::new()))
        else {
            panic!("a deleted version is a version record");
        };
        assert!(record.deleted);
        assert_eq!(
            read(&Put::chunk("fleet", 3, 1, b"weights")),
            LogRecord::Chunk {
                name: "fleet".into(),
                version: 3,
                index: 1
            }
        );
        assert_eq!(
            read(&Put::chunk_tombstone("fleet", 3, 1)),
            LogRecord::ChunkTombstone {
                name: "fleet".into(),
                version: 3,
                index: 1
            }
        );
        let alias = AliasRecord {
            name: "fleet".into(),
            alias: "production".into(),
            version: 3,
            ..AliasRecord::default()
        };
        assert_eq!(
            read(&Put::alias(&alias)),
            LogRecord::Alias {
                name: "fleet".into(),
                alias: "production".into(),
                record: Box::new(alias.clone()),
            }
        );
        assert_eq!(
            read(&Put::alias_tombstone("fleet", "production")),
            LogRecord::AliasTombstone {
                name: "fleet".into(),
                alias: "production".into()
            }
        );
    }

    #[test]
    fn a_record_that_contradicts_its_key_changes_nothing() {
        let manifest = |name: &str, version: u64| kappa_api::model::ModelManifest {
            name: name.into(),
            version,
            ..Default::default()
        };
        let version = |m| VersionRecord {
            manifest: Some(m),
            ..VersionRecord::default()
        };
        // A signed old version replayed under a newer key, and another model's under this name.
        for forged in [
            Put::version("fleet", 3, &version(manifest("fleet", 2))),
            Put::version("fleet", 3, &version(manifest("other", 3))),
        ] {
            let err = decode(9, Some(forged.key.as_bytes()), forged.value.as_deref()).unwrap_err();
            assert!(err.reason.contains("not the key's"), "{err}");
        }
        // Version numbers no registry assigns, which would make the next one wrap.
        let huge = Put::deleted_version("fleet", u64::MAX, Vec::new(), String::new());
        assert!(decode(9, Some(huge.key.as_bytes()), huge.value.as_deref()).is_err());
        let alias = AliasRecord {
            name: "fleet".into(),
            alias: "production".into(),
            version: u64::MAX,
            ..AliasRecord::default()
        };
        let forged = Put::alias(&alias);
        assert!(decode(9, Some(forged.key.as_bytes()), forged.value.as_deref()).is_err());
        let elsewhere = Put {
            key: "alias/fleet/production".into(),
            value: Some(
                AliasRecord {
                    name: "fleet".into(),
                    alias: "staging".into(),
                    version: 1,
                    ..AliasRecord::default()
                }
                .encode_to_vec(),
            ),
        };
        assert!(decode(9, Some(elsewhere.key.as_bytes()), elsewhere.value.as_deref()).is_err());
        // What the registry writes still reads.
        let honest = Put::version("fleet", 3, &version(manifest("fleet", 3)));
        assert!(decode(9, Some(honest.key.as_bytes()), honest.value.as_deref()).is_ok());
    }
}
