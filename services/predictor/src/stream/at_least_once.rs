//! At-least-once (the default): an event's offset is stored only after its prediction has
//! been acknowledged (acks=all), offsets are stored in consumption order, and stored offsets
//! are committed on a timer, before a rebalance and at shutdown. A crash replays at most the
//! events whose predictions were not yet acknowledged.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt as _, stream::FuturesOrdered};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{
    ErrorLog, StreamMetrics, StreamSettings, context::StreamContext, event::Arrival, event::Source, event::TopicNames,
};
use crate::serving::Serving;

/// Each event is decoded, scored and produced in a task of its own, so both async workers share
/// the work while this loop reads on; the handles keep consumption order for storing offsets.
type Pending = tokio::task::JoinHandle<Option<Source>>;

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
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = pending.next(), if !pending.is_empty() => store(&consumer, done, &mut gap),
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
    while let Some(done) = pending.next().await {
        store(&consumer, done, &mut gap);
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(error = %e, "final offset commit failed; some events will be scored again");
    }
    Ok(())
}

fn store(
    consumer: &StreamConsumer<StreamContext>,
    done: Result<Option<Source>, tokio::task::JoinError>,
    gap: &mut bool,
) {
    let done = done.unwrap_or_else(|e| {
        // A panic while scoring: the event has no record, so no later offset may be stored.
        tracing::error!(error = %e, "scoring an event failed unexpectedly; its offset and later ones stay uncommitted");
        None
    });
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
}

/// Scores the event and produces its prediction, retrying until the broker acknowledges it:
/// the offset must not be stored for an event without a record.
async fn deliver(
    arrival: Arrival,
    serving: Arc<Serving>,
    producer: FutureProducer,
    topic: Arc<str>,
    metrics: Arc<StreamMetrics>,
) -> Option<Source> {
    let event = arrival.read(&serving);
    let span = event.span();
    async move {
        let record = event.evaluate(&serving, &metrics).await?;
        let mut wait = Duration::from_millis(100);
        loop {
            let mut out = FutureRecord::to(&topic).key(&record.key).payload(&record.value);
            if let Some(headers) = &record.headers {
                out = out.headers(headers.clone());
            }
            match producer.send(out, Duration::from_secs(30)).await {
                Ok(_) => return Some(record.source),
                Err((e, _)) => {
                    metrics.produce_retries.inc();
                    tracing::warn!(error = %e, retry_in = ?wait, "producing a prediction failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    .instrument(span)
    .await
}
