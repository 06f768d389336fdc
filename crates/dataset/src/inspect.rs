//! What a topic's range holds, field by field, and the training spec the trainer would use on
//! it: `kappa data inspect` prints it and the trainer's `Inspect` call returns it, both from
//! here, so the two never disagree with each other or with a job's feature inference.

use std::time::Duration;

use kappa_api::trainer::TrainingSpec;
use kappa_model::schema::{LabelRule, Profile};

use crate::{
    range::{RangeSample, SampleLimits, Truncated, sample_range},
    resolve_range,
};

/// A sample of a range, profiled.
#[derive(Debug)]
pub struct Inspection {
    pub topic: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub records_in_range: i64,
    pub sampled: usize,
    pub profile: Profile,
    pub truncated: Vec<Truncated>,
    /// The range's offsets per partition, with where each partition's remote tier ends.
    pub partitions: Vec<kappa_api::model::PartitionRange>,
    /// Wall-clock time the look-up and the sample took.
    pub read_duration: Duration,
    /// Sampled events whose label is positive, normal, and missing (when a label is named).
    pub label: Option<LabelBalance>,
    /// Fields inference left out, and why.
    pub notes: Vec<String>,
    /// `spec` with its features: the named ones, or those inference found.
    pub spec: TrainingSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelBalance {
    pub positive: u64,
    pub normal: u64,
    pub missing: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("the range [{from_ms}, {to_ms}) is empty: its start must be before its end")]
    EmptyRange { from_ms: i64, to_ms: i64 },
    #[error("topic {0} does not exist or has no partitions")]
    NoSuchTopic(String),
    #[error("cannot read topic {topic} from Kafka: {reason}")]
    Kafka { topic: String, reason: String },
}

/// Samples up to `sample` events of `spec`'s topic and range (the whole topic without a
/// range), spread over every partition, and profiles them through `spec`'s schema.
pub fn inspect(
    config: &kappa_kafka::KafkaClients,
    group: &str,
    spec: &TrainingSpec,
    sample: usize,
    timeout: Duration,
    now_ms: i64,
) -> Result<Inspection, InspectError> {
    let topic = &spec.source_topic;
    let (from_ms, to_ms) = resolve_range(spec.range.as_ref(), now_ms).unwrap_or((0, now_ms + 3_600_000));
    if from_ms >= to_ms {
        return Err(InspectError::EmptyRange { from_ms, to_ms });
    }
    let limits = SampleLimits {
        max: sample,
        budget: timeout,
        timeout,
    };
    let started = std::time::Instant::now();
    let RangeSample {
        ranges,
        samples,
        truncated,
    } = sample_range(config, group, topic, from_ms, to_ms, limits).map_err(|e| InspectError::Kafka {
        topic: topic.clone(),
        reason: e.to_string(),
    })?;
    if ranges.is_empty() {
        return Err(InspectError::NoSuchTopic(topic.clone()));
    }
    let records_in_range = ranges.iter().map(|r| r.end_offset - r.start_offset).sum();
    let profile = Profile::of(&samples);
    let time_field = spec.time.as_ref().map(|t| t.field.as_str()).unwrap_or_default();
    let mut spec = spec.clone();
    let mut notes = Vec::new();
    if spec.features.is_empty() {
        let inferred = crate::infer::features(&profile, &spec.label_field, time_field, &spec.exclude);
        spec.features = inferred.features;
        notes = inferred.notes;
    }
    let label = (!spec.label_field.is_empty())
        .then(|| label_balance(&profile, &LabelRule::new(&spec.label_field, &spec.positive_labels)));
    Ok(Inspection {
        topic: topic.clone(),
        from_ms,
        to_ms,
        records_in_range,
        sampled: samples.len(),
        profile,
        truncated,
        partitions: ranges,
        read_duration: started.elapsed(),
        label,
        notes,
        spec,
    })
}

fn label_balance(profile: &Profile, rule: &LabelRule) -> LabelBalance {
    let Some(field) = profile.fields.get(&rule.path) else {
        return LabelBalance {
            positive: 0,
            normal: 0,
            missing: profile.events,
        };
    };
    let positive: u64 = field
        .distinct
        .iter()
        .filter(|(v, _)| rule.is_positive(v))
        .map(|(_, n)| *n)
        .sum();
    LabelBalance {
        positive,
        normal: field.present - positive,
        missing: profile.events - field.present,
    }
}
