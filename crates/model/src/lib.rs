//! Kappa's model format: a sequential MLP declared by a [`ModelManifest`] with its weights in a
//! safetensors file. This crate decides what a valid model is (the registry refuses anything
//! else before it writes a byte to Kafka) and, for the predictor, how a model computes its score.

pub mod drift;
mod error;
pub mod evaluate;
pub mod example;
mod manifest;
mod mlp;
pub mod schema;
pub mod signing;
pub mod train;
mod weights;

pub use error::ModelError;
pub use kappa_api::model::{Activation, EventSchema, EventTime, Feature, Layer, ModelManifest, OutputKind, TimeFormat};
pub use manifest::{validate_alias, validate_manifest, validate_name};
pub use mlp::{Backend, Mlp};
pub use weights::{ValidatedWeights, WeightsCheck, check_tensors, sha256_hex, validate_weights};

/// Tensor name of layer `index`'s weight matrix, `[out, in]` as in PyTorch's `nn.Linear`.
pub fn weight_tensor_name(index: usize) -> String {
    format!("layers.{index}.weight")
}

/// Tensor name of layer `index`'s bias vector, `[out]`.
pub fn bias_tensor_name(index: usize) -> String {
    format!("layers.{index}.bias")
}
