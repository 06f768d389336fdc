use std::{
    future::Future,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use kappa_api::registry::registry_server::RegistryServer;
use kappa_kafka::{ModelsTopicSettings, ensure_models_topic};
use kappa_modellog::{ModelLog, follower};
use kappa_runtime::Readiness;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    RegistryConfig,
    metrics::RegistryMetrics,
    service::{Limits, RegistryService},
    writer::Writer,
};

const REGISTRY_SERVICE: &str = "kappa.registry.v1.Registry";

/// Runs the registry on `listener` until `shutdown` resolves: prepares the topic, fences older
/// writers, replays the log (NOT_SERVING until done), then serves; on shutdown it reports
/// NOT_SERVING and gives in-flight requests the configured grace period.
pub async fn run(
    config: RegistryConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let kafka = config.kafka.clients().map_err(anyhow::Error::msg)?;
    let topic = config.models_topic.clone();
    ensure_models_topic(
        &kafka,
        &ModelsTopicSettings {
            topic: topic.clone(),
            replication_factor: config.replication_factor,
            max_message_bytes: config.topic_max_message_bytes(),
            extra_configs: config.topic_configs.clone(),
        },
    )
    .await?;

    let writer = {
        let (kafka, id, topic) = (kafka.clone(), config.transactional_id.clone(), topic.clone());
        let max_bytes = config.topic_max_message_bytes();
        let delay = config.fault_delay_before_commit;
        tokio::task::spawn_blocking(move || Writer::connect(&kafka, &id, max_bytes, &topic, delay))
            .await?
            .with_context(|| {
                format!("cannot initialise the transactional producer {:?}; is Kafka reachable and does it allow transactions?", config.transactional_id)
            })?
    };
    tracing::info!(
        transactional_id = config.transactional_id,
        "transactional producer ready; older registries are fenced"
    );

    let metrics = Arc::new(RegistryMetrics::default());
    let mut metrics_registry = MetricsRegistry::default();
    metrics.register(&mut metrics_registry);

    let stop = CancellationToken::new();

    let security = config
        .security
        .load(crate::access::access, kappa_api::streaming_paths(), stop.clone())
        .map_err(anyhow::Error::msg)?;
    let catalog = Arc::new(RwLock::new(ModelLog::new()));
    let progress = follower::spawn(
        &kafka,
        &topic,
        "kappa-registry-follower",
        Arc::clone(&catalog),
        Arc::clone(&metrics) as Arc<dyn follower::Observer>,
        stop.clone(),
    )?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::start(
        reporter,
        &["", REGISTRY_SERVICE],
        &[("catalog", "replaying the models topic")],
    )
    .await;
    readiness.register(&mut metrics_registry, "kappa_registry");
    {
        let (readiness, progress, stop) = (Arc::clone(&readiness), progress.clone(), stop.clone());
        tokio::spawn(async move {
            if progress.wait_caught_up().await {
                readiness.clear("catalog");
            }
            // The follower only stops with the service; if it stops before, reads are stale.
            let mut applied = progress.applied.clone();
            while applied.changed().await.is_ok() {}
            if !stop.is_cancelled() {
                readiness.report(
                    "catalog",
                    "the models-topic follower stopped: reads are stale and writes cannot be confirmed; restart the registry",
                );
            }
        });
    }

    let (reflection_v1, reflection_v1alpha) = kappa_api::reflection::for_services(&[REGISTRY_SERVICE])?;

    let service = RegistryService {
        catalog,
        writer: Arc::new(writer),
        progress,
        chunk_readers: Arc::new(crate::reader::chunk_readers(kafka.clone())),
        consumer_config: kafka,
        topic,
        chunk_bytes: config.chunk_bytes as usize,
        max_model_bytes: config.max_model_bytes,
        metrics: Arc::clone(&metrics),
        readiness: Arc::clone(&readiness),
        trusted_keys: config.trusted_keys.clone(),
        limits: Limits {
            publish_buffer: Arc::new(tokio::sync::Semaphore::new(config.max_publish_buffer_bytes as usize)),
            publish_buffer_bytes: config.max_publish_buffer_bytes,
            publish_idle: config.publish_idle,
            read_streams: Arc::new(tokio::sync::Semaphore::new(config.max_read_streams as usize)),
            max_read_streams: u64::from(config.max_read_streams),
        },
    };
    let registry = RegistryServer::new(service).max_decoding_message_size(security.limits.max_message_bytes);

    kappa_runtime::spawn_metrics(metrics_listener, metrics_registry, &security, &stop)?;

    tracing::info!(address = %listener.local_addr()?, "kappa-registry listening for gRPC");
    let router = kappa_runtime::kappa_server(&security)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(registry);
    kappa_runtime::serve_gracefully(
        router,
        listener,
        &security,
        shutdown,
        &readiness,
        config.shutdown_grace,
        || {},
    )
    .await?;
    stop.cancel();
    tracing::info!("kappa-registry stopped");
    Ok(())
}
