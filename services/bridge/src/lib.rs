//! kappa-bridge: the fleet's front door. Cars publish MQTT; the bridge hands each message to
//! Kafka and acknowledges it to MQTT only once Kafka has it. See [`bridge`] for the loop.

pub mod bridge;
pub mod config;
mod message;
mod metrics;

use std::{future::Future, sync::Arc};

use kappa_runtime::{Readiness, auth::Access};
use prometheus_client::registry::Registry as MetricsRegistry;
use rumqttc::v5::MqttOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::BridgeConfig;

/// The bridge serves no RPC of its own: health and reflection only, both open.
fn access(_: &str) -> Access {
    Access::Unlisted
}

/// The connection options of a bridge: a persistent session (the broker queues while the
/// bridge is away), manual acknowledgements, and at most `--max-in-flight` unacknowledged.
fn mqtt_options(config: &BridgeConfig) -> anyhow::Result<MqttOptions> {
    let mut options = config
        .mqtt_access
        .connection(&config.mqtt_url)?
        .options(config.client_id());
    options
        .set_clean_start(false)
        .set_manual_acks(true)
        .set_session_expiry_interval(Some(
            config.mqtt_session_expiry.as_secs().min(u64::from(u32::MAX)) as u32
        ))
        .set_receive_maximum(Some(config.max_in_flight));
    Ok(options)
}

/// Runs the bridge until `shutdown` resolves.
pub async fn run(
    config: BridgeConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let kafka = config.kafka.clients().map_err(anyhow::Error::msg)?;
    if let Some(partitions) = config.sensor_topic_partitions {
        for topic in [&config.sensor_topic, &config.dead_letter_topic] {
            if kappa_kafka::ensure_topic(&kafka, topic, partitions).await? {
                tracing::info!(topic, partitions, "created the topic");
            }
        }
    }
    // Made here so a bad Kafka setting stops the bridge at start, with its message.
    let mut first_producers = Some(bridge::Producers::new(&kafka)?);
    let metrics = Arc::new(metrics::BridgeMetrics::default());
    let mut metrics_registry = MetricsRegistry::default();
    metrics.register(&mut metrics_registry);
    let stop = CancellationToken::new();
    let security = config
        .security
        .load(access, kappa_api::streaming_paths(), stop.clone())
        .map_err(anyhow::Error::msg)?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::start(reporter, &[""], &[(bridge::MQTT, "connecting to the MQTT broker")]).await;
    readiness.register(&mut metrics_registry, "kappa_bridge");

    let options = mqtt_options(&config)?;
    let settings = Arc::new(bridge::Settings {
        filter: config.mqtt_topic.clone(),
        share_group: config.mqtt_share_group.clone(),
        sensor_topic: config.sensor_topic.clone(),
        dead_letter_topic: config.dead_letter_topic.clone(),
    });
    {
        let (readiness_for_task, stop) = (Arc::clone(&readiness), stop.clone());
        readiness.supervise("bridge", stop.clone(), move || {
            // A restart gets new producers: the loop also ends when its producer failed for good.
            let producers = first_producers
                .take()
                .map_or_else(|| bridge::Producers::new(&kafka), Ok);
            let run = (options.clone(), Arc::clone(&settings), Arc::clone(&metrics));
            let (readiness, stop) = (Arc::clone(&readiness_for_task), stop.clone());
            async move {
                let (options, settings, metrics) = run;
                bridge::run(options, producers?, settings, metrics, readiness, stop).await
            }
        });
    }
    kappa_runtime::spawn_metrics(metrics_listener, metrics_registry, &security, &stop)?;
    let (reflection_v1, reflection_v1alpha) = kappa_api::reflection::for_services(&[])?;
    tracing::info!(
        address = %listener.local_addr()?,
        mqtt = %config.mqtt_url,
        topic = config.mqtt_topic,
        sensor_topic = config.sensor_topic,
        "kappa-bridge listening for gRPC (health)"
    );
    let router = kappa_runtime::kappa_server(&security)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
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
    // In-flight messages reach Kafka and are acknowledged before the bridge goes.
    readiness.stopped(config.shutdown_grace).await;
    tracing::info!("kappa-bridge stopped");
    Ok(())
}
