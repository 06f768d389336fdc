//! A model of either format behind one face: what the predictor's inference threads, the shadow,
//! backtests and the trainer's gate score with.

use crate::{Mlp, ModelError, ModelFormat, ModelManifest, onnx::OnnxModel};

/// A version ready to score, of whichever format.
#[derive(Debug)]
pub enum Model {
    Mlp(Mlp),
    Onnx(OnnxModel),
}

impl Model {
    pub fn n_features(&self) -> usize {
        match self {
            Self::Mlp(m) => m.n_features(),
            Self::Onnx(m) => m.n_features(),
        }
    }

    /// Scores `inputs`, `rows × n_features` row-major raw (unscaled) values, into `scores`:
    /// one score a row, higher meaning more anomalous.
    pub fn score_into(&self, inputs: &[f32], scores: &mut Vec<f32>) -> Result<(), ModelError> {
        match self {
            Self::Mlp(m) => m.score_into(inputs, scores),
            Self::Onnx(m) => m.score_into(inputs, scores),
        }
    }

    pub fn score(&self, inputs: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut scores = Vec::new();
        self.score_into(inputs, &mut scores)?;
        Ok(scores)
    }

    /// Whether scoring can also say each feature's part in a score, in the same pass (an
    /// autoencoder's reconstruction error); see [`Model::score_explained_into`].
    pub fn explains(&self) -> bool {
        match self {
            Self::Mlp(m) => m.explains(),
            Self::Onnx(_) => false,
        }
    }

    /// [`Model::score_into`], plus each feature's share of each row's score (`rows ×
    /// n_features`, rows summing to 1) when the model [`explains`](Model::explains) itself;
    /// returns whether it did (`shares` is empty otherwise).
    pub fn score_explained_into(
        &self,
        inputs: &[f32],
        scores: &mut Vec<f32>,
        shares: &mut Vec<f32>,
    ) -> Result<bool, ModelError> {
        match self {
            Self::Mlp(m) => m.score_explained_into(inputs, scores, shares),
            Self::Onnx(m) => {
                shares.clear();
                m.score_into(inputs, scores).map(|()| false)
            }
        }
    }

    pub fn format(&self) -> ModelFormat {
        match self {
            Self::Mlp(_) => ModelFormat::Mlp,
            Self::Onnx(_) => ModelFormat::Onnx,
        }
    }

    pub fn onnx(&self) -> Option<&OnnxModel> {
        match self {
            Self::Onnx(m) => Some(m),
            Self::Mlp(_) => None,
        }
    }
}

/// The format a manifest declares; versions from before formats existed are MLPs.
pub fn format_of(manifest: &ModelManifest) -> Result<ModelFormat, ModelError> {
    match ModelFormat::try_from(manifest.format) {
        Ok(ModelFormat::Unspecified | ModelFormat::Mlp) => Ok(ModelFormat::Mlp),
        Ok(ModelFormat::Onnx) => Ok(ModelFormat::Onnx),
        Err(_) => Err(ModelError::InvalidManifest(format!(
            "format {} is unknown; use mlp or onnx",
            manifest.format
        ))),
    }
}

/// A label output's positive values as numbers: `true` is 1, `false` 0.
pub fn parse_positive_labels(labels: &[String]) -> Result<Vec<f64>, ModelError> {
    if labels.is_empty() {
        return Err(ModelError::InvalidManifest(
            "a label output needs its positive labels (the values that mean anomalous, e.g. -1 for IsolationForest's label)".into(),
        ));
    }
    labels
        .iter()
        .map(|l| match l.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(1.0),
            "false" => Ok(0.0),
            other => other.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                ModelError::InvalidManifest(format!(
                    "positive label {l:?} is not a number or true/false; label outputs are compared as numbers"
                ))
            }),
        })
        .collect()
}
