use thiserror::Error;

use crate::signing::SignatureError;

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
    #[error("invalid ONNX graph: {0}")]
    InvalidGraph(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("weights digest mismatch: the manifest declares sha256 {declared}, the bytes hash to {actual}")]
    DigestMismatch { declared: String, actual: String },
    #[error("the model is {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("the probe batch {0}")]
    Probe(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

impl ModelError {
    /// A short label for metrics (`reason="..."`): what kind of refusal this is.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidName { .. } | Self::InvalidManifest(_) => "invalid_manifest",
            Self::InvalidWeights(_) | Self::InvalidGraph(_) => "invalid_model",
            Self::InvalidInput(_) | Self::Inference(_) => "warmup_failed",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::TooLarge { .. } => "too_large",
            Self::Signature(_) => "signature",
            Self::Probe(_) => "non_finite_output",
        }
    }
}
