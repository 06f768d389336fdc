//! Small `ai.onnx.ml` operators that tract lacks and skl2onnx emits with its default options:
//! `Scaler` (StandardScaler), `LabelEncoder` (IsolationForest's path lengths) and
//! `SVMRegressor` (OneClassSVM, SVR). Each is parsed and checked once, then evaluated row by row
//! in f64 like ONNX Runtime's reference behaviour, with an f32 result.

use tract_onnx::{
    model::{OnnxOpRegister, ParsingContext},
    pb::NodeProto,
    prelude::*,
    tract_hir::internal::*,
};

use super::{
    Shared,
    attrs::{Attrs, expect},
};

pub fn register(register: &mut OnnxOpRegister) {
    register.insert("Scaler", scaler);
    register.insert("LabelEncoder", label_encoder);
    register.insert("SVMRegressor", svm_regressor);
}

/// What one of these operators computes, over a 2-D (Scaler, SVM) or any-shaped
/// (LabelEncoder) input.
#[derive(Debug, Clone, PartialEq)]
enum Kernel {
    /// `(x - offset[c]) * scale[c]`, offsets and scales of length 1 or the column count.
    Scaler {
        offset: Vec<f64>,
        scale: Vec<f64>,
    },
    /// Numeric keys to numeric values; keys compared by their f64 bits, NaN matching NaN.
    LabelEncoder {
        map: foldhash::HashMap<u64, f64>,
        default: f64,
        out: DatumType,
    },
    Svm(Svm),
}

