use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: &'static str,
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcOnly {
    pub rpc: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The predictor's Prometheus series; names are documented in the README.
#[derive(Debug)]
pub struct PredictorMetrics {
    pub requests: Family<RpcLabels, Counter>,
    pub latency: Family<RpcOnly, Histogram>,
    pub batch_size: Histogram,
    pub queue_depth: Gauge,
    pub loaded_version: Gauge,
    pub swaps: Counter,
    pub swap_latency: Histogram,
    pub load_failures: Family<ReasonLabels, Counter>,
    pub model_ready: Gauge<f64, AtomicU64>,
    pub inference_panics: Counter,
    pub load_retries: Counter,
    /// Event time of the cutover in force (0 without one).
    pub cutover_from_ms: Gauge,
    pub cutover_fallbacks: Counter,
    /// Version the shadow scores with (`--shadow`; 0 without one, or before it loads).
    pub shadow_version: Gauge,
    /// Models-topic records of this model the follower refused, by reason.
    pub refused_records: Family<ReasonLabels, Counter>,
    /// Flagged rows explained by median replacement (versions that do not explain themselves).
    pub median_replacement_rows: Counter,
    /// Flagged rows left unexplained, by reason (`budget`, `no_single_feature`).
    pub explanations_skipped: Family<ReasonLabels, Counter>,
}

/// Why a version can be refused (the `reason` label of `load_failures`).
pub const LOAD_FAILURE_REASONS: [&str; 9] = [
    "no_manifest",
    "signature",
    "too_large",
    "missing_chunks",
    "read_failed",
    "digest_mismatch",
    "invalid_model",
    "warmup_failed",
    "non_finite_output",
];

impl Default for PredictorMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 18))),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
            queue_depth: Gauge::default(),
            loaded_version: Gauge::default(),
            swaps: Counter::default(),
            swap_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            load_failures: Family::default(),
            model_ready: Gauge::default(),
            inference_panics: Counter::default(),
            load_retries: Counter::default(),
            cutover_from_ms: Gauge::default(),
            cutover_fallbacks: Counter::default(),
            shadow_version: Gauge::default(),
            refused_records: Family::default(),
            median_replacement_rows: Counter::default(),
            explanations_skipped: Family::default(),
        }
    }
}

/// Why a flagged row goes unexplained (the `reason` label of `explanations_skipped`).
const EXPLANATION_SKIP_REASONS: [&str; 2] = ["budget", "no_single_feature"];

impl PredictorMetrics {
    /// Counts what one batch's median replacement did.
    pub fn count_occlusion(&self, outcome: &kappa_model::median_replacement::Outcome) {
        self.median_replacement_rows.inc_by(outcome.explained as u64);
        let [budget, no_single_feature] = EXPLANATION_SKIP_REASONS;
        for (reason, rows) in [
            (budget, outcome.over_budget),
            (no_single_feature, outcome.no_single_feature),
        ] {
            if rows > 0 {
                self.explanations_skipped
                    .get_or_create(&ReasonLabels { reason })
                    .inc_by(rows as u64);
            }
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        // Every reason exists from the start at 0, so an alert on its rate works from the start.
        for reason in LOAD_FAILURE_REASONS {
            let _ = self.load_failures.get_or_create(&ReasonLabels { reason });
        }
        for reason in EXPLANATION_SKIP_REASONS {
            let _ = self.explanations_skipped.get_or_create(&ReasonLabels { reason });
        }
        for refusal in kappa_modellog::records::Refusal::ALL {
            let _ = self.refused_records.get_or_create(&ReasonLabels {
                reason: refusal.as_str(),
            });
        }
        let r = registry.sub_registry_with_prefix("kappa_predictor");
        r.register(
            "requests",
            "gRPC requests by method and status code",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time to answer a request, by method",
            self.latency.clone(),
        );
        r.register("batch_size", "Rows per forward pass", self.batch_size.clone());
        r.register(
            "inference_panics",
            "Panics caught on the inference threads (the batch fails, the thread carries on)",
            self.inference_panics.clone(),
        );
        r.register(
            "load_retries",
            "Loads tried again after a transient failure (the weights could not be read)",
            self.load_retries.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for an inference thread",
            self.queue_depth.clone(),
        );
        r.register(
            "loaded_version",
            "Version of the model being served (0 before the first load)",
            self.loaded_version.clone(),
        );
        r.register(
            "swaps",
            "Model swaps, rollbacks to the warm previous version included",
            self.swaps.clone(),
        );
        r.register(
            "swap_latency_seconds",
            "From the registry's publish time of a version to this predictor serving it",
            self.swap_latency.clone(),
        );
        r.register(
            "load_failures",
            "Versions refused as broken, by reason",
            self.load_failures.clone(),
        );
        r.register(
            "refused_log_records",
            "Models-topic records of the served model skipped, by reason (undecodable, unverified, replayed, out_of_bounds)",
            self.refused_records.clone(),
        );
        r.register(
            "cutover_from_ms",
            "Event time (ms) from which the served version scores stream events after an alias move by event time; 0 without one",
            self.cutover_from_ms.clone(),
        );
        r.register(
            "cutover_fallbacks",
            "Stream events before a cutover scored by the new version because the earlier one could not be loaded",
            self.cutover_fallbacks.clone(),
        );
        r.register(
            "shadow_version",
            "Version the shadow scores a copy of the traffic with (--shadow); 0 without one or before it loads",
            self.shadow_version.clone(),
        );
        r.register(
            "median_replacement_rows",
            "Flagged rows of versions that do not explain their scores (ONNX graphs, raw-output MLPs), explained by setting each feature to its training median",
            self.median_replacement_rows.clone(),
        );
        r.register(
            "explanations_skipped",
            "Flagged rows left without an explanation, by reason: budget (past --explain-budget-rows), no_single_feature (no one feature at its median lowers the score)",
            self.explanations_skipped.clone(),
        );
        r.register(
            "model_ready",
            "1 while a model is loaded and serving",
            self.model_ready.clone(),
        );
    }
}

/// The follower reports the records it refuses into the predictor's metrics.
impl kappa_modellog::follower::Observer for PredictorMetrics {
    fn refused(&self, error: &kappa_modellog::records::RefusedRecord) {
        self.refused_records
            .get_or_create(&ReasonLabels {
                reason: error.kind.as_str(),
            })
            .inc();
        tracing::error!(error = %error, "skipping a models-topic record; the served version does not change");
    }
}
