//! Training an autoencoder with candle: mean squared reconstruction error in scaled space, AdamW,
//! mini-batches in a seeded shuffled order. Produces tensors under the serving names, so what the
//! trainer publishes is exactly what the predictor loads.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

use crate::{ModelError, bias_tensor_name, weight_tensor_name};

#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Hidden widths; the output layer maps back to the input features.
    pub hidden: Vec<usize>,
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

/// After each epoch: mean training loss and validation loss. Return false to stop (cancelled).
pub type OnEpoch<'a> = &'a mut dyn FnMut(u32, f64, f64) -> bool;

#[derive(Debug)]
pub struct Trained {
    /// `(name, shape, values)` for `example::serialize_tensors`.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub loss_curve: Vec<f64>,
    pub validation_curve: Vec<f64>,
    /// False when `on_epoch` or `cancelled` stopped training early.
    pub completed: bool,
}

fn err(e: candle_core::Error) -> ModelError {
    ModelError::InvalidInput(format!("training: {e}"))
}

struct Adam {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i32,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// Trains on `train` (`rows × features`, already scaled) and reports validation loss on `val`.
/// `cancelled` is polled between mini-batches so a cancel stops within one batch.
/// Where the training rows of each epoch come from.
pub enum TrainData<'a> {
    /// Rows held in memory (`rows × features`, scaled), shuffled every epoch.
    InMemory(&'a [f32]),
    /// Rows streamed anew every epoch, for data larger than memory: each call delivers one epoch
    /// as shuffled blocks of scaled rows to the given sink, which returns false to stop.
    #[expect(
        clippy::type_complexity,
        reason = "a callback taking a callback; an alias hides the higher-ranked lifetimes it needs"
    )]
    Streamed(&'a mut dyn FnMut(&mut dyn FnMut(&[f32]) -> bool) -> Result<(), String>),
}

