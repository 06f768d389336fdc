//! `kappa models publish --onnx`: the manifest for a graph a data scientist exported, built
//! from flags, and checked here with the same admission the registry runs, so a mistake is
//! reported before the upload with what to change.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use kappa_api::model::{
    Distribution, EventSchema, EventTime, Feature, Lineage, ModelFormat, ModelManifest, OnnxModel, OnnxScoreKind,
    OnnxScoring, ReferenceProfile,
};
use kappa_client::{Registry, Selector};
use kappa_model::{
    Model,
    admission::{Policy, Signature, admit},
    drift,
    schema::FieldValue,
};

#[derive(Debug, Clone, Args)]
pub struct OnnxArgs {
    /// Publish this ONNX graph (from torch.onnx.export, skl2onnx, ...) instead of a safetensors
    /// MLP. Needs --name, the features (--features or --features-from) and how to score
    /// (--score-output with --threshold, or --label-output with --anomalous-labels).
    #[arg(long, value_name = "FILE")]
    pub onnx: Option<PathBuf>,
    /// The graph's features, in the column order of its input, comma-separated event paths
    /// (`coolant_temp`, `engine.rpm`).
    #[arg(long, value_delimiter = ',', requires = "onnx")]
    pub features: Vec<String>,
    /// Take the features, their validity rules and the event schema from a version in the
    /// registry (NAME, NAME@ALIAS or NAME:VERSION), a manifest JSON file, or a training spec
    /// (what `kappa data inspect --output json` prints, or its "spec").
    #[arg(long, value_name = "SOURCE", requires = "onnx", conflicts_with = "features")]
    pub features_from: Option<String>,
    /// A validity rule, PATH=MIN..MAX (either bound may be left out). Rows outside are refused
    /// when scored. Repeatable.
    #[arg(long = "valid-range", value_name = "PATH=MIN..MAX", value_parser = crate::train::parse_valid_range, requires = "onnx")]
    pub valid_ranges: Vec<(String, Option<f64>, Option<f64>)>,
    /// The graph input that takes the features (default: the graph's only input).
    #[arg(long, value_name = "NAME", requires = "onnx")]
    pub input: Option<String>,
    /// The output that holds the score: [N], [N, 1], or [N, K] with --score-column (a
    /// classifier's probabilities).
    #[arg(long, value_name = "NAME", requires = "onnx", conflicts_with = "label_output")]
    pub score_output: Option<String>,
    /// Column of the score output to read (1 for the positive class of a binary classifier).
    #[arg(long, default_value_t = 0, requires = "score_output")]
    pub score_column: u32,
    /// The score output reconstructs the input (an autoencoder): the score is the mean squared
    /// error between the two.
    #[arg(long, requires = "score_output")]
    pub reconstruction_error: bool,
    /// Lower values of the score output mean more anomalous (IsolationForest's `scores`, a
    /// OneClassSVM's): Kappa's score is the output negated.
    #[arg(long, requires = "score_output")]
    pub lower_is_anomalous: bool,
    /// The score output's value at which events become anomalies, in the output's own units
    /// (below it with --lower-is-anomalous, above it otherwise).
    #[arg(long, requires = "score_output")]
    pub threshold: Option<f64>,
    /// The output that holds a label instead of a score.
    #[arg(long, value_name = "NAME", requires = "onnx")]
    pub label_output: Option<String>,
    /// Label output values that mean anomalous, comma-separated (`-1` for IsolationForest's
    /// and OneClassSVM's `label`, `1` for a classifier's).
    #[arg(long, value_delimiter = ',', requires = "label_output")]
    pub anomalous_labels: Vec<String>,
    /// Label field path in the events (for backtests and monitoring); with --features-from,
    /// the source's unless given.
    #[arg(long, requires = "onnx")]
    pub label: Option<String>,
    /// Event label values meaning "anomalous", comma-separated (default: true, 1).
    #[arg(long, value_delimiter = ',', requires = "onnx")]
    pub positive: Vec<String>,
    /// Path of the event-time field (default: the Kafka record timestamp).
    #[arg(long, requires = "onnx")]
    pub time_field: Option<String>,
    /// Format of --time-field: auto, ms, s or rfc3339.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ms", "s", "rfc3339"])]
    pub time_format: String,
    /// A description stored with the version.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Record what live data should look like, so predictors monitor drift for this version:
    /// the distribution of every feature over a sample of this topic's recent events, and of
    /// the graph's own scores of them (the lineage's reference profile).
    #[arg(long, value_name = "TOPIC", requires = "onnx")]
    pub reference_topic: Option<String>,
    /// Minutes of --reference-topic, up to now, the reference is sampled from.
    #[arg(long, default_value_t = 60, requires = "reference_topic")]
    pub reference_minutes: u32,
    /// Events sampled for the reference at most.
    #[arg(long, default_value_t = 20_000, requires = "reference_topic")]
    pub reference_sample: usize,
    #[command(flatten)]
    pub kafka: kappa_kafka::KafkaArgs,
}

