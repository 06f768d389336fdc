//! `inference.GRPCInferenceService`: the Open Inference Protocol, so KServe and Triton clients
//! work unchanged. One input `[N, F]` (FP32, FP64, INT64 or INT32): `input` for Kappa's MLP, the
//! graph's own input for an ONNX version. Outputs: every output of an ONNX graph, then `score`
//! FP32 `[N]` and `is_anomaly` BOOL `[N]` (unless the graph has outputs of those names); for a
//! version that explains its scores, `explanation` FP32 `[N, F]` (each feature's share of each
//! row's score, in input column order) when a request names it: every row for an autoencoder;
//! for an ONNX graph or a raw-output MLP with a reference profile, the flagged rows by median
//! replacement (see `occlusion`), NaN for the rows not explained.

use std::{sync::Arc, time::Instant};

use kappa_api::inference::{
    self as pb, grpc_inference_service_server::GrpcInferenceService, infer_parameter::ParameterChoice,
    model_infer_response::InferOutputTensor, model_metadata_response::TensorMetadata,
};
use kappa_model::onnx::TensorData;
use tonic::{Request, Status};

use crate::{error::PredictError, serving::Serving, slot::LoadedModel};

const INPUT: &str = "input";
const SCORE: &str = "score";
const IS_ANOMALY: &str = "is_anomaly";
/// Sent only to a request that names it: `[N, F]` is F times the size of the scores.
const EXPLANATION: &str = "explanation";

pub struct Oip(pub Arc<Serving>);

fn string_param(value: String) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(value)),
    }
}

impl Oip {
    async fn infer(&self, request: pb::ModelInferRequest) -> Result<pb::ModelInferResponse, PredictError> {
        let model = self.0.admit(&request.model_name, &request.model_version)?;
        let f = model.n_features();
        let expected_input = model.model.onnx().map_or(INPUT, |onnx| onnx.input_name());
        let [input] = request.inputs.as_slice() else {
            return Err(PredictError::InvalidInput(format!(
                "expected exactly one input tensor {expected_input:?} of shape [N, {f}], got {}",
                request.inputs.len()
            )));
        };
        // Every version takes exactly one input, so its name is not checked: a client keeps
        // working while an alias moves between an MLP (`input`) and a graph (its own name).
        let rows = match input.shape.as_slice() {
            [n, cols] if *cols == f as i64 && *n >= 0 => *n as usize,
            other => {
                return Err(PredictError::InvalidInput(format!(
                    "input shape {other:?} does not match [N, {f}] (N rows of the model's {f} features)"
                )));
            }
        };
        let needed = values_for_shape(rows, f)?;
        let raw = request.raw_input_contents.first();
        if raw.is_some() && input.contents.is_some() {
            return Err(PredictError::InvalidInput(
                "send the input in contents or raw_input_contents, not both".into(),
            ));
        }
        let exact = read_input(input, raw.map(|b| b.as_ref()), needed, rows, f)?;
        let values: Vec<f32> = exact.iter().map(|v| *v as f32).collect();
        let graph_outputs: Vec<String> = model
            .model
            .onnx()
            .map(|onnx| onnx.info().outputs.iter().map(|o| o.name.clone()).collect())
            .unwrap_or_default();
        let extra = |name: &&str| !graph_outputs.iter().any(|o| o == name);
        let explains = self.explains(&model);
        let known: Vec<&str> = graph_outputs
            .iter()
            .map(String::as_str)
            .chain([SCORE, IS_ANOMALY].iter().copied().filter(extra))
            .chain(explains.then_some(EXPLANATION))
            .collect();
        let wanted: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
        if let Some(unknown) = wanted.iter().find(|n| !known.contains(n)) {
            return Err(PredictError::InvalidInput(format!(
                "unknown output {unknown:?}; this model has {}",
                known.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
            )));
        }
        model.decoder.check_rows(&values).map_err(|(row, problems)| {
            PredictError::InvalidInput(format!("row {row}: {}", model.decoder.describe(&problems)))
        })?;
        let is_graph = model.model.onnx().is_some();
        let scored = if is_graph {
            self.0.infer_graph(model, values, exact, rows).await?
        } else {
            self.0.score(model, values, rows).await?
        };
        let model = &scored.model;
        let flags: Vec<bool> = scored
            .scores
            .iter()
            .map(|s| kappa_model::is_anomalous(*s, model.threshold))
            .collect();
        let want = |name: &str| wanted.is_empty() || wanted.contains(&name);
        let raw_out = !request.raw_input_contents.is_empty();
        let mut response = Response::new(raw_out);
        for output in scored.outputs.iter().filter(|o| want(&o.name)) {
            response.push(
                &output.name,
                output.shape.iter().map(|d| *d as i64).collect(),
                &output.data,
            );
        }
        if want(SCORE) && extra(&SCORE) {
            response.push(SCORE, vec![rows as i64], &TensorData::F32(scored.scores.clone()));
        }
        if want(IS_ANOMALY) && extra(&IS_ANOMALY) {
            response.push(IS_ANOMALY, vec![rows as i64], &TensorData::Bool(flags));
        }
        if wanted.contains(&EXPLANATION) {
            // Rows not explained (normal ones, for median replacement, and those over its
            // budget) are NaN; a batch with none explained has no shares at all.
            let shares = if scored.shares.is_empty() {
                vec![f32::NAN; rows * f]
            } else {
                scored.shares.clone()
            };
            response.push(EXPLANATION, vec![rows as i64, f as i64], &TensorData::F32(shares));
        }
        let response = pb::ModelInferResponse {
            model_name: model.name.clone(),
            model_version: model.version_string.clone(),
            id: request.id,
            parameters: Default::default(),
            outputs: response.outputs,
            raw_output_contents: response.raw,
        };
        self.0.shadow(scored, crate::shadow::Origin::ModelInfer, &response.id);
        Ok(response)
    }

