//! The fleet straight into Kafka: keyed by unit, the record timestamp set to the event time.

use std::collections::VecDeque;

use anyhow::Context as _;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::Delivered;

/// Deliveries awaited at once; bounds memory when the broker is slow or away.
const MAX_IN_FLIGHT: usize = 10_000;

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    in_flight: VecDeque<DeliveryFuture>,
    delivered: Delivered,
}

impl KafkaSink {
    pub async fn open(
        kafka: &kappa_kafka::KafkaArgs,
        topic: &str,
        partitions: i32,
        tiering: &kappa_kafka::TieringArgs,
    ) -> anyhow::Result<Self> {
        tiering.validate().map_err(anyhow::Error::msg)?;
        let kafka = kafka.clients().map_err(anyhow::Error::msg)?;
        kappa_kafka::ensure_topic(&kafka, topic, partitions, &tiering.topic_configs())
            .await
            .with_context(|| {
                format!(
                    "cannot create {topic} on Kafka at {} (check --kafka-bootstrap, --kafka-property and --kafka-properties-file)",
                    kafka.bootstrap()
                )
            })?;
        let producer = kafka
            .config(&[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
                ("message.timeout.ms", "60000"),
                kappa_kafka::COMPRESSION,
            ])
            .create()
            .context("cannot create the Kafka producer (check --kafka-property)")?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            in_flight: VecDeque::new(),
            delivered: Delivered::default(),
        })
    }

    pub async fn send(&mut self, unit: &str, payload: &[u8], event_time_ms: i64) {
        let record = FutureRecord::to(&self.topic)
            .key(unit)
            .payload(payload)
            .timestamp(event_time_ms);
        match self.producer.send_result(record) {
            Ok(delivery) => self.in_flight.push_back(delivery),
            Err((e, _)) => {
                self.delivered.failed += 1;
                eprintln!("could not queue an event: {e}");
            }
        }
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            self.settle_oldest().await;
        }
    }

    pub async fn finish(mut self) -> Delivered {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await;
        }
        self.delivered
    }

    async fn settle_oldest(&mut self) {
        let Some(delivery) = self.in_flight.pop_front() else {
            return;
        };
        match delivery.await {
            Ok(Ok(_)) => self.delivered.acknowledged += 1,
            Ok(Err((e, _))) => {
                self.delivered.failed += 1;
                eprintln!("an event was not acknowledged: {e}");
            }
            Err(_) => self.delivered.failed += 1,
        }
    }
}