impl OnnxArgs {
    /// The manifest for `graph`, checked as the registry will check it.
    pub async fn manifest(&self, name: &str, graph: &[u8], registry: &mut Registry) -> anyhow::Result<ModelManifest> {
        let (mut features, source_schema) = match &self.features_from {
            Some(source) => features_from(source, registry).await?,
            None => {
                anyhow::ensure!(
                    !self.features.is_empty(),
                    "name the graph's features: --features a,b,c (in its input's column order) or --features-from a version or manifest"
                );
                (
                    self.features.iter().map(|f| feature(f.trim(), None, None)).collect(),
                    None,
                )
            }
        };
        for (path, min, max) in &self.valid_ranges {
            let f = features
                .iter_mut()
                .find(|f| &f.name == path)
                .with_context(|| format!("--valid-range {path}: {path} is not among the features"))?;
            (f.min, f.max) = (*min, *max);
        }
        let mut schema = source_schema.unwrap_or_default();
        if let Some(label) = &self.label {
            schema.label_field.clone_from(label);
        }
        if !self.positive.is_empty() {
            schema.positive_labels.clone_from(&self.positive);
        }
        if let Some(field) = &self.time_field {
            schema.time = Some(EventTime {
                field: field.clone(),
                format: crate::train::time_format(&self.time_format) as i32,
                lateness_ms: 0,
            });
        }
        let (scoring, threshold) = self.scoring()?;
        let mut manifest = ModelManifest {
            name: name.to_owned(),
            description: self.description.clone(),
            format: ModelFormat::Onnx as i32,
            features,
            schema: Some(schema),
            anomaly_threshold: threshold,
            onnx: Some(OnnxModel {
                features_input: String::new(),
                scoring: Some(scoring),
                graph: None,
            }),
            ..ModelManifest::default()
        };
        let input = match &self.input {
            Some(input) => input.clone(),
            None => only_input(&manifest, graph)?,
        };
        manifest.onnx.as_mut().expect("set above").features_input = input;
        // The registry's own check, run here first: a refusal names what to change before the
        // upload. Its description of the graph is the registry's to fill in.
        let policy = Policy {
            max_bytes: u64::MAX,
            trusted_keys: None,
            backend: kappa_model::Backend::Native,
        };
        let admitted = admit(manifest.clone(), graph, None, Signature::default(), &policy)
            .map_err(|e| anyhow::anyhow!("the registry would refuse this graph: {e}"))?;
        if let Some(topic) = &self.reference_topic {
            manifest.lineage = Some(self.reference(topic, &manifest, admitted.model).await?);
        }
        Ok(manifest)
    }

