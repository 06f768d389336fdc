//! An ONNX graph turned into a runnable tract plan once per version, off the request path, and
//! shared by every inference thread; and how its answers become Kappa's scores.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, LazyLock},
};

use kappa_api::model::{ModelManifest, OnnxGraphInfo, OnnxScoreKind, OnnxScoring};
use tract_onnx::{Onnx, data_resolver::ModelDataResolver, onnx, tract_hir::internal::*};

use super::graph::GraphCheck;
use crate::ModelError;

/// tract's operators with Kappa's added, and external data refused (the graph check refuses it
/// first; this keeps the engine from ever reading a file on the predictor's disk).
static FRAMEWORK: LazyLock<Onnx> = LazyLock::new(|| {
    let mut onnx = onnx();
    super::ops::register(&mut onnx.op_register);
    onnx.provider = Arc::new(NoExternalData);
    onnx
});

/// Whether the engine has an operator of this name (any domain: the graph check knows domains).
pub fn runnable(op_type: &str) -> bool {
    FRAMEWORK.op_register.0.contains_key(op_type)
}

struct NoExternalData;

impl ModelDataResolver for NoExternalData {
    fn read_bytes_from_path(
        &self,
        _: &mut Vec<u8>,
        p: &std::path::Path,
        _: usize,
        _: Option<usize>,
    ) -> TractResult<()> {
        bail!(
            "external data ({}) is not read: models must be self-contained",
            p.display()
        )
    }
}

/// Values of a tensor, in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Open Inference Protocol's name for the element type.
    pub fn datatype(&self) -> &'static str {
        match self {
            Self::F32(_) => "FP32",
            Self::F64(_) => "FP64",
            Self::I64(_) => "INT64",
            Self::I32(_) => "INT32",
            Self::Bool(_) => "BOOL",
            Self::Bytes(_) => "BYTES",
        }
    }
}

/// One output of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl OutputTensor {
    /// Rows `[start, end)` of an output with one row per input row (see
    /// [`OnnxModel::rows_align`]).
    pub fn rows(&self, start: usize, end: usize) -> Self {
        let rows = self.shape.first().copied().unwrap_or(0).max(1);
        let per_row = self.data.len() / rows;
        let (from, to) = (start * per_row, end * per_row);
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(v[from..to].to_vec()),
            TensorData::F64(v) => TensorData::F64(v[from..to].to_vec()),
            TensorData::I64(v) => TensorData::I64(v[from..to].to_vec()),
            TensorData::I32(v) => TensorData::I32(v[from..to].to_vec()),
            TensorData::Bool(v) => TensorData::Bool(v[from..to].to_vec()),
            TensorData::Bytes(v) => TensorData::Bytes(v[from..to].to_vec()),
        };
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = end - start;
        }
        Self {
            name: self.name.clone(),
            shape,
            data,
        }
    }
}

/// What a run gave: every graph output, and the score of each row.
#[derive(Debug, Clone)]
pub struct Answer {
    pub outputs: Vec<OutputTensor>,
    pub scores: Vec<f32>,
}

#[derive(Debug, Clone)]
enum Reading {
    /// Column `column` of an output with `columns` columns.
    Value {
        output: usize,
        column: usize,
        negate: bool,
    },
    Reconstruction {
        output: usize,
    },
    Label {
        output: usize,
        positives: Vec<f64>,
    },
}

/// A graph ready to score: its plan, and how Kappa reads it.
pub struct OnnxModel {
    plan: Arc<TypedSimplePlan>,
    /// Every output has one row per input row, so several requests' rows can share a run.
    row_aligned: bool,
    input_name: String,
    input_type: DatumType,
    features: usize,
    /// Rows the graph takes at once when its batch dimension is fixed.
    fixed_batch: Option<usize>,
    output_names: Vec<String>,
    reading: Reading,
    info: OnnxGraphInfo,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("input", &self.input_name)
            .field("features", &self.features)
            .field("fixed_batch", &self.fixed_batch)
            .field("outputs", &self.output_names)
            .field("reading", &self.reading)
            .finish_non_exhaustive()
    }
}

fn engine_error(e: impl std::fmt::Display) -> ModelError {
    ModelError::InvalidGraph(format!("the engine cannot build it: {e}"))
}

