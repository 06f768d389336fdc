//! Drift monitoring: how the inputs and scores a version sees compare with its training run.
//! Every loaded version counts its scored rows and anomalies; one that carries a reference
//! profile (the trainer writes one into its lineage) also counts every row into the
//! reference's quantile bins, on the inference thread, with relaxed atomic adds and no
//! allocation. A version without one (an exported graph) gets windows of counts and anomaly
//! rate, with no drift. Once per window a task turns the counts
//! into a population stability index per feature and for the scores, sets the Prometheus
//! series and writes one record to the monitoring topic, where any Kafka consumer can alert.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use kappa_api::{
    events::{FeatureDrift, MonitoringWindow, ScoreDistribution},
    model::{Distribution, ModelManifest},
};
use kappa_model::drift;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::slot::ModelSlot;

/// Bins of one reference distribution and the live counts in them.
#[derive(Debug)]
struct Binned {
    name: String,
    edges: Vec<f64>,
    shares: Vec<f64>,
    counts: Vec<AtomicU64>,
}

impl Binned {
    fn new(reference: &Distribution) -> Option<Self> {
        if reference.shares.len() != reference.edges.len() + 1 {
            return None;
        }
        Some(Self {
            name: reference.name.clone(),
            edges: reference.edges.clone(),
            shares: reference.shares.clone(),
            counts: reference.shares.iter().map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn add(&self, value: f64) {
        self.counts[drift::bin(&self.edges, value)].fetch_add(1, Ordering::Relaxed);
    }

    /// The window's counts, reset for the next window.
    fn take(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.swap(0, Ordering::Relaxed)).collect()
    }

    /// The window's PSI, and counts reset for the next window.
    fn take_psi(&self) -> Option<f64> {
        drift::psi(&self.shares, &self.take())
    }

    /// The window's PSI and its distribution beside the reference's, and counts reset for the
    /// next window; `None` for a window without values.
    fn take_distribution(&self) -> Option<(f64, ScoreDistribution)> {
        let counts = self.take();
        let psi = drift::psi(&self.shares, &counts)?;
        let total: u64 = counts.iter().sum();
        let distribution = ScoreDistribution {
            edges: self.edges.clone(),
            reference_shares: self.shares.clone(),
            shares: counts.iter().map(|c| *c as f64 / total as f64).collect(),
        };
        Some((psi, distribution))
    }
}

/// One version's live counts for the current window.
#[derive(Debug)]
pub struct DriftCounts {
    /// `None` for a feature whose reference could not be read (its drift is not reported).
    features: Vec<Option<Binned>>,
    scores: Option<Binned>,
    /// `None` without a reference profile.
    reference_anomaly_rate: Option<f64>,
    rows: AtomicU64,
    anomalies: AtomicU64,
}

impl DriftCounts {
    /// Counters for a version: rows and anomalies always, and each feature's and the score's
    /// bins when its lineage carries a reference profile of its features.
    pub fn for_manifest(manifest: &ModelManifest) -> Self {
        let reference = drift::reference_of(manifest);
        Self {
            features: reference.map_or_else(Vec::new, |r| r.features.iter().map(Binned::new).collect()),
            scores: reference
                .and_then(|r| r.validation_scores.as_ref())
                .and_then(Binned::new),
            reference_anomaly_rate: reference.map(|r| r.validation_anomaly_rate),
            rows: AtomicU64::new(0),
            anomalies: AtomicU64::new(0),
        }
    }

    /// Counts a scored batch: `inputs` holds one row of features per score.
    pub fn observe(&self, inputs: &[f32], scores: &[f32], threshold: f32) {
        let width = self.features.len();
        let binned = width > 0 && inputs.len() == scores.len() * width;
        for (i, score) in scores.iter().enumerate() {
            if binned {
                for (binned, value) in self.features.iter().zip(&inputs[i * width..(i + 1) * width]) {
                    if let Some(binned) = binned {
                        binned.add(f64::from(*value));
                    }
                }
            }
            if let Some(binned) = &self.scores {
                binned.add(f64::from(*score));
            }
            if kappa_model::is_anomalous(*score, threshold) {
                self.anomalies.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.rows.fetch_add(scores.len() as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    model: String,
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabels {
    model: String,
    version: String,
    feature: String,
}

/// The monitoring series, labelled by model and version (and feature); the series of a version
/// no longer served are removed when the next window closes.
#[derive(Debug, Default)]
pub struct MonitorMetrics {
    feature_psi: Family<FeatureLabels, Gauge<f64, AtomicU64>>,
    score_psi: Family<VersionLabels, Gauge<f64, AtomicU64>>,
    anomaly_rate: Family<VersionLabels, Gauge<f64, AtomicU64>>,
    reference_anomaly_rate: Family<VersionLabels, Gauge<f64, AtomicU64>>,
    window_rows: Family<VersionLabels, Gauge>,
    windows: Counter,
    records_failed: Counter,
}

impl MonitorMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kappa_predictor");
        r.register(
            "feature_drift_psi",
            "Population stability index of a feature's live values in the last window against the version's training data",
            self.feature_psi.clone(),
        );
        r.register(
            "score_drift_psi",
            "Population stability index of the last window's scores against the version's validation scores",
            self.score_psi.clone(),
        );
        r.register(
            "window_anomaly_rate",
            "Share of the last window's scored rows above the anomaly threshold",
            self.anomaly_rate.clone(),
        );
        r.register(
            "reference_anomaly_rate",
            "Share of the version's validation rows above its anomaly threshold",
            self.reference_anomaly_rate.clone(),
        );
        r.register(
            "window_rows",
            "Rows scored in the last monitoring window",
            self.window_rows.clone(),
        );
        r.register("monitoring_windows", "Monitoring windows closed", self.windows.clone());
        r.register(
            "monitoring_records_failed",
            "Monitoring records Kafka did not acknowledge",
            self.records_failed.clone(),
        );
    }

    fn clear(&self) {
        self.feature_psi.clear();
        self.score_psi.clear();
        self.anomaly_rate.clear();
        self.reference_anomaly_rate.clear();
        self.window_rows.clear();
    }
}

pub struct Monitor {
    pub slot: Arc<ModelSlot>,
    pub metrics: Arc<MonitorMetrics>,
    /// `None`: windows go to the metrics only.
    pub producer: Option<(FutureProducer, String)>,
    pub window: Duration,
    /// Fewer rows than this in a window: too few to measure drift; only counts are reported.
    pub min_rows: u64,
    pub instance: String,
}

impl Monitor {
    /// Closes a window every `window` until `stop`.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut ticks = tokio::time::interval(self.window);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let (mut started, mut last_version) = (kappa_runtime::now_ms(), None);
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            let ended = kappa_runtime::now_ms();
            let Some(model) = self.slot.current() else { continue };
            if last_version != Some(model.version) {
                // The previous version's series describe a model no longer served.
                self.metrics.clear();
                last_version = Some(model.version);
            }
            let Some(counts) = &model.drift else { continue };
            let window = self.close(&model.name, model.version, counts, started, ended);
            started = ended;
            self.metrics.windows.inc();
            if let Some((producer, topic)) = &self.producer {
                self.publish(producer, topic, &window);
            }
        }
    }

    fn close(&self, model: &str, version: u64, counts: &DriftCounts, started: i64, ended: i64) -> MonitoringWindow {
        let rows = counts.rows.swap(0, Ordering::Relaxed);
        let anomalies = counts.anomalies.swap(0, Ordering::Relaxed);
        let measured = rows >= self.min_rows;
        let version_labels = VersionLabels {
            model: model.to_owned(),
            version: version.to_string(),
        };
        let mut features = Vec::with_capacity(counts.features.len());
        for binned in counts.features.iter().flatten() {
            // Taken every window, so a short window's counts never leak into the next.
            let psi = binned.take_psi();
            if let (true, Some(psi)) = (measured, psi) {
                self.metrics
                    .feature_psi
                    .get_or_create(&FeatureLabels {
                        model: model.to_owned(),
                        version: version.to_string(),
                        feature: binned.name.clone(),
                    })
                    .set(psi);
                features.push(FeatureDrift {
                    feature: binned.name.clone(),
                    psi,
                });
            }
        }
        let scores = counts
            .scores
            .as_ref()
            .and_then(Binned::take_distribution)
            .filter(|_| measured);
        let score_psi = scores.as_ref().map(|(psi, _)| *psi);
        let anomaly_rate = if rows == 0 { 0.0 } else { anomalies as f64 / rows as f64 };
        self.metrics.window_rows.get_or_create(&version_labels).set(rows as i64);
        if let Some(rate) = counts.reference_anomaly_rate {
            self.metrics
                .reference_anomaly_rate
                .get_or_create(&version_labels)
                .set(rate);
        }
        if measured {
            self.metrics
                .anomaly_rate
                .get_or_create(&version_labels)
                .set(anomaly_rate);
            if let Some(psi) = score_psi {
                self.metrics.score_psi.get_or_create(&version_labels).set(psi);
            }
        }
        let drifted = features
            .iter()
            .filter(|f| f.psi >= drift::PSI_THRESHOLD)
            .map(|f| f.feature.clone())
            .collect();
        MonitoringWindow {
            model_name: model.to_owned(),
            model_version: version,
            window_start_ms: started,
            window_end_ms: ended,
            events: rows,
            anomaly_rate,
            // 0 without a reference profile, which the empty `features` tell.
            reference_anomaly_rate: counts.reference_anomaly_rate.unwrap_or_default(),
            score_psi: score_psi.unwrap_or_default(),
            features,
            drifted,
            psi_threshold: drift::PSI_THRESHOLD,
            predictor: self.instance.clone(),
            score_distribution: scores.map(|(_, distribution)| distribution),
        }
    }

    /// Hands the record to the producer without waiting for Kafka, so windows keep closing on
    /// time while the broker is slow or away (a window waiting for its delivery held the next
    /// ones back, and they reached the topic late and out of order); librdkafka's queue is
    /// bounded, and a record it cannot take or deliver is counted.
    fn publish(&self, producer: &FutureProducer, topic: &str, window: &MonitoringWindow) {
        let payload = match serde_json::to_vec(window) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a monitoring record");
                return;
            }
        };
        let record = FutureRecord::to(topic).key(&window.model_name).payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => {
                let (metrics, topic) = (Arc::clone(&self.metrics), topic.to_owned());
                tokio::spawn(async move {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        metrics.records_failed.inc();
                        tracing::warn!(topic, "a monitoring record was not written");
                    }
                });
            }
            Err((e, _)) => {
                self.metrics.records_failed.inc();
                tracing::warn!(error = %e, topic, "a monitoring record was not queued");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kappa_api::model::{Lineage, ReferenceProfile};

    use super::*;

    fn manifest() -> ModelManifest {
        let mut manifest = kappa_model::example::autoencoder_over("m", &["a", "b"], &[2]);
        let a = drift::of("a", (0..1000).map(f64::from)).unwrap();
        let b = drift::of("b", (0..1000).map(|i| f64::from(i % 10))).unwrap();
        manifest.lineage = Some(Lineage {
            reference: Some(ReferenceProfile {
                features: vec![a, b],
                validation_scores: drift::of("score", (0..100).map(|i| f64::from(i) / 100.0)),
                validation_anomaly_rate: 0.05,
            }),
            ..Lineage::default()
        });
        manifest
    }

    fn take_psis(counts: &DriftCounts) -> Vec<f64> {
        counts
            .features
            .iter()
            .flatten()
            .map(|b| b.take_psi().unwrap())
            .collect()
    }

    #[test]
    fn rows_like_the_reference_score_low_and_a_shifted_feature_alone_scores_high() {
        let counts = DriftCounts::for_manifest(&manifest());
        let inputs: Vec<f32> = (0..2000).flat_map(|i| [(i % 1000) as f32, (i % 10) as f32]).collect();
        let scores: Vec<f32> = (0..2000).map(|i| (i % 100) as f32 / 100.0).collect();
        counts.observe(&inputs, &scores, 0.95);
        let psi = take_psis(&counts);
        assert!(psi.iter().all(|p| *p < 0.01), "{psi:?}");
        assert_eq!(counts.anomalies.load(Ordering::Relaxed), 80);

        let shifted: Vec<f32> = (0..2000)
            .flat_map(|i| [(i % 1000) as f32 + 400.0, (i % 10) as f32])
            .collect();
        counts.observe(&shifted, &scores, 0.95);
        let psi = take_psis(&counts);
        assert!(psi[0] > drift::PSI_THRESHOLD && psi[1] < 0.01, "{psi:?}");
    }

    #[test]
    fn a_windows_score_distribution_is_shared_out_over_the_reference_bins() {
        let counts = DriftCounts::for_manifest(&manifest());
        let binned = counts.scores.as_ref().unwrap();
        // Every score at 0.5 or above: all in the bins from the one holding 0.5 up.
        let scores: Vec<f32> = (0..400).map(|i| 0.5 + (i % 50) as f32 / 100.0).collect();
        counts.observe(&[], &scores, 0.95);
        let (psi, distribution) = binned.take_distribution().unwrap();
        assert!(psi > drift::PSI_THRESHOLD, "{psi}");
        assert_eq!(distribution.edges, binned.edges);
        assert_eq!(distribution.reference_shares, binned.shares);
        assert_eq!(distribution.shares.len(), distribution.edges.len() + 1);
        assert!((distribution.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let below_half = drift::bin(&distribution.edges, 0.5);
        assert!(
            distribution.shares[..below_half].iter().all(|s| *s == 0.0),
            "{distribution:?}"
        );
        // Counts start again: an empty window has no distribution.
        assert!(binned.take_distribution().is_none());
    }

    #[test]
    fn a_version_without_a_reference_or_with_a_mismatched_one_counts_rows_and_anomalies_only() {
        let mut mismatched = manifest();
        mismatched.features.pop();
        for manifest in [kappa_model::example::autoencoder_over("m", &["a"], &[1]), mismatched] {
            let counts = DriftCounts::for_manifest(&manifest);
            assert!(counts.features.is_empty() && counts.scores.is_none());
            assert_eq!(counts.reference_anomaly_rate, None);
            counts.observe(&[1.0, 2.0, 3.0], &[0.1, 0.9, 0.99], 0.5);
            assert_eq!(counts.rows.load(Ordering::Relaxed), 3);
            assert_eq!(counts.anomalies.load(Ordering::Relaxed), 2);
        }
    }
}
