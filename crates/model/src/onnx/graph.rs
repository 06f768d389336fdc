//! What an `.onnx` file holds, read before tract sees it: the operators (every one must be one
//! the predictor runs), the tensors (all inside the file, each holding what its shape says), the
//! inputs and outputs the manifest records. A classifier's `ZipMap` output, a sequence of maps
//! tract has no type for, is served as the probability tensor it wraps.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use kappa_api::model::{OnnxGraphInfo, OperatorSet, TensorInfo};
use prost::Message as _;
use tract_onnx::pb::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, tensor_proto::DataLocation,
    tensor_shape_proto::dimension::Value as Dim, type_proto::Value as TypeValue,
};

use crate::ModelError;

/// The standard operator set's domain, however the file spells it.
const DEFAULT_DOMAIN: &str = "";
const ML_DOMAIN: &str = "ai.onnx.ml";

/// Operators of the `ai.onnx.ml` domain the predictor runs (tract's, Kappa's, and ZipMap when it
/// only wraps an output). tract registers operators by name alone; the domain is checked here.
const ML_OPERATORS: &[&str] = &[
    "ArrayFeatureExtractor",
    "CategoryMapper",
    "LabelEncoder",
    "LinearClassifier",
    "LinearRegressor",
    "Normalizer",
    "SVMRegressor",
    "Scaler",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
];

/// A graph that passed the file-level checks, ready for tract, and what the manifest records.
#[derive(Debug, Clone)]
pub struct GraphCheck {
    pub proto: ModelProto,
    pub info: OnnxGraphInfo,
    /// Names of the initializers, which some exporters also list as inputs.
    pub initializers: HashSet<String>,
}

/// Reads `bytes` as an ONNX model and checks what can be checked without running it.
pub fn inspect(bytes: &[u8], runnable: &dyn Fn(&str) -> bool) -> Result<GraphCheck, ModelError> {
    let invalid = |m: String| ModelError::InvalidGraph(m);
    let mut proto = ModelProto::decode(bytes).map_err(|e| {
        invalid(format!(
            "the file is not an ONNX model (protobuf: {e}); export it with torch.onnx.export or skl2onnx"
        ))
    })?;
    let opsets: BTreeMap<String, i64> = proto
        .opset_import
        .iter()
        .map(|o| (normal_domain(&o.domain).to_owned(), o.version))
        .fold(BTreeMap::new(), |mut m, (d, v)| {
            let e = m.entry(d).or_insert(v);
            *e = (*e).max(v);
            m
        });
    let graph = proto
        .graph
        .as_mut()
        .filter(|g| !g.node.is_empty())
        .ok_or_else(|| invalid("the file holds no graph (no nodes); export the model again".into()))?;

    let column_labels = unwrap_zipmaps(graph);

    let mut operators = BTreeSet::new();
    let mut problems = Vec::new();
    walk(graph, &mut |node| {
        let domain = normal_domain(&node.domain);
        operators.insert(format!("{domain}:{}", node.op_type));
    });
    for op in &operators {
        let (domain, op_type) = op.split_once(':').expect("written as domain:op");
        let known = match domain {
            DEFAULT_DOMAIN => !ML_OPERATORS.contains(&op_type) && runnable(op_type),
            ML_DOMAIN => ML_OPERATORS.contains(&op_type),
            _ => false,
        };
        if !known {
            let opset = opsets
                .get(domain)
                .map_or_else(|| "not imported".to_owned(), |v| v.to_string());
            let shown = if domain.is_empty() { "ai.onnx" } else { domain };
            let hint = if op_type == "ZipMap" {
                " (a ZipMap that feeds other nodes; convert with skl2onnx options={id(model): {'zipmap': False}})"
            } else {
                ""
            };
            problems.push(format!("{shown}:{op_type} (opset {opset}){hint}"));
        }
    }
    if !problems.is_empty() {
        return Err(invalid(format!(
            "the graph uses operators the predictor cannot run: {}; export without them (a lower opset, or another converter option)",
            problems.join(", ")
        )));
    }
    check_tensors(graph)?;
    if !graph.sparse_initializer.is_empty() {
        return Err(invalid(
            "the graph has sparse initializers, which are not supported; export with dense weights".into(),
        ));
    }

    let initializers: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(&i.name))
        .map(|i| tensor_info(i, &BTreeMap::new()))
        .collect();
    let outputs = graph.output.iter().map(|o| tensor_info(o, &column_labels)).collect();
    let info = OnnxGraphInfo {
        inputs,
        outputs,
        opsets: opsets
            .iter()
            .map(|(domain, version)| OperatorSet {
                domain: domain.clone(),
                version: *version,
            })
            .collect(),
        operators: operators.into_iter().collect(),
        ir_version: proto.ir_version,
        producer: format!("{} {}", proto.producer_name, proto.producer_version)
            .trim()
            .to_owned(),
    };
    Ok(GraphCheck {
        proto,
        info,
        initializers,
    })
}

