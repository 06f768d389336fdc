//! Stream mode: score every event of the sensor topic and produce one prediction record per event.
//!
//! At-least-once: an event's offset is stored only after its prediction has been acknowledged by
//! the broker (acks=all), and offsets are stored in consumption order, so a crash replays at most
//! the events whose predictions were not yet acknowledged. Scoring goes through the same batcher
//! as gRPC requests, so events batch together and never run on the async workers.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream::FuturesOrdered};
use kappa_api::events::Prediction;
use kappa_kafka::{KafkaClients, trace_headers};
use opentelemetry::trace::TraceContextExt as _;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use rdkafka::{
    ClientConfig, Message,
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{BorrowedMessage, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use kappa_kafka::range::payload_format;
use kappa_model::schema::{DecodedEvent, ProblemKind};

use crate::{metrics::ReasonLabels, serving::Serving, slot::LoadedModel};

/// An event read through the current version's schema: the row to score and its event time.
type Prepared = Result<(Arc<LoadedModel>, Vec<f32>, Option<i64>), (&'static str, String)>;

/// Admits the event to the current version and reads it with that version's schema, so the
/// row is exactly what the version was trained on even while a new schema swaps in.
fn prepare(serving: &Serving, payload: Option<&[u8]>, format: kappa_model::schema::PayloadFormat) -> Prepared {
    let model = serving.admit("", "").map_err(|e| ("no_model", e.to_string()))?;
    let payload = payload.ok_or(("empty", "the event has no value".to_owned()))?;
    let mut event = DecodedEvent::default();
    model
        .decoder
        .decode_into(payload, format, &mut event)
        .map_err(|e| ("malformed", e))?;
    let mut row = Vec::with_capacity(model.n_features());
    if let Err(problems) = model.decoder.extend_row(&event, &mut row) {
        let reason = match problems[0].kind {
            ProblemKind::Missing => "missing_feature",
            ProblemKind::NotNumeric => "not_numeric",
            ProblemKind::NotFinite => "not_finite",
            ProblemKind::BelowMin { .. } | ProblemKind::AboveMax { .. } => "out_of_range",
        };
        return Err((reason, model.decoder.describe(&problems)));
    }
    // Set only when the version's schema takes event time from a field.
    Ok((model, row, event.time_ms))
}

pub struct StreamSettings {
    pub sensor_topic: String,
    pub predictions_topic: String,
    pub group: String,
    pub max_in_flight: usize,
}

/// What can become of an event (the `reason` label of the events counter).
pub const OUTCOMES: [&str; 9] = [
    "scored",
    "empty",
    "malformed",
    "no_model",
    "missing_feature",
    "not_numeric",
    "not_finite",
    "out_of_range",
    "rejected",
];

/// Events by outcome: `scored`, or the reason an event could not be scored.
pub type EventCounter = Family<ReasonLabels, Counter>;

type Pending = Pin<Box<dyn Future<Output = (String, i32, i64)> + Send>>;

/// The sensor consumer: commits on a timer, but only offsets stored after their prediction was
/// acknowledged (so `enable.auto.offset.store` is not the operator's to turn on).
fn consumer_config(kafka: &KafkaClients, group: &str) -> ClientConfig {
    kafka.config_with(
        &[
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", "earliest"),
        ],
        &[("group.id", group), ("enable.auto.offset.store", "false")],
    )
}

/// The predictions producer: Kappa's defaults, all of which an operator may tune.
fn producer_config(kafka: &KafkaClients) -> ClientConfig {
    kafka.config(&[("acks", "all"), ("enable.idempotence", "true"), ("linger.ms", "2")])
}

pub async fn run(
    kafka: KafkaClients,
    settings: StreamSettings,
    serving: Arc<Serving>,
    events: EventCounter,
    lag: Gauge,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Arc<StreamConsumer> = Arc::new(consumer_config(&kafka, &settings.group).create()?);
    consumer.subscribe(&[&settings.sensor_topic])?;
    tokio::spawn(report_lag(Arc::clone(&consumer), lag, shutdown.clone()));
    let producer: FutureProducer = producer_config(&kafka).create()?;
    tracing::info!(
        topic = settings.sensor_topic,
        group = settings.group,
        "stream scoring started"
    );

    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some((topic, partition, offset)) = pending.next(), if !pending.is_empty() => {
                if let Err(e) = consumer.store_offset(&topic, partition, offset) {
                    tracing::warn!(error = %e, partition, offset, "could not store an offset; the event may be scored again");
                }
            }
            received = consumer.recv(), if pending.len() < settings.max_in_flight => {
                let message = match received {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "sensor consumer error; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                pending.push_back(Box::pin(score_and_produce(
                    &message,
                    Arc::clone(&serving),
                    producer.clone(),
                    settings.predictions_topic.clone(),
                    events.clone(),
                )));
            }
        }
    }
    // Finish what was started, then commit what is done, so a clean stop replays nothing.
    while let Some((topic, partition, offset)) = pending.next().await {
        let _ = consumer.store_offset(&topic, partition, offset);
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(error = %e, "final offset commit failed; some events will be scored again");
    }
    tracing::info!("stream scoring stopped");
    Ok(())
}

