//! The registry's in-memory view of the models topic: versions, aliases, idempotency keys and
//! where each weight chunk sits in the log. Weights themselves stay in Kafka and are streamed
//! from there on `GetModel`, so memory does not grow with model sizes.

use std::collections::{BTreeMap, HashMap};

use kappa_api::{model::VersionRecord, registry as pb};

use kappa_kafka::records::LogRecord;

use crate::RegistryError;

#[derive(Debug, Default)]
pub struct Catalog {
    models: BTreeMap<String, ModelEntry>,
}

#[derive(Debug, Default)]
struct ModelEntry {
    versions: BTreeMap<u64, StoredVersion>,
    /// Highest version ever written, deleted ones included, so numbers are never reused.
    highest_version: u64,
    deleted: std::collections::BTreeSet<u64>,
    aliases: BTreeMap<String, u64>,
    idempotency: HashMap<String, u64>,
    /// Log offset of every chunk record, by version and chunk index.
    chunks: HashMap<u64, BTreeMap<u32, i64>>,
}

#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub record: VersionRecord,
    pub position: i64,
}

/// Where a version's weights are in the log.
#[derive(Debug, Clone)]
pub struct ChunkLocations {
    pub offsets: Vec<i64>,
}

impl Catalog {
    /// Applies one committed record at `offset`.
    pub fn apply(&mut self, offset: i64, record: LogRecord) {
        match record {
            LogRecord::Version { name, version, record } => {
                let entry = self.models.entry(name).or_default();
                entry.highest_version = entry.highest_version.max(version);
                if record.deleted {
                    entry.remove_version(version);
                    entry.deleted.insert(version);
                } else {
                    if !record.idempotency_key.is_empty() {
                        entry.idempotency.insert(record.idempotency_key.clone(), version);
                    }
                    entry.deleted.remove(&version);
                    entry.versions.insert(
                        version,
                        StoredVersion {
                            record: *record,
                            position: offset,
                        },
                    );
                }
            }
            LogRecord::VersionTombstone { name, version } => {
                if let Some(entry) = self.models.get_mut(&name) {
                    entry.remove_version(version);
                    entry.deleted.insert(version);
                }
            }
            LogRecord::Chunk { name, version, index } => {
                let entry = self.models.entry(name).or_default();
                entry.chunks.entry(version).or_default().insert(index, offset);
            }
            LogRecord::ChunkTombstone { name, version, index } => {
                if let Some(chunks) = self.models.get_mut(&name).and_then(|e| e.chunks.get_mut(&version)) {
                    chunks.remove(&index);
                }
            }
            LogRecord::Alias { name, alias, version } => {
                self.models.entry(name).or_default().aliases.insert(alias, version);
            }
            LogRecord::AliasTombstone { name, alias } => {
                if let Some(entry) = self.models.get_mut(&name) {
                    entry.aliases.remove(&alias);
                }
            }
        }
    }

    fn model(&self, name: &str) -> Result<&ModelEntry, RegistryError> {
        self.models
            .get(name)
            .filter(|e| !e.versions.is_empty() || !e.aliases.is_empty())
            .ok_or_else(|| RegistryError::UnknownModel(name.to_owned()))
    }

    /// The version the next publish of `name` gets.
    pub fn next_version(&self, name: &str) -> u64 {
        self.models.get(name).map_or(0, |e| e.highest_version) + 1
    }

    pub fn version_for_idempotency_key(&self, name: &str, key: &str) -> Option<u64> {
        self.models.get(name)?.idempotency.get(key).copied()
    }

    /// Resolves a version number, refusing unknown and deleted ones with distinct errors.
    pub fn version(&self, name: &str, version: u64) -> Result<&StoredVersion, RegistryError> {
        let entry = self
            .models
            .get(name)
            .ok_or_else(|| RegistryError::UnknownModel(name.to_owned()))?;
        if let Some(v) = entry.versions.get(&version) {
            return Ok(v);
        }
        if entry.deleted.contains(&version) {
            return Err(RegistryError::DeletedVersion {
                name: name.to_owned(),
                version,
            });
        }
        if entry.versions.is_empty() && entry.aliases.is_empty() {
            return Err(RegistryError::UnknownModel(name.to_owned()));
        }
        Err(RegistryError::UnknownVersion {
            name: name.to_owned(),
            version,
        })
    }

    /// The highest live version of `name`.
    pub fn latest_version(&self, name: &str) -> Result<u64, RegistryError> {
        self.model(name)?
            .versions
            .keys()
            .next_back()
            .copied()
            .ok_or_else(|| RegistryError::UnknownModel(name.to_owned()))
    }

    pub fn alias(&self, name: &str, alias: &str) -> Result<u64, RegistryError> {
        self.model(name)?
            .aliases
            .get(alias)
            .copied()
            .ok_or_else(|| RegistryError::UnknownAlias {
                name: name.to_owned(),
                alias: alias.to_owned(),
            })
    }

