use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use kappa_api::trainer::trainer_server::TrainerServer;
use kappa_runtime::{Host, Routes, Running, ServerArgs, auth::Policy};

use crate::{
    TrainerConfig,
    job::JobContext,
    service::{TrainerService, restored},
    store::JobStore,
};

/// The trainer as the runtime host runs it: jobs run until shutdown cancels them, and their
/// final states reach the jobs topic before the process exits.
pub struct Trainer(Arc<TrainerService>);

impl kappa_runtime::Service for Trainer {
    type Config = TrainerConfig;

    const NAME: &'static str = "kappa-trainer";
    const GRPC_SERVICES: &'static [&'static str] = &["kappa.trainer.v1.Trainer"];
    const ACCESS: Policy = crate::access::access;

    fn server_args(config: &TrainerConfig) -> &ServerArgs {
        &config.server
    }

    fn validate(config: &TrainerConfig) -> Result<(), String> {
        let security = config.registry_security()?;
        config
            .registry
            .check_token_transport(&security)
            .map_err(|e| format!("--registry {}: {e}", config.registry))
    }

    fn summary(config: &TrainerConfig) -> String {
        format!(
            "registry={} jobs_topic={} max_concurrent_jobs={}",
            config.registry, config.jobs_topic, config.max_concurrent_jobs
        )
    }

    /// Restores the past jobs from the jobs topic.
    async fn build(config: TrainerConfig, host: &mut Host) -> anyhow::Result<Self> {
        let metrics = Arc::new(crate::metrics::TrainerMetrics::default());
        metrics.register(&mut host.metrics);
        let (store, past_jobs) = JobStore::open(&host.kafka, &config.jobs_topic, config.replication_factor).await?;
        let store = Arc::new(store);
        tracing::info!(
            jobs = past_jobs.len(),
            topic = config.jobs_topic,
            "restored past training jobs"
        );
        Ok(Self(Arc::new(TrainerService {
            jobs: RwLock::new(restored(past_jobs, &store)),
            store,
            context: JobContext {
                metrics,
                kafka: host.kafka.clone(),
                registry: config.registry.clone(),
                registry_security: config.registry_security().map_err(anyhow::Error::msg)?,
                signer: config.signing_key.clone(),
                max_rows: config.max_rows,
                kafka_timeout: config.kafka_timeout,
            },
            max_running: config.max_concurrent_jobs as usize,
            monitor_watches: crate::monitor::watches(),
        })))
    }

    fn start(self, _: &Host, routes: Routes) -> Running {
        let service = self.0;
        let (cancelling, finishing) = (Arc::clone(&service), Arc::clone(&service));
        routes
            .serve(TrainerServer::from_arc(service))
            .running()
            .on_drain(move || {
                for handle in cancelling.jobs.read().expect("jobs lock poisoned").values() {
                    handle.cancel.cancel();
                }
            })
            .finally(async move {
                // Cancelled jobs record their final state as they unwind; give them a moment,
                // then make sure every state reached the topic before the process exits.
                finishing.wait_idle(Duration::from_secs(5)).await;
                let store = Arc::clone(&finishing.store);
                tokio::task::spawn_blocking(move || store.flush(Duration::from_secs(10))).await?;
                Ok(())
            })
    }
}
