//! Builders for example models: an untrained autoencoder over any feature paths, with
//! PyTorch-style random initialisation. They give the demo, the CLI and the tests real,
//! valid safetensors files without a training run. Which fields a simulated fleet has is the
//! simulator's business (`kappa-fleet`), not the model crate's.

use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, tensor::TensorView};

use crate::{Activation, Feature, Layer, ModelManifest, OutputKind, bias_tensor_name, weight_tensor_name};

/// An untrained autoencoder over any feature paths: relu hidden layers of the given widths,
/// then a linear layer back to the features.
pub fn autoencoder_over(name: &str, paths: &[&str], hidden: &[u32]) -> ModelManifest {
    let features = paths.len() as u32;
    let mut layers = Vec::with_capacity(hidden.len() + 1);
    let mut inputs = features;
    for &width in hidden {
        layers.push(Layer {
            in_features: inputs,
            out_features: width,
            activation: Activation::Relu as i32,
        });
        inputs = width;
    }
    layers.push(Layer {
        in_features: inputs,
        out_features: features,
        activation: Activation::Linear as i32,
    });
    ModelManifest {
        name: name.to_owned(),
        description: "untrained example autoencoder".to_owned(),
        features: paths
            .iter()
            .map(|&f| Feature {
                name: f.to_owned(),
                offset: 0.0,
                scale: 1.0,
                ..Feature::default()
            })
            .collect(),
        layers,
        output: OutputKind::ReconstructionError as i32,
        anomaly_threshold: 1.0,
        ..ModelManifest::default()
    }
}

/// Tensors for every layer as `(name, shape, values)`, initialised like `nn.Linear`:
/// uniform in ±1/sqrt(in_features).
pub fn random_tensors(manifest: &ModelManifest, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = Vec::with_capacity(manifest.layers.len() * 2);
    for (i, layer) in manifest.layers.iter().enumerate() {
        let (out, inp) = (layer.out_features as usize, layer.in_features as usize);
        let bound = 1.0 / (inp as f32).sqrt();
        let weight = (0..out * inp).map(|_| rng.random_range(-bound..bound)).collect();
        let bias = (0..out).map(|_| rng.random_range(-bound..bound)).collect();
        tensors.push((weight_tensor_name(i), vec![out, inp], weight));
        tensors.push((bias_tensor_name(i), vec![out], bias));
    }
    tensors
}

/// Encodes FP32 tensors as a safetensors file.
pub fn serialize_tensors(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors.iter().zip(&bytes).map(|((name, shape, _), data)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches data length");
        (name.clone(), view)
    });
    safetensors::serialize(views, None).expect("serializing in-memory FP32 tensors cannot fail")
}

/// A valid safetensors file for `manifest` with random weights.
pub fn random_weights(manifest: &ModelManifest, seed: u64) -> Vec<u8> {
    serialize_tensors(&random_tensors(manifest, seed))
}

/// For the crate's own tests: an autoencoder over `features` fields named `x0`, `x1`, ….
#[cfg(test)]
pub(crate) fn numbered_autoencoder(name: &str, features: usize, hidden: u32) -> ModelManifest {
    let paths: Vec<String> = (0..features).map(|i| format!("x{i}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    autoencoder_over(name, &paths, &[hidden])
}
