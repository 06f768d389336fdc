use std::time::Duration;

use clap::Parser;
use kappa_mqtt::{MqttAccess, MqttUrl};
use kappa_runtime::ServerArgs;

/// kappa-bridge brings telemetry from an MQTT broker into Kafka: it subscribes (QoS 1, a
/// persistent session, an MQTT 5 shared subscription so replicas split the load) and produces
/// each message to the sensor topic, keyed by the topic segment the filter's `+` matches. A
/// message is acknowledged to MQTT only once Kafka has acknowledged its record, so a crash loses
/// nothing (the broker redelivers; duplicates are counted). A payload that is neither JSON nor
/// declared protobuf goes to the dead-letter topic with the reason in a header.
#[derive(Debug, Clone, Parser)]
#[command(name = "kappa-bridge", version, about, long_about = None,
          mut_arg("listen", |a| a.default_value("127.0.0.1:50054").required(false)),
          mut_arg("metrics_listen", |a| a.default_value("127.0.0.1:9104")))]
pub struct BridgeConfig {
    /// The MQTT broker: mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS (see --mqtt-ca).
    #[arg(long, env = "KAPPA_MQTT_URL", default_value = "mqtt://127.0.0.1:1883", value_parser = MqttUrl::parse)]
    pub mqtt_url: MqttUrl,

    /// Topic filter to subscribe to; the segment its `+` matches becomes the Kafka key.
    #[arg(long, env = "KAPPA_MQTT_TOPIC", default_value = "cars/+/telemetry", value_parser = parse_filter)]
    pub mqtt_topic: String,

    /// Shared-subscription group: bridges in one group split the messages between them.
    #[arg(long, env = "KAPPA_MQTT_SHARE_GROUP", default_value = "kappa-bridge", value_parser = kappa_runtime::args::non_empty)]
    pub mqtt_share_group: String,

    /// MQTT client id; the persistent session is kept under it, so give each replica a stable
    /// one (default: kappa-bridge-<hostname>).
    #[arg(long, env = "KAPPA_MQTT_CLIENT_ID", value_parser = kappa_runtime::args::non_empty)]
    pub mqtt_client_id: Option<String>,

    #[command(flatten)]
    pub mqtt_access: MqttAccess,

    /// How long the broker keeps this bridge's session (and queues its messages) while it is
    /// away, in seconds.
    #[arg(long = "mqtt-session-expiry-seconds", env = "KAPPA_MQTT_SESSION_EXPIRY_SECONDS", default_value = "86400",
          value_name = "SECONDS", value_parser = kappa_runtime::args::seconds)]
    pub mqtt_session_expiry: Duration,

    /// Messages taken from MQTT and not yet acknowledged by Kafka (MQTT 5 receive maximum):
    /// when Kafka is slow or away, the bridge stops taking messages at this many.
    #[arg(long, env = "KAPPA_MAX_IN_FLIGHT", default_value_t = 1000,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_in_flight: u16,

    /// Largest MQTT message the bridge takes, in bytes (MQTT 5 maximum packet size). The broker
    /// discards a larger one for this client (MQTT 5 says so; watch the broker's own count of
    /// dropped messages). Set it above the sensor topic's max.message.bytes so messages Kafka
    /// would refuse reach the bridge, which dead-letters them with their size. Memory held: up
    /// to --max-in-flight times this.
    #[arg(long, env = "KAPPA_MQTT_MAX_PACKET_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=256 * 1024 * 1024))]
    pub mqtt_max_packet_bytes: u32,

    /// Topic the messages are produced to.
    #[arg(long, env = "KAPPA_SENSOR_TOPIC", default_value = "sensor-data", value_parser = kappa_runtime::args::non_empty)]
    pub sensor_topic: String,

    /// Create the sensor and dead-letter topics with this many partitions when they do not
    /// exist yet (needs CreateTopics on them); unset, they must exist or the broker creates them.
    #[arg(long, env = "KAPPA_SENSOR_TOPIC_PARTITIONS", value_parser = clap::value_parser!(i32).range(1..))]
    pub sensor_topic_partitions: Option<i32>,

    /// Topic unreadable payloads go to, with the reason in the `kappa-dead-letter-reason` header.
    #[arg(long, env = "KAPPA_DEAD_LETTER_TOPIC", default_value = "sensor-data.dead-letter",
          value_parser = kappa_runtime::args::non_empty)]
    pub dead_letter_topic: String,

    /// How the sensor and dead-letter topics are created (with --sensor-topic-partitions).
    #[command(flatten)]
    pub tiering: kappa_kafka::TieringArgs,

    /// Listen addresses, Kafka, security, logging: what every Kappa server takes.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A filter with at most one `+`, which names the key; `#` only last.
fn parse_filter(text: &str) -> Result<String, String> {
    let levels: Vec<&str> = text.split('/').collect();
    if text.is_empty() || levels.iter().any(|l| l.is_empty()) {
        return Err(format!("{text:?} is not a topic filter (empty level)"));
    }
    if levels.iter().filter(|l| **l == "+").count() > 1 {
        return Err(format!(
            "{text:?} has more than one `+`; the one `+` names the Kafka key"
        ));
    }
    if let Some(i) = levels.iter().position(|l| l.contains('#'))
        && (i != levels.len() - 1 || levels[i] != "#")
    {
        return Err(format!("{text:?}: `#` may only be the whole last level"));
    }
    if levels
        .iter()
        .any(|l| l.len() > 1 && (l.contains('+') || l.contains('#')))
    {
        return Err(format!("{text:?}: wildcards must be whole levels"));
    }
    Ok(text.to_owned())
}

impl BridgeConfig {
    pub fn client_id(&self) -> String {
        self.mqtt_client_id
            .clone()
            .unwrap_or_else(|| format!("kappa-bridge-{}", kappa_runtime::hostname()))
    }

    /// Relations between flags, and files that must be readable.
    pub fn validate(&self) -> Result<(), String> {
        self.tiering.validate()?;
        self.mqtt_access
            .connection(&self.mqtt_url)
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked_at_parse_time() {
        assert!(parse_filter("cars/+/telemetry").is_ok());
        assert!(parse_filter("cars/#").is_ok());
        assert!(parse_filter("cars/+/+/x").is_err());
        assert!(parse_filter("cars/#/x").is_err());
        assert!(parse_filter("cars//x").is_err());
        assert!(parse_filter("cars/a+/x").is_err());
    }
}
