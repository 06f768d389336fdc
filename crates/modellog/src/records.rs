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

/// Decodes a record. `Ok(None)` for keys outside Kappa's scheme, which readers skip.
pub fn decode(offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<LogRecord>, UndecodableRecord> {
    let Some(parsed) = key.and_then(ModelKey::parse) else {
        return Ok(None);
    };
    let fail = |reason: String| UndecodableRecord {
        offset,
        key: parsed.to_string(),
        reason,
    };
    let record = match (parsed.clone(), value) {
        (ModelKey::Version { name, version }, Some(bytes)) => {
            let record = VersionRecord::decode(bytes).map_err(|e| fail(e.to_string()))?;
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
}