#[derive(Debug, Clone, PartialEq)]
struct Svm {
    support: Vec<f64>,
    coefficients: Vec<f64>,
    n_supports: usize,
    features: usize,
    kernel: SvmKernel,
    gamma: f64,
    coef0: f64,
    degree: f64,
    rho: f64,
    one_class: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SvmKernel {
    Linear,
    Poly,
    Rbf,
    Sigmoid,
}

fn scaler(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attrs = Attrs::new(ctx, node);
    let offset = attrs.reals("offset")?;
    let scale = attrs.reals("scale")?;
    expect(!offset.is_empty() || !scale.is_empty(), || {
        "Scaler: neither offset nor scale is set".into()
    })?;
    let offset = if offset.is_empty() { vec![0.0] } else { offset };
    let scale = if scale.is_empty() { vec![1.0] } else { scale };
    Ok((expand(Wrapped::new(Kernel::Scaler { offset, scale })), vec![]))
}

fn label_encoder(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attrs = Attrs::new(ctx, node);
    let string_keys = attrs.has("keys_strings") || attrs.has("values_strings") || attrs.has("keys_tensor");
    expect(!string_keys, || {
        "LabelEncoder: string keys or values and tensor attributes are not supported here; encode labels as numbers before export".into()
    })?;
    let keys: Vec<f64> = if attrs.has("keys_int64s") {
        attrs.ints("keys_int64s")?.into_iter().map(|k| k as f64).collect()
    } else {
        attrs.reals("keys_floats")?
    };
    let (values, out): (Vec<f64>, DatumType) = if attrs.has("values_int64s") {
        (
            attrs.ints("values_int64s")?.into_iter().map(|v| v as f64).collect(),
            DatumType::I64,
        )
    } else {
        (attrs.reals("values_floats")?, DatumType::F32)
    };
    expect(!keys.is_empty() && keys.len() == values.len(), || {
        format!(
            "LabelEncoder: {} keys for {} values; give numeric keys and values of the same length",
            keys.len(),
            values.len()
        )
    })?;
    let default = if out == DatumType::I64 {
        attrs.int("default_int64", -1) as f64
    } else {
        node.attribute
            .iter()
            .find(|a| a.name == "default_float")
            .map_or(-0.0, |a| f64::from(a.f))
    };
    let map = keys.iter().map(|k| key_bits(*k)).zip(values).collect();
    Ok((expand(Wrapped::new(Kernel::LabelEncoder { map, default, out })), vec![]))
}

fn key_bits(k: f64) -> u64 {
    if k.is_nan() {
        f64::NAN.to_bits()
    } else {
        (k + 0.0).to_bits()
    }
}

fn svm_regressor(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attrs = Attrs::new(ctx, node);
    let coefficients = attrs.reals("coefficients")?;
    let support = attrs.reals("support_vectors")?;
    let n_supports = usize::try_from(attrs.int("n_supports", 0)).unwrap_or(0);
    let kernel = match attrs.string("kernel_type", "LINEAR")?.as_str() {
        "LINEAR" => SvmKernel::Linear,
        "POLY" => SvmKernel::Poly,
        "RBF" => SvmKernel::Rbf,
        "SIGMOID" => SvmKernel::Sigmoid,
        other => bail!("SVMRegressor: kernel_type {other:?} is not LINEAR, POLY, RBF or SIGMOID"),
    };
    let params = attrs.reals("kernel_params")?;
    let [gamma, coef0, degree] = match params.as_slice() {
        [] => [0.0, 0.0, 0.0],
        [g, c, d] => [*g, *c, *d],
        other => bail!("SVMRegressor: kernel_params has {} values, not 3", other.len()),
    };
    expect(attrs.string("post_transform", "NONE")? == "NONE", || {
        "SVMRegressor: only post_transform NONE is supported here".into()
    })?;
    let rho = attrs.reals("rho")?;
    let svm = if n_supports == 0 {
        // A linear model: coefficients are the weights, no support vectors.
        Svm {
            features: coefficients.len(),
            support: Vec::new(),
            coefficients,
            n_supports: 0,
            kernel: SvmKernel::Linear,
            gamma,
            coef0,
            degree,
            rho: rho.first().copied().unwrap_or(0.0),
            one_class: attrs.int("one_class", 0) != 0,
        }
    } else {
        expect(
            coefficients.len() == n_supports && support.len() % n_supports == 0,
            || {
                format!(
                    "SVMRegressor: {n_supports} support vectors need as many coefficients ({} given) and a whole number of values each ({} given)",
                    coefficients.len(),
                    support.len()
                )
            },
        )?;
        Svm {
            features: support.len() / n_supports,
            support,
            coefficients,
            n_supports,
            kernel,
            gamma,
            coef0,
            degree,
            rho: rho.first().copied().unwrap_or(0.0),
            one_class: attrs.int("one_class", 0) != 0,
        }
    };
    Ok((expand(Wrapped::new(Kernel::Svm(svm))), vec![]))
}

impl Svm {
    fn kernel(&self, a: &[f64], b: &[f64]) -> f64 {
        let dot = || a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        match self.kernel {
            SvmKernel::Linear => dot(),
            SvmKernel::Poly => (self.gamma * dot() + self.coef0).powf(self.degree),
            SvmKernel::Sigmoid => (self.gamma * dot() + self.coef0).tanh(),
            SvmKernel::Rbf => {
                let d2: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
                (-self.gamma * d2).exp()
            }
        }
    }

    fn score(&self, row: &[f64]) -> f64 {
        let sum = if self.n_supports == 0 {
            row.iter().zip(&self.coefficients).map(|(x, w)| x * w).sum::<f64>()
        } else {
            self.support
                .chunks_exact(self.features)
                .zip(&self.coefficients)
                .map(|(sv, c)| c * self.kernel(row, sv))
                .sum::<f64>()
        };
        let score = sum + self.rho;
        if self.one_class {
            if score > 0.0 { 1.0 } else { -1.0 }
        } else {
            score
        }
    }
}

impl Kernel {
    fn name(&self) -> &'static str {
        match self {
            Self::Scaler { .. } => "Scaler",
            Self::LabelEncoder { .. } => "LabelEncoder",
            Self::Svm(_) => "SVMRegressor",
        }
    }

    fn output_type(&self) -> DatumType {
        match self {
            Self::LabelEncoder { out, .. } => *out,
            Self::Scaler { .. } | Self::Svm(_) => DatumType::F32,
        }
    }

