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
        let f = self.n_features();
        if inputs.is_empty() || !inputs.len().is_multiple_of(f) {
            return Err(ModelError::InvalidInput(format!(
                "{} values do not form rows of {f} features",
                inputs.len()
            )));
        }
        match self.backend {
            Backend::Native => {
                self.score_native(inputs, scores);
                Ok(())
            }
            Backend::Candle => {
                *scores = self.score_candle(inputs)?;
                Ok(())
            }
        }
    }

    pub fn score(&self, inputs: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut scores = Vec::new();
        self.score_into(inputs, &mut scores)?;
        Ok(scores)
    }

    fn score_candle(&self, inputs: &[f32]) -> Result<Vec<f32>, ModelError> {
        let rows = inputs.len() / self.n_features();
        let x = Tensor::from_slice(inputs, (rows, self.n_features()), &Device::Cpu).map_err(candle_err)?;
        let forward = || -> candle_core::Result<Vec<f32>> {
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
            let scores = match self.output {
                OutputKind::ReconstructionError => (h - scaled)?.sqr()?.mean(1)?,
                OutputKind::Raw | OutputKind::Unspecified => h.squeeze(1)?,
            };
            scores.to_dtype(DType::F32)?.to_vec1()
        };
        forward().map_err(candle_err)
    }

    fn score_native(&self, inputs: &[f32], scores: &mut Vec<f32>) {
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
                OutputKind::ReconstructionError => scores.extend(
                    cur.chunks_exact(f)
                        .zip(scaled.chunks_exact(f))
                        .map(|(out, x)| out.iter().zip(x).map(|(o, x)| (o - x) * (o - x)).sum::<f32>() / f as f32),
                ),
                OutputKind::Raw | OutputKind::Unspecified => scores.extend_from_slice(&cur[..rows]),
            }
        });
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
