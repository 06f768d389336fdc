//! The registry's view of the models log: versions, aliases, idempotency keys and where each
//! weight chunk sits, read from the one fold ([`ModelLog`]) with the registry's errors. Weights
//! stay in Kafka and are streamed from there on `GetModel`, so memory does not grow with model
//! sizes.

use kappa_api::registry as pb;
use kappa_modellog::{Lookup, ModelLog, ModelState, StoredVersion};

use crate::RegistryError;

/// Registry reads over the fold; implemented for [`ModelLog`] so a read guard answers them.
pub trait Catalog {
    /// The version the next publish of `name` gets.
    fn next_version(&self, name: &str) -> u64;
    fn version_for_idempotency_key(&self, name: &str, key: &str) -> Option<u64>;
    /// Resolves a version number, refusing unknown and deleted ones with distinct errors.
    fn version(&self, name: &str, version: u64) -> Result<&StoredVersion, RegistryError>;
    /// The highest live version of `name`.
    fn latest_version(&self, name: &str) -> Result<u64, RegistryError>;
    fn alias(&self, name: &str, alias: &str) -> Result<u64, RegistryError>;
    fn aliases_of(&self, name: &str, version: u64) -> Vec<String>;
    /// Log offsets of a version's chunks, in index order; `DATA_LOSS` when any is missing.
    fn chunk_locations(&self, name: &str, version: u64) -> Result<Vec<i64>, RegistryError>;
    fn chunk_indices(&self, name: &str, version: u64) -> Vec<u32>;
    fn model_version(&self, name: &str, version: u64) -> Result<pb::ModelVersion, RegistryError>;
    fn list_models(&self) -> Vec<pb::ModelSummary>;
    fn list_versions(&self, name: &str) -> Result<Vec<pb::ModelVersion>, RegistryError>;
    /// The highest sequence of any alias move of `name` so far (0 for none).
    fn highest_sequence(&self, name: &str) -> u64;
}

/// A model readers know: one with a live version or an alias.
fn known<'a>(log: &'a ModelLog, name: &str) -> Result<&'a ModelState, RegistryError> {
    log.model(name)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| RegistryError::UnknownModel(name.to_owned()))
}

impl Catalog for ModelLog {
    fn next_version(&self, name: &str) -> u64 {
        self.model(name).map_or(1, ModelState::next_version)
    }

    fn version_for_idempotency_key(&self, name: &str, key: &str) -> Option<u64> {
        self.model(name)?.version_for_idempotency_key(key)
    }

    fn version(&self, name: &str, version: u64) -> Result<&StoredVersion, RegistryError> {
        let model = self
            .model(name)
            .ok_or_else(|| RegistryError::UnknownModel(name.to_owned()))?;
        match model.lookup(version) {
            Lookup::Live(v) => Ok(v),
            Lookup::Deleted => Err(RegistryError::DeletedVersion {
                name: name.to_owned(),
                version,
            }),
            Lookup::Unknown if model.is_empty() => Err(RegistryError::UnknownModel(name.to_owned())),
            Lookup::Unknown => Err(RegistryError::UnknownVersion {
                name: name.to_owned(),
                version,
            }),
        }
    }

    fn latest_version(&self, name: &str) -> Result<u64, RegistryError> {
        known(self, name)?
            .latest()
            .ok_or_else(|| RegistryError::UnknownModel(name.to_owned()))
    }

    fn alias(&self, name: &str, alias: &str) -> Result<u64, RegistryError> {
        known(self, name)?
            .alias(alias)
            .ok_or_else(|| RegistryError::UnknownAlias {
                name: name.to_owned(),
                alias: alias.to_owned(),
            })
    }

    fn aliases_of(&self, name: &str, version: u64) -> Vec<String> {
        self.model(name).map_or_else(Vec::new, |m| m.aliases_of(version))
    }

    fn chunk_locations(&self, name: &str, version: u64) -> Result<Vec<i64>, RegistryError> {
        self.version(name, version)?;
        known(self, name)?.chunk_offsets(version).map_err(|e| {
            RegistryError::DataLoss(format!(
                "version {version} of {name:?} declares {} chunks but {} are in the log",
                e.declared, e.found
            ))
        })
    }

    fn chunk_indices(&self, name: &str, version: u64) -> Vec<u32> {
        self.model(name).map_or_else(Vec::new, |m| m.chunk_indices(version))
    }

    fn model_version(&self, name: &str, version: u64) -> Result<pb::ModelVersion, RegistryError> {
        let stored = self.version(name, version)?;
        Ok(to_model_version(stored, self.aliases_of(name, version)))
    }

