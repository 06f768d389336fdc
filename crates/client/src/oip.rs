//! Open Inference Protocol requests as a Kappa predictor reads them.

use kappa_api::inference::{InferTensorContents, ModelInferRequest, model_infer_request::InferInputTensor};

/// ModelInfer for `model` with `values` as rows of `columns` features: the `input` tensor,
/// FP32, shape `[rows, columns]`.
pub fn infer_request(model: &str, values: Vec<f32>, columns: usize) -> ModelInferRequest {
    let rows = values.len().checked_div(columns).unwrap_or(0);
    ModelInferRequest {
        model_name: model.to_owned(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, columns as i64],
            contents: Some(InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}
