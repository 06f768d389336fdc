use kappa_model::ModelError;
use thiserror::Error;
use tonic::Status;

/// Every way a registry request can fail. The `From<RegistryError> for Status` below is
/// exhaustive on purpose: a new variant must decide its gRPC code.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    BadRequest(String),
    #[error("model {0:?} does not exist")]
    UnknownModel(String),
    #[error("model {name:?} has no version {version}")]
    UnknownVersion { name: String, version: u64 },
    #[error("version {version} of model {name:?} was deleted")]
    DeletedVersion { name: String, version: u64 },
    #[error("model {name:?} has no alias {alias:?}")]
    UnknownAlias { name: String, alias: String },
    #[error(
        "version {version} of model {name:?} is still the target of aliases {aliases:?}; move or delete them first, or delete with force"
    )]
    VersionInUse {
        name: String,
        version: u64,
        aliases: Vec<String>,
    },
    #[error(
        "alias {alias:?} of model {name:?} points at no version yet, so nothing could score the events before the effective time; set the alias without effective_from_ms first"
    )]
    NothingBeforeCutover { name: String, alias: String },
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "the publish asks for version {requested} of model {name:?}, but the next version is {next}: sign the manifest for version {next} and publish again (Kappa's clients do this themselves)"
    )]
    VersionTaken { name: String, requested: u64, next: u64 },
    #[error(
        "idempotency key {key:?} of model {name:?} belongs to version {version}, published {why}; a retry repeats the same publish, anything else needs a new key"
    )]
    KeyReused {
        name: String,
        key: String,
        version: u64,
        why: &'static str,
    },
    #[error("{what} in flight already hold {held} of this registry's {limit} bytes (--{flag}); retry shortly")]
    Busy {
        what: &'static str,
        held: u64,
        limit: u64,
        flag: &'static str,
    },
    #[error("{0}")]
    TooManyStreams(String),
    #[error("the publish stream sent nothing for {0:?} (--publish-idle-seconds); send the weights without pausing")]
    Idle(std::time::Duration),
    #[error("the model is {size} bytes, over this registry's limit of {limit} bytes (--max-model-bytes)")]
    TooLarge { size: u64, limit: u64 },
    #[error("the registry is still replaying the models topic; retry in a moment")]
    NotReady,
    #[error(
        "this registry was fenced by a newer registry using the same transactional id and no longer accepts writes; send writes to the new instance"
    )]
    Fenced,
    #[error("Kafka is unavailable: {0}; the write was not stored, retry")]
    KafkaUnavailable(String),
    #[error("the models topic is missing data it should hold: {0}")]
    DataLoss(String),
    #[error("reading the models topic from Kafka failed: {0}; retry")]
    KafkaRead(String),
    #[error("internal error: {0}; this is a bug, please report it")]
    Internal(String),
}

impl From<RegistryError> for Status {
    fn from(err: RegistryError) -> Self {
        let message = err.to_string();
        match err {
            RegistryError::Model(_) | RegistryError::BadRequest(_) => Status::invalid_argument(message),
            RegistryError::UnknownModel(_)
            | RegistryError::UnknownVersion { .. }
            | RegistryError::UnknownAlias { .. } => Status::not_found(message),
            RegistryError::DeletedVersion { .. }
            | RegistryError::VersionInUse { .. }
            | RegistryError::NothingBeforeCutover { .. }
            | RegistryError::Fenced => Status::failed_precondition(message),
            RegistryError::TooLarge { .. } => Status::resource_exhausted(message),
            RegistryError::Forbidden(_) => Status::permission_denied(message),
            RegistryError::VersionTaken { next, .. } => {
                let mut status = Status::aborted(message);
                status
                    .metadata_mut()
                    .insert(kappa_api::registry::NEXT_VERSION_METADATA, next.into());
                status
            }
            RegistryError::KeyReused { .. } => Status::already_exists(message),
            RegistryError::Busy { .. } | RegistryError::TooManyStreams(_) => Status::resource_exhausted(message),
            RegistryError::Idle(_) => Status::deadline_exceeded(message),
            RegistryError::NotReady | RegistryError::KafkaUnavailable(_) | RegistryError::KafkaRead(_) => {
                Status::unavailable(message)
            }
            RegistryError::DataLoss(_) => Status::data_loss(message),
            RegistryError::Internal(_) => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn every_refusal_has_the_code_a_client_can_act_on() {
        let (name, version) = ("m".to_owned(), 2);
        let cases = [
            (RegistryError::BadRequest("x".into()), Code::InvalidArgument),
            (
                RegistryError::Model(ModelError::InvalidManifest("bad".into())),
                Code::InvalidArgument,
            ),
            (RegistryError::UnknownModel(name.clone()), Code::NotFound),
            (
                RegistryError::UnknownVersion {
                    name: name.clone(),
                    version,
                },
                Code::NotFound,
            ),
            (
                RegistryError::UnknownAlias {
                    name: name.clone(),
                    alias: "p".into(),
                },
                Code::NotFound,
            ),
            (
                RegistryError::DeletedVersion {
                    name: name.clone(),
                    version,
                },
                Code::FailedPrecondition,
            ),
            (
                RegistryError::VersionInUse {
                    name,
                    version,
                    aliases: vec!["p".into()],
                },
                Code::FailedPrecondition,
            ),
            (RegistryError::Fenced, Code::FailedPrecondition),
            (RegistryError::TooLarge { size: 2, limit: 1 }, Code::ResourceExhausted),
            (RegistryError::Forbidden("no".into()), Code::PermissionDenied),
            (
                RegistryError::VersionTaken {
                    name: "m".into(),
                    requested: 1,
                    next: 2,
                },
                Code::Aborted,
            ),
            (
                RegistryError::KeyReused {
                    name: "m".into(),
                    key: "k".into(),
                    version: 1,
                    why: "by another principal",
                },
                Code::AlreadyExists,
            ),
            (
                RegistryError::Busy {
                    what: "publishes",
                    held: 2,
                    limit: 3,
                    flag: "max-publish-buffer-bytes",
                },
                Code::ResourceExhausted,
            ),
            (RegistryError::TooManyStreams("x".into()), Code::ResourceExhausted),
            (
                RegistryError::Idle(std::time::Duration::from_secs(1)),
                Code::DeadlineExceeded,
            ),
            (RegistryError::NotReady, Code::Unavailable),
            (RegistryError::KafkaUnavailable("down".into()), Code::Unavailable),
            (RegistryError::KafkaRead("down".into()), Code::Unavailable),
            (RegistryError::DataLoss("gone".into()), Code::DataLoss),
            (RegistryError::Internal("bug".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
    }
}