/// Publishes the consumer lag (high watermark minus position, summed over the assigned
/// partitions) every few seconds. Watermark look-ups block, so they run on a blocking thread.
async fn report_lag(consumer: Arc<StreamConsumer>, lag: Gauge, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let consumer = Arc::clone(&consumer);
        let total = tokio::task::spawn_blocking(move || -> Option<i64> {
            let positions = consumer.position().ok()?;
            let mut total = 0;
            for element in positions.elements() {
                let (_, high) = consumer
                    .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(1))
                    .ok()?;
                let position = element.offset().to_raw().filter(|p| *p >= 0).unwrap_or(0);
                total += (high - position).max(0);
            }
            Some(total)
        })
        .await;
        if let Ok(Some(total)) = total {
            lag.set(total);
        }
    }
}

/// Reads what the future needs from the borrowed message, then scores and produces.
fn score_and_produce(
    message: &BorrowedMessage<'_>,
    serving: Arc<Serving>,
    producer: FutureProducer,
    predictions_topic: String,
    events: EventCounter,
) -> impl Future<Output = (String, i32, i64)> + Send + use<> {
    let received = Instant::now();
    let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
    let key = message.key().map(<[u8]>::to_vec).unwrap_or_default();
    let timestamp = message.timestamp().to_millis().unwrap_or(0);
    let prepared = prepare(&serving, message.payload(), payload_format(message.headers()));
    // An event that carries a trace gets a span in it, and its prediction carries the trace on.
    // Untraced events get none: one trace per sensor reading would bury everything else.
    let parent = trace_headers::extract(message.headers());
    let span = if parent.span().span_context().is_valid() {
        let span = tracing::info_span!(
            "score_event",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.destination.name = %topic,
            messaging.kafka.partition = partition,
            messaging.kafka.offset = offset,
            model_version = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        span
    } else {
        tracing::Span::none()
    };
    let headers = (!span.is_none()).then(|| trace_headers::inject(&span.context(), OwnedHeaders::new()));
    let body = async move {
        let car = String::from_utf8_lossy(&key).into_owned();
        let mut prediction = Prediction {
            source_partition: partition,
            source_offset: offset,
            event_time_ms: timestamp,
            ..Default::default()
        };
        let outcome = match prepared {
            Err(e) => Err(e),
            Ok((model, row, time)) => {
                if let Some(time) = time {
                    prediction.event_time_ms = time;
                }
                score(&serving, model, row).await
            }
        };
        match outcome {
            Ok((score, is_anomaly, name, version)) => {
                prediction.score = score;
                prediction.is_anomaly = is_anomaly;
                prediction.model_name = name;
                prediction.model_version = version;
                tracing::Span::current().record("model_version", version);
                events.get_or_create(&ReasonLabels { reason: "scored" }).inc();
            }
            Err((reason, message)) => {
                prediction.error = message;
                prediction.model_name = serving.model_name.clone();
                events.get_or_create(&ReasonLabels { reason }).inc();
            }
        }
        prediction.car = car.clone();
        prediction.latency_ms = received.elapsed().as_secs_f64() * 1000.0;
        let value = serde_json::to_vec(&prediction).expect("a prediction always serialises");
        // Retry until acknowledged: the offset must not be stored for an event without a record.
        loop {
            let mut record = FutureRecord::to(&predictions_topic).key(&car).payload(&value);
            if let Some(headers) = &headers {
                record = record.headers(headers.clone());
            }
            match producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => break,
                Err((e, _)) => {
                    tracing::warn!(error = %e, "producing a prediction failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        (topic, partition, offset)
    };
    body.instrument(span)
}

async fn score(
    serving: &Serving,
    model: Arc<LoadedModel>,
    row: Vec<f32>,
) -> Result<(f64, bool, String, u64), (&'static str, String)> {
    let scored = serving
        .score(model, row, 1)
        .await
        .map_err(|e| ("rejected", e.to_string()))?;
    let score = scored.scores[0];
    Ok((
        f64::from(score),
        score > scored.model.threshold,
        scored.model.name.clone(),
        scored.model.version,
    ))
}

#[cfg(test)]
mod tests {
    use kappa_kafka::KafkaArgs;

    use super::*;

    #[test]
    fn an_operator_tunes_the_defaults_but_not_the_delivery_guarantee() {
        let args = KafkaArgs {
            properties: vec![
                ("acks".into(), "1".into()),
                ("linger.ms".into(), "20".into()),
                ("enable.auto.offset.store".into(), "true".into()),
                ("auto.commit.interval.ms".into(), "250".into()),
            ],
            ..KafkaArgs::for_bootstrap("k:9092")
        };
        let kafka = args.clients().unwrap();
        let producer = producer_config(&kafka);
        assert_eq!(producer.get("acks"), Some("1"));
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        let consumer = consumer_config(&kafka, "scorers");
        assert_eq!(consumer.get("auto.commit.interval.ms"), Some("250"));
        assert_eq!(consumer.get("group.id"), Some("scorers"));
        assert_eq!(
            consumer.get("enable.auto.offset.store"),
            Some("false"),
            "offsets are stored only after the prediction is acknowledged"
        );
    }
}
