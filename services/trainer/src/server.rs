use std::{
    future::Future,
    sync::{Arc, RwLock},
    time::Duration,
};

use kappa_api::trainer::trainer_server::TrainerServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    TrainerConfig,
    job::JobContext,
    service::{TrainerService, restored},
    store::JobStore,
};

const TRAINER_SERVICE: &str = "kappa.trainer.v1.Trainer";

/// Runs the trainer on `listener` until `shutdown` resolves; running jobs are cancelled then.
pub async fn run(
    config: TrainerConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let kafka = config.kafka.clients().map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(crate::metrics::TrainerMetrics::default());
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut metrics_registry);
    let (store, past_jobs) = JobStore::open(&kafka, &config.jobs_topic, config.replication_factor).await?;
    let store = Arc::new(store);
    tracing::info!(
        jobs = past_jobs.len(),
        topic = config.jobs_topic,
        "restored past training jobs"
    );
    let service = Arc::new(TrainerService {
        jobs: RwLock::new(restored(past_jobs, &store)),
        store,
        context: JobContext {
            metrics: Arc::clone(&metrics),
            kafka: kafka.clone(),
            registry: config.registry.clone(),
            registry_security: config.registry_security().map_err(anyhow::Error::msg)?,
            signer: config.signing_key.clone(),
            max_rows: config.max_rows,
            kafka_timeout: config.kafka_timeout,
        },
        max_running: config.max_concurrent_jobs as usize,
    });
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = kappa_runtime::Readiness::start(reporter, &["", TRAINER_SERVICE], &[]).await;
    readiness.register(&mut metrics_registry, "kappa_trainer");
    let (reflection_v1, reflection_v1alpha) = kappa_api::reflection::for_services(&[TRAINER_SERVICE])?;
    let stop = CancellationToken::new();
    let security = config
        .security
        .load(crate::access::access, kappa_api::streaming_paths(), stop.clone())
        .map_err(anyhow::Error::msg)?;
    kappa_runtime::spawn_metrics(metrics_listener, metrics_registry, &security, &stop)?;
    tracing::info!(address = %listener.local_addr()?, registry = %config.registry, "kappa-trainer listening for gRPC");
    let router = kappa_runtime::kappa_server(&security)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            TrainerServer::from_arc(Arc::clone(&service)).max_decoding_message_size(security.limits.max_message_bytes),
        );
    let grace = config.shutdown_grace;
    kappa_runtime::serve_gracefully(router, listener, &security, shutdown, &readiness, grace, || {
        for handle in service.jobs.read().expect("jobs lock poisoned").values() {
            handle.cancel.cancel();
        }
    })
    .await?;
    // Cancelled jobs record their final state as they unwind; give them a moment, then make
    // sure every state reached the topic before the process exits.
    service.wait_idle(Duration::from_secs(5)).await;
    let store = Arc::clone(&service.store);
    tokio::task::spawn_blocking(move || store.flush(Duration::from_secs(10))).await?;
    stop.cancel();
    tracing::info!("kappa-trainer stopped");
    Ok(())
}
