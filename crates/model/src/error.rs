use thiserror::Error;

/// Why a model was refused. Every message says what is wrong and what was expected, because
/// it reaches the publisher verbatim as a gRPC status.
#[derive(Debug, Error, PartialEq)]
pub enum ModelError {
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("invalid weights: {0}")]
    InvalidWeights(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("weights digest mismatch: the manifest declares sha256 {declared}, the bytes hash to {actual}")]
    DigestMismatch { declared: String, actual: String },
}
