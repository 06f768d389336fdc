use std::{future::Future, sync::Arc, time::Duration};

use kappa_api::{
    inference::grpc_inference_service_server::GrpcInferenceServiceServer, predictor::predictor_server::PredictorServer,
};
use kappa_runtime::Readiness;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    PredictorConfig,
    batcher::Batcher,
    faults::Faults,
    follower,
    loader::{self, Loader},
    metrics::PredictorMetrics,
    oip::Oip,
    serving::Serving,
    slot::ModelSlot,
    typed::Typed,
};

const PREDICTOR_SERVICE: &str = "kappa.predictor.v1.Predictor";
const OIP_SERVICE: &str = "inference.GRPCInferenceService";
/// The grpc.health.v1 names readiness is published under.
const SERVED: [&str; 3] = ["", PREDICTOR_SERVICE, OIP_SERVICE];

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

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let waiting = format!(
        "no model loaded yet: waiting for {} of {:?}",
        config.follow, config.model
    );
    let readiness = Readiness::start(reporter, &SERVED, &[(loader::MODEL, &waiting)]).await;
    readiness.register(&mut metrics_registry, "kappa_predictor");
    let faults = Arc::new(Faults::new(config.faults.clone()));

    let slot = Arc::new(ModelSlot::default());
    // This replica, in its records (load spans, monitoring windows).
    let instance = format!("{}:{}", kappa_runtime::hostname(), listener.local_addr()?.port());
    let follows: Vec<_> = std::iter::once(config.follow.clone())
        .chain(config.shadow.clone())
        .collect();
    let mut targets = follower::start(
        &kafka,
        &config.models_topic,
        &config.model,
        &follows,
        &readiness,
        stop.clone(),
    )?
    .into_iter();
    let served_targets = targets.next().expect("one receiver per follow");
    // The served model's loader and the shadow's differ only in their slot and role.
    let loader_for = |slot: &Arc<ModelSlot>, role| {
        Arc::new(Loader {
            slot: Arc::clone(slot),
            metrics: Arc::clone(&metrics),
            readiness: Arc::clone(&readiness),
            chunk_readers: Arc::new(loader::chunk_readers(kafka.clone())),
            topic: config.models_topic.clone(),
            backend: config.backend,
            instance: instance.clone(),
            trusted_keys: config.trusted_keys.clone(),
            max_model_bytes: config.max_model_bytes,
            faults: Arc::clone(&faults),
            role,
        })
    };
    let loader = loader_for(&slot, loader::Role::Serving);
    readiness.supervise("loader", stop.clone(), move || {
        Arc::clone(&loader).run(served_targets.clone())
    });
    let shadow = match (targets.next(), &config.shadow) {
        (Some(shadow_targets), Some(follow)) => {
            let shadow_slot = Arc::new(ModelSlot::default());
            let shadow_loader = loader_for(&shadow_slot, loader::Role::Shadow);
            readiness.supervise("shadow_loader", stop.clone(), move || {
                Arc::clone(&shadow_loader).run(shadow_targets.clone())
            });
            let shadow_metrics = Arc::new(crate::shadow::ShadowMetrics::default());
            shadow_metrics.register(&mut metrics_registry);
            // Shadow answers are evidence, not a contract: batched, acks from the leader.
            let producer = kafka.config(&[
                ("acks", "1"),
                ("linger.ms", "20"),
                ("queue.buffering.max.messages", "100000"),
            ]);
            tracing::info!(shadow = %follow, topic = config.shadow_topic, "shadow scoring on");
            Some(crate::shadow::Shadow::start(
                shadow_slot,
                config.shadow_queue_capacity as usize,
                &producer,
                config.shadow_topic.clone(),
                instance.clone(),
                shadow_metrics,
            )?)
        }
        _ => None,
    };

    {
        let monitor_metrics = Arc::new(crate::monitor::MonitorMetrics::default());
        monitor_metrics.register(&mut metrics_registry);
        let producer = if config.monitoring_topic.is_empty() {
            None
        } else {
            let producer: rdkafka::producer::FutureProducer = kafka
                .config(&[("acks", "all"), ("enable.idempotence", "true"), ("linger.ms", "100")])
                .create()?;
            Some((producer, config.monitoring_topic.clone()))
        };
        let monitor = crate::monitor::Monitor {
            slot: Arc::clone(&slot),
            metrics: monitor_metrics,
            producer,
            window: config.monitor_window,
            min_rows: config.monitor_min_rows,
            instance: instance.clone(),
        };
        tokio::spawn(monitor.run(stop.clone()));
    }
    let batcher = Batcher::start(
        config.inference_threads as usize,
        config.queue_capacity as usize,
        config.max_batch_size as usize,
        config.max_queue_delay,
        Arc::clone(&metrics),
        faults,
    );
    let serving = Arc::new(Serving {
        model_name: config.model.clone(),
        slot,
        batcher,
        max_request_rows: config.max_request_rows as usize,
        metrics: Arc::clone(&metrics),
        readiness: Arc::clone(&readiness),
        shadow,
    });
    let (reflection_v1, reflection_v1alpha) = kappa_api::reflection::for_services(&[PREDICTOR_SERVICE, OIP_SERVICE])?;

    if config.stream {
        let metrics = Arc::new(crate::stream::StreamMetrics::default());
        metrics.register(&mut metrics_registry);
        let port = listener.local_addr()?.port();
        let settings = Arc::new(crate::stream::StreamSettings {
            sensor_topic: config.sensor_topic.clone(),
            predictions_topic: config.predictions_topic.clone(),
            group: config.consumer_group.clone(),
            max_in_flight: config.stream_max_in_flight as usize,
            transactional_id: config.stream_exactly_once.then(|| {
                config
                    .stream_transactional_id
                    .clone()
                    .unwrap_or_else(|| format!("{}-{}-{port}", config.consumer_group, kappa_runtime::hostname()))
            }),
        });
        let (kafka, serving, stop) = (kafka.clone(), Arc::clone(&serving), stop.clone());
        readiness.supervise(crate::stream::STREAM, stop.clone(), move || {
            let (kafka, settings, serving) = (kafka.clone(), Arc::clone(&settings), Arc::clone(&serving));
            let (metrics, stop) = (Arc::clone(&metrics), stop.clone());
            async move {
                // Consume only once a model serves, so no event is answered with "no model loaded".
                while serving.slot.current().is_none() {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                crate::stream::run(kafka, &settings, serving, metrics, stop).await
            }
        });
    }

    kappa_runtime::spawn_metrics(metrics_listener, metrics_registry, &security, &stop)?;
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
    kappa_runtime::serve_gracefully(router, listener, &security, shutdown, &readiness, grace, || {}).await?;
    stop.cancel();
    // The stream scorer finishes what it started and commits; the supervisor waits for it.
    readiness.stopped(grace).await;
    tracing::info!("kappa-predictor stopped");
    Ok(())
}