impl OnnxModel {
    /// Builds the plan for a checked graph, as the manifest says to read it.
    pub fn build(manifest: &ModelManifest, graph: GraphCheck) -> Result<Self, ModelError> {
        let invalid = |m: String| Err(ModelError::InvalidGraph(m));
        let onnx = manifest
            .onnx
            .as_ref()
            .ok_or_else(|| ModelError::InvalidManifest("an ONNX version needs its onnx section".into()))?;
        let scoring = onnx.scoring.clone().unwrap_or_default();
        let features = manifest.features.len();
        let GraphCheck { proto, info, .. } = graph;

        let [input] = info.inputs.as_slice() else {
            let names: Vec<&str> = info.inputs.iter().map(|i| i.name.as_str()).collect();
            return invalid(format!(
                "the graph takes {} inputs ({}); Kappa feeds one, the features input",
                names.len(),
                names.join(", ")
            ));
        };
        if input.name != onnx.features_input {
            return invalid(format!(
                "the features input {:?} is not the graph's input; its input is {:?}",
                onnx.features_input, input.name
            ));
        }
        let input_type = match input.datatype.as_str() {
            "FP32" => DatumType::F32,
            "FP64" => DatumType::F64,
            other => {
                return invalid(format!(
                    "the features input {:?} is of type {other}; it must be FP32 or FP64 (float or double)",
                    input.name
                ));
            }
        };
        let fixed_batch = match input.shape.as_slice() {
            [batch, width] => {
                if *width >= 0 && *width as usize != features {
                    return invalid(format!(
                        "the features input {:?} takes rows of {width} values, but the manifest lists {features} features",
                        input.name
                    ));
                }
                (*batch > 0).then_some(*batch as usize)
            }
            [] => None,
            other => {
                return invalid(format!(
                    "the features input {:?} has shape {other:?}; it must be 2-D [batch, {features}] (reshape inside the graph for sequence models)",
                    input.name
                ));
            }
        };
        let output_names: Vec<String> = info.outputs.iter().map(|o| o.name.clone()).collect();
        let reading = reading(&scoring, &output_names)?;

        let build = || -> TractResult<(Arc<TypedSimplePlan>, bool)> {
            let parsed = FRAMEWORK.parse(&proto, None)?;
            if !parsed.unresolved_inputs.is_empty() {
                bail!("inputs {:?} are used but never defined", parsed.unresolved_inputs);
            }
            let mut model = parsed.model;
            let batch: TDim = match fixed_batch {
                Some(n) => n.to_dim(),
                None => model.symbols.sym("batch").into(),
            };
            let shape: TVec<TDim> = tvec![batch.clone(), features.to_dim()];
            model.set_input_fact(0, InferenceFact::dt_shape(input_type, shape))?;
            let typed = model.into_optimized()?;
            // Every output one row per input row (the batch symbol leads each shape): requests
            // can then share a run, each taking its own rows of every output back.
            let row_aligned = fixed_batch.is_none()
                && (0..typed.output_outlets()?.len())
                    .all(|i| typed.output_fact(i).is_ok_and(|f| f.shape.first() == Some(&batch)));
            Ok((SimplePlan::new(typed)?, row_aligned))
        };
        let (plan, row_aligned) = std::panic::catch_unwind(AssertUnwindSafe(build))
            .map_err(|p| engine_error(panic_text(&p)))?
            .map_err(|e| engine_error(format!("{e:#}")))?;
        Ok(Self {
            plan,
            row_aligned,
            input_name: input.name.clone(),
            input_type,
            features,
            fixed_batch,
            output_names,
            reading,
            info,
        })
    }

    pub fn n_features(&self) -> usize {
        self.features
    }

    pub fn info(&self) -> &OnnxGraphInfo {
        &self.info
    }

    /// Whether every output has one row per input row (a symbolic batch the graph keeps), so
    /// the rows of several requests can run together and each take its own rows back.
    pub fn rows_align(&self) -> bool {
        self.row_aligned
    }

    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// Scores `inputs`, rows of raw feature values (an ONNX graph does its own scaling), into
    /// `scores`.
    pub fn score_into(&self, inputs: &[f32], scores: &mut Vec<f32>) -> Result<(), ModelError> {
        let f = self.features;
        if inputs.is_empty() || !inputs.len().is_multiple_of(f) {
            return Err(ModelError::InvalidInput(format!(
                "{} values do not form rows of {f} features",
                inputs.len()
            )));
        }
        let values: Vec<f64> = inputs.iter().map(|x| f64::from(*x)).collect();
        let answer = self.run(&values, inputs.len() / f, false)?;
        scores.clear();
        scores.extend_from_slice(&answer.scores);
        Ok(())
    }

