//! Graphs built here, by hand, for what the fixture-based tests cannot make: trees with values
//! worked out on paper, and files no exporter writes (forged trees, external data, shapes larger
//! than their data, operators of unknown domains).

use kappa_api::model::{Feature, ModelFormat, ModelManifest, OnnxModel as OnnxSpec, OnnxScoring};
use prost::Message as _;
use tract_onnx::pb::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension::Value as Dim,
    type_proto::Value as TypeValue,
};

use super::{OnnxModel, engine::runnable, inspect};
use crate::ModelError;

fn value(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(TypeValue::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(d.map_or_else(|| Dim::DimParam("N".into()), Dim::DimValue)),
                        })
                        .collect(),
                }),
            })),
        }),
        ..ValueInfoProto::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..AttributeProto::default()
    }
}

fn floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Floats as i32,
        floats: v.to_vec(),
        ..AttributeProto::default()
    }
}

fn strings(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Strings as i32,
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..AttributeProto::default()
    }
}

/// A graph of one node from `x` [N, 2] to `y` [N, 1], importing the default and ML domains.
fn graph(node: NodeProto, initializers: Vec<TensorProto>) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            },
            OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 3,
            },
        ],
        graph: Some(GraphProto {
            node: vec![node],
            name: "hand-made".into(),
            initializer: initializers,
            input: vec![value("x", DataType::Float, &[None, Some(2)])],
            output: vec![value("y", DataType::Float, &[None, Some(1)])],
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
    .encode_to_vec()
}

/// One tree of three nodes: as [`good_tree`] makes it, node 0 splits on feature 0 at 0.5 (`<=`
/// goes to node 1), leaves 1 and 2 weigh 10 and 20, plus a base value of 1.
fn tree(modes: &[&str], true_ids: &[i64], false_ids: &[i64]) -> NodeProto {
    let leaves: Vec<i64> = (0..3).filter(|i| modes[*i as usize] == "LEAF").collect();
    let weights: Vec<f32> = leaves.iter().map(|i| 10.0 * *i as f32).collect();
    NodeProto {
        input: vec!["x".into()],
        output: vec!["y".into()],
        op_type: "TreeEnsembleRegressor".into(),
        domain: "ai.onnx.ml".into(),
        attribute: vec![
            ints("nodes_treeids", &[0, 0, 0]),
            ints("nodes_nodeids", &[0, 1, 2]),
            ints("nodes_featureids", &[0, 0, 0]),
            strings("nodes_modes", modes),
            floats("nodes_values", &[0.5, 0.0, 0.0]),
            ints("nodes_truenodeids", true_ids),
            ints("nodes_falsenodeids", false_ids),
            ints("target_treeids", &vec![0; leaves.len()]),
            ints("target_nodeids", &leaves),
            ints("target_ids", &vec![0; leaves.len()]),
            floats("target_weights", &weights),
            floats("base_values", &[1.0]),
            AttributeProto {
                name: "n_targets".into(),
                r#type: AttributeType::Int as i32,
                i: 1,
                ..AttributeProto::default()
            },
        ],
        ..NodeProto::default()
    }
}

fn good_tree() -> NodeProto {
    tree(&["BRANCH_LEQ", "LEAF", "LEAF"], &[1, 0, 0], &[2, 0, 0])
}

fn manifest() -> ModelManifest {
    ModelManifest {
        name: "hand-made".into(),
        format: ModelFormat::Onnx as i32,
        features: ["a", "b"]
            .iter()
            .map(|n| Feature {
                name: (*n).into(),
                scale: 1.0,
                ..Feature::default()
            })
            .collect(),
        onnx: Some(OnnxSpec {
            features_input: "x".into(),
            scoring: Some(OnnxScoring {
                score_output: "y".into(),
                ..OnnxScoring::default()
            }),
            graph: None,
        }),
        ..ModelManifest::default()
    }
}

fn build(bytes: &[u8]) -> Result<OnnxModel, ModelError> {
    OnnxModel::build(&manifest(), inspect(bytes, &runnable)?)
}

#[test]
fn a_tree_walks_to_the_leaf_its_split_picks_and_adds_the_base_value() {
    let model = build(&graph(good_tree(), vec![])).unwrap();
    // Worked by hand: 0.2 <= 0.5 goes to leaf 1 (10 + 1); 0.9 to leaf 2 (20 + 1); NaN is not
    // <= 0.5 and does not track true, so it goes to leaf 2 too.
    let answer = model.infer(&[0.2, 7.0, 0.9, 7.0, f64::NAN, 7.0], 3).unwrap();
    assert_eq!(answer.scores, [11.0, 21.0, 21.0]);
}

#[test]
fn a_tree_that_loops_or_points_nowhere_is_refused_when_parsed() {
    // Node 2 a split whose true branch is itself: a walk that reached it would never end.
    let looping = tree(&["BRANCH_LEQ", "LEAF", "BRANCH_LEQ"], &[1, 0, 2], &[2, 0, 1]);
    let refused = build(&graph(looping, vec![])).unwrap_err().to_string();
    assert!(refused.contains("meet or loop back"), "{refused}");
    // The root's true branch back to itself.
    let rooted_loop = tree(&["BRANCH_LEQ", "LEAF", "LEAF"], &[0, 0, 0], &[2, 0, 0]);
    let refused = build(&graph(rooted_loop, vec![])).unwrap_err().to_string();
    assert!(refused.contains("meet or loop back"), "{refused}");
    let dangling = build(&graph(
        tree(&["BRANCH_LEQ", "LEAF", "LEAF"], &[7, 0, 0], &[2, 0, 0]),
        vec![],
    ))
    .unwrap_err()
    .to_string();
    assert!(
        dangling.contains("points at node 7, which the tree lacks"),
        "{dangling}"
    );
}

fn matmul(weight: TensorProto) -> Vec<u8> {
    graph(
        NodeProto {
            input: vec!["x".into(), "w".into()],
            output: vec!["y".into()],
            op_type: "MatMul".into(),
            ..NodeProto::default()
        },
        vec![weight],
    )
}

fn weight() -> TensorProto {
    TensorProto {
        name: "w".into(),
        dims: vec![2, 1],
        data_type: DataType::Float as i32,
        float_data: vec![1.0, 2.0],
        ..TensorProto::default()
    }
}

#[test]
fn tensors_must_hold_their_data_inside_the_file_and_as_much_as_their_shape_says() {
    let model = build(&matmul(weight())).unwrap();
    assert_eq!(model.infer(&[1.0, 1.0], 1).unwrap().scores, [3.0]);

    let mut external = weight();
    external.float_data.clear();
    external.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
    external.external_data = vec![pb::StringStringEntryProto {
        key: "location".into(),
        value: "/etc/passwd".into(),
    }];
    let refused = build(&matmul(external)).unwrap_err().to_string();
    assert!(refused.contains("external file"), "{refused}");

    let mut inflated = weight();
    inflated.dims = vec![2, 1 << 40];
    let refused = build(&matmul(inflated)).unwrap_err().to_string();
    assert!(refused.contains("holds 2"), "{refused}");
}

#[test]
fn operators_of_unknown_domains_are_named_with_their_opset() {
    let mut node = good_tree();
    node.domain = "com.example".into();
    let refused = build(&graph(node, vec![])).unwrap_err().to_string();
    assert!(
        refused.contains("com.example:TreeEnsembleRegressor (opset not imported)"),
        "{refused}"
    );
}