    /// Whether `model`'s answers can carry the `explanation` output.
    fn explains(&self, model: &LoadedModel) -> bool {
        self.0.explain_top > 0 && self.0.batcher.explains(model)
    }

    fn metadata(&self, model: &LoadedModel) -> pb::ModelMetadataResponse {
        let mut parameters = std::collections::BTreeMap::new();
        // Column order of the input tensor: comma-separated, and as a JSON array for paths that
        // hold commas.
        parameters.insert("feature_names".to_owned(), string_param(model.feature_names.clone()));
        let paths: Vec<&str> = model.manifest.features.iter().map(|f| f.name.as_str()).collect();
        parameters.insert(
            "features_json".to_owned(),
            string_param(serde_json::to_string(&paths).expect("strings serialise")),
        );
        parameters.insert(
            "anomaly_threshold".to_owned(),
            pb::InferParameter {
                parameter_choice: Some(ParameterChoice::DoubleParam(f64::from(model.threshold))),
            },
        );
        parameters.insert(
            "weights_sha256".to_owned(),
            string_param(model.manifest.weights_sha256.clone()),
        );
        if let Some(error) = self.0.slot.last_error() {
            parameters.insert("last_load_error".to_owned(), string_param(error));
        }
        let problems = self.0.readiness.problems();
        if !problems.is_empty() {
            parameters.insert("not_ready".to_owned(), string_param(problems.join("; ")));
        }
        let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape,
        };
        let kappa_outputs = |taken: &[&str]| {
            [(SCORE, "FP32"), (IS_ANOMALY, "BOOL")]
                .into_iter()
                .filter(|(name, _)| !taken.contains(name))
                .map(|(name, datatype)| tensor(name, datatype, vec![-1]))
                .collect::<Vec<_>>()
        };
        let (platform, inputs, outputs) = match model.model.onnx() {
            Some(onnx) => {
                let info = onnx.info();
                parameters.insert("format".to_owned(), string_param("onnx".into()));
                parameters.insert("producer".to_owned(), string_param(info.producer.clone()));
                parameters.insert("operators".to_owned(), string_param(info.operators.join(",")));
                let taken: Vec<&str> = info.outputs.iter().map(|o| o.name.as_str()).collect();
                let mut outputs: Vec<TensorMetadata> = info
                    .outputs
                    .iter()
                    .map(|o| tensor(&o.name, &o.datatype, o.shape.clone()))
                    .collect();
                outputs.extend(kappa_outputs(&taken));
                if self.explains(model) {
                    outputs.push(tensor(EXPLANATION, "FP32", vec![-1, model.n_features() as i64]));
                }
                let inputs = info
                    .inputs
                    .iter()
                    .map(|i| tensor(&i.name, &i.datatype, i.shape.clone()))
                    .collect();
                ("onnx", inputs, outputs)
            }
            None => {
                parameters.insert("format".to_owned(), string_param("mlp".into()));
                let mut outputs = kappa_outputs(&[]);
                if self.explains(model) {
                    outputs.push(tensor(EXPLANATION, "FP32", vec![-1, model.n_features() as i64]));
                }
                (
                    "kappa_mlp",
                    vec![tensor(INPUT, "FP32", vec![-1, model.n_features() as i64])],
                    outputs,
                )
            }
        };
        pb::ModelMetadataResponse {
            name: model.name.clone(),
            versions: vec![model.version_string.clone()],
            platform: platform.into(),
            inputs,
            outputs,
            parameters,
        }
    }
}

