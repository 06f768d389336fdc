//! The registry's requests as domain values, checked where they enter. Each conversion
//! destructures its proto message without `..`, so a field added to the proto breaks the build
//! here instead of being ignored silently; every refusal is a typed [`RegistryError`].

use kappa_api::registry as pb;
use kappa_model::{validate_alias, validate_name};

use crate::RegistryError;

/// A model name the registry could hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelName(String);

impl ModelName {
    pub fn parse(name: String) -> Result<Self, RegistryError> {
        validate_name(&name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An alias name in the registry's alphabet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasName(String);

impl AliasName {
    pub fn parse(alias: String) -> Result<Self, RegistryError> {
        validate_alias(&alias)?;
        Ok(Self(alias))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which version a read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    Latest,
    Version(u64),
    Alias(String),
}

/// GetModel.
#[derive(Debug)]
pub struct ModelQuery {
    pub name: ModelName,
    pub wanted: Wanted,
    pub manifest_only: bool,
}

impl TryFrom<pb::GetModelRequest> for ModelQuery {
    type Error = RegistryError;

    fn try_from(request: pb::GetModelRequest) -> Result<Self, RegistryError> {
        use pb::get_model_request::Selector;
        let pb::GetModelRequest {
            name,
            selector,
            manifest_only,
        } = request;
        // An alias that could never exist is simply not found, as it always was.
        let wanted = match selector {
            None => Wanted::Latest,
            Some(Selector::Version(v)) => Wanted::Version(v),
            Some(Selector::Alias(alias)) => Wanted::Alias(alias),
        };
        Ok(Self {
            name: ModelName::parse(name)?,
            wanted,
            manifest_only,
        })
    }
}

impl TryFrom<pb::ListVersionsRequest> for ModelName {
    type Error = RegistryError;

    fn try_from(request: pb::ListVersionsRequest) -> Result<Self, RegistryError> {
        let pb::ListVersionsRequest { name } = request;
        ModelName::parse(name)
    }
}

/// SetAlias: point `alias` of `name` at `version`.
#[derive(Debug)]
pub struct AliasMove {
    pub name: ModelName,
    pub alias: AliasName,
    pub version: u64,
    /// The event time the move applies from, when it is a cutover.
    pub effective_from_ms: Option<i64>,
}

impl TryFrom<pb::SetAliasRequest> for AliasMove {
    type Error = RegistryError;

    fn try_from(request: pb::SetAliasRequest) -> Result<Self, RegistryError> {
        let pb::SetAliasRequest {
            name,
            alias,
            version,
            effective_from_ms,
        } = request;
        if effective_from_ms < 0 {
            return Err(RegistryError::BadRequest(format!(
                "effective_from_ms is {effective_from_ms}: give an event time in milliseconds since the Unix epoch, or 0 for none"
            )));
        }
        Ok(Self {
            name: ModelName::parse(name)?,
            alias: AliasName::parse(alias)?,
            version,
            effective_from_ms: (effective_from_ms > 0).then_some(effective_from_ms),
        })
    }
}

/// DeleteAlias.
#[derive(Debug)]
pub struct AliasRemoval {
    pub name: ModelName,
    pub alias: AliasName,
}

impl TryFrom<pb::DeleteAliasRequest> for AliasRemoval {
    type Error = RegistryError;

    fn try_from(request: pb::DeleteAliasRequest) -> Result<Self, RegistryError> {
        let pb::DeleteAliasRequest { name, alias } = request;
        Ok(Self {
            name: ModelName::parse(name)?,
            alias: AliasName::parse(alias)?,
        })
    }
}

/// DeleteVersion; `force` also removes the aliases that point at it.
#[derive(Debug)]
pub struct VersionRemoval {
    pub name: ModelName,
    pub version: u64,
    pub force: bool,
}

impl TryFrom<pb::DeleteVersionRequest> for VersionRemoval {
    type Error = RegistryError;

    fn try_from(request: pb::DeleteVersionRequest) -> Result<Self, RegistryError> {
        let pb::DeleteVersionRequest { name, version, force } = request;
        Ok(Self {
            name: ModelName::parse(name)?,
            version,
            force,
        })
    }
}

/// WatchModels: events from a models-topic offset, for one model or all.
#[derive(Debug)]
pub struct WatchQuery {
    pub from_position: i64,
    pub name: Option<ModelName>,
}

impl TryFrom<pb::WatchModelsRequest> for WatchQuery {
    type Error = RegistryError;

    fn try_from(request: pb::WatchModelsRequest) -> Result<Self, RegistryError> {
        let pb::WatchModelsRequest { from_position, name } = request;
        if from_position < 0 {
            return Err(RegistryError::BadRequest(
                "from_position must be 0 or a models-topic offset".into(),
            ));
        }
        Ok(Self {
            from_position,
            name: if name.is_empty() {
                None
            } else {
                Some(ModelName::parse(name)?)
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_where_they_enter() {
        let bad_name = AliasMove::try_from(pb::SetAliasRequest {
            name: "Bad/Name".into(),
            alias: "production".into(),
            version: 1,
            effective_from_ms: 0,
        });
        assert!(matches!(bad_name, Err(RegistryError::Model(_))), "{bad_name:?}");
        let bad_alias = AliasRemoval::try_from(pb::DeleteAliasRequest {
            name: "fleet".into(),
            alias: "no spaces".into(),
        });
        assert!(matches!(bad_alias, Err(RegistryError::Model(_))), "{bad_alias:?}");
        let watch = WatchQuery::try_from(pb::WatchModelsRequest {
            from_position: -1,
            name: String::new(),
        });
        assert!(matches!(watch, Err(RegistryError::BadRequest(_))), "{watch:?}");
        let all = WatchQuery::try_from(pb::WatchModelsRequest {
            from_position: 0,
            name: String::new(),
        })
        .unwrap();
        assert!(all.name.is_none());
        let query = ModelQuery::try_from(pb::GetModelRequest {
            name: "fleet".into(),
            selector: Some(pb::get_model_request::Selector::Alias("production".into())),
            manifest_only: true,
        })
        .unwrap();
        assert_eq!(query.wanted, Wanted::Alias("production".into()));
        assert!(query.manifest_only);
    }
}

/// The longest idempotency key a publish may carry.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// A signature as the publisher sent it: empty, or an Ed25519 signature with its key's id.
#[derive(Debug, Clone)]
pub struct Signed {
    pub signature: Vec<u8>,
    pub key_id: String,
}

/// The first message of a Publish stream: the manifest of the version to create.
#[derive(Debug)]
pub struct PublishHeader {
    pub manifest: kappa_api::model::ModelManifest,
    /// Empty, or the key a retry of the same publish repeats.
    pub idempotency_key: String,
    pub signed: Signed,
}

impl TryFrom<pb::PublishRequest> for PublishHeader {
    type Error = RegistryError;

    fn try_from(first: pb::PublishRequest) -> Result<Self, RegistryError> {
        let pb::PublishRequest { part } = first;
        let Some(pb::publish_request::Part::Header(header)) = part else {
            return Err(bad("the first Publish message must be the header with the manifest"));
        };
        let pb::PublishHeader {
            manifest,
            idempotency_key,
            signature,
            signing_key_id,
        } = header;
        let manifest = manifest.ok_or_else(|| bad("the Publish header carries no manifest"))?;
        if manifest.version > kappa_modellog::records::MAX_VERSION {
            return Err(bad("manifest.version is beyond any version the registry assigns"));
        }
        // The signature covers the version: the publisher names the one it signed for.
        if !signature.is_empty() && manifest.version == 0 {
            return Err(bad(
                "a signed manifest names the version it is signed for: set manifest.version to ListVersions' next_version, sign, and publish",
            ));
        }
        kappa_model::validate_manifest(&manifest)?;
        // An Ed25519 signature is 64 bytes; a key id 16 hex digits. Anything else is junk to keep out of the log.
        if !(signature.is_empty() || signature.len() == 64) || signing_key_id.len() > 64 {
            return Err(bad(
                "signature must be 64 bytes (Ed25519) and signing_key_id at most 64 characters",
            ));
        }
        if idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(bad(format!(
                "the idempotency key is longer than {MAX_IDEMPOTENCY_KEY_LEN} bytes"
            )));
        }
        Ok(Self {
            manifest,
            idempotency_key,
            signed: Signed {
                signature,
                key_id: signing_key_id,
            },
        })
    }
}

fn bad(message: impl Into<String>) -> RegistryError {
    RegistryError::BadRequest(message.into())
}
