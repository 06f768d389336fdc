use std::{future::Future, sync::Arc, time::Duration};

use kappa_api::{
    inference::grpc_inference_service_server::GrpcInferenceServiceServer, predictor::predictor_server::PredictorServer,
};
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{
    PredictorConfig, batcher::Batcher, follower, loader::Loader, metrics::PredictorMetrics, oip::Oip, serving::Serving,
    slot::ModelSlot, typed::Typed,
};

const PREDICTOR_SERVICE: &str = "kappa.predictor.v1.Predictor";
const OIP_SERVICE: &str = "inference.GRPCInferenceService";

/// Runs the predictor on `listener` until `shutdown` resolves. Health reports NOT_SERVING until
/// the first model is loaded, and again from the moment shutdown starts.
pub async fn run(
    config: PredictorConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let kafka = config.kafka.clients().map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(PredictorMetrics::default());
    let mut metrics_registry = MetricsRegistry::default();
    metrics.register(&mut metrics_registry);
    let stop = CancellationToken::new();
    let security = config
        .security
        .load(crate::access::access, kappa_api::streaming_paths(), stop.clone())
        .map_err(anyhow::Error::msg)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let served = vec!["", PREDICTOR_SERVICE, OIP_SERVICE];
    for service in &served {
        health.set_service_status(*service, ServingStatus::NotServing).await;
    }
    health
        .set_service_status(kappa_runtime::LIVENESS_SERVICE, ServingStatus::Serving)
        .await;

    let slot = Arc::new(ModelSlot::default());
    let targets = follower::spawn(
        &kafka,
        &config.models_topic,
        &config.model,
        &config.follow,
        stop.clone(),
    )?;
    let loader = Loader {
        slot: Arc::clone(&slot),
        metrics: Arc::clone(&metrics),
        health: health.clone(),
        consumer_config: kafka.clone(),
        topic: config.models_topic.clone(),
        backend: config.backend,
        served_services: served.clone(),
        instance: format!("{}:{}", kappa_runtime::hostname(), listener.local_addr()?.port()),
        trusted_keys: config.trusted_keys.clone(),
        max_model_bytes: config.max_model_bytes,
    };
    tokio::spawn(loader.run(targets));

    let batcher = Batcher::start(
        config.inference_threads as usize,
        config.queue_capacity as usize,
        config.max_batch_size as usize,
        config.max_queue_delay,
        Arc::clone(&metrics),
    );
    let serving = Arc::new(Serving {
        model_name: config.model.clone(),
        slot,
        batcher,
        metrics: Arc::clone(&metrics),
    });
    let (reflection_v1, reflection_v1alpha) = kappa_api::reflection::for_services(&[PREDICTOR_SERVICE, OIP_SERVICE])?;

    let stream_task = config.stream.then(|| {
        let events = crate::stream::EventCounter::default();
        for reason in crate::stream::OUTCOMES {
            let _ = events.get_or_create(&crate::metrics::ReasonLabels { reason });
        }
        metrics_registry.register(
            "kappa_predictor_stream_events",
            "Sensor events handled in stream mode, by outcome (scored, or why not)",
            events.clone(),
        );
        let lag = prometheus_client::metrics::gauge::Gauge::default();
        metrics_registry.register(
            "kappa_predictor_stream_lag",
            "Sensor events not yet consumed, summed over this replica's partitions",
            lag.clone(),
        );
        let settings = crate::stream::StreamSettings {
            sensor_topic: config.sensor_topic.clone(),
            predictions_topic: config.predictions_topic.clone(),
            group: config.consumer_group.clone(),
            max_in_flight: config.stream_max_in_flight as usize,
        };
        let (kafka, serving, stop) = (kafka.clone(), Arc::clone(&serving), stop.clone());
        tokio::spawn(async move {
            // Consume only once a model serves, so no event is answered with "no model loaded".
            while serving.slot.current().is_none() {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            crate::stream::run(kafka, settings, serving, events, lag, stop).await
        })
    });

    if let Some(listener) = metrics_listener {
        tracing::info!(address = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
        tokio::spawn(kappa_runtime::serve_metrics(
            listener,
            Arc::new(metrics_registry),
            stop.clone().cancelled_owned(),
            security.metrics_tls.clone(),
        ));
    }
    tracing::info!(
        address = %listener.local_addr()?,
        model = config.model,
        follow = %config.follow,
        "kappa-predictor listening for gRPC"
    );
    let router = kappa_runtime::kappa_server(&security)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            GrpcInferenceServiceServer::new(Oip(Arc::clone(&serving)))
                .max_decoding_message_size(security.limits.max_message_bytes),
        )
        .add_service(PredictorServer::new(Typed(serving)).max_decoding_message_size(security.limits.max_message_bytes));
    let grace = config.shutdown_grace;
    kappa_runtime::serve_gracefully(router, listener, &security, shutdown, &health, &served, grace, || {}).await?;
    stop.cancel();
    if let Some(task) = stream_task {
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!("stream scoring failed: {e:#}"),
            Ok(Err(e)) => tracing::error!("stream scoring task failed: {e}"),
            Err(_) => tracing::warn!("stream scoring did not drain within the grace period"),
        }
    }
    tracing::info!("kappa-predictor stopped");
    Ok(())
}
