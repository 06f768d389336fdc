//! Builders for example models: an untrained autoencoder over the car-fleet sensor fields, with
//! PyTorch-style random initialisation. They give the demo, the CLI and the tests real,
//! valid safetensors files without a training run.

use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, tensor::TensorView};

use crate::{Activation, Feature, Layer, ModelManifest, OutputKind, bias_tensor_name, weight_tensor_name};

/// The 18 sensor fields of the connected-car telemetry, in the order models expect them.
pub const SENSOR_FIELDS: [&str; 18] = [
    "coolant_temp",
    "intake_air_temp",
    "intake_air_flow_speed",
    "battery_percentage",
    "battery_voltage",
    "current_draw",
    "speed",
    "engine_vibration_amplitude",
    "throttle_pos",
    "tire_pressure_1_1",
    "tire_pressure_1_2",
    "tire_pressure_2_1",
    "tire_pressure_2_2",
    "accelerometer_1_1_value",
    "accelerometer_1_2_value",
    "accelerometer_2_1_value",
    "accelerometer_2_2_value",
    "control_unit_firmware",
];

/// An autoencoder over [`SENSOR_FIELDS`] with one hidden layer of width `hidden`.
pub fn sensor_autoencoder_manifest(name: &str, hidden: u32) -> ModelManifest {
    autoencoder_manifest(name, &[hidden])
}

/// An autoencoder over [`SENSOR_FIELDS`]: relu hidden layers of the given widths, then a linear
/// layer back to the 18 features.
pub fn autoencoder_manifest(name: &str, hidden: &[u32]) -> ModelManifest {
    autoencoder_over(name, &SENSOR_FIELDS, hidden)
}

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
