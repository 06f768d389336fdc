//! Record keys of the models topic. Compaction keeps the last record per key, so the key scheme
//! is the storage schema: one key per version, one per weight chunk, one per alias.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelKey {
    /// `model/<name>/<version>`: the version record (manifest, chunk count).
    Version { name: String, version: u64 },
    /// `model/<name>/<version>/chunk/<index>`: one slice of the safetensors bytes.
    Chunk { name: String, version: u64, index: u32 },
    /// `alias/<name>/<alias>`: which version an alias points at.
    Alias { name: String, alias: String },
}

impl ModelKey {
    /// Parses a key; `None` for keys written by something else, which readers skip.
    pub fn parse(key: &[u8]) -> Option<Self> {
        let key = std::str::from_utf8(key).ok()?;
        let parts: Vec<&str> = key.split('/').collect();
        match parts.as_slice() {
            ["model", name, version] => Some(Self::Version {
                name: (*name).to_owned(),
                version: version.parse().ok()?,
            }),
            ["model", name, version, "chunk", index] => Some(Self::Chunk {
                name: (*name).to_owned(),
                version: version.parse().ok()?,
                index: index.parse().ok()?,
            }),
            ["alias", name, alias] => Some(Self::Alias {
                name: (*name).to_owned(),
                alias: (*alias).to_owned(),
            }),
            _ => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Version { name, .. } | Self::Chunk { name, .. } | Self::Alias { name, .. } => name,
        }
    }
}

impl fmt::Display for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Version { name, version } => write!(f, "model/{name}/{version}"),
            Self::Chunk { name, version, index } => write!(f, "model/{name}/{version}/chunk/{index}"),
            Self::Alias { name, alias } => write!(f, "alias/{name}/{alias}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_skipped() {
        for key in [
            ModelKey::Version {
                name: "fleet".into(),
                version: 3,
            },
            ModelKey::Chunk {
                name: "fleet".into(),
                version: 3,
                index: 12,
            },
            ModelKey::Alias {
                name: "fleet".into(),
                alias: "production".into(),
            },
        ] {
            assert_eq!(ModelKey::parse(key.to_string().as_bytes()), Some(key));
        }
        assert_eq!(ModelKey::parse(b"model/fleet/x"), None);
        assert_eq!(ModelKey::parse(b"something-else"), None);
    }
}
