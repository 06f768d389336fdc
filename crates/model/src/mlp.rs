//! The forward pass of a sequential MLP with feature scaling and Kappa's output kinds.
//!
//! Two implementations that must agree (tests check both against PyTorch): candle, the default
//! for the design, and a hand-written loop that avoids candle's per-op tensor allocations, which
//! dominate at the tiny sizes of anomaly detectors (18 → 8 → 18). `Backend` picks one.

use std::{cell::RefCell, collections::HashMap, str::FromStr};

use candle_core::{DType, Device, Tensor};

use crate::{
    Activation, ModelError, ModelManifest, OutputKind, bias_tensor_name, check_tensors, validate_manifest,
    weight_tensor_name,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Candle,
    Native,
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "candle" => Ok(Self::Candle),
            "native" => Ok(Self::Native),
            other => Err(format!("unknown backend {other:?}; use candle or native")),
        }
    }
}

struct Dense {
    inputs: usize,
    outputs: usize,
    /// `[out, in]` row-major, as stored by PyTorch.
    weight: Vec<f32>,
    bias: Vec<f32>,
    activation: Activation,
    weight_t: Tensor,
    bias_t: Tensor,
}

/// A model ready to score: validated, with weights in memory in both representations.
pub struct Mlp {
    layers: Vec<Dense>,
    offsets: Vec<f32>,
    scales: Vec<f32>,
    offsets_t: Tensor,
    scales_t: Tensor,
    output: OutputKind,
    backend: Backend,
}

impl std::fmt::Debug for Mlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mlp")
            .field("features", &self.offsets.len())
            .field("layers", &self.layers.len())
            .field("output", &self.output)
            .field("backend", &self.backend)
            .finish()
    }
}

fn candle_err(e: candle_core::Error) -> ModelError {
    ModelError::InvalidWeights(format!("candle: {e}"))
}

