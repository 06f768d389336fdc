//! At-least-once (the default): an event's offset is stored only after its prediction has
//! been acknowledged (acks=all), offsets are stored in consumption order, and stored offsets
//! are committed on a timer, before a rebalance and at shutdown. A crash replays at most the
//! events whose predictions were not yet acknowledged.
//!
//! Groups of events are scored concurrently, but their predictions enter the producer in
//! consumption order, so a key's predictions land in the order of its events, as a reader of
//! the predictions topic (a unit's latest scores, a downstream join) expects. The idempotent
//! producer keeps that order through its own retries; only a record whose delivery failed
//! outright and is sent again, or one answered with an error after the topic refused it, can
//! land after later ones.

use std::{sync::Arc, time::Duration};

use tokio::sync::oneshot;

use futures::{FutureExt as _, StreamExt as _, stream::FuturesOrdered};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use kappa_kafka::ProducerFailed;
use prometheus_client::metrics::counter::Counter;

use super::{
    ErrorLog, StreamMetrics, StreamSettings, context::StreamContext, event::Arrival, event::Record, event::Source,
    event::TopicNames, event::evaluate_all,
};
use crate::serving::Serving;

/// Most events one task takes off the consumer: those already fetched, never waiting for more.
/// They are scored in one request to the inference threads and produced together.
const GROUP: usize = 64;

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
    // Each group of events is decoded, scored and produced in a task of its own, so both async
    // workers share the work while this loop reads on; the queue keeps consumption order for
    // storing offsets, and each entry says how many events it holds.
    let mut pending = FuturesOrdered::new();
    let mut in_flight = 0;
    let mut errors = ErrorLog::default();
    let mut topics = TopicNames::default();
    let topic: Arc<str> = Arc::from(settings.predictions_topic.as_str());
    // Once an event ends without a record (shutdown), no later offset may be stored.
    let mut gap = false;
    let mut failed = None;
    // Closed once the latest group's records are all in the producer's queue; the next group
    // waits for it before queuing its own.
    let mut queued: Option<oneshot::Receiver<()>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some((events, done)) = pending.next(), if !pending.is_empty() => {
                in_flight -= events;
                metrics.in_flight.set(in_flight as i64);
                if let Err(e) = store(&consumer, done, &mut gap) {
                    failed = Some(e);
                    break;
                }
            }
            received = consumer.recv(), if in_flight < settings.max_in_flight => {
                match received {
                    Ok(message) => {
                        let mut arrivals = vec![Arrival::take(&message, &mut topics)];
                        let room = (settings.max_in_flight - in_flight).min(GROUP);
                        while arrivals.len() < room {
                            match consumer.recv().now_or_never() {
                                Some(Ok(message)) => arrivals.push(Arrival::take(&message, &mut topics)),
                                Some(Err(e)) => {
                                    errors.note(&e);
                                    break;
                                }
                                None => break,
                            }
                        }
                        let events = arrivals.len();
                        in_flight += events;
                        metrics.in_flight.set(in_flight as i64);
                        let (turn, next) = oneshot::channel();
                        let task = tokio::spawn(deliver(
                            arrivals,
                            queued.replace(next),
                            turn,
                            Arc::clone(&serving),
                            producer.clone(),
                            Arc::clone(&topic),
                            Arc::clone(&metrics),
                        ));
                        pending.push_back(task.map(move |done| (events, done)));
                    }
                    // librdkafka reconnects by itself; these only say the broker is away.
                    Err(e) => errors.note(&e),
                }
            }
        }
    }
    // Finish what was started, then commit what is done, so a clean stop replays nothing.
    // After a failed producer the others fail as fast, and what was done before is kept.
    while let Some((_, done)) = pending.next().await {
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

/// Stores the group's offsets in order, up to a gap an event without a record leaves (a failed
/// producer leaves one too).
fn store(
    consumer: &StreamConsumer<StreamContext>,
    done: Result<Vec<Delivered>, tokio::task::JoinError>,
    gap: &mut bool,
) -> Result<(), ProducerFailed> {
    let done = done.unwrap_or_else(|e| {
        // A panic while scoring: the events have no records, so no later offset may be stored.
        tracing::error!(error = %e, "scoring events failed unexpectedly; their offsets and later ones stay uncommitted");
        vec![Ok(None)]
    });
    for delivered in done {
        match delivered {
            // Fails only for a partition revoked meanwhile: its new owner scores the event again.
            Ok(Some(source)) if !*gap => {
                if let Err(e) = consumer.store_offset(&source.topic, source.partition, source.offset) {
                    tracing::debug!(error = %e, partition = source.partition, offset = source.offset, "offset not stored; the event may be scored again");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => *gap = true,
            Err(failed) => {
                *gap = true;
                return Err(failed);
            }
        }
    }
    Ok(())
}

/// Scores the events and produces their predictions, each retried until the broker
/// acknowledges it (or the producer has failed for good): no offset may be stored for an event
/// without a record. One answer per event, in their order. The records are queued only once
/// the group before has queued its own (`after` closes), and `done_queuing` is dropped, letting
/// the next group go, once they are: scoring overlaps, producing keeps consumption order.
async fn deliver(
    arrivals: Vec<Arrival>,
    after: Option<oneshot::Receiver<()>>,
    done_queuing: oneshot::Sender<()>,
    serving: Arc<Serving>,
    producer: FutureProducer,
    topic: Arc<str>,
    metrics: Arc<StreamMetrics>,
) -> Vec<Delivered> {
    let events = arrivals.len();
    let read = arrivals.into_iter().map(|arrival| arrival.read(&serving)).collect();
    let scored = evaluate_all(read, &serving).await;
    if let Some(after) = after {
        // Closed or dropped alike: the group before has queued all it will.
        let _ = after.await;
    }
    let Some(records) = scored else {
        return (0..events).map(|_| Ok(None)).collect();
    };
    // Every record goes to the producer's queue first, so the group is in flight at once; then
    // each delivery is awaited in order, with no task or allocation per record.
    let mut sent: Vec<(Record, Option<DeliveryFuture>)> = Vec::with_capacity(records.len());
    for record in records {
        let queued = enqueue(&producer, &topic, &record).await;
        sent.push((record, queued));
    }
    drop(done_queuing);
    let mut delivered = Vec::with_capacity(events);
    for (record, queued) in sent {
        let span = record.span.clone();
        let done = match produce(&producer, &topic, &record, &metrics.produce_retries, queued)
            .instrument(span.clone())
            .await
        {
            Ok(()) => Ok(()),
            Err(Unsent::Failed(failed)) => Err(failed),
            Err(Unsent::Refused(why)) => {
                answer_refused(&producer, &topic, &record, &why, &metrics)
                    .instrument(span)
                    .await
            }
        };
        if done.is_ok() {
            metrics.count([record.outcome]);
        }
        delivered.push(done.map(|()| Some(record.source)));
    }
    delivered
}

/// Puts `record` in the producer's queue, waiting while the queue is full (the broker is slow
/// or away) so that it keeps its place; `None` when the producer will not take it at all
/// (too large, failed for good), which [`produce`] then reports.
async fn enqueue(producer: &FutureProducer, topic: &str, record: &Record) -> Option<DeliveryFuture> {
    loop {
        let sent = record
            .span
            .in_scope(|| producer.send_result(future_record(topic, record)).map_err(|(e, _)| e));
        match sent {
            Ok(delivery) => return Some(delivery),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                if kappa_kafka::failed_for_good(producer.client()).is_none() =>
            {
                // The producer's own thread drains the queue as the broker acknowledges.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => return None,
        }
    }
}

/// A poison record must not stall its partition: an event whose prediction the topic refused
/// for good is answered with an error prediction, which any topic takes. Should even that be
/// refused, the event is let go with an error in the log, its offset stored like the others.
async fn answer_refused(
    producer: &FutureProducer,
    topic: &str,
    record: &Record,
    why: &KafkaError,
    metrics: &StreamMetrics,
) -> Result<(), ProducerFailed> {
    metrics.refused.inc();
    tracing::warn!(error = %why, key_bytes = record.key.len(), "the predictions topic refused a prediction; answering the event with an error");
    match produce(
        producer,
        topic,
        &record.refused(&why.to_string()),
        &metrics.produce_retries,
        None,
    )
    .await
    {
        Ok(()) => Ok(()),
        Err(Unsent::Failed(failed)) => Err(failed),
        Err(Unsent::Refused(again)) => {
            tracing::error!(error = %again, "the predictions topic refused the error prediction too; the event has none");
            Ok(())
        }
    }
}

/// Why a record did not reach the predictions topic.
#[derive(Debug)]
enum Unsent {
    /// The producer can take no more records at all.
    Failed(ProducerFailed),
    /// This record will never be taken (too large, invalid).
    Refused(KafkaError),
}

fn future_record<'a>(topic: &'a str, record: &'a Record) -> FutureRecord<'a, String, Vec<u8>> {
    let out = FutureRecord::to(topic).key(&record.key).payload(&record.value);
    match &record.headers {
        Some(headers) => out.headers(headers.clone()),
        None => out,
    }
}

/// Produces `record` to `topic`, retrying (counted in `retries`) until the broker acknowledges
/// it, refuses it for good (too large, invalid), or the producer has failed for good. `queued`
/// is its first send, when the producer's queue took it; without it, sending again here tells
/// why it was not taken.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    record: &Record,
    retries: &Counter,
    mut queued: Option<DeliveryFuture>,
) -> Result<(), Unsent> {
    let mut wait = Duration::from_millis(100);
    loop {
        let outcome = match queued.take() {
            Some(delivery) => match delivery.await {
                Ok(delivered) => delivered.map(|_| ()).map_err(|(e, _)| e),
                // The producer dropped the record without a report (it is shutting down).
                Err(_) => Err(KafkaError::Canceled),
            },
            None => producer
                .send(future_record(topic, record), Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) => {
                if let Some(failed) = kappa_kafka::failed_for_good(producer.client()) {
                    return Err(Unsent::Failed(failed));
                }
                if kappa_kafka::refused_for_good(&e) {
                    return Err(Unsent::Refused(e));
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
            outcome: "scored",
            key: "car-1".into(),
            value: br#"{"score": 0.5}"#.to_vec(),
            headers: None,
            span: tracing::Span::none(),
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
        // Queued first, as a group's records are.
        let queued = producer.send_result(future_record("predictions", &record)).ok();
        assert!(queued.is_some(), "an empty queue takes the record");
        let sent = tokio::time::timeout(
            Duration::from_secs(60),
            produce(&producer, "predictions", &record, &retries, queued),
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
            produce(&producer, "predictions", &record, &retries, None),
        );
        let Err(Unsent::Failed(failed)) = sent.await.expect("given up within a minute") else {
            panic!("nothing was acknowledged, and the producer gave up for good");
        };
        assert!(!failed.reason.is_empty(), "the failure says why");
        assert!(producer.client().fatal_error().is_some());
    }

    #[tokio::test]
    async fn a_record_the_topic_refuses_for_good_is_answered_with_an_error_not_retried() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("predictions", 1, 1).unwrap();
        let kafka = kappa_kafka::KafkaClients::plain(cluster.bootstrap_servers());
        let metrics = StreamMetrics::default();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        let producer: FutureProducer = super::super::producer_config(&kafka, None).create().unwrap();
        let record = record();
        let sent = tokio::time::timeout(
            Duration::from_secs(60),
            produce(&producer, "predictions", &record, &metrics.produce_retries, None),
        );
        let Err(Unsent::Refused(why)) = sent.await.expect("answered within a minute") else {
            panic!("a record too large for the topic is refused for good");
        };
        assert_eq!(metrics.produce_retries.get(), 0, "not retried");
        let answered = tokio::time::timeout(
            Duration::from_secs(60),
            answer_refused(&producer, "predictions", &record, &why, &metrics),
        );
        assert!(answered.await.expect("within a minute").is_ok());
        assert_eq!(metrics.refused.get(), 1);
        let replacement = record.refused(&why.to_string());
        let text = String::from_utf8(replacement.value).unwrap();
        assert!(text.contains("could not be written"), "{text}");
        assert!(text.contains("\"sourceOffset\":\"7\""), "{text}");
    }
}
