//! kappa-bridge: the fleet's front door. Cars publish MQTT; the bridge hands each message to
//! Kafka and acknowledges it to MQTT only once Kafka has it. See [`bridge`] for the loop.

pub mod bridge;
pub mod config;
mod message;
mod metrics;

use std::sync::Arc;

use kappa_runtime::{
    Host, Routes, Running, ServerArgs,
    auth::{Access, Policy},
};
use rumqttc::v5::MqttOptions;

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
        .set_receive_maximum(Some(config.max_in_flight))
        .set_max_packet_size(Some(config.mqtt_max_packet_bytes));
    Ok(options)
}

/// The bridge as the runtime host runs it: health, reflection and metrics on its port, and the
/// MQTT-to-Kafka loop under supervision.
pub struct Bridge {
    options: MqttOptions,
    settings: Arc<bridge::Settings>,
    producers: bridge::Producers,
    metrics: Arc<metrics::BridgeMetrics>,
}

impl kappa_runtime::Service for Bridge {
    type Config = BridgeConfig;

    const NAME: &'static str = "kappa-bridge";
    const GRPC_SERVICES: &'static [&'static str] = &[];
    const ACCESS: Policy = access;

    fn server_args(config: &BridgeConfig) -> &ServerArgs {
        &config.server
    }

    fn validate(config: &BridgeConfig) -> Result<(), String> {
        config.validate()
    }

    fn summary(config: &BridgeConfig) -> String {
        format!(
            "mqtt={} topic={} share_group={} client_id={} sensor_topic={} dead_letter_topic={} max_in_flight={}",
            config.mqtt_url,
            config.mqtt_topic,
            config.mqtt_share_group,
            config.client_id(),
            config.sensor_topic,
            config.dead_letter_topic,
            config.max_in_flight
        )
    }

    fn waits_for(_: &BridgeConfig) -> Vec<(&'static str, String)> {
        vec![(bridge::MQTT, "connecting to the MQTT broker".to_owned())]
    }

    /// Creates the topics when asked to, and the producers, so a bad Kafka setting stops the
    /// bridge at start with its message.
    async fn build(config: BridgeConfig, host: &mut Host) -> anyhow::Result<Self> {
        if let Some(partitions) = config.sensor_topic_partitions {
            let configs = config.tiering.topic_configs();
            for topic in [&config.sensor_topic, &config.dead_letter_topic] {
                if kappa_kafka::ensure_topic(&host.kafka, topic, partitions, &configs).await? {
                    tracing::info!(topic, partitions, "created the topic");
                }
            }
        }
        let metrics = Arc::new(metrics::BridgeMetrics::default());
        metrics.register(&mut host.metrics);
        Ok(Self {
            options: mqtt_options(&config)?,
            settings: Arc::new(bridge::Settings {
                max_in_flight: usize::from(config.max_in_flight),
                filter: config.mqtt_topic.clone(),
                share_group: config.mqtt_share_group.clone(),
                sensor_topic: config.sensor_topic.clone(),
                dead_letter_topic: config.dead_letter_topic.clone(),
            }),
            producers: bridge::Producers::new(&host.kafka)?,
            metrics,
        })
    }

    fn start(self, host: &Host, routes: Routes) -> Running {
        let Self {
            options,
            settings,
            producers,
            metrics,
        } = self;
        let mut first_producers = Some(producers);
        let (kafka, readiness, stop) = (host.kafka.clone(), Arc::clone(&host.readiness), host.stop.clone());
        host.readiness.supervise("bridge", host.stop.clone(), move || {
            // A restart gets new producers: the loop also ends when its producer failed for good.
            let producers = first_producers
                .take()
                .map_or_else(|| bridge::Producers::new(&kafka), Ok);
            let run = (options.clone(), Arc::clone(&settings), Arc::clone(&metrics));
            let (readiness, stop) = (Arc::clone(&readiness), stop.clone());
            async move {
                let (options, settings, metrics) = run;
                bridge::run(options, producers?, settings, metrics, readiness, stop).await
            }
        });
        routes.running()
    }
}