    /// The lineage of a graph trained elsewhere: where its reference profile was sampled, and
    /// the profile itself (features as read through the version's schema, the graph's scores).
    async fn reference(&self, topic: &str, manifest: &ModelManifest, model: Model) -> anyhow::Result<Lineage> {
        let to_ms = kappa_runtime::now_ms();
        let from_ms = to_ms - i64::from(self.reference_minutes) * 60_000;
        let config = self.kafka.clients().map_err(anyhow::Error::msg)?;
        let (topic_owned, max) = (topic.to_owned(), self.reference_sample);
        let limits = kappa_dataset::range::SampleLimits {
            max,
            budget: std::time::Duration::from_secs(60),
            timeout: std::time::Duration::from_secs(30),
        };
        let sampled = tokio::task::spawn_blocking(move || {
            kappa_dataset::range::sample_range(&config, "cli-reference", &topic_owned, from_ms, to_ms, limits)
        })
        .await?
        .with_context(|| format!("--reference-topic: cannot read {topic} from Kafka (--kafka-bootstrap)"))?;
        let decoder = kappa_model::schema::EventDecoder::for_manifest(manifest).map_err(anyhow::Error::msg)?;
        let (mut rows, mut event) = (Vec::new(), kappa_model::schema::DecodedEvent::default());
        for sample in &sampled.samples {
            if decoder.decode_into(&sample.payload, sample.format, &mut event).is_err() {
                continue;
            }
            let row: Option<Vec<f32>> = event
                .values
                .iter()
                .zip(&manifest.features)
                .map(|(v, f)| match v {
                    FieldValue::Number(x) if f.min.is_none_or(|lo| *x >= lo) && f.max.is_none_or(|hi| *x <= hi) => {
                        Some(*x as f32)
                    }
                    _ => None,
                })
                .collect();
            rows.extend(row);
        }
        anyhow::ensure!(
            !rows.is_empty(),
            "--reference-topic: none of the {} events sampled from {topic} in the last {} minutes has every feature",
            sampled.samples.len(),
            self.reference_minutes
        );
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let scores = model
            .score(&flat)
            .map_err(|e| anyhow::anyhow!("scoring the reference events: {e}"))?;
        let threshold = manifest.anomaly_threshold as f32;
        let features = manifest
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| {
                drift::of(&f.name, rows.iter().map(|r| f64::from(r[i]))).unwrap_or_else(|| Distribution {
                    name: f.name.clone(),
                    ..Distribution::default()
                })
            })
            .collect();
        Ok(Lineage {
            source_topic: topic.to_owned(),
            partitions: sampled.ranges,
            time_from_ms: from_ms,
            time_to_ms: to_ms,
            reference: Some(ReferenceProfile {
                features,
                validation_scores: drift::of("score", scores.iter().map(|s| f64::from(*s))),
                validation_anomaly_rate: scores
                    .iter()
                    .filter(|s| kappa_model::is_anomalous(**s, threshold))
                    .count() as f64
                    / scores.len() as f64,
            }),
            ..Lineage::default()
        })
    }

    fn scoring(&self) -> anyhow::Result<(OnnxScoring, f64)> {
        match (&self.score_output, &self.label_output) {
            (Some(output), None) => {
                let threshold = self.threshold.context(
                    "--threshold: give the score output's value at which events become anomalies (in the output's units)",
                )?;
                let scoring = OnnxScoring {
                    score_output: output.clone(),
                    score_column: self.score_column,
                    score_kind: if self.reconstruction_error {
                        OnnxScoreKind::ReconstructionError
                    } else {
                        OnnxScoreKind::Value
                    } as i32,
                    lower_is_anomalous: self.lower_is_anomalous,
                    ..OnnxScoring::default()
                };
                // Kappa's scores grow with anomaly, and so does its threshold.
                Ok((scoring, if self.lower_is_anomalous { -threshold } else { threshold }))
            }
            (None, Some(output)) => {
                anyhow::ensure!(
                    !self.anomalous_labels.is_empty(),
                    "--anomalous-labels: which values of {output} mean anomalous (-1 for IsolationForest's label, 1 for a classifier's)?"
                );
                let scoring = OnnxScoring {
                    label_output: output.clone(),
                    positive_labels: self.anomalous_labels.clone(),
                    ..OnnxScoring::default()
                };
                Ok((scoring, 0.5))
            }
            _ => anyhow::bail!(
                "say how the graph scores: --score-output NAME --threshold T, or --label-output NAME --anomalous-labels V"
            ),
        }
    }
}

fn feature(name: &str, min: Option<f64>, max: Option<f64>) -> Feature {
    Feature {
        name: name.to_owned(),
        offset: 0.0,
        scale: 1.0,
        min,
        max,
    }
}

