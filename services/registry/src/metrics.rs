use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: &'static str,
    pub code: &'static str,
}

/// The registry's Prometheus series; names are documented in the README.
#[derive(Debug, Default)]
pub struct RegistryMetrics {
    pub publishes: Family<OutcomeLabels, Counter>,
    pub published_bytes: Counter,
    pub requests: Family<RpcLabels, Counter>,
    pub replay_seconds: Gauge<f64, AtomicU64>,
    pub log_position: Gauge,
    pub fenced: Gauge,
    pub refused_records: Family<ReasonLabels, Counter>,
}

impl RegistryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // Every outcome exists from the start at 0, so rates and alerts work before the first one.
        for outcome in ["created", "deduplicated", "rejected", "failed"] {
            let _ = self.publishes.get_or_create(&OutcomeLabels { outcome });
        }
        for refusal in kappa_modellog::records::Refusal::ALL {
            let _ = self.refused_records.get_or_create(&ReasonLabels {
                reason: refusal.as_str(),
            });
        }
        let r = registry.sub_registry_with_prefix("kappa_registry");
        r.register(
            "publishes",
            "Publish calls by outcome (created, deduplicated, rejected, failed)",
            self.publishes.clone(),
        );
        r.register(
            "published_bytes",
            "Weight bytes written to Kafka by successful publishes",
            self.published_bytes.clone(),
        );
        r.register(
            "requests",
            "gRPC requests by method and status code",
            self.requests.clone(),
        );
        r.register(
            "replay_seconds",
            "Time the start-up replay of the models topic took",
            self.replay_seconds.clone(),
        );
        r.register(
            "log_position",
            "Next models-topic offset the registry will apply",
            self.log_position.clone(),
        );
        r.register(
            "fenced",
            "1 when a newer registry fenced this one and writes are refused",
            self.fenced.clone(),
        );
        r.register(
            "refused_records",
            "Models-topic records skipped, by reason (undecodable, unverified, replayed, out_of_bounds)",
            self.refused_records.clone(),
        );
    }

    pub fn observe<T>(&self, rpc: &'static str, result: &Result<T, tonic::Status>) {
        let code = match result {
            Ok(_) => "OK",
            Err(status) => kappa_runtime::grpc_code_name(status.code()),
        };
        self.requests.get_or_create(&RpcLabels { rpc, code }).inc();
    }
}

/// The follower reports into the registry's metrics.
impl kappa_modellog::follower::Observer for RegistryMetrics {
    fn applied(&self, next: i64) {
        self.log_position.set(next);
    }

    fn refused(&self, error: &kappa_modellog::records::RefusedRecord) {
        self.refused_records
            .get_or_create(&ReasonLabels {
                reason: error.kind.as_str(),
            })
            .inc();
        tracing::error!(error = %error, "skipping a models-topic record");
    }

    fn caught_up(&self, seconds: f64, position: i64) {
        self.replay_seconds.set(seconds);
        tracing::info!(seconds, position, "replayed the models topic; serving");
    }
}
