//! Step 3: the autoencoder fitted on the prepared rows, in memory or, past `--max-rows`, on
//! the range re-read from Kafka every epoch.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use kappa_api::trainer::{JobPhase, TrainingSpec};
use kappa_model::train::{TrainData, TrainSettings, train_autoencoder};
use rand::{SeedableRng, seq::SliceRandom};

use kappa_dataset::{prepare::scaled, rows::scan_range};

use super::prepare::{Prepared, Scaled};
use crate::job::{JobContext, JobHandle, Stop, fail};

/// Labelled anomalies left out of training: an autoencoder learns only what normal looks like.
pub const ANOMALIES_SKIPPED: &str = "labelled_anomaly_not_trained_on";

pub struct Trained {
    pub model: kappa_model::train::Trained,
    /// Rows one epoch trained on.
    pub rows: u64,
    /// The prepared step's skipped rows, with the anomalies counted over the whole range when
    /// training streamed it.
    pub skipped: BTreeMap<String, u64>,
}

pub async fn train(
    handle: &Arc<JobHandle>,
    ctx: &JobContext,
    spec: &TrainingSpec,
    prepared: &Prepared,
    Scaled { train, validation }: Scaled,
) -> Result<Trained, Stop> {
    let splits = &prepared.splits;
    handle.set_phase(JobPhase::Training, format!("training on {} events", splits.train.len()));
    let features = spec.features.len();
    let settings = TrainSettings {
        hidden: spec.hidden_layers.iter().map(|h| *h as usize).collect(),
        epochs: spec.epochs,
        batch_size: spec.batch_size as usize,
        learning_rate: spec.learning_rate,
        weight_decay: 0.01,
        seed: spec.seed,
    };
    let streamed = prepared.streamed;
    let streamed_rows = Arc::new(AtomicU64::new(0));
    let streamed_anomalies = Arc::new(AtomicU64::new(0));
    let model = {
        let handle = Arc::clone(handle);
        let metrics = Arc::clone(&ctx.metrics);
        let rows_per_epoch = splits.train.len();
        let (kafka, query, held_out, cap) = (
            ctx.kafka.clone(),
            prepared.query.clone(),
            splits.held_out.clone(),
            ctx.max_rows,
        );
        let (offset, scale, screen) = (prepared.offset.clone(), prepared.scale.clone(), prepared.screen.clone());
        let (streamed_rows, streamed_anomalies) = (Arc::clone(&streamed_rows), Arc::clone(&streamed_anomalies));
        let seed = spec.seed;
        let span = tracing::info_span!("train", epochs = spec.epochs, rows = rows_per_epoch, streamed);
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let reporter = Arc::clone(&handle);
            let cancel = handle.cancel.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut stream_epoch = |sink: &mut dyn FnMut(&[f32]) -> bool| -> Result<(), String> {
                let mut block: Vec<Vec<f32>> = Vec::with_capacity(cap.min(1 << 20));
                // The sink says when to stop (cancelled); the reader polls it between records.
                let open = std::cell::Cell::new(true);
                let (mut rows, mut anomalies) = (0_u64, 0_u64);
                let mut flush = |block: &mut Vec<Vec<f32>>| {
                    block.shuffle(&mut rng);
                    open.set(open.get() && sink(&scaled(block, &offset, &scale)));
                    block.clear();
                };
                scan_range(
                    &kafka,
                    &query,
                    &mut |_, _| open.get() && !cancel.is_cancelled(),
                    &mut |row| {
                        if held_out.contains(&row.id) {
                            return;
                        }
                        if row.label == Some(true) {
                            anomalies += 1;
                            return;
                        }
                        if screen.outlier(&row.values).is_some() {
                            return;
                        }
                        rows += 1;
                        block.push(row.values);
                        if block.len() >= cap {
                            flush(&mut block);
                        }
                    },
                )
                .map_err(|e| format!("re-reading the range from Kafka failed: {e}"))?;
                if !block.is_empty() && open.get() {
                    flush(&mut block);
                }
                streamed_rows.store(rows, Ordering::Relaxed);
                streamed_anomalies.store(anomalies, Ordering::Relaxed);
                Ok(())
            };
            let mut epoch_started = std::time::Instant::now();
            let source = if streamed {
                TrainData::Streamed(&mut stream_epoch)
            } else {
                TrainData::InMemory(&train)
            };
            train_autoencoder(
                source,
                &validation,
                features,
                &settings,
                &mut |epoch, loss, validation_loss| {
                    reporter.report(|p| {
                        p.epoch = epoch;
                        p.loss = loss;
                        p.validation_loss = validation_loss;
                    });
                    metrics.loss.set(loss);
                    // Streamed epochs include their Kafka re-read, which is part of their cost.
                    let rows = if streamed {
                        streamed_rows.load(Ordering::Relaxed) as usize
                    } else {
                        rows_per_epoch
                    };
                    metrics
                        .samples_per_second
                        .set(rows as f64 / epoch_started.elapsed().as_secs_f64().max(1e-9));
                    epoch_started = std::time::Instant::now();
                    !cancel.is_cancelled()
                },
                &|| cancel.is_cancelled(),
            )
        })
        .await
        .map_err(fail)?
        .map_err(fail)?
    };
    if !model.completed || handle.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let mut skipped = prepared.skipped.clone();
    let rows = if streamed {
        // The streamed epochs saw every anomaly of the range, not just the sample's.
        skipped.remove(ANOMALIES_SKIPPED);
        let anomalies = streamed_anomalies.load(Ordering::Relaxed);
        if anomalies > 0 {
            skipped.insert(ANOMALIES_SKIPPED.to_owned(), anomalies);
        }
        streamed_rows.load(Ordering::Relaxed)
    } else {
        splits.train.len() as u64
    };
    Ok(Trained { model, rows, skipped })
}
