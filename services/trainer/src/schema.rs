//! A training spec's event schema: built from the spec, checked against a sample of the range
//! before the job starts (so a path that is not in the data fails the request, not the job an
//! hour later), and inferred from that sample when the spec names no features.

use std::time::Duration;

use kappa_api::{
    model::{EventSchema, Feature},
    trainer::{FeatureSpec, TrainingSpec},
};
use kappa_kafka::KafkaClients;
use kappa_model::schema::{EventDecoder, FeatureRule, Profile, label_rule, time_rule, validate_path};

use crate::error::TrainerError;

/// Events sampled to check or infer a schema, and how long sampling may take.
pub const SAMPLE_EVENTS: usize = 2000;
const SAMPLE_BUDGET: Duration = Duration::from_secs(15);
/// Default robust distance for gross-outlier screening (see `Screening` in trainer.proto).
pub const DEFAULT_MAX_ROBUST_Z: f64 = 12.0;

fn invalid(message: impl Into<String>) -> TrainerError {
    TrainerError::InvalidSpec(message.into())
}

/// The label and time part of the schema, as the manifest stores it.
pub fn event_schema(spec: &TrainingSpec) -> EventSchema {
    EventSchema {
        label_field: spec.label_field.clone(),
        positive_labels: spec.positive_labels.clone(),
        time: spec.time.clone(),
    }
}

fn rules(features: &[FeatureSpec]) -> Vec<FeatureRule> {
    features
        .iter()
        .map(|f| FeatureRule {
            path: f.path.clone(),
            min: f.min,
            max: f.max,
        })
        .collect()
}

/// How far past a range's end (by Kafka timestamp) late events are looked for.
pub fn lateness_ms(spec: &TrainingSpec) -> i64 {
    spec.time
        .as_ref()
        .map_or(0, |t| i64::try_from(t.lateness_ms).unwrap_or(i64::MAX))
}

/// The decoder a job reads its range with. The spec's features must be resolved already.
pub fn decoder(spec: &TrainingSpec) -> Result<EventDecoder, String> {
    let schema = event_schema(spec);
    EventDecoder::new(rules(&spec.features), label_rule(&schema), time_rule(&schema))
}

/// The manifest's features: each path with its rule and the scaling fitted on the data.
pub fn manifest_features(spec: &TrainingSpec, offset: &[f64], scale: &[f64]) -> Vec<Feature> {
    spec.features
        .iter()
        .zip(offset.iter().zip(scale))
        .map(|(f, (o, s))| Feature {
            name: f.path.clone(),
            offset: *o,
            scale: *s,
            min: f.min,
            max: f.max,
        })
        .collect()
}

/// Screening distance, or `None` when the spec turns screening off.
pub fn screening_z(spec: &TrainingSpec) -> Option<f64> {
    let screening = spec.screening.unwrap_or_default();
    (!screening.disabled).then_some(if screening.max_robust_z > 0.0 {
        screening.max_robust_z
    } else {
        DEFAULT_MAX_ROBUST_Z
    })
}

/// Structural checks that need no data: paths, duplicates, rules, label and time fields.
pub fn check_structure(spec: &TrainingSpec) -> Result<(), TrainerError> {
    if !spec.features.is_empty() {
        decoder(spec).map_err(|e| invalid(format!("features: {e}")))?;
    }
    if !spec.label_field.is_empty() {
        validate_path(&spec.label_field).map_err(|e| invalid(format!("label_field: {e}")))?;
    }
    if spec.positive_labels.iter().any(|p| p.trim().is_empty()) {
        return Err(invalid("positive_labels: a value is empty"));
    }
    if let Some(time) = &spec.time {
        if !time.field.is_empty() {
            validate_path(&time.field).map_err(|e| invalid(format!("time.field: {e}")))?;
        }
        if kappa_model::TimeFormat::try_from(time.format).is_err() {
            return Err(invalid(format!("time.format {} is not a known format", time.format)));
        }
    }
    for path in &spec.exclude {
        validate_path(path).map_err(|e| invalid(format!("exclude: {e}")))?;
    }
    let z = spec.screening.map_or(0.0, |s| s.max_robust_z);
    if !(z.is_finite() && z >= 0.0) || (z > 0.0 && z < 1.0) {
        return Err(invalid(format!(
            "screening.max_robust_z {z} must be at least 1 (0 for the default {DEFAULT_MAX_ROBUST_Z})"
        )));
    }
    Ok(())
}