thread_local! {
    /// Per-thread activation buffers, so scoring allocates nothing after warm-up.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

impl Mlp {
    /// Validates the manifest and the weights together, then builds the model. The weights'
    /// digest is the caller's to verify (the registry client and the predictor's loader do,
    /// against the manifest): hashing them again here doubled the CPU time of every swap.
    pub fn load(manifest: &ModelManifest, weights: &[u8], backend: Backend) -> Result<Self, ModelError> {
        validate_manifest(manifest)?;
        Self::build(manifest, weights, backend)
    }

    /// Builds the model of a manifest validated already (admission validates it first).
    pub(crate) fn build(manifest: &ModelManifest, weights: &[u8], backend: Backend) -> Result<Self, ModelError> {
        check_tensors(manifest, weights)?;
        let device = Device::Cpu;
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(weights, &device).map_err(candle_err)?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (i, layer) in manifest.layers.iter().enumerate() {
            let w = &tensors[&weight_tensor_name(i)];
            let b = &tensors[&bias_tensor_name(i)];
            layers.push(Dense {
                inputs: layer.in_features as usize,
                outputs: layer.out_features as usize,
                weight: w.flatten_all().and_then(|t| t.to_vec1()).map_err(candle_err)?,
                bias: b.to_vec1().map_err(candle_err)?,
                activation: Activation::try_from(layer.activation).unwrap_or(Activation::Linear),
                weight_t: w.t().and_then(|t| t.contiguous()).map_err(candle_err)?,
                bias_t: b.clone(),
            });
        }
        let offsets: Vec<f32> = manifest.features.iter().map(|f| f.offset as f32).collect();
        let scales: Vec<f32> = manifest.features.iter().map(|f| f.scale as f32).collect();
        let n = offsets.len();
        Ok(Self {
            layers,
            offsets_t: Tensor::from_slice(&offsets, (1, n), &device).map_err(candle_err)?,
            scales_t: Tensor::from_slice(&scales, (1, n), &device).map_err(candle_err)?,
            offsets,
            scales,
            output: OutputKind::try_from(manifest.output).unwrap_or(OutputKind::Raw),
            backend,
        })
    }

    pub fn n_features(&self) -> usize {
        self.offsets.len()
    }

    /// Scores `inputs`, `rows × n_features` row-major raw (unscaled) values, into `scores`.
    pub fn score_into(&self, inputs: &[f32], scores: &mut Vec<f32>) -> Result<(), ModelError> {
        self.score_with(inputs, scores, None)
    }

    /// Whether [`Mlp::score_explained_into`] can say what made a score: an autoencoder's score
    /// is a sum over its features, so each feature's part of it is known.
    pub fn explains(&self) -> bool {
        self.output == OutputKind::ReconstructionError
    }

    /// Like [`Mlp::score_into`], and for an autoencoder also each feature's share of its row's
    /// reconstruction error, from the same forward pass: `shares` gets `rows × n_features`
    /// values, each row summing to 1 (equal shares for a row reconstructed exactly). Returns
    /// whether it did; for a raw output `shares` is left empty.
    pub fn score_explained_into(
        &self,
        inputs: &[f32],
        scores: &mut Vec<f32>,
        shares: &mut Vec<f32>,
    ) -> Result<bool, ModelError> {
        shares.clear();
        if !self.explains() {
            self.score_with(inputs, scores, None)?;
            return Ok(false);
        }
        self.score_with(inputs, scores, Some(shares))?;
        Ok(true)
    }

    fn score_with(
        &self,
        inputs: &[f32],
        scores: &mut Vec<f32>,
        shares: Option<&mut Vec<f32>>,
    ) -> Result<(), ModelError> {
        let f = self.n_features();
        if inputs.is_empty() || !inputs.len().is_multiple_of(f) {
            return Err(ModelError::InvalidInput(format!(
                "{} values do not form rows of {f} features",
                inputs.len()
            )));
        }
        match self.backend {
            Backend::Native => {
                self.score_native(inputs, scores, shares);
                Ok(())
            }
            Backend::Candle => self.score_candle(inputs, scores, shares),
        }
    }

    pub fn score(&self, inputs: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut scores = Vec::new();
        self.score_into(inputs, &mut scores)?;
        Ok(scores)
    }

    fn score_candle(
        &self,
        inputs: &[f32],
        scores: &mut Vec<f32>,
        shares: Option<&mut Vec<f32>>,
    ) -> Result<(), ModelError> {
        let rows = inputs.len() / self.n_features();
        let x = Tensor::from_slice(inputs, (rows, self.n_features()), &Device::Cpu).map_err(candle_err)?;
        let shares_wanted = shares.is_some();
        let forward = || -> candle_core::Result<(Vec<f32>, Option<Vec<f32>>)> {
            let scaled = x.broadcast_sub(&self.offsets_t)?.broadcast_div(&self.scales_t)?;
            let mut h = scaled.clone();
            for layer in &self.layers {
                h = h.matmul(&layer.weight_t)?.broadcast_add(&layer.bias_t)?;
                h = match layer.activation {
                    Activation::Relu => h.relu()?,
                    Activation::Tanh => h.tanh()?,
                    Activation::Sigmoid => (h.neg()?.exp()? + 1.0)?.recip()?,
                    Activation::Linear | Activation::Unspecified => h,
                };
            }
            match self.output {
                OutputKind::ReconstructionError => {
                    let errors = (h - scaled)?.sqr()?;
                    let scores = errors.mean(1)?.to_dtype(DType::F32)?.to_vec1()?;
                    let explained = if shares_wanted {
                        Some(errors.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
                    } else {
                        None
                    };
                    Ok((scores, explained))
                }
                OutputKind::Raw | OutputKind::Unspecified => Ok((h.squeeze(1)?.to_dtype(DType::F32)?.to_vec1()?, None)),
            }
        };
        let (scored, errors) = forward().map_err(candle_err)?;
        *scores = scored;
        if let (Some(shares), Some(errors)) = (shares, errors) {
            *shares = errors;
            for row in shares.chunks_exact_mut(self.n_features()) {
                let total = row.iter().sum();
                into_shares(row, total);
            }
        }
        Ok(())
    }

    fn score_native(&self, inputs: &[f32], scores: &mut Vec<f32>, mut shares: Option<&mut Vec<f32>>) {
        let f = self.n_features();
        let rows = inputs.len() / f;
        scores.clear();
        SCRATCH.with_borrow_mut(|(scaled, a, b)| {
            scaled.clear();
            scaled.extend(inputs.chunks_exact(f).flat_map(|row| {
                row.iter()
                    .zip(&self.offsets)
                    .zip(&self.scales)
                    .map(|((x, o), s)| (x - o) / s)
            }));
            let (mut cur, mut next) = (a, b);
            cur.clear();
            cur.extend_from_slice(scaled);
            for layer in &self.layers {
                next.clear();
                next.resize(rows * layer.outputs, 0.0);
                for r in 0..rows {
                    let x = &cur[r * layer.inputs..(r + 1) * layer.inputs];
                    let y = &mut next[r * layer.outputs..(r + 1) * layer.outputs];
                    for (o, out) in y.iter_mut().enumerate() {
                        let w = &layer.weight[o * layer.inputs..(o + 1) * layer.inputs];
                        let dot: f32 = w.iter().zip(x).map(|(w, x)| w * x).sum();
                        *out = activate(layer.activation, dot + layer.bias[o]);
                    }
                }
                std::mem::swap(&mut cur, &mut next);
            }
            match self.output {
                OutputKind::ReconstructionError => {
                    for (out, x) in cur.chunks_exact(f).zip(scaled.chunks_exact(f)) {
                        let errors = out.iter().zip(x).map(|(o, x)| (o - x) * (o - x));
                        // Each squared error once: summed for the score, kept for the shares.
                        let total = match shares.as_deref_mut() {
                            Some(shares) => {
                                let start = shares.len();
                                shares.extend(errors);
                                let row = &mut shares[start..];
                                let total = row.iter().sum::<f32>();
                                into_shares(row, total);
                                total
                            }
                            None => errors.sum::<f32>(),
                        };
                        scores.push(total / f as f32);
                    }
                }
                OutputKind::Raw | OutputKind::Unspecified => scores.extend_from_slice(&cur[..rows]),
            }
        });
    }
}

/// Turns a row's squared errors (summing to `total`) into each one's share of it, in place; a
/// row reconstructed exactly (or whose errors are not finite) gets equal shares: every row sums
/// to 1.
fn into_shares(row: &mut [f32], total: f32) {
    let even = 1.0 / row.len() as f32;
    for e in row.iter_mut() {
        *e = if total.is_finite() && total > 0.0 {
            *e / total
        } else {
            even
        };
    }
}

fn activate(activation: Activation, x: f32) -> f32 {
    match activation {
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Linear | Activation::Unspecified => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::{numbered_autoencoder, random_weights, serialize_tensors};

    /// An autoencoder that reconstructs every row as zeros: each feature's error is its scaled
    /// value squared, so its share is known without running the model.
    fn zero_autoencoder(backend: Backend) -> Mlp {
        let mut manifest = numbered_autoencoder("zeros", 3, 2);
        manifest.features[0].offset = 10.0;
        manifest.features[0].scale = 2.0;
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = manifest
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                let (out, inp) = (l.out_features as usize, l.in_features as usize);
                [
                    (weight_tensor_name(i), vec![out, inp], vec![0.0; out * inp]),
                    (bias_tensor_name(i), vec![out], vec![0.0; out]),
                ]
            })
            .collect();
        Mlp::load(&manifest, &serialize_tensors(&tensors), backend).unwrap()
    }

    #[test]
    fn an_autoencoders_score_comes_with_each_features_share_of_it() {
        for backend in [Backend::Native, Backend::Candle] {
            let model = zero_autoencoder(backend);
            assert!(model.explains());
            // Scaled: [1, 0, 3] -> errors [1, 0, 9]; then a row at the offsets, reconstructed exactly.
            let inputs = [12.0, 0.0, 3.0, 10.0, 0.0, 0.0];
            let (mut scores, mut shares) = (Vec::new(), vec![7.0]);
            assert!(model.score_explained_into(&inputs, &mut scores, &mut shares).unwrap());
            let expected_scores = [10.0 / 3.0, 0.0];
            let expected_shares = [0.1, 0.0, 0.9, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0];
            for (got, want) in scores
                .iter()
                .zip(expected_scores)
                .chain(shares.iter().zip(expected_shares))
            {
                assert!((got - want).abs() < 1e-6, "{backend:?}: {scores:?} {shares:?}");
            }
            assert_eq!((scores.len(), shares.len()), (2, 6), "{backend:?}");
        }
    }

    #[test]
    fn explaining_changes_no_score_and_every_row_sums_to_one() {
        let manifest = numbered_autoencoder("random", 6, 3);
        let weights = random_weights(&manifest, 11);
        let inputs: Vec<f32> = (0..600).map(|i| ((i * 37) % 101) as f32 / 7.0 - 5.0).collect();
        for backend in [Backend::Native, Backend::Candle] {
            let model = Mlp::load(&manifest, &weights, backend).unwrap();
            let plain = model.score(&inputs).unwrap();
            let (mut scores, mut shares) = (Vec::new(), Vec::new());
            assert!(model.score_explained_into(&inputs, &mut scores, &mut shares).unwrap());
            assert_eq!(scores, plain, "{backend:?}: the same pass, the same scores");
            for row in shares.chunks_exact(6) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{backend:?}: {row:?}");
                assert!(row.iter().all(|s| (0.0..=1.0).contains(s)), "{backend:?}: {row:?}");
            }
        }
    }

    #[test]
    fn a_raw_output_is_scored_without_shares() {
        let mut manifest = numbered_autoencoder("raw", 3, 2);
        manifest.layers.last_mut().unwrap().out_features = 1;
        manifest.output = OutputKind::Raw as i32;
        let model = Mlp::load(&manifest, &random_weights(&manifest, 3), Backend::Native).unwrap();
        let (mut scores, mut shares) = (Vec::new(), vec![1.0]);
        assert!(!model.explains());
        assert!(
            !model
                .score_explained_into(&[1.0, 2.0, 3.0], &mut scores, &mut shares)
                .unwrap()
        );
        assert_eq!((scores.len(), shares.len()), (1, 0));
    }
}
