//! Builders for example models: an untrained autoencoder over any feature paths, with
//! PyTorch-style random initialisation. They give the demo, the CLI and the tests real,
//! valid safetensors files without a training run. Which fields a simulated fleet has is the
//! simulator's business (`kappa-fleet`), not the model crate's.

use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, tensor::TensorView};

use crate::{Activation, Feature, ModelManifest, OutputKind, bias_tensor_name, weight_tensor_name};

/// An untrained autoencoder over any feature paths: relu hidden layers of the given widths,
/// then a linear layer back to the features.
pub fn autoencoder_over(name: &str, paths: &[&str], hidden: &[u32]) -> ModelManifest {
    let layers = crate::autoencoder_layers(paths.len() as u32, hidden);
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

/// An autoencoder over `paths` that reconstructs every row as zeros, so a row's score is the
/// mean of its squared values: explanations of its scores are known by hand.
pub fn zero_autoencoder(paths: &[&str]) -> crate::Model {
    let manifest = autoencoder_over("zeros", paths, &[2]);
    let zeros: Vec<_> = random_tensors(&manifest, 1)
        .into_iter()
        .map(|(name, shape, values)| (name, shape, vec![0.0; values.len()]))
        .collect();
    crate::Model::Mlp(
        crate::Mlp::load(&manifest, &serialize_tensors(&zeros), crate::Backend::Native).expect("zero weights load"),
    )
}

/// The example autoencoder as an ONNX graph: `x` [N, features] through `Gemm` and `Relu` layers
/// to `reconstruction` [N, features], scored by its reconstruction error. With the same `seed`
/// it holds [`random_tensors`]'s weights, so it computes what the MLP of
/// [`autoencoder_over`] with [`random_weights`] computes; benches use it for graphs of any size.
pub fn onnx_autoencoder(name: &str, paths: &[&str], hidden: &[u32], seed: u64) -> (ModelManifest, Vec<u8>) {
    use prost::Message as _;
    use tract_onnx::pb::{
        self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
        attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension::Value as Dim,
    };

    let mlp = autoencoder_over(name, paths, hidden);
    let io = |name: &str| ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: [Dim::DimParam("batch".into()), Dim::DimValue(paths.len() as i64)]
                        .into_iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(d),
                        })
                        .collect(),
                }),
            })),
        }),
        ..ValueInfoProto::default()
    };
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    let mut current = "x".to_owned();
    let layers = mlp.layers.len();
    for (i, (tensors, layer)) in random_tensors(&mlp, seed).chunks(2).zip(&mlp.layers).enumerate() {
        for (tensor_name, shape, values) in tensors {
            initializers.push(TensorProto {
                name: tensor_name.clone(),
                dims: shape.iter().map(|d| *d as i64).collect(),
                data_type: DataType::Float as i32,
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..TensorProto::default()
            });
        }
        let out = if i + 1 == layers {
            "reconstruction".to_owned()
        } else {
            format!("h{i}")
        };
        let linear = if layer.activation == Activation::Relu as i32 {
            format!("{out}.linear")
        } else {
            out.clone()
        };
        nodes.push(NodeProto {
            input: vec![current.clone(), weight_tensor_name(i), bias_tensor_name(i)],
            output: vec![linear.clone()],
            op_type: "Gemm".into(),
            attribute: vec![AttributeProto {
                name: "transB".into(),
                r#type: AttributeType::Int as i32,
                i: 1,
                ..AttributeProto::default()
            }],
            ..NodeProto::default()
        });
        if linear != out {
            nodes.push(NodeProto {
                input: vec![linear],
                output: vec![out.clone()],
                op_type: "Relu".into(),
                ..NodeProto::default()
            });
        }
        current = out;
    }
    let graph = ModelProto {
        ir_version: 8,
        producer_name: "kappa-model example".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: name.into(),
            initializer: initializers,
            input: vec![io("x")],
            output: vec![io("reconstruction")],
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
    .encode_to_vec();
    let manifest = ModelManifest {
        layers: Vec::new(),
        output: OutputKind::Unspecified as i32,
        format: crate::ModelFormat::Onnx as i32,
        onnx: Some(crate::OnnxSpec {
            features_input: "x".into(),
            scoring: Some(crate::OnnxScoring {
                score_output: "reconstruction".into(),
                score_kind: crate::OnnxScoreKind::ReconstructionError as i32,
                ..crate::OnnxScoring::default()
            }),
            graph: None,
        }),
        description: "untrained example autoencoder, as an ONNX graph".into(),
        ..mlp
    };
    (manifest, graph)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Mlp, admission};

    #[test]
    fn the_onnx_autoencoder_computes_what_the_mlp_with_the_same_weights_computes() {
        let paths = ["a", "b", "c", "d"];
        let mlp_manifest = autoencoder_over("same", &paths, &[3]);
        let mlp = Mlp::load(&mlp_manifest, &random_weights(&mlp_manifest, 5), Backend::Native).unwrap();
        let (manifest, graph) = onnx_autoencoder("same", &paths, &[3], 5);
        let onnx = admission::load(&manifest, &graph).unwrap().model;
        let rows = [0.5, -1.0, 2.0, 0.0, 3.0, 1.0, -2.0, 0.25];
        let (a, b) = (mlp.score(&rows).unwrap(), onnx.score(&rows).unwrap());
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "MLP {a} against ONNX {b}");
        }
    }
}
