//! `inference.GRPCInferenceService`: the Open Inference Protocol, so KServe and Triton clients
//! work unchanged. One input `[N, F]` FP32; outputs `score` FP32 `[N]` and `is_anomaly` BOOL `[N]`.

use std::{sync::Arc, time::Instant};

use kappa_api::inference::{
    self as pb, grpc_inference_service_server::GrpcInferenceService, infer_parameter::ParameterChoice,
    model_infer_response::InferOutputTensor, model_metadata_response::TensorMetadata,
};
use tonic::{Request, Response, Status};

use crate::{error::PredictError, serving::Serving, slot::LoadedModel};

const INPUT: &str = "input";
const SCORE: &str = "score";
const IS_ANOMALY: &str = "is_anomaly";

pub struct Oip(pub Arc<Serving>);

fn string_param(value: String) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(value)),
    }
}

impl Oip {
    async fn infer(&self, request: pb::ModelInferRequest) -> Result<pb::ModelInferResponse, PredictError> {
        let model = self.0.admit(&request.model_name, &request.model_version)?;
        let [input] = request.inputs.as_slice() else {
            return Err(PredictError::InvalidInput(format!(
                "expected exactly one input tensor {INPUT:?} of shape [N, {}], got {}",
                model.n_features(),
                request.inputs.len()
            )));
        };
        if input.datatype != "FP32" {
            return Err(PredictError::InvalidInput(format!(
                "input {:?} has datatype {:?}; this model takes FP32",
                input.name, input.datatype
            )));
        }
        let f = model.n_features();
        let rows = match input.shape.as_slice() {
            [n, cols] if *cols == f as i64 && *n >= 0 => *n as usize,
            other => {
                return Err(PredictError::InvalidInput(format!(
                    "input shape {other:?} does not match [N, {f}] (N rows of the model's {f} features)"
                )));
            }
        };
        let needed = values_for_shape(rows, f)?;
        let values: Vec<f32> = if let Some(raw) = request.raw_input_contents.first() {
            if input.contents.is_some() {
                return Err(PredictError::InvalidInput(
                    "send the input in contents or raw_input_contents, not both".into(),
                ));
            }
            // `needed` fits in memory-sized arithmetic, and 4 × it did when it was checked.
            if raw.len() / 4 != needed || raw.len() % 4 != 0 {
                return Err(PredictError::InvalidInput(format!(
                    "raw input holds {} bytes; shape [{rows}, {f}] of FP32 needs {}",
                    raw.len(),
                    needed * 4
                )));
            }
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            let contents = input
                .contents
                .as_ref()
                .map(|c| c.fp32_contents.clone())
                .unwrap_or_default();
            if contents.len() != needed {
                return Err(PredictError::InvalidInput(format!(
                    "fp32_contents holds {} values; shape [{rows}, {f}] needs {needed}",
                    contents.len(),
                )));
            }
            contents
        };
        let wanted: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
        if let Some(unknown) = wanted.iter().find(|n| **n != SCORE && **n != IS_ANOMALY) {
            return Err(PredictError::InvalidInput(format!(
                "unknown output {unknown:?}; this model has {SCORE:?} and {IS_ANOMALY:?}"
            )));
        }
        let scored = self.0.score(model, values, rows).await?;
        let model = &scored.model;
        let flags: Vec<bool> = scored.scores.iter().map(|s| *s > model.threshold).collect();
        let want = |name: &str| wanted.is_empty() || wanted.contains(&name);
        let raw_out = !request.raw_input_contents.is_empty();
        let mut outputs = Vec::new();
        let mut raw_outputs = Vec::new();
        let shape = vec![rows as i64];
        if want(SCORE) {
            outputs.push(InferOutputTensor {
                name: SCORE.into(),
                datatype: "FP32".into(),
                shape: shape.clone(),
                parameters: Default::default(),
                contents: (!raw_out).then(|| pb::InferTensorContents {
                    fp32_contents: scored.scores.clone(),
                    ..Default::default()
                }),
            });
            if raw_out {
                raw_outputs.push(scored.scores.iter().flat_map(|s| s.to_le_bytes()).collect());
            }
        }
        if want(IS_ANOMALY) {
            outputs.push(InferOutputTensor {
                name: IS_ANOMALY.into(),
                datatype: "BOOL".into(),
                shape,
                parameters: Default::default(),
                contents: (!raw_out).then(|| pb::InferTensorContents {
                    bool_contents: flags.clone(),
                    ..Default::default()
                }),
            });
            if raw_out {
                raw_outputs.push(flags.iter().map(|b| u8::from(*b)).collect());
            }
        }
        let response = pb::ModelInferResponse {
            model_name: model.name.clone(),
            model_version: model.version_string.clone(),
            id: request.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw_outputs,
        };
        self.0.shadow(scored, crate::shadow::Origin::ModelInfer, &response.id);
        Ok(response)
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
        pb::ModelMetadataResponse {
            name: model.name.clone(),
            versions: vec![model.version_string.clone()],
            platform: "kappa_mlp".into(),
            inputs: vec![TensorMetadata {
                name: INPUT.into(),
                datatype: "FP32".into(),
                shape: vec![-1, model.n_features() as i64],
            }],
            outputs: vec![
                TensorMetadata {
                    name: SCORE.into(),
                    datatype: "FP32".into(),
                    shape: vec![-1],
                },
                TensorMetadata {
                    name: IS_ANOMALY.into(),
                    datatype: "BOOL".into(),
                    shape: vec![-1],
                },
            ],
            parameters,
        }
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Oip {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.0.readiness.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = r.name == self.0.model_name && self.0.admit(&r.name, &r.version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "kappa-predictor".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .0
            .admit(&r.name, &r.version)
            .map(|m| self.metadata(&m))
            .map_err(Status::from);
        self.0.observe("ModelMetadata", &result, None);
        result.map(Response::new)
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let started = Instant::now();
        let result = self.infer(request.into_inner()).await.map_err(Status::from);
        self.0.observe("ModelInfer", &result, Some(started));
        result.map(Response::new)
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
