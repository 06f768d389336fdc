//! Kappa's models: its own sequential MLP (a [`ModelManifest`] with weights in a safetensors
//! file) or an ONNX graph users bring. This crate decides what a valid version is, in one place
//! ([`admission::admit`], which the registry runs before it writes a byte to Kafka and a
//! predictor before it swaps), and how a model computes its score.

pub mod admission;
pub mod drift;
mod error;
pub mod evaluate;
pub mod example;
mod manifest;
pub mod median_replacement;
mod mlp;
mod model;
pub mod onnx;
pub mod schema;
pub mod signing;
pub mod train;
mod weights;

pub use error::ModelError;
pub use evaluate::is_anomalous;
pub use kappa_api::model::{
    Activation, EventSchema, EventTime, Feature, Layer, ModelFormat, ModelManifest, OnnxGraphInfo,
    OnnxModel as OnnxSpec, OnnxScoreKind, OnnxScoring, OutputKind, TensorInfo, TimeFormat,
};
pub use manifest::{autoencoder_layers, validate_alias, validate_manifest, validate_name};
pub use mlp::{Backend, Mlp};
pub use model::{Model, format_of, parse_positive_labels};
pub use weights::{DigestStream, ValidatedWeights, WeightsCheck, check_tensors, sha256_hex, validate_weights};

/// Tensor name of layer `index`'s weight matrix, `[out, in]` as in PyTorch's `nn.Linear`.
pub fn weight_tensor_name(index: usize) -> String {
    format!("layers.{index}.weight")
}

/// Tensor name of layer `index`'s bias vector, `[out]`.
pub fn bias_tensor_name(index: usize) -> String {
    format!("layers.{index}.bias")
}
