use std::{sync::Arc, time::Duration};

use kappa_api::{
    inference::grpc_inference_service_server::GrpcInferenceServiceServer, predictor::predictor_server::PredictorServer,
};
use kappa_runtime::{Host, Routes, Running, ServerArgs, auth::Policy};

use crate::{
    PredictorConfig,
    batcher::Batcher,
    faults::Faults,
    follower,
    loader::{self, Loader},
    metrics::PredictorMetrics,
    monitor::{Monitor, MonitorMetrics},
    oip::Oip,
    serving::Serving,
    shadow::{Shadow, ShadowMetrics, ShadowProducer},
    slot::ModelSlot,
    stream::{StreamMetrics, StreamSettings},
    typed::Typed,
};

const PREDICTOR_SERVICE: &str = "kappa.predictor.v1.Predictor";
const OIP_SERVICE: &str = "inference.GRPCInferenceService";

/// The predictor as the runtime host runs it. Health reports NOT_SERVING until the first model
/// is loaded, and again from the moment shutdown starts.
pub struct Predictor {
    config: PredictorConfig,
    metrics: Arc<PredictorMetrics>,
    faults: Arc<Faults>,
    slot: Arc<ModelSlot>,
    follower: follower::Follower,
    shadow: Option<(ShadowProducer, Arc<ShadowMetrics>)>,
    monitor: Monitor,
    stream: Option<(Arc<StreamSettings>, Arc<StreamMetrics>)>,
    /// Re-reads --trusted-keys when they change.
    trusted_keys: Option<Arc<kappa_runtime::reload::Reloading<()>>>,
}

impl kappa_runtime::Service for Predictor {
    type Config = PredictorConfig;