fn normal_domain(domain: &str) -> &str {
    if domain == "ai.onnx" { DEFAULT_DOMAIN } else { domain }
}

/// Calls `f` on every node, subgraphs (If, Loop, Scan bodies) included.
fn walk(graph: &GraphProto, f: &mut dyn FnMut(&NodeProto)) {
    for node in &graph.node {
        f(node);
        for attribute in &node.attribute {
            for g in attribute.g.iter().chain(&attribute.graphs) {
                walk(g, f);
            }
        }
    }
}

/// ZipMap turns a classifier's probabilities [N, classes] into a sequence of maps, which tract
/// has no type for. Where it only produces a graph output, that output becomes the probability
/// tensor itself (an Identity); the class of each column is kept for the manifest.
fn unwrap_zipmaps(graph: &mut GraphProto) -> BTreeMap<String, Vec<String>> {
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let consumed: HashSet<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    let mut labels = BTreeMap::new();
    for node in &mut graph.node {
        let is_zipmap = node.op_type == "ZipMap" && normal_domain(&node.domain) == ML_DOMAIN;
        let [output] = node.output.as_slice() else { continue };
        if !is_zipmap || !outputs.contains(output) || consumed.contains(output) {
            continue;
        }
        let classes = zipmap_classes(&node.attribute);
        labels.insert(output.clone(), classes);
        node.op_type = "Identity".into();
        node.domain = DEFAULT_DOMAIN.into();
        node.attribute.clear();
    }
    for output in &mut graph.output {
        if let Some(classes) = labels.get(&output.name) {
            output.r#type = Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(TypeValue::TensorType(pb::type_proto::Tensor {
                    elem_type: pb::tensor_proto::DataType::Float as i32,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![
                            pb::tensor_shape_proto::Dimension {
                                denotation: String::new(),
                                value: None,
                            },
                            pb::tensor_shape_proto::Dimension {
                                denotation: String::new(),
                                value: Some(Dim::DimValue(classes.len() as i64)),
                            },
                        ],
                    }),
                })),
            });
        }
    }
    labels
}

fn zipmap_classes(attributes: &[AttributeProto]) -> Vec<String> {
    for a in attributes {
        match a.name.as_str() {
            "classlabels_int64s" => return a.ints.iter().map(i64::to_string).collect(),
            "classlabels_strings" => {
                return a
                    .strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
            }
            _ => {}
        }
    }
    Vec::new()
}

/// Every tensor in the file (initializers, Constant values, tensors in attributes, in subgraphs
/// too) keeps its data inside the file and holds exactly what its shape says: an external-data
/// reference would have the predictor read a file from its own disk, and a shape larger than
/// the data would have the engine allocate it.
fn check_tensors(graph: &GraphProto) -> Result<(), ModelError> {
    for t in &graph.initializer {
        check_tensor(t)?;
    }
    for node in &graph.node {
        for a in &node.attribute {
            for t in a.t.iter().chain(&a.tensors) {
                check_tensor(t)?;
            }
            if a.sparse_tensor.is_some() || !a.sparse_tensors.is_empty() {
                return Err(ModelError::InvalidGraph(format!(
                    "node {:?} ({}) holds a sparse tensor, which is not supported",
                    node.name, node.op_type
                )));
            }
            for g in a.g.iter().chain(&a.graphs) {
                check_tensors(g)?;
            }
        }
    }
    Ok(())
}

