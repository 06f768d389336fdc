use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use kappa_api::registry::registry_server::RegistryServer;
use kappa_kafka::{ModelsTopicSettings, ensure_models_topic};
use kappa_modellog::{ModelLog, follower};
use kappa_runtime::{Host, Routes, Running, ServerArgs, auth::Policy};

use crate::{
    RegistryConfig,
    metrics::RegistryMetrics,
    service::{Limits, RegistryService},
    writer::Writer,
};

const REGISTRY_SERVICE: &str = "kappa.registry.v1.Registry";
/// The readiness component of the models-log replay.
const CATALOG: &str = "catalog";

/// The registry as the runtime host runs it.
pub struct Registry {
    service: RegistryService,
    /// The models-topic follower, opened; it starts with the service.
    follower: follower::Opened,
    /// Re-reads --trusted-keys when they change, and how often to look.
    trusted_keys: Option<(Arc<kappa_runtime::reload::Reloading<()>>, std::time::Duration)>,
}

impl kappa_runtime::Service for Registry {
    type Config = RegistryConfig;

    const NAME: &'static str = "kappa-registry";
    const GRPC_SERVICES: &'static [&'static str] = &[REGISTRY_SERVICE];
    const ACCESS: Policy = crate::access::access;

    fn server_args(config: &RegistryConfig) -> &ServerArgs {
        &config.server
    }

    fn validate(config: &RegistryConfig) -> Result<(), String> {
        config.validate()
    }

    fn summary(config: &RegistryConfig) -> String {
        format!(
            "topic={} transactional_id={} pointer_key={}",
            config.models_topic,
            config.transactional_id,
            config.signing_key.as_ref().map_or("none", |k| k.id())
        )
    }

    fn waits_for(_: &RegistryConfig) -> Vec<(&'static str, String)> {
        vec![(CATALOG, "replaying the models topic".to_owned())]
    }

    /// Prepares the topic, fences older writers with the transactional producer, and opens the
    /// follower that replays the log (NOT_SERVING until done).
    async fn build(config: RegistryConfig, host: &mut Host) -> anyhow::Result<Self> {
        let kafka = host.kafka.clone();
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
        metrics.register(&mut host.metrics);
        // A registry that accepts only signed models reads the log as its predictors do: what
        // no trusted key (or its own pointer key) signed is not in its catalog either.
        let catalog = match (&config.trusted_keys, &config.signing_key) {
            (Some(trusted), Some(own)) => ModelLog::new().verified_by(trusted.clone().with(own)),
            _ => ModelLog::new(),
        };
        let catalog = Arc::new(RwLock::new(catalog));
        let follower = follower::open(
            &kafka,
            &topic,
            "kappa-registry-follower",
            Arc::clone(&catalog),
            Arc::clone(&metrics) as Arc<dyn follower::Observer>,
        )?;
        let service = RegistryService {
            catalog,
            writer: Arc::new(writer),
            progress: follower.progress(),
            chunk_readers: Arc::new(crate::reader::chunk_readers(kafka.clone())),
            consumer_config: kafka,
            topic,
            chunk_bytes: config.chunk_bytes as usize,
            max_model_bytes: config.max_model_bytes,
            metrics,
            readiness: Arc::clone(&host.readiness),
            trusted_keys: config.trusted_keys.clone(),
            signing_key: config.signing_key.clone(),
            limits: Limits {
                publish_buffer: Arc::new(tokio::sync::Semaphore::new(config.max_publish_buffer_bytes as usize)),
                publish_buffer_bytes: config.max_publish_buffer_bytes,
                publish_idle: config.publish_idle,
                read_streams: Arc::new(tokio::sync::Semaphore::new(config.max_read_streams as usize)),
                max_read_streams: u64::from(config.max_read_streams),
                watch_streams: Arc::new(tokio::sync::Semaphore::new(
                    (config.max_read_streams as usize).div_ceil(2),
                )),
                watchers: crate::quota::PerCaller::new(config.max_watch_streams_per_caller as usize),
            },
        };
        let trusted_keys = match &config.trusted_keys {
            Some(keys) => kappa_modellog::trust::watcher(keys)
                .map_err(anyhow::Error::msg)?
                .map(|watcher| (watcher, config.server.security.reload_every)),
            None => None,
        };
        Ok(Self {
            service,
            follower,
            trusted_keys,
        })
    }

    fn start(self, host: &Host, routes: Routes) -> Running {
        let progress = self.follower.spawn(host.stop.clone());
        if let Some((keys, every)) = self.trusted_keys {
            keys.watch(every, host.stop.clone());
        }
        let (readiness, stop) = (Arc::clone(&host.readiness), host.stop.clone());
        tokio::spawn(async move {
            if progress.wait_caught_up().await {
                readiness.clear(CATALOG);
            }
            // The follower only stops with the service; if it stops before, reads are stale.
            let mut applied = progress.applied.clone();
            while applied.changed().await.is_ok() {}
            if !stop.is_cancelled() {
                readiness.report(
                    CATALOG,
                    "the models-topic follower stopped: reads are stale and writes cannot be confirmed; restart the registry",
                );
            }
        });
        routes.serve(RegistryServer::new(self.service)).running()
    }
}