    const NAME: &'static str = "kappa-predictor";
    const GRPC_SERVICES: &'static [&'static str] = &[PREDICTOR_SERVICE, OIP_SERVICE];
    const ACCESS: Policy = crate::access::access;

    fn server_args(config: &PredictorConfig) -> &ServerArgs {
        &config.server
    }

    fn summary(config: &PredictorConfig) -> String {
        format!(
            "topic={} model={} follow={} max_batch_size={} backend={:?} stream={}",
            config.models_topic, config.model, config.follow, config.max_batch_size, config.backend, config.stream
        )
    }

    fn validate(config: &PredictorConfig) -> Result<(), String> {
        config.tiering.validate()
    }

    fn waits_for(config: &PredictorConfig) -> Vec<(&'static str, String)> {
        let waiting = format!(
            "no model loaded yet: waiting for {} of {:?}",
            config.follow, config.model
        );
        vec![(loader::MODEL, waiting)]
    }

    /// Opens the models-log follower and makes the producers (shadow answers, monitoring
    /// windows), so a setting librdkafka refuses stops the start-up before anything runs.
    async fn build(config: PredictorConfig, host: &mut Host) -> anyhow::Result<Self> {
        let metrics = Arc::new(PredictorMetrics::default());
        metrics.register(&mut host.metrics);
        let follows: Vec<_> = std::iter::once(config.follow.clone())
            .chain(config.shadow.clone())
            .collect();
        let fold = follower::Fold {
            name: config.model.clone(),
            max_model_bytes: config.max_model_bytes,
            trusted_keys: config.trusted_keys.clone(),
            metrics: Arc::clone(&metrics),
        };
        let follower = follower::open(&host.kafka, &config.models_topic, fold, &follows)?;
        let shadow = match &config.shadow {
            Some(follow) => {
                let metrics = Arc::new(ShadowMetrics::default());
                metrics.register(&mut host.metrics);
                // Shadow answers are evidence, not a contract: batched, acks from the leader.
                let producer = host.kafka.config(&[
                    ("acks", "1"),
                    ("linger.ms", "20"),
                    ("queue.buffering.max.messages", "100000"),
                    kappa_kafka::COMPRESSION,
                ]);
                tracing::info!(shadow = %follow, topic = config.shadow_topic, "shadow scoring on");
                tokio::spawn(create_topic(
                    host.kafka.clone(),
                    config.shadow_topic.clone(),
                    config.tiering.topic_configs(),
                ));
                Some((Shadow::producer(&producer, &metrics)?, metrics))
            }
            None => None,
        };
        let slot = Arc::new(ModelSlot::default());
        let monitor_metrics = Arc::new(MonitorMetrics::default());
        monitor_metrics.register(&mut host.metrics);
        let producer = if config.monitoring_topic.is_empty() {
            None
        } else {
            let producer: rdkafka::producer::FutureProducer = host
                .kafka
                .config(&[("acks", "all"), ("enable.idempotence", "true"), ("linger.ms", "100")])
                .create()?;
            // Created now rather than by the first window's write, so a watch started before a
            // window closes finds the topic, and brokers that do not create topics on write
            // get it too. In the background: a broker away must not hold the start up.
            tokio::spawn(create_topic(
                host.kafka.clone(),
                config.monitoring_topic.clone(),
                config.tiering.topic_configs(),
            ));
            Some((producer, config.monitoring_topic.clone()))
        };
        let monitor = Monitor {
            slot: Arc::clone(&slot),
            metrics: monitor_metrics,
            producer,
            window: config.monitor_window,
            min_rows: config.monitor_min_rows,
            instance: host.instance.clone(),
        };
        let stream = config.stream.then(|| {
            let metrics = Arc::new(StreamMetrics::default());
            metrics.register(&mut host.metrics);
            let settings = StreamSettings {
                sensor_topic: config.sensor_topic.clone(),
                predictions_topic: config.predictions_topic.clone(),
                topic_configs: config.tiering.topic_configs(),
                group: config.consumer_group.clone(),
                max_in_flight: config.stream_max_in_flight as usize,
                stall_after: config.stream_stall,
                transactional_id: config.stream_exactly_once.then(|| {
                    config.stream_transactional_id.clone().unwrap_or_else(|| {
                        format!(
                            "{}-{}-{}",
                            config.consumer_group,
                            kappa_runtime::hostname(),
                            host.address.port()
                        )
                    })
                }),
            };
            (Arc::new(settings), metrics)
        });
        let trusted_keys = match &config.trusted_keys {
            Some(keys) => kappa_modellog::trust::watcher(keys).map_err(anyhow::Error::msg)?,
            None => None,
        };
        Ok(Self {
            faults: Arc::new(Faults::new(config.faults.clone())),
            trusted_keys,
            config,
            metrics,
            slot,
            follower,
            shadow,
            monitor,
            stream,
        })
    }

    fn start(self, host: &Host, routes: Routes) -> Running {
        let Self {
            config,
            metrics,
            faults,
            slot,
            follower,
            shadow,
            monitor,
            stream,
            trusted_keys,
        } = self;
        let (readiness, stop) = (&host.readiness, &host.stop);
        if let Some(keys) = trusted_keys {
            keys.watch(config.server.security.reload_every, stop.clone());
        }
        let mut targets = follower.start(readiness, stop.clone()).into_iter();
        // The served model's loader and the shadow's differ only in their slot and role.
        let loader_for = |slot: &Arc<ModelSlot>, role| {
            Arc::new(Loader {
                slot: Arc::clone(slot),
                metrics: Arc::clone(&metrics),
                readiness: Arc::clone(readiness),
                chunk_readers: Arc::new(loader::chunk_readers(host.kafka.clone())),
                topic: config.models_topic.clone(),
                model: config.model.clone(),
                backend: config.backend,
                instance: host.instance.clone(),
                trusted_keys: config.trusted_keys.clone(),
                max_model_bytes: config.max_model_bytes,
                faults: Arc::clone(&faults),
                role,
            })
        };
        let served_targets = targets.next().expect("one receiver per follow");
        let loader = loader_for(&slot, loader::Role::Serving);
        readiness.supervise("loader", stop.clone(), move || {
            Arc::clone(&loader).run(served_targets.clone())
        });
        let shadow = shadow.map(|(producer, shadow_metrics)| {
            let shadow_targets = targets.next().expect("a receiver for the shadow's follow");
            let shadow_slot = Arc::new(ModelSlot::default());
            let shadow_loader = loader_for(&shadow_slot, loader::Role::Shadow);
            readiness.supervise("shadow_loader", stop.clone(), move || {
                Arc::clone(&shadow_loader).run(shadow_targets.clone())
            });
            Shadow::start(
                shadow_slot,
                config.shadow_queue_capacity as usize,
                producer,
                config.shadow_topic.clone(),
                host.instance.clone(),
                shadow_metrics,
            )
        });
        tokio::spawn(monitor.run(stop.clone()));
        let batcher = Batcher::start(
            config.inference_threads as usize,
            config.queue_capacity as usize,
            config.max_batch_size as usize,
            config.max_queue_delay,
            crate::batcher::Explaining {
                in_pass: config.explain_top > 0,
                occlusion: (config.explain_top > 0 && config.explain_budget_rows > 0)
                    .then(|| Arc::new(crate::occlusion::Budget::per_second(config.explain_budget_rows))),
            },
            Arc::clone(&metrics),
            faults,
        );
        let serving = Arc::new(Serving {
            model_name: config.model.clone(),
            follows: config.follow.to_string(),
            instance: host.instance.clone(),
            slot,
            batcher,
            max_request_rows: config.max_request_rows as usize,
            explain_top: config.explain_top as usize,
            metrics,
            readiness: Arc::clone(readiness),
            shadow,
        });
        if let Some((settings, metrics)) = stream {
            let (kafka, serving, stop) = (host.kafka.clone(), Arc::clone(&serving), stop.clone());
            readiness.supervise(crate::stream::STREAM, stop.clone(), move || {
                let (kafka, settings, serving) = (kafka.clone(), Arc::clone(&settings), Arc::clone(&serving));
                let (metrics, stop) = (Arc::clone(&metrics), stop.clone());
                async move {
                    // Before the first prediction, so the broker does not create it with its
                    // own defaults (untiered).
                    create_topic(
                        kafka.clone(),
                        settings.predictions_topic.clone(),
                        settings.topic_configs.clone(),
                    )
                    .await;
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
        routes
            .serve(GrpcInferenceServiceServer::new(Oip(Arc::clone(&serving))))
            .serve(PredictorServer::new(Typed(serving)))
            .running()
    }
}

/// Creates a topic this predictor writes (predictions, monitoring windows, shadow answers) with
/// the tiering flags when it does not exist. A failure only warns: a broker away or an ACL
/// without CreateTopics leaves the topic to whoever manages topics, or to the first write.
async fn create_topic(kafka: kappa_kafka::KafkaClients, topic: String, configs: Vec<(String, String)>) {
    match kappa_kafka::ensure_topic(&kafka, &topic, 1, &configs).await {
        Ok(true) => tracing::info!(topic, "created the topic"),
        Ok(false) => {}
        Err(e) => tracing::warn!(%e, topic, "could not create the topic; its first write will try"),
    }
}
