use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// The trainer's Prometheus series; names are documented in the README.
#[derive(Debug, Default)]
pub struct TrainerMetrics {
    pub jobs: Family<OutcomeLabels, Counter>,
    pub running: Gauge,
    pub samples_read: Counter,
    pub samples_per_second: Gauge<f64, AtomicU64>,
    pub loss: Gauge<f64, AtomicU64>,
    pub published: Counter,
    pub promoted: Counter,
}

impl TrainerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // Every outcome exists from the start at 0, so rates and alerts work before the first one.
        for outcome in ["succeeded", "failed", "cancelled"] {
            let _ = self.jobs.get_or_create(&OutcomeLabels { outcome });
        }
        let r = registry.sub_registry_with_prefix("kappa_trainer");
        r.register(
            "jobs",
            "Finished training jobs by outcome (succeeded, failed, cancelled)",
            self.jobs.clone(),
        );
        r.register("jobs_running", "Training jobs running now", self.running.clone());
        r.register(
            "samples_read",
            "Events read from Kafka by training jobs",
            self.samples_read.clone(),
        );
        r.register(
            "training_samples_per_second",
            "Training throughput of the last epoch",
            self.samples_per_second.clone(),
        );
        r.register("loss", "Training loss of the last epoch of any job", self.loss.clone());
        r.register("published", "Models published to the registry", self.published.clone());
        r.register("promoted", "Models promoted to their alias", self.promoted.clone());
    }
}
