//! Models-topic records, both ways: [`Put`] is every record the registry writes, [`decode`] the
//! one function the registry, its watch streams and the predictors read the log through, so
//! writers and readers agree on what a record means.

use crate::ModelKey;
use kappa_api::model::{AliasRecord, Cutover, VersionRecord};
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
    pub fn deleted_version(name: &str, version: u64) -> Self {
        let marker = VersionRecord {
            deleted: true,
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
    Alias {
        name: String,
        alias: String,
        version: u64,
        /// Set when the move applies from an event time on.
        cutover: Option<Cutover>,
    },
    AliasTombstone {
        name: String,
        alias: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("record at offset {offset} with key {key:?} cannot be decoded: {reason}")]
pub struct UndecodableRecord {
    pub offset: i64,
    pub key: String,
    pub reason: String,
}

/// The highest version number a record may name: far beyond any count of publishes, and low
/// enough that the next number never wraps. A record past it is forged.
pub const MAX_VERSION: u64 = 1 << 53;

/// Decodes a record. `Ok(None)` for keys outside Kappa's scheme, which readers skip. A record
/// is undecodable, and changes nothing, when what it says contradicts its key: a version number
/// past [`MAX_VERSION`], a manifest naming another model or version than the key, an alias
/// record for another alias, or an alias moved past [`MAX_VERSION`].
pub fn decode(offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<LogRecord>, UndecodableRecord> {
    let Some(parsed) = key.and_then(ModelKey::parse) else {
        return Ok(None);
    };
    let fail = |reason: String| UndecodableRecord {
        offset,
        key: parsed.to_string(),
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
            LogRecord::Alias {
                name,
                alias,
                version: record.version,
                cutover: record.cutover,
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
        let LogRecord::Version { record, .. } = read(&Put::deleted_version("fleet", 3)) else {
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
                version: 3,
                cutover: None
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
        let huge = Put::deleted_version("fleet", u64::MAX);
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
