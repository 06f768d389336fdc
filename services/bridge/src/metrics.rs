use prometheus_client::{
    metrics::{
        counter::Counter,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// The bridge's Prometheus series (`kappa_bridge_*`); names are documented in the README.
#[derive(Debug)]
pub struct BridgeMetrics {
    pub received: Counter,
    pub redelivered: Counter,
    pub resubscribed: Counter,
    pub produced: Counter,
    pub dead_lettered: Counter,
    pub in_flight: Gauge,
    pub produce_latency: Histogram,
    /// QoS 0 messages let go because --max-in-flight were being delivered already.
    pub qos0_dropped: Counter,
    /// Acknowledgements not sent: their message came on a connection since replaced, whose
    /// packet ids may now name other messages (the broker delivers those messages again).
    pub stale_acks: Counter,
}

impl Default for BridgeMetrics {
    fn default() -> Self {
        Self {
            received: Counter::default(),
            redelivered: Counter::default(),
            resubscribed: Counter::default(),
            produced: Counter::default(),
            dead_lettered: Counter::default(),
            in_flight: Gauge::default(),
            produce_latency: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            qos0_dropped: Counter::default(),
            stale_acks: Counter::default(),
        }
    }
}

impl BridgeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kappa_bridge");
        r.register("received", "MQTT messages received", self.received.clone());
        r.register(
            "redelivered",
            "MQTT messages received again (DUP set: sent before, not acknowledged in time)",
            self.redelivered.clone(),
        );
        r.register(
            "resubscribed",
            "Subscriptions sent again after a quiet spell (a broker can stop delivering a shared subscription without an error)",
            self.resubscribed.clone(),
        );
        r.register(
            "produced",
            "Messages acknowledged by Kafka on the sensor topic",
            self.produced.clone(),
        );
        r.register(
            "dead_lettered",
            "Unreadable messages acknowledged by Kafka on the dead-letter topic",
            self.dead_lettered.clone(),
        );
        r.register(
            "in_flight",
            "Messages taken from MQTT and not yet acknowledged by Kafka",
            self.in_flight.clone(),
        );
        r.register(
            "qos0_dropped",
            "QoS 0 messages let go (at most once, as their publisher chose) while --max-in-flight messages were being delivered",
            self.qos0_dropped.clone(),
        );
        r.register(
            "stale_acks",
            "Acknowledgements not sent because their message came on an earlier connection (the broker delivers it again)",
            self.stale_acks.clone(),
        );
        r.register(
            "produce_latency_seconds",
            "From receiving a message to Kafka acknowledging its record",
            self.produce_latency.clone(),
        );
    }
}