/// Outputs of a response, as typed contents or raw little-endian bytes (when the request sent
/// raw inputs, as Triton's clients expect).
struct Response {
    raw_out: bool,
    outputs: Vec<InferOutputTensor>,
    raw: Vec<Vec<u8>>,
}

impl Response {
    fn new(raw_out: bool) -> Self {
        Self {
            raw_out,
            outputs: Vec::new(),
            raw: Vec::new(),
        }
    }

    fn push(&mut self, name: &str, shape: Vec<i64>, data: &TensorData) {
        let mut contents = pb::InferTensorContents::default();
        let mut raw = Vec::new();
        match data {
            TensorData::F32(v) if self.raw_out => raw = v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) if self.raw_out => raw = v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) if self.raw_out => raw = v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) if self.raw_out => raw = v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Bool(v) if self.raw_out => raw = v.iter().map(|b| u8::from(*b)).collect(),
            // BYTES travel length-prefixed (4-byte little-endian), as Triton lays them out.
            TensorData::Bytes(v) if self.raw_out => {
                raw = v
                    .iter()
                    .flat_map(|b| (b.len() as u32).to_le_bytes().into_iter().chain(b.iter().copied()))
                    .collect();
            }
            TensorData::F32(v) => contents.fp32_contents = v.clone(),
            TensorData::F64(v) => contents.fp64_contents = v.clone(),
            TensorData::I64(v) => contents.int64_contents = v.clone(),
            TensorData::I32(v) => contents.int_contents = v.clone(),
            TensorData::Bool(v) => contents.bool_contents = v.clone(),
            TensorData::Bytes(v) => contents.bytes_contents = v.clone(),
        }
        self.outputs.push(InferOutputTensor {
            name: name.into(),
            datatype: data.datatype().into(),
            shape,
            parameters: Default::default(),
            contents: (!self.raw_out).then_some(contents),
        });
        if self.raw_out {
            self.raw.push(raw);
        }
    }
}