fn check_tensor(t: &TensorProto) -> Result<(), ModelError> {
    let invalid = |m: String| Err(ModelError::InvalidGraph(m));
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return invalid(format!(
            "tensor {:?} keeps its data in an external file; publish a self-contained .onnx (torch.onnx.export(..., external_data=False), or onnx.load then onnx.save without save_as_external_data)",
            t.name
        ));
    }
    let Some(count) = t
        .dims
        .iter()
        .try_fold(1_u64, |n, d| u64::try_from(*d).ok().and_then(|d| n.checked_mul(d)))
    else {
        return invalid(format!("tensor {:?} has the impossible shape {:?}", t.name, t.dims));
    };
    use pb::tensor_proto::DataType as D;
    let width = match D::try_from(t.data_type) {
        Ok(D::Float | D::Int32 | D::Uint32) => 4,
        Ok(D::Double | D::Int64 | D::Uint64 | D::Complex64) => 8,
        Ok(D::Uint8 | D::Int8 | D::Bool) => 1,
        Ok(D::Uint16 | D::Int16 | D::Float16 | D::Bfloat16) => 2,
        Ok(D::Complex128) => 16,
        Ok(D::String) => 0,
        _ => {
            return invalid(format!(
                "tensor {:?} has element type {}, which is not supported",
                t.name, t.data_type
            ));
        }
    };
    let held = if !t.raw_data.is_empty() {
        if width == 0 {
            return invalid(format!("tensor {:?} holds strings as raw data", t.name));
        }
        (t.raw_data.len() / width) as u64
    } else {
        [
            t.float_data.len(),
            t.int32_data.len(),
            t.string_data.len(),
            t.int64_data.len(),
            t.double_data.len(),
            t.uint64_data.len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as u64
    };
    // int32_data packs the 16- and 8-bit types one value per entry, so counts compare directly;
    // complex values take two entries each.
    let expected = match D::try_from(t.data_type) {
        Ok(D::Complex64 | D::Complex128) if t.raw_data.is_empty() => count.saturating_mul(2),
        _ => count,
    };
    if held != expected || (!t.raw_data.is_empty() && !t.raw_data.len().is_multiple_of(width)) {
        return invalid(format!(
            "tensor {:?} declares shape {:?} ({count} values) but holds {held}",
            t.name, t.dims
        ));
    }
    Ok(())
}

/// The Open Inference Protocol's name for an ONNX element type.
pub fn datatype_name(elem_type: i32) -> &'static str {
    use pb::tensor_proto::DataType as D;
    match D::try_from(elem_type) {
        Ok(D::Float) => "FP32",
        Ok(D::Double) => "FP64",
        Ok(D::Float16) => "FP16",
        Ok(D::Bfloat16) => "BF16",
        Ok(D::Int64) => "INT64",
        Ok(D::Int32) => "INT32",
        Ok(D::Int16) => "INT16",
        Ok(D::Int8) => "INT8",
        Ok(D::Uint64) => "UINT64",
        Ok(D::Uint32) => "UINT32",
        Ok(D::Uint16) => "UINT16",
        Ok(D::Uint8) => "UINT8",
        Ok(D::Bool) => "BOOL",
        Ok(D::String) => "BYTES",
        _ => "",
    }
}

fn tensor_info(value: &pb::ValueInfoProto, labels: &BTreeMap<String, Vec<String>>) -> TensorInfo {
    let mut info = TensorInfo {
        name: value.name.clone(),
        column_labels: labels.get(&value.name).cloned().unwrap_or_default(),
        ..TensorInfo::default()
    };
    if let Some(TypeValue::TensorType(t)) = value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        info.datatype = datatype_name(t.elem_type).to_owned();
        for d in t.shape.iter().flat_map(|s| &s.dim) {
            match &d.value {
                Some(Dim::DimValue(v)) if *v >= 0 => {
                    info.shape.push(*v);
                    info.dim_names.push(String::new());
                }
                Some(Dim::DimParam(p)) => {
                    info.shape.push(-1);
                    info.dim_names.push(p.clone());
                }
                _ => {
                    info.shape.push(-1);
                    info.dim_names.push(String::new());
                }
            }
        }
        if info.dim_names.iter().all(String::is_empty) {
            info.dim_names.clear();
        }
    }
    info
}