    /// Runs the graph on `rows` rows of its features input, and reads every output and the
    /// scores.
    pub fn infer(&self, input: &[f64], rows: usize) -> Result<Answer, ModelError> {
        if rows == 0 || input.len() != rows * self.features {
            return Err(ModelError::InvalidInput(format!(
                "{} values do not form {rows} rows of {} features",
                input.len(),
                self.features
            )));
        }
        self.run(input, rows, true)
    }

    fn run(&self, input: &[f64], rows: usize, all_outputs: bool) -> Result<Answer, ModelError> {
        let run = || -> TractResult<Vec<Tensor>> {
            match self.fixed_batch {
                Some(batch) if batch != rows => self.run_in_batches(input, rows, batch),
                _ => self.run_once(input, rows),
            }
        };
        let outputs = std::panic::catch_unwind(AssertUnwindSafe(run))
            .map_err(|p| ModelError::Inference(format!("the graph panicked: {}", panic_text(&p))))?
            .map_err(|e| ModelError::Inference(format!("{e:#}")))?;
        let scores = self.read_scores(input, rows, &outputs)?;
        let outputs = if all_outputs {
            outputs
                .into_iter()
                .zip(&self.output_names)
                .map(|(t, name)| output_tensor(name, t))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(Answer { outputs, scores })
    }

    fn run_once(&self, input: &[f64], rows: usize) -> TractResult<Vec<Tensor>> {
        let tensor = Tensor::from_shape(&[rows, self.features], input)?
            .cast_to_dt(self.input_type)?
            .into_owned();
        let outputs = self.plan.run(tvec!(tensor.into_tvalue()))?;
        Ok(outputs.into_iter().map(|v| v.into_tensor()).collect())
    }

    /// A graph with a fixed batch takes `batch` rows a run; the last run is padded with copies of
    /// its last row, whose answers are dropped.
    fn run_in_batches(&self, input: &[f64], rows: usize, batch: usize) -> TractResult<Vec<Tensor>> {
        let f = self.features;
        let mut parts: Vec<Vec<Tensor>> = Vec::new();
        let mut padded = Vec::with_capacity(batch * f);
        for start in (0..rows).step_by(batch) {
            let take = batch.min(rows - start);
            padded.clear();
            padded.extend_from_slice(&input[start * f..(start + take) * f]);
            let last = &input[(start + take - 1) * f..(start + take) * f];
            for _ in take..batch {
                padded.extend_from_slice(last);
            }
            let outputs = self.run_once(&padded, batch)?;
            let outputs = outputs
                .into_iter()
                .map(|t| {
                    if t.rank() == 0 || t.shape()[0] != batch {
                        bail!(
                            "output of shape {:?} is not one answer per row of a batch of {batch}",
                            t.shape()
                        );
                    }
                    t.slice(0, 0, take)
                })
                .collect::<TractResult<Vec<_>>>()?;
            parts.push(outputs);
        }
        (0..self.output_names.len())
            .map(|i| {
                let pieces: Vec<Tensor> = parts.iter().map(|p| p[i].clone()).collect();
                Tensor::stack_tensors(0, &pieces)
            })
            .collect()
    }

    fn read_scores(&self, input: &[f64], rows: usize, outputs: &[Tensor]) -> Result<Vec<f32>, ModelError> {
        let shape_error = |name: &str, shape: &[usize], what: &str| {
            ModelError::Inference(format!("output {name:?} has shape {shape:?} for {rows} rows; {what}"))
        };
        let values = |output: usize| -> Result<(Vec<f64>, &[usize]), ModelError> {
            let t = &outputs[output];
            let cast = t.cast_to::<f64>().map_err(|e| {
                ModelError::Inference(format!("output {:?} is not numeric: {e}", self.output_names[output]))
            })?;
            let v = super::ops::values::<f64>(&cast)
                .map_err(|e| ModelError::Inference(e.to_string()))?
                .to_vec();
            Ok((v, t.shape()))
        };
        match &self.reading {
            Reading::Value { output, column, negate } => {
                let (v, shape) = values(*output)?;
                let name = &self.output_names[*output];
                let columns = match shape {
                    [n] if *n == rows => 1,
                    [n, k] if *n == rows => *k,
                    _ => return Err(shape_error(name, shape, "a score output is [N] or [N, K]")),
                };
                if *column >= columns {
                    return Err(shape_error(name, shape, &format!("it has no column {column}")));
                }
                let sign = if *negate { -1.0 } else { 1.0 };
                Ok((0..rows).map(|r| (sign * v[r * columns + column]) as f32).collect())
            }
            Reading::Reconstruction { output } => {
                let (v, shape) = values(*output)?;
                let f = self.features;
                if shape != [rows, f] {
                    return Err(shape_error(
                        &self.output_names[*output],
                        shape,
                        &format!("a reconstruction is [N, {f}], like the features input"),
                    ));
                }
                Ok(v.chunks_exact(f)
                    .zip(input.chunks_exact(f))
                    .map(|(out, x)| (out.iter().zip(x).map(|(o, x)| (o - x) * (o - x)).sum::<f64>() / f as f64) as f32)
                    .collect())
            }
            Reading::Label { output, positives } => {
                let (v, shape) = values(*output)?;
                if !(matches!(shape, [n] | [n, 1] if *n == rows)) {
                    return Err(shape_error(
                        &self.output_names[*output],
                        shape,
                        "a label output is [N] or [N, 1]",
                    ));
                }
                Ok(v.iter().map(|l| f32::from(u8::from(positives.contains(l)))).collect())
            }
        }
    }
}

/// How the manifest's scoring section reads the outputs, checked against their names.
fn reading(scoring: &OnnxScoring, outputs: &[String]) -> Result<Reading, ModelError> {
    let invalid = |m: String| Err(ModelError::InvalidGraph(m));
    let find = |name: &str, what: &str| {
        outputs.iter().position(|o| o == name).ok_or_else(|| {
            ModelError::InvalidGraph(format!(
                "the {what} output {name:?} is not among the graph's outputs ({})",
                outputs.join(", ")
            ))
        })
    };
    match (scoring.score_output.is_empty(), scoring.label_output.is_empty()) {
        (false, true) => {
            let output = find(&scoring.score_output, "score")?;
            match OnnxScoreKind::try_from(scoring.score_kind) {
                Ok(OnnxScoreKind::Value) => Ok(Reading::Value {
                    output,
                    column: scoring.score_column as usize,
                    negate: scoring.lower_is_anomalous,
                }),
                Ok(OnnxScoreKind::ReconstructionError) => {
                    if scoring.lower_is_anomalous || scoring.score_column != 0 {
                        return invalid("a reconstruction error takes no score column and grows with anomaly".into());
                    }
                    Ok(Reading::Reconstruction { output })
                }
                Err(_) => invalid(format!("score kind {} is unknown", scoring.score_kind)),
            }
        }
        (true, false) => {
            let output = find(&scoring.label_output, "label")?;
            let positives = crate::model::parse_positive_labels(&scoring.positive_labels)?;
            Ok(Reading::Label { output, positives })
        }
        _ => invalid("name exactly one of the score output and the label output".into()),
    }
}

fn output_tensor(name: &str, t: Tensor) -> Result<OutputTensor, ModelError> {
    let shape = t.shape().to_vec();
    let read = |e: TractError| ModelError::Inference(format!("output {name:?}: {e}"));
    let data = match t.datum_type() {
        DatumType::F32 => TensorData::F32(super::ops::values::<f32>(&t).map_err(read)?.to_vec()),
        DatumType::I64 => TensorData::I64(super::ops::values::<i64>(&t).map_err(read)?.to_vec()),
        DatumType::I32 => TensorData::I32(super::ops::values::<i32>(&t).map_err(read)?.to_vec()),
        DatumType::Bool => TensorData::Bool(super::ops::values::<bool>(&t).map_err(read)?.to_vec()),
        DatumType::String => TensorData::Bytes(
            super::ops::values::<String>(&t)
                .map_err(read)?
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        ),
        DatumType::I8 | DatumType::I16 | DatumType::U8 | DatumType::U16 => TensorData::I32(
            super::ops::values::<i32>(&*t.cast_to::<i32>().map_err(read)?)
                .map_err(read)?
                .to_vec(),
        ),
        DatumType::U32 | DatumType::U64 => TensorData::I64(
            super::ops::values::<i64>(&*t.cast_to::<i64>().map_err(read)?)
                .map_err(read)?
                .to_vec(),
        ),
        _ => TensorData::F64(
            super::ops::values::<f64>(&*t.cast_to::<f64>().map_err(read)?)
                .map_err(read)?
                .to_vec(),
        ),
    };
    Ok(OutputTensor {
        name: name.to_owned(),
        shape,
        data,
    })
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