/// The graph's one input, named in the error when there are several.
fn only_input(manifest: &ModelManifest, graph: &[u8]) -> anyhow::Result<String> {
    let checked = kappa_model::onnx::inspect(graph, &kappa_model::onnx::engine::runnable)
        .map_err(|e| anyhow::anyhow!("the registry would refuse this graph: {e}"))?;
    match checked.info.inputs.as_slice() {
        [input] => Ok(input.name.clone()),
        inputs => anyhow::bail!(
            "the graph takes {} inputs ({}); name the features input with --input (the model takes {} features)",
            inputs.len(),
            inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
            manifest.features.len()
        ),
    }
}

/// Features (names and rules, raw values) and schema from a file (a manifest, a training spec, or
/// what `kappa data inspect --output json` prints) or a registry version.
async fn features_from(source: &str, registry: &mut Registry) -> anyhow::Result<(Vec<Feature>, Option<EventSchema>)> {
    if Path::new(source).is_file() {
        return features_from_file(Path::new(source));
    }
    let (name, selector) = match (source.split_once('@'), source.split_once(':')) {
        (Some((name, alias)), _) => (name, Selector::Alias(alias.to_owned())),
        (None, Some((name, version))) => (
            name,
            Selector::Version(
                version
                    .parse()
                    .with_context(|| format!("--features-from {source}: {version} is not a version number"))?,
            ),
        ),
        (None, None) => (source, Selector::Latest),
    };
    let header = registry
        .get_manifest(name, selector)
        .await
        .with_context(|| format!("--features-from {source}: not a file, and the registry has no such version"))?;
    let manifest = header
        .manifest
        .with_context(|| format!("--features-from {source}: the version has no manifest"))?;
    Ok(from_manifest(&manifest))
}

fn from_manifest(manifest: &ModelManifest) -> (Vec<Feature>, Option<EventSchema>) {
    let features = manifest
        .features
        .iter()
        .map(|f| feature(&f.name, f.min, f.max))
        .collect();
    (features, manifest.schema.clone())
}

fn features_from_file(path: &Path) -> anyhow::Result<(Vec<Feature>, Option<EventSchema>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    // `kappa data inspect --output json` holds the training spec it would use under "spec".
    let spec = json.get("spec").unwrap_or(&json);
    let is_spec = spec["features"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f.get("path").is_some()));
    if !is_spec {
        return crate::models::read_manifest(path).map(|m| from_manifest(&m));
    }
    let spec: kappa_api::trainer::TrainingSpec = serde_json::from_value(spec.clone())
        .with_context(|| format!("{} holds a training spec that does not parse", path.display()))?;
    let features = spec.features.iter().map(|f| feature(&f.path, f.min, f.max)).collect();
    let schema = EventSchema {
        label_field: spec.label_field,
        positive_labels: spec.positive_labels,
        time: spec.time,
    };
    Ok((features, Some(schema)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_come_from_an_inspect_report_a_spec_or_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("inspect.json");
        std::fs::write(
            &report,
            r#"{"topic": "t", "fields": [], "spec": {"sourceTopic": "t", "features": [{"path": "engine.rpm", "max": 9000}, {"path": "speed"}], "labelField": "failed", "positiveLabels": ["yes"]}}"#,
        )
        .unwrap();
        let (features, schema) = features_from_file(&report).unwrap();
        let names: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["engine.rpm", "speed"]);
        assert_eq!((features[0].min, features[0].max), (None, Some(9000.0)));
        assert!(features.iter().all(|f| f.offset == 0.0 && f.scale == 1.0), "raw values");
        let schema = schema.unwrap();
        assert_eq!(
            (schema.label_field.as_str(), schema.positive_labels.as_slice()),
            ("failed", &["yes".to_owned()][..])
        );

        let manifest = dir.path().join("manifest.json");
        let mut m = kappa_model::example::autoencoder_over("m", &["a", "b"], &[1]);
        m.features[1].min = Some(-1.0);
        m.features[0].offset = 3.0;
        std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
        let (features, _) = features_from_file(&manifest).unwrap();
        assert_eq!(features[1].min, Some(-1.0));
        assert_eq!(
            features[0].offset, 0.0,
            "an MLP's scaling does not carry over to a graph"
        );
    }
}