    pub fn aliases_of(&self, name: &str, version: u64) -> Vec<String> {
        self.models.get(name).map_or_else(Vec::new, |e| {
            e.aliases
                .iter()
                .filter(|(_, v)| **v == version)
                .map(|(a, _)| a.clone())
                .collect()
        })
    }

    /// Log offsets of a version's chunks, in index order; an error when any is missing.
    pub fn chunk_locations(&self, name: &str, version: u64) -> Result<ChunkLocations, RegistryError> {
        let stored = self.version(name, version)?;
        let count = stored.record.chunk_count;
        let chunks = self.models.get(name).and_then(|e| e.chunks.get(&version));
        let offsets: Vec<i64> = (0..count)
            .filter_map(|i| chunks.and_then(|c| c.get(&i)).copied())
            .collect();
        if offsets.len() != count as usize {
            return Err(RegistryError::DataLoss(format!(
                "version {version} of {name:?} declares {count} chunks but {} are in the log",
                offsets.len()
            )));
        }
        Ok(ChunkLocations { offsets })
    }

    pub fn chunk_indices(&self, name: &str, version: u64) -> Vec<u32> {
        self.models
            .get(name)
            .and_then(|e| e.chunks.get(&version))
            .map_or_else(Vec::new, |c| c.keys().copied().collect())
    }

    pub fn model_version(&self, name: &str, version: u64) -> Result<pb::ModelVersion, RegistryError> {
        let stored = self.version(name, version)?;
        Ok(to_model_version(stored, self.aliases_of(name, version)))
    }

    pub fn list_models(&self) -> Vec<pb::ModelSummary> {
        self.models
            .iter()
            .filter(|(_, e)| !e.versions.is_empty() || !e.aliases.is_empty())
            .map(|(name, e)| pb::ModelSummary {
                name: name.clone(),
                latest_version: e.versions.keys().next_back().copied().unwrap_or(0),
                version_count: e.versions.len() as u32,
                aliases: e.aliases.clone().into_iter().collect(),
            })
            .collect()
    }

    pub fn list_versions(&self, name: &str) -> Result<Vec<pb::ModelVersion>, RegistryError> {
        let entry = self.model(name)?;
        Ok(entry
            .versions
            .iter()
            .map(|(v, stored)| to_model_version(stored, self.aliases_of(name, *v)))
            .collect())
    }
}

impl ModelEntry {
    fn remove_version(&mut self, version: u64) {
        if self.versions.remove(&version).is_some() {
            self.idempotency.retain(|_, v| *v != version);
        }
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappa_api::model::ModelManifest;

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

    #[test]
    fn deleted_versions_keep_their_number_and_refuse_reads() {
        let mut c = Catalog::default();
        c.apply(
            0,
            LogRecord::Chunk {
                name: "m".into(),
                version: 1,
                index: 0,
            },
        );
        c.apply(1, version("m", 1, "k1"));
        c.apply(
            2,
            LogRecord::Chunk {
                name: "m".into(),
                version: 2,
                index: 0,
            },
        );
        c.apply(3, version("m", 2, "k2"));
        assert_eq!(c.next_version("m"), 3);
        assert_eq!(c.chunk_locations("m", 2).unwrap().offsets, vec![2]);

        let mut deleted = VersionRecord {
            deleted: true,
            ..Default::default()
        };
        deleted.manifest = None;
        c.apply(
            4,
            LogRecord::ChunkTombstone {
                name: "m".into(),
                version: 2,
                index: 0,
            },
        );
        c.apply(
            5,
            LogRecord::Version {
                name: "m".into(),
                version: 2,
                record: Box::new(deleted),
            },
        );
        assert_eq!(c.next_version("m"), 3, "a deleted version's number is not reused");
        assert!(matches!(c.version("m", 2), Err(RegistryError::DeletedVersion { .. })));
        assert!(matches!(c.version("m", 9), Err(RegistryError::UnknownVersion { .. })));
        assert!(matches!(c.version("x", 1), Err(RegistryError::UnknownModel(_))));
        assert_eq!(c.version_for_idempotency_key("m", "k2"), None);
        assert_eq!(c.version_for_idempotency_key("m", "k1"), Some(1));
    }

    #[test]
    fn aliases_follow_the_last_record() {
        let mut c = Catalog::default();
        c.apply(0, version("m", 1, ""));
        c.apply(
            1,
            LogRecord::Alias {
                name: "m".into(),
                alias: "production".into(),
                version: 1,
            },
        );
        assert_eq!(c.alias("m", "production").unwrap(), 1);
        assert_eq!(c.aliases_of("m", 1), vec!["production".to_owned()]);
        c.apply(
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
