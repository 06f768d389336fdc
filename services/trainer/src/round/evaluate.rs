//! Step 4: the trained weights as a model: its manifest, the threshold from the validation
//! scores, the reference profile live data is compared with, and the quality on the hold-out.

use kappa_api::{
    model::{ModelManifest, OutputKind, ReferenceProfile},
    trainer::TrainingSpec,
};
use kappa_model::{
    Backend, Mlp, drift,
    evaluate::{Quality, percentile, quality},
    example::serialize_tensors,
};

use super::{prepare::Prepared, train::Trained};
use crate::job::{Stop, fail};

pub struct Evaluated {
    /// With its threshold; the lineage is the publish step's.
    pub manifest: ModelManifest,
    pub weights: Vec<u8>,
    pub model: Mlp,
    pub reference: ReferenceProfile,
    /// Precision, recall, F1 and ROC AUC on the hold-out, when it holds both classes.
    pub quality: Option<Quality>,
    pub holdout_rows: Vec<Vec<f32>>,
    pub holdout_labels: Vec<bool>,
}

pub fn evaluate(spec: &TrainingSpec, job_id: &str, prepared: &Prepared, trained: &Trained) -> Result<Evaluated, Stop> {
    let _evaluating = tracing::info_span!("evaluate", holdout = prepared.splits.holdout.len()).entered();
    let mut manifest = ModelManifest {
        name: spec.model_name.clone(),
        description: format!(
            "autoencoder trained by kappa-trainer job {job_id} on {}",
            spec.source_topic
        ),
        features: crate::schema::manifest_features(spec, &prepared.offset, &prepared.scale),
        schema: Some(crate::schema::event_schema(spec)),
        layers: kappa_model::autoencoder_layers(spec.features.len() as u32, &spec.hidden_layers),
        output: OutputKind::ReconstructionError as i32,
        ..ModelManifest::default()
    };
    let weights = serialize_tensors(&trained.model.tensors);
    let model = Mlp::load(&manifest, &weights, Backend::Native)
        .map_err(|e| fail(format!("the trained model is invalid: {e}")))?;
    let flat = |rows: &[Vec<f32>]| rows.iter().flatten().copied().collect::<Vec<f32>>();
    let validation_scores = model.score(&flat(&prepared.splits.validation)).map_err(fail)?;
    manifest.anomaly_threshold = f64::from(percentile(&validation_scores, spec.threshold_percentile));
    let above = validation_scores
        .iter()
        .filter(|s| kappa_model::is_anomalous(f64::from(**s), manifest.anomaly_threshold))
        .count();
    let reference = ReferenceProfile {
        features: prepared.reference.clone(),
        validation_scores: drift::of("score", validation_scores.iter().map(|s| f64::from(*s))),
        validation_anomaly_rate: above as f64 / validation_scores.len().max(1) as f64,
    };
    let holdout_rows: Vec<Vec<f32>> = prepared.splits.holdout.iter().map(|(r, _)| r.clone()).collect();
    let holdout_labels: Vec<bool> = prepared.splits.holdout.iter().map(|(_, l)| *l).collect();
    let has_both = holdout_labels.contains(&true) && holdout_labels.contains(&false);
    let quality = if has_both {
        let scores = model.score(&flat(&holdout_rows)).map_err(fail)?;
        Some(quality(&scores, &holdout_labels, manifest.anomaly_threshold as f32))
    } else {
        None
    };
    Ok(Evaluated {
        manifest,
        weights,
        model,
        reference,
        quality,
        holdout_rows,
        holdout_labels,
    })
}