    fn eval(&self, input: &Tensor) -> TractResult<Tensor> {
        let values = input.cast_to::<f64>()?;
        let x = super::values::<f64>(&values)?;
        let shape = input.shape();
        match self {
            Self::Scaler { offset, scale } => {
                let cols = *shape.last().unwrap_or(&1);
                for (name, v) in [("offset", offset), ("scale", scale)] {
                    expect(v.len() == 1 || v.len() == cols, || {
                        format!("Scaler: {name} has {} values for rows of {cols}", v.len())
                    })?;
                }
                let at = |v: &[f64], i: usize| if v.len() == 1 { v[0] } else { v[i % cols] };
                let out: Vec<f32> = x
                    .iter()
                    .enumerate()
                    .map(|(i, x)| ((x - at(offset, i)) * at(scale, i)) as f32)
                    .collect();
                Ok(Tensor::from_shape(shape, &out)?)
            }
            Self::LabelEncoder { map, default, out } => {
                let mapped = x.iter().map(|k| map.get(&key_bits(*k)).copied().unwrap_or(*default));
                if *out == DatumType::I64 {
                    Ok(Tensor::from_shape(
                        shape,
                        &mapped.map(|v| v as i64).collect::<Vec<_>>(),
                    )?)
                } else {
                    Ok(Tensor::from_shape(
                        shape,
                        &mapped.map(|v| v as f32).collect::<Vec<_>>(),
                    )?)
                }
            }
            Self::Svm(svm) => {
                let [rows, cols] = *shape else {
                    bail!("SVMRegressor takes a 2-D input, got shape {shape:?}");
                };
                expect(cols == svm.features, || {
                    format!(
                        "SVMRegressor: rows have {cols} values, the support vectors {}",
                        svm.features
                    )
                })?;
                let out: Vec<f32> = x.chunks_exact(cols.max(1)).map(|row| svm.score(row) as f32).collect();
                Ok(Tensor::from_shape(&[rows, 1], &out)?)
            }
        }
    }
}

type Wrapped = Shared<Kernel>;

impl Expansion for Wrapped {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, self.0.output_type())?;
        match &*self.0 {
            Kernel::Svm(_) => {
                s.equals(&inputs[0].rank, 2)?;
                s.equals(&outputs[0].rank, 2)?;
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                s.equals(&outputs[0].shape[1], 1.to_dim())?;
            }
            Kernel::Scaler { .. } | Kernel::LabelEncoder { .. } => {
                s.equals(&outputs[0].shape, &inputs[0].shape)?;
            }
        }
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for Wrapped {
    fn name(&self) -> StaticName {
        format!("Kappa{}", self.0.name()).into()
    }

    op_as_typed_op!();
}

impl EvalOp for Wrapped {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        Ok(tvec!(self.0.eval(&input)?.into_tvalue()))
    }
}

impl TypedOp for Wrapped {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = self.0.output_type();
        Ok(tvec!(match &*self.0 {
            Kernel::Svm(_) => dt.fact(&[inputs[0].shape[0].clone(), 1.to_dim()]),
            Kernel::Scaler { .. } | Kernel::LabelEncoder { .. } => dt.fact(inputs[0].shape.clone()),
        }))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_encoder_keys_match_by_value_and_fall_back_to_the_default() {
        let kernel = Kernel::LabelEncoder {
            map: [(key_bits(3.0), 7.5), (key_bits(-0.0), 1.0)].into_iter().collect(),
            default: -2.0,
            out: DatumType::F32,
        };
        let out = kernel.eval(&tensor1(&[3_i64, 0, 9])).unwrap();
        assert_eq!(super::super::values::<f32>(&out).unwrap(), &[7.5, 1.0, -2.0]);
    }

    #[test]
    fn svm_rbf_sums_coefficient_weighted_kernels_plus_rho() {
        let svm = Svm {
            support: vec![0.0, 0.0, 1.0, 1.0],
            coefficients: vec![0.5, -0.25],
            n_supports: 2,
            features: 2,
            kernel: SvmKernel::Rbf,
            gamma: 0.5,
            coef0: 0.0,
            degree: 3.0,
            rho: 0.1,
            one_class: false,
        };
        // Worked by hand: x = (1, 0) is at squared distance 1 from both vectors.
        let expected = 0.5 * (-0.5_f64).exp() - 0.25 * (-0.5_f64).exp() + 0.1;
        assert!((svm.score(&[1.0, 0.0]) - expected).abs() < 1e-12);
    }
}