/// An input tensor's `needed` values (`[rows, features]`), from typed contents or raw bytes, as
/// f64 so FP64 and INT64 inputs reach an FP64 graph exactly. FP32, FP64, INT64 and INT32 are read.
fn read_input(
    input: &pb::model_infer_request::InferInputTensor,
    raw: Option<&[u8]>,
    needed: usize,
    rows: usize,
    features: usize,
) -> Result<Vec<f64>, PredictError> {
    let width = match input.datatype.as_str() {
        "FP32" | "INT32" => 4,
        "FP64" | "INT64" => 8,
        other => {
            return Err(PredictError::InvalidInput(format!(
                "input {:?} has datatype {other:?}; send FP32, FP64, INT64 or INT32",
                input.name
            )));
        }
    };
    let values: Vec<f64> = match raw {
        Some(raw) => {
            // `needed` fits in memory-sized arithmetic, and 8 × it did when it was checked.
            if raw.len() % width != 0 || raw.len() / width != needed {
                return Err(PredictError::InvalidInput(format!(
                    "raw input holds {} bytes; shape [{rows}, {features}] of {} needs {}",
                    raw.len(),
                    input.datatype,
                    needed * width
                )));
            }
            let chunks = raw.chunks_exact(width);
            match input.datatype.as_str() {
                "FP32" => chunks
                    .map(|b| f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes"))))
                    .collect(),
                "INT32" => chunks
                    .map(|b| f64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
                    .collect(),
                "FP64" => chunks
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
                _ => chunks
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)
                    .collect(),
            }
        }
        None => {
            let c = input.contents.clone().unwrap_or_default();
            match input.datatype.as_str() {
                "FP32" => c.fp32_contents.iter().map(|v| f64::from(*v)).collect(),
                "INT32" => c.int_contents.iter().map(|v| f64::from(*v)).collect(),
                "FP64" => c.fp64_contents,
                _ => c.int64_contents.iter().map(|v| *v as f64).collect(),
            }
        }
    };
    if values.len() != needed {
        return Err(PredictError::InvalidInput(format!(
            "the input holds {} {} values; shape [{rows}, {features}] needs {needed}",
            values.len(),
            input.datatype
        )));
    }
    Ok(values)
}

#[tonic::async_trait]
impl GrpcInferenceService for Oip {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<tonic::Response<pb::ServerLiveResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<tonic::Response<pb::ServerReadyResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerReadyResponse {
            ready: self.0.readiness.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<tonic::Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = r.name == self.0.model_name && self.0.admit(&r.name, &r.version).is_ok();
        Ok(tonic::Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<tonic::Response<pb::ServerMetadataResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerMetadataResponse {
            name: "kappa-predictor".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<tonic::Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .0
            .admit(&r.name, &r.version)
            .map(|m| self.metadata(&m))
            .map_err(Status::from);
        self.0.observe("ModelMetadata", &result, None);
        result.map(tonic::Response::new)
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<tonic::Response<pb::ModelInferResponse>, Status> {
        let started = Instant::now();
        let result = self.infer(request.into_inner()).await.map_err(Status::from);
        self.0.observe("ModelInfer", &result, Some(started));
        result.map(tonic::Response::new)
    }
}

/// FP32 values a `[rows, features]` tensor holds, with checked arithmetic: a shape a client
/// makes up (`[2^40, 2^40]`) is refused, never wrapped around into a small, matching size.
fn values_for_shape(rows: usize, features: usize) -> Result<usize, PredictError> {
    rows.checked_mul(features)
        .filter(|values| values.checked_mul(4).is_some_and(|bytes| bytes <= isize::MAX as usize))
        .ok_or_else(|| {
            PredictError::InvalidInput(format!(
                "shape [{rows}, {features}] is larger than any request this server could receive"
            ))
        })
}

#[cfg(test)]
mod shape_tests {
    #[test]
    fn huge_shapes_are_refused_not_overflowed() {
        assert_eq!(super::values_for_shape(64, 18).unwrap(), 1152);
        for rows in [1_usize << 40, usize::MAX / 2, usize::MAX] {
            let error = super::values_for_shape(rows, 1 << 40).unwrap_err();
            assert!(error.to_string().contains("larger than any request"), "{error}");
        }
    }
}
