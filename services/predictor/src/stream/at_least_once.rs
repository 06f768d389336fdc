//! At-least-once (the default): an event's offset is stored only after its prediction has
//! been acknowledged (acks=all), offsets are stored in consumption order, and stored offsets
//! are committed on a timer, before a rebalance and at shutdown. A crash replays at most the
//! events whose predictions were not yet acknowledged.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt as _, stream::FuturesOrdered};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use kappa_kafka::ProducerFailed;
use prometheus_client::metrics::counter::Counter;

use super::{
    ErrorLog, StreamMetrics, StreamSettings, context::StreamContext, event::Arrival, event::Record, event::Source,
    event::TopicNames,
};
use crate::serving::Serving;

/// Each event is decoded, scored and produced in a task of its own, so both async workers share
/// the work while this loop reads on; the handles keep consumption order for storing offsets.
type Pending = tokio::task::JoinHandle<Delivered>;

/// An event's end: its source once its prediction is acknowledged, `Ok(None)` when it ended
/// without a record (shutdown), or why the producer can take no more records at all.
type Delivered = Result<Option<Source>, ProducerFailed>;

pub async fn run(
    consumer: Arc<StreamConsumer<StreamContext>>,
    producer: FutureProducer,
    settings: &StreamSettings,
    serving: Arc<Serving>,
    metrics: Arc<StreamMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut errors = ErrorLog::default();
    let mut topics = TopicNames::default();
    let topic: Arc<str> = Arc::from(settings.predictions_topic.as_str());
    // Once an event ends without a record (shutdown), no later offset may be stored.
    let mut gap = false;
    let mut failed = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = pending.next(), if !pending.is_empty() => {
                if let Err(e) = store(&consumer, done, &mut gap) {
                    failed = Some(e);
                    break;
                }
            }
            received = consumer.recv(), if pending.len() < settings.max_in_flight => {
                match received {
                    Ok(message) => {
                        let arrival = Arrival::take(&message, &mut topics);
                        pending.push_back(tokio::spawn(deliver(
                            arrival,
                            Arc::clone(&serving),
                            producer.clone(),
                            Arc::clone(&topic),
                            Arc::clone(&metrics),
                        )));
                    }
                    // librdkafka reconnects by itself; these only say the broker is away.
                    Err(e) => errors.note(&e),
                }
            }
        }
    }
    // Finish what was started, then commit what is done, so a clean stop replays nothing.
    // After a failed producer the others fail as fast, and what was done before is kept.
    while let Some(done) = pending.next().await {
        let _ = store(&consumer, done, &mut gap);
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(error = %e, "final offset commit failed; some events will be scored again");
    }
    match failed {
        // The supervisor starts the loop again with a new producer; the events whose predictions
        // were not acknowledged are read again, since their offsets were never stored.
        Some(failed) => Err(anyhow::Error::new(failed)
            .context("the predictions producer stopped; starting again with a new one, from the last stored offsets")),
        None => Ok(()),
    }
}

/// Stores the event's offset unless an earlier event left a gap; a failed producer leaves one.
fn store(
    consumer: &StreamConsumer<StreamContext>,
    done: Result<Delivered, tokio::task::JoinError>,
    gap: &mut bool,
) -> Result<(), ProducerFailed> {
    let done = done.unwrap_or_else(|e| {
        // A panic while scoring: the event has no record, so no later offset may be stored.
        tracing::error!(error = %e, "scoring an event failed unexpectedly; its offset and later ones stay uncommitted");
        Ok(None)
    });
    let done = match done {
        Ok(done) => done,
        Err(failed) => {
            *gap = true;
            return Err(failed);
        }
    };
    match done {
        Some(source) if !*gap => {
            // Fails only for a partition revoked meanwhile: its new owner scores the event again.
            if let Err(e) = consumer.store_offset(&source.topic, source.partition, source.offset) {
                tracing::debug!(error = %e, partition = source.partition, offset = source.offset, "offset not stored; the event may be scored again");
            }
        }
        Some(_) => {}
        None => *gap = true,
    }
    Ok(())
}

/// Scores the event and produces its prediction, retrying until the broker acknowledges it
/// (or the producer has failed for good): the offset must not be stored for an event without
/// a record.
async fn deliver(
    arrival: Arrival,
    serving: Arc<Serving>,
    producer: FutureProducer,
    topic: Arc<str>,
    metrics: Arc<StreamMetrics>,
) -> Delivered {
    let event = arrival.read(&serving);
    let span = event.span();
    async move {
        let Some(record) = event.evaluate(&serving, &metrics).await else {
            return Ok(None);
        };
        produce(&producer, &topic, &record, &metrics.produce_retries).await?;
        Ok(Some(record.source))
    }
    .instrument(span)
    .await
}

/// Produces `record` to `topic`, retrying (counted in `retries`) until the broker acknowledges
/// it or the producer has failed for good.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    record: &Record,
    retries: &Counter,
) -> Result<(), ProducerFailed> {
    let mut wait = Duration::from_millis(100);
    loop {
        let mut out = FutureRecord::to(topic).key(&record.key).payload(&record.value);
        if let Some(headers) = &record.headers {
            out = out.headers(headers.clone());
        }
        match producer.send(out, Duration::from_secs(30)).await {
            Ok(_) => return Ok(()),
            Err((e, _)) => {
                if let Some(failed) = kappa_kafka::failed_for_good(producer.client()) {
                    return Err(failed);
                }
                retries.inc();
                tracing::warn!(error = %e, retry_in = ?wait, "producing a prediction failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::{
        mocking::MockCluster,
        types::{RDKafkaApiKey, RDKafkaRespErr},
    };

    use super::*;

    fn record() -> Record {
        Record {
            source: Source {
                topic: Arc::from("sensors"),
                partition: 0,
                offset: 7,
            },
            key: "car-1".into(),
            value: br#"{"score": 0.5}"#.to_vec(),
            headers: None,
        }
    }

    /// librdkafka's in-process mock broker, which can answer a ProduceRequest with the errors a
    /// broker gives; Kafka itself cannot be made to. Stream scoring through a broker outage is
    /// tested against the real broker (e2e `outage::`).
    #[tokio::test]
    async fn a_refused_produce_is_retried_until_acknowledged_but_a_producer_failed_for_good_is_not() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("predictions", 1, 1).unwrap();
        let kafka = kappa_kafka::KafkaClients::plain(cluster.bootstrap_servers());
        let (retries, record) = (Counter::default(), record());

        // A retriable error: two refusals, then the record lands.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 2],
        );
        let producer: FutureProducer = super::super::producer_config(&kafka, None).create().unwrap();
        let sent = tokio::time::timeout(
            Duration::from_secs(60),
            produce(&producer, "predictions", &record, &retries),
        );
        assert!(sent.await.expect("acknowledged within a minute").is_ok());
        assert!(producer.client().fatal_error().is_none());

        // Sequence numbers the broker cannot follow: the idempotent producer gives up for good.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
        );
        let producer: FutureProducer = super::super::producer_config(&kafka, None).create().unwrap();
        let sent = tokio::time::timeout(
            Duration::from_secs(60),
            produce(&producer, "predictions", &record, &retries),
        );
        let failed = sent
            .await
            .expect("given up within a minute")
            .expect_err("nothing was acknowledged");
        assert!(!failed.reason.is_empty(), "the failure says why");
        assert!(producer.client().fatal_error().is_some());
    }
}
