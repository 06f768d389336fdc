//! Where a trained version came from, as its manifest records it: the range, the rows, how
//! they were prepared, the settings, the curves and the hold-out quality.

use kappa_api::{
    model::{Lineage, Metrics, SampleCounts},
    trainer::TrainingSpec,
};
use kappa_model::evaluate::Quality;

use super::{evaluate::Evaluated, prepare::Prepared, train::Trained};

/// What a round knew about its model, besides the steps' outputs.
pub struct Origin<'a> {
    pub job_id: &'a str,
    /// `--max-rows`, which decides whether training streamed the range.
    pub max_rows: usize,
    /// The alias holder's version the new one is compared with (0: none).
    pub parent_version: u64,
    /// The round's trace, which the model's journey continues.
    pub trace_context: std::collections::BTreeMap<String, String>,
}

pub fn lineage(
    spec: &TrainingSpec,
    origin: Origin<'_>,
    prepared: &Prepared,
    trained: &Trained,
    evaluated: &Evaluated,
) -> Lineage {
    let splits = &prepared.splits;
    Lineage {
        training_job_id: origin.job_id.to_owned(),
        source_topic: spec.source_topic.clone(),
        partitions: prepared.partitions.clone(),
        time_from_ms: prepared.query.from_ms,
        time_to_ms: prepared.query.to_ms,
        samples: Some(SampleCounts {
            train: trained.rows,
            validation: splits.validation.len() as u64,
            holdout: splits.holdout.len() as u64,
            skipped: trained.skipped.clone(),
        }),
        hyperparameters: hyperparameters(spec, prepared, origin.max_rows),
        metrics: Some(metrics(&trained.model, evaluated.quality)),
        parent_version: origin.parent_version,
        trace_context: origin.trace_context,
        reference: Some(evaluated.reference.clone()),
        read_duration_ms: prepared.read_duration.as_millis() as u64,
    }
}

/// The settings a data scientist needs to train the same model again, and how the data was
/// prepared, in words.
fn hyperparameters(
    spec: &TrainingSpec,
    prepared: &Prepared,
    max_rows: usize,
) -> std::collections::BTreeMap<String, String> {
    let screening = match crate::schema::screening_z(spec) {
        Some(z) => format!(
            "gross outliers dropped from training and validation rows: |x - median| > {z} x max(1.4826 MAD, (q99 - q1) / 4.653)"
        ),
        None => "off".to_owned(),
    };
    let data = if prepared.streamed {
        format!(
            "re-read from Kafka every epoch: {} usable events exceed --max-rows {max_rows}; validation, hold-out and scaling from a uniform sample",
            prepared.usable
        )
    } else {
        "held in memory".to_owned()
    };
    [
        ("hidden_layers", format!("{:?}", spec.hidden_layers)),
        ("epochs", spec.epochs.to_string()),
        ("batch_size", spec.batch_size.to_string()),
        ("learning_rate", spec.learning_rate.to_string()),
        ("optimizer", "AdamW(weight_decay=0.01)".to_owned()),
        ("threshold_percentile", spec.threshold_percentile.to_string()),
        ("seed", spec.seed.to_string()),
        (
            "scaling",
            "robust: offset = median, scale = (q99 - q1) / 4.653 (then 1.4826 MAD, then std, then 1)".to_owned(),
        ),
        ("screening", screening),
        ("data", data),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn metrics(trained: &kappa_model::train::Trained, quality: Option<Quality>) -> Metrics {
    Metrics {
        loss_curve: trained.loss_curve.clone(),
        validation_loss_curve: trained.validation_curve.clone(),
        precision: quality.map(|q| q.precision),
        recall: quality.map(|q| q.recall),
        f1: quality.map(|q| q.f1),
        roc_auc: quality.map(|q| q.roc_auc),
    }
}