    fn list_models(&self) -> Vec<pb::ModelSummary> {
        self.models()
            .filter(|(_, m)| !m.is_empty())
            .map(|(name, m)| pb::ModelSummary {
                name: name.to_owned(),
                latest_version: m.latest().unwrap_or(0),
                version_count: m.versions().count() as u32,
                aliases: m.aliases().clone().into_iter().collect(),
            })
            .collect()
    }

    fn highest_sequence(&self, name: &str) -> u64 {
        self.model(name).map_or(0, ModelState::highest_sequence)
    }

    fn list_versions(&self, name: &str) -> Result<Vec<pb::ModelVersion>, RegistryError> {
        let model = known(self, name)?;
        Ok(model
            .versions()
            .map(|(v, stored)| to_model_version(stored, model.aliases_of(v)))
            .collect())
    }
}

fn to_model_version(stored: &StoredVersion, aliases: Vec<String>) -> pb::ModelVersion {
    let manifest = stored.record.manifest.clone().unwrap_or_default();
    pb::ModelVersion {
        name: manifest.name.clone(),
        version: manifest.version,
        weights_sha256: manifest.weights_sha256.clone(),
        weights_size: manifest.weights_size,
        created_at_ms: manifest.created_at_ms,
        aliases,
        manifest: Some(manifest),
        position: stored.position,
        published_by: stored.record.published_by.clone(),
        signing_key_id: stored.record.signing_key_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kappa_api::model::{ModelManifest, VersionRecord};
    use kappa_modellog::records::LogRecord;

    use super::*;

    fn apply(log: &mut ModelLog, offset: i64, record: LogRecord) {
        log.apply_record(offset, record, None, BTreeMap::new).unwrap();
    }

    fn version(name: &str, v: u64, key: &str) -> LogRecord {
        LogRecord::Version {
            name: name.into(),
            version: v,
            record: Box::new(VersionRecord {
                manifest: Some(ModelManifest {
                    name: name.into(),
                    version: v,
                    ..Default::default()
                }),
                chunk_count: 1,
                idempotency_key: key.into(),
                ..Default::default()
            }),
        }
    }

    fn chunk(name: &str, version: u64) -> LogRecord {
        LogRecord::Chunk {
            name: name.into(),
            version,
            index: 0,
        }
    }

    #[test]
    fn deleted_versions_keep_their_number_and_refuse_reads() {
        let mut c = ModelLog::new();
        apply(&mut c, 0, chunk("m", 1));
        apply(&mut c, 1, version("m", 1, "k1"));
        apply(&mut c, 2, chunk("m", 2));
        apply(&mut c, 3, version("m", 2, "k2"));
        assert_eq!(c.next_version("m"), 3);
        assert_eq!(c.chunk_locations("m", 2).unwrap(), vec![2]);
        apply(
            &mut c,
            4,
            LogRecord::ChunkTombstone {
                name: "m".into(),
                version: 2,
                index: 0,
            },
        );
        apply(
            &mut c,
            5,
            LogRecord::Version {
                name: "m".into(),
                version: 2,
                record: Box::new(VersionRecord {
                    deleted: true,
                    ..Default::default()
                }),
            },
        );
        assert_eq!(c.next_version("m"), 3, "a deleted version's number is not reused");
        assert!(matches!(c.version("m", 2), Err(RegistryError::DeletedVersion { .. })));
        assert!(matches!(c.version("m", 9), Err(RegistryError::UnknownVersion { .. })));
        assert!(matches!(c.version("x", 1), Err(RegistryError::UnknownModel(_))));
        assert_eq!(c.version_for_idempotency_key("m", "k2"), None);
        assert_eq!(c.version_for_idempotency_key("m", "k1"), Some(1));
        assert_eq!(c.next_version("new"), 1);
    }

    #[test]
    fn aliases_follow_the_last_record_and_missing_chunks_are_data_loss() {
        let mut c = ModelLog::new();
        apply(&mut c, 0, version("m", 1, ""));
        apply(
            &mut c,
            1,
            LogRecord::Alias {
                name: "m".into(),
                alias: "production".into(),
                record: Box::new(kappa_api::model::AliasRecord {
                    version: 1,
                    ..Default::default()
                }),
            },
        );
        assert_eq!(c.alias("m", "production").unwrap(), 1);
        assert_eq!(c.aliases_of("m", 1), vec!["production".to_owned()]);
        assert!(matches!(c.chunk_locations("m", 1), Err(RegistryError::DataLoss(_))));
        apply(
            &mut c,
            2,
            LogRecord::AliasTombstone {
                name: "m".into(),
                alias: "production".into(),
            },
        );
        assert!(matches!(
            c.alias("m", "production"),
            Err(RegistryError::UnknownAlias { .. })
        ));
    }
}
