//! Decoding of models-topic records. The registry, its watch streams and the predictors all read the
//! log through this one function, so they agree on what a record means.

use crate::ModelKey;
use kappa_api::model::{AliasRecord, Cutover, VersionRecord};
use prost::Message;

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