/// Samples `[from, to)` of the spec's topic; checks every named path against the sample, or
/// infers the features when none are named. Returns notes on how the schema was chosen.
pub fn resolve(
    config: &KafkaClients,
    spec: &mut TrainingSpec,
    from_ms: i64,
    to_ms: i64,
    timeout: Duration,
) -> Result<Vec<String>, TrainerError> {
    let end = to_ms.saturating_add(lateness_ms(spec));
    let kappa_dataset::range::RangeSample { samples, truncated, .. } = kappa_dataset::range::sample_range(
        config,
        "trainer-sample",
        &spec.source_topic,
        from_ms,
        end,
        kappa_dataset::range::SampleLimits {
            max: SAMPLE_EVENTS,
            budget: SAMPLE_BUDGET,
            timeout,
        },
    )
    .map_err(|e| TrainerError::Kafka(e.to_string()))?;
    if !truncated.is_empty() && !spec.allow_truncated_start {
        let which: Vec<String> = truncated.iter().map(ToString::to_string).collect();
        return Err(TrainerError::TruncatedRange(format!(
            "the range [{from_ms}, {to_ms}) of {} starts before what the topic still holds: {}; \
             start the range later, or set allow_truncated_start to train on what remains",
            spec.source_topic,
            which.join("; ")
        )));
    }
    let truncation_notes: Vec<String> = truncated
        .iter()
        .map(|t| format!("the range's start is incomplete (allowed): {t}"))
        .collect();
    let profile = Profile::of(&samples);
    let continuous = spec.continuous.is_some();
    if profile.events == 0 {
        let what = if samples.is_empty() {
            "holds no events".to_owned()
        } else {
            format!("holds no JSON object events ({} malformed sampled)", profile.malformed)
        };
        // A continuous job may start before its data; one that names its features can wait.
        if continuous && !spec.features.is_empty() {
            return Ok(vec![format!(
                "the window {what} yet; the schema is checked when rounds read it"
            )]);
        }
        return Err(invalid(format!(
            "the range [{from_ms}, {to_ms}) of {} {what}; widen the range{}",
            spec.source_topic,
            if spec.features.is_empty() {
                " (features are inferred from the range's events)"
            } else {
                ""
            }
        )));
    }
    let mut notes = vec![format!(
        "schema checked against {} events sampled from the range",
        profile.events
    )];
    notes.extend(truncation_notes);
    let time_field = spec.time.as_ref().map_or("", |t| t.field.as_str()).to_owned();
    for (what, path) in [
        ("label_field", spec.label_field.clone()),
        ("time.field", time_field.clone()),
    ] {
        if !path.is_empty() && !profile.fields.contains_key(&path) {
            return Err(invalid(format!(
                "{what} {path:?} never occurs in the {} sampled events; fields seen: {}",
                profile.events,
                seen(&profile)
            )));
        }
    }
    if spec.features.is_empty() {
        let inferred = kappa_dataset::infer::features(&profile, &spec.label_field, &time_field, &spec.exclude);
        if inferred.features.is_empty() {
            return Err(invalid(format!(
                "no numeric field to train on in the {} sampled events ({}); name the features",
                profile.events,
                inferred.notes.join("; ")
            )));
        }
        let paths: Vec<&str> = inferred.features.iter().map(|f| f.path.as_str()).collect();
        notes.push(format!("inferred {} features: {}", paths.len(), paths.join(", ")));
        notes.extend(inferred.notes.into_iter().map(|n| format!("left out {n}")));
        spec.features = inferred.features;
        return Ok(notes);
    }
    for feature in &spec.features {
        let path = &feature.path;
        match profile.fields.get(path) {
            Some(field) if field.numeric > 0 => {}
            Some(field) => {
                return Err(invalid(format!(
                    "feature {path:?} is not numeric in the {} sampled events ({}{})",
                    profile.events,
                    field.kind(),
                    field
                        .distinct
                        .keys()
                        .next()
                        .map(|v| format!(", e.g. {v:?}"))
                        .unwrap_or_default()
                )));
            }
            None => {
                let prefix = format!("{path}.");
                let inside: Vec<&str> = profile
                    .fields
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .map(String::as_str)
                    .take(8)
                    .collect();
                return Err(invalid(if inside.is_empty() {
                    format!(
                        "feature {path:?} never occurs in the {} sampled events; fields seen: {}",
                        profile.events,
                        seen(&profile)
                    )
                } else {
                    format!(
                        "feature {path:?} is an object or array, not a number; name its fields, e.g. {}",
                        inside.join(", ")
                    )
                }));
            }
        }
    }
    Ok(notes)
}

fn seen(profile: &Profile) -> String {
    let mut names: Vec<&str> = profile.fields.keys().map(String::as_str).take(40).collect();
    if profile.fields.len() > names.len() {
        names.push("…");
    }
    names.join(", ")
}
