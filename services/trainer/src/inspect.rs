//! Inspect: `kappa data inspect` as a call, for clients that want the profile as data (the
//! Python package). Both run `kappa_dataset::inspect`.

use kappa_api::trainer::{FieldProfile, InspectRequest, Inspection, LabelBalance, TruncatedPartition};

use crate::{error::TrainerError, service::TrainerService};

/// Events sampled when the request names no number, as the CLI's default.
const DEFAULT_SAMPLE: usize = 2000;

impl TrainerService {
    pub(crate) async fn inspect_inner(&self, request: InspectRequest) -> Result<Inspection, TrainerError> {
        let spec = request.spec.ok_or_else(|| {
            TrainerError::InvalidSpec("the request has no spec: name at least its source_topic".into())
        })?;
        if spec.source_topic.is_empty() {
            return Err(TrainerError::InvalidSpec(
                "spec.source_topic is empty: name the topic to inspect".into(),
            ));
        }
        if !self.topic_exists(&spec.source_topic).await? {
            return Err(TrainerError::UnknownTopic(spec.source_topic));
        }
        let sample = match request.sample as usize {
            0 => DEFAULT_SAMPLE,
            n if n > self.context.max_rows => {
                return Err(TrainerError::InvalidSpec(format!(
                    "sample {n} is above this trainer's --max-rows {}",
                    self.context.max_rows
                )));
            }
            n => n,
        };
        let ctx = self.context.clone();
        let found = tokio::task::spawn_blocking(move || {
            kappa_dataset::inspect::inspect(
                &ctx.kafka,
                "kappa-trainer-inspect",
                &spec,
                sample,
                ctx.kafka_timeout,
                kappa_runtime::now_ms(),
            )
        })
        .await
        .map_err(|e| TrainerError::Kafka(e.to_string()))?
        .map_err(|e| match e {
            kappa_dataset::inspect::InspectError::EmptyRange { .. } => TrainerError::InvalidSpec(e.to_string()),
            kappa_dataset::inspect::InspectError::NoSuchTopic(topic) => TrainerError::UnknownTopic(topic),
            kappa_dataset::inspect::InspectError::Kafka { .. } => TrainerError::Kafka(e.to_string()),
        })?;
        Ok(to_proto(found))
    }
}

fn to_proto(found: kappa_dataset::inspect::Inspection) -> Inspection {
    let profile = found.profile;
    Inspection {
        topic: found.topic,
        from_ms: found.from_ms,
        to_ms: found.to_ms,
        records_in_range: found.records_in_range,
        sampled: found.sampled as u64,
        events: profile.events,
        malformed: profile.malformed,
        fields: profile
            .fields
            .into_values()
            .map(|f| FieldProfile {
                r#type: f.kind().to_owned(),
                present: f.present,
                numeric: f.numeric,
                min: f.min(),
                median: f.median(),
                max: f.max(),
                values: if f.low_cardinality() {
                    f.distinct.clone()
                } else {
                    Default::default()
                },
                path: f.path,
            })
            .collect(),
        label: found.label.map(|l| LabelBalance {
            field: found.spec.label_field.clone(),
            positive: l.positive,
            normal: l.normal,
            missing: l.missing,
        }),
        notes: found.notes,
        truncated: found
            .truncated
            .into_iter()
            .map(|t| TruncatedPartition {
                partition: t.partition,
                log_start: t.log_start,
                oldest_ms: t.oldest_ms,
            })
            .collect(),
        spec: Some(found.spec),
        partitions: found.partitions,
        read_duration_ms: found.read_duration.as_millis() as u64,
    }
}