pub fn train_autoencoder(
    data: TrainData<'_>,
    val: &[f32],
    features: usize,
    settings: &TrainSettings,
    on_epoch: OnEpoch<'_>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Trained, ModelError> {
    let device = Device::Cpu;
    let mut data = data;
    if let TrainData::InMemory(train) = data
        && train.len() < features
    {
        return Err(ModelError::InvalidInput("no training rows".into()));
    }
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let hidden: Vec<u32> = settings.hidden.iter().map(|h| *h as u32).collect();
    let chain = crate::autoencoder_layers(features as u32, &hidden);
    let mut params: Vec<Var> = Vec::new();
    for layer in &chain {
        let (inp, out) = (layer.in_features as usize, layer.out_features as usize);
        // nn.Linear's initialisation, from the seeded generator so runs are reproducible.
        let bound = 1.0 / (inp as f32).sqrt();
        let mut uniform = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        let w = Tensor::from_vec(uniform(out * inp), (out, inp), &device).map_err(err)?;
        let b = Tensor::from_vec(uniform(out), out, &device).map_err(err)?;
        params.push(Var::from_tensor(&w).map_err(err)?);
        params.push(Var::from_tensor(&b).map_err(err)?);
    }
    let zeros = |p: &Var| p.as_tensor().zeros_like().map_err(err);
    let mut adam = Adam {
        m: params.iter().map(zeros).collect::<Result<_, _>>()?,
        v: params.iter().map(zeros).collect::<Result<_, _>>()?,
        step: 0,
    };
    let forward = |x: &Tensor, params: &[Var]| -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (l, layer) in chain.iter().enumerate() {
            h = h
                .matmul(&params[2 * l].as_tensor().t()?)?
                .broadcast_add(params[2 * l + 1].as_tensor())?;
            if layer.activation() == crate::Activation::Relu {
                h = h.relu()?;
            }
        }
        Ok(h)
    };
    let mse =
        |x: &Tensor, params: &[Var]| -> candle_core::Result<Tensor> { (forward(x, params)? - x)?.sqr()?.mean_all() };

    let val_rows = val.len() / features;
    let val_t = (val_rows > 0)
        .then(|| Tensor::from_slice(val, (val_rows, features), &device))
        .transpose()
        .map_err(err)?;
    let mut batch = Vec::with_capacity(settings.batch_size * features);
    let (mut loss_curve, mut validation_curve) = (Vec::new(), Vec::new());
    let stopped = |loss_curve, validation_curve| Trained {
        tensors: Vec::new(),
        loss_curve,
        validation_curve,
        completed: false,
    };
    let step = |x: &[f32], adam: &mut Adam| -> Result<f64, ModelError> {
        let x = Tensor::from_slice(x, (x.len() / features, features), &device).map_err(err)?;
        let loss = mse(&x, &params).map_err(err)?;
        let value = f64::from(loss.to_scalar::<f32>().map_err(err)?);
        let grads = loss.backward().map_err(err)?;
        adam.step += 1;
        let (c1, c2) = (1.0 - BETA1.powi(adam.step), 1.0 - BETA2.powi(adam.step));
        for (i, p) in params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            let mut update = || -> candle_core::Result<()> {
                adam.m[i] = ((&adam.m[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
                adam.v[i] = ((&adam.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                let step = ((&adam.m[i] / c1)? / ((&adam.v[i] / c2)?.sqrt()? + EPS)?)?;
                let decayed = (p.as_tensor() * (1.0 - settings.learning_rate * settings.weight_decay))?;
                p.set(&(decayed - (step * settings.learning_rate)?)?)
            };
            update().map_err(err)?;
        }
        Ok(value)
    };
    for epoch in 1..=settings.epochs {
        let (mut total, mut batches) = (0.0, 0_u32);
        match &mut data {
            TrainData::InMemory(train) => {
                let mut order: Vec<usize> = (0..train.len() / features).collect();
                order.shuffle(&mut rng);
                for chunk in order.chunks(settings.batch_size) {
                    if cancelled() {
                        return Ok(stopped(loss_curve, validation_curve));
                    }
                    batch.clear();
                    for &r in chunk {
                        batch.extend_from_slice(&train[r * features..(r + 1) * features]);
                    }
                    total += step(&batch, &mut adam)?;
                    batches += 1;
                }
            }
            TrainData::Streamed(source) => {
                let mut failure = None;
                source(&mut |block: &[f32]| {
                    for chunk in block.chunks(settings.batch_size * features) {
                        if cancelled() {
                            return false;
                        }
                        match step(chunk, &mut adam) {
                            Ok(loss) => {
                                total += loss;
                                batches += 1;
                            }
                            Err(e) => {
                                failure = Some(e);
                                return false;
                            }
                        }
                    }
                    true
                })
                .map_err(ModelError::InvalidInput)?;
                if let Some(e) = failure {
                    return Err(e);
                }
                if cancelled() {
                    return Ok(stopped(loss_curve, validation_curve));
                }
            }
        }
        let train_loss = total / f64::from(batches.max(1));
        let val_loss = match &val_t {
            Some(v) => f64::from(mse(v, &params).and_then(|l| l.to_scalar::<f32>()).map_err(err)?),
            None => f64::NAN,
        };
        loss_curve.push(train_loss);
        validation_curve.push(val_loss);
        if !on_epoch(epoch, train_loss, val_loss) {
            return Ok(stopped(loss_curve, validation_curve));
        }
    }
    let mut tensors = Vec::with_capacity(params.len());
    for l in 0..chain.len() {
        let w = params[2 * l].as_tensor();
        let b = params[2 * l + 1].as_tensor();
        tensors.push((
            weight_tensor_name(l),
            w.dims().to_vec(),
            w.flatten_all().and_then(|t| t.to_vec1()).map_err(err)?,
        ));
        tensors.push((bias_tensor_name(l), b.dims().to_vec(), b.to_vec1().map_err(err)?));
    }
    Ok(Trained {
        tensors,
        loss_curve,
        validation_curve,
        completed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_falls_on_structured_data() {
        // Rows on a 2-D subspace of 6 features: an 6-3-6 autoencoder can learn them.
        let mut rng = StdRng::seed_from_u64(3);
        let data: Vec<f32> = (0..512)
            .flat_map(|_| {
                let (a, b): (f32, f32) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
                [a, b, a + b, a - b, 0.5 * a, -b]
            })
            .collect();
        let settings = TrainSettings {
            hidden: vec![3],
            epochs: 30,
            batch_size: 32,
            learning_rate: 0.01,
            weight_decay: 0.0,
            seed: 1,
        };
        let trained = train_autoencoder(
            TrainData::InMemory(&data),
            &data[..600],
            6,
            &settings,
            &mut |_, _, _| true,
            &|| false,
        )
        .unwrap();
        assert!(trained.completed);
        let (first, last) = (trained.loss_curve[0], *trained.loss_curve.last().unwrap());
        assert!(last < first * 0.2, "loss went from {first} to {last}");
        assert_eq!(trained.tensors.len(), 4);
        assert_eq!(trained.tensors[0].1, vec![3, 6]);
    }
}
