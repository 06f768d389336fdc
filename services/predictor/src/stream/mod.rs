//! Stream mode: score every event of the sensor topic and produce one prediction record per event,
//! at-least-once (the default, [`at_least_once`]) or exactly-once ([`exactly_once`]). Scoring goes
//! through the same batcher as gRPC requests, so events batch together and never run on the async
//! workers; a full queue slows consumption down instead of failing events. Through a broker outage
//! nothing is lost: consumption pauses while predictions cannot be delivered and resumes after.

mod at_least_once;
mod context;
mod event;
mod exactly_once;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use kappa_kafka::KafkaClients;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use rdkafka::{
    ClientConfig,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    producer::FutureProducer,
};
use tokio_util::sync::CancellationToken;

use crate::{metrics::ReasonLabels, serving::Serving};
use context::StreamContext;

/// The readiness component of stream scoring.
pub const STREAM: &str = "stream";
/// The readiness component that says stream scoring has stopped making progress.
pub const STREAM_PROGRESS: &str = "stream_progress";

pub struct StreamSettings {
    pub sensor_topic: String,
    pub predictions_topic: String,
    /// The configs the predictions topic is created with when it does not exist (tiering).
    pub topic_configs: Vec<(String, String)>,
    pub group: String,
    pub max_in_flight: usize,
    /// How long nothing may be delivered while events wait before readiness says so.
    pub stall_after: Duration,
    /// Exactly-once delivery with this transactional id; at-least-once when `None`.
    pub transactional_id: Option<String>,
}

/// What can become of an event (the `reason` label of the events counter): scored, or why not.
/// A feature's problem is named as everywhere else (`ProblemKind::reason`: decoding, lineage).
pub const OUTCOMES: [&str; 12] = [
    "scored",
    "empty",
    "key_too_long",
    "malformed",
    "no_model",
    "missing",
    "not_numeric",
    "not_finite",
    "below_min",
    "above_max",
    "invalid_input",
    "inference_failed",
];

/// Stream mode's Prometheus series (`kappa_predictor_stream_*`).
#[derive(Debug, Default)]
pub struct StreamMetrics {
    /// Events by outcome: `scored`, or the reason an event could not be scored.
    pub events: Family<ReasonLabels, Counter>,
    pub lag: Gauge,
    /// Events read and not yet delivered (at-least-once: acknowledged; exactly-once: committed).
    pub in_flight: Gauge,
    pub produce_retries: Counter,
    /// Predictions the topic refused for good (too large, invalid), answered by an error
    /// prediction instead.
    pub refused: Counter,
    /// Exactly-once transactions, `committed` or `aborted` (and scored again).
    pub transactions: Family<ReasonLabels, Counter>,
}

impl StreamMetrics {
    /// Counts events by outcome (each a record's `outcome`), once their predictions are out:
    /// this count not moving while events wait is what a stalled stream looks like.
    pub fn count(&self, outcomes: impl IntoIterator<Item = &'static str>) {
        for reason in outcomes {
            self.events.get_or_create(&ReasonLabels { reason }).inc();
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        for reason in OUTCOMES {
            let _ = self.events.get_or_create(&ReasonLabels { reason });
        }
        for reason in ["committed", "aborted"] {
            let _ = self.transactions.get_or_create(&ReasonLabels { reason });
        }
        let r = registry.sub_registry_with_prefix("kappa_predictor_stream");
        r.register(
            "events",
            "Sensor events handled in stream mode, by outcome (scored, or why not)",
            self.events.clone(),
        );
        r.register(
            "in_flight",
            "Sensor events read and not yet delivered (acknowledged, or committed with exactly-once)",
            self.in_flight.clone(),
        );
        r.register(
            "lag",
            "Sensor events not yet consumed, summed over this replica's partitions",
            self.lag.clone(),
        );
        r.register(
            "produce_retries",
            "Predictions produced again after the broker refused or timed out (at-least-once)",
            self.produce_retries.clone(),
        );
        r.register(
            "refused_predictions",
            "Predictions the predictions topic refused for good (too large for it, invalid); each event got an error prediction instead",
            self.refused.clone(),
        );
        r.register(
            "transactions",
            "Exactly-once transactions by outcome (aborted ones are scored again)",
            self.transactions.clone(),
        );
    }
}

/// The sensor consumer. At-least-once commits on a timer, but only offsets stored after their
/// prediction was acknowledged (so `enable.auto.offset.store` is not the operator's to turn
/// on); exactly-once commits only inside its transactions and reads only committed events.
/// Cooperative-sticky by default, so a replica joining or leaving moves only the partitions
/// that must move.
fn consumer_config(kafka: &KafkaClients, group: &str, exactly_once: bool) -> ClientConfig {
    let defaults = [
        ("auto.commit.interval.ms", "1000"),
        ("auto.offset.reset", "earliest"),
        ("partition.assignment.strategy", "cooperative-sticky"),
        kappa_kafka::FETCH_QUEUE_BACKOFF,
    ];
    let auto_commit = if exactly_once { "false" } else { "true" };
    let mut required = vec![
        ("group.id", group),
        ("enable.auto.offset.store", "false"),
        ("enable.auto.commit", auto_commit),
    ];
    if exactly_once {
        required.push(("isolation.level", "read_committed"));
    }
    kafka.config_with(&defaults, &required)
}

/// The predictions producer: Kappa's defaults, all of which an operator may tune, and for
/// exactly-once the transactional id (a transaction left open by a killed replica blocks
/// read_committed readers until the broker times it out, hence the short timeout).
fn producer_config(kafka: &KafkaClients, transactional_id: Option<&str>) -> ClientConfig {
    const DEFAULTS: [(&str, &str); 4] = [
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("linger.ms", "2"),
        kappa_kafka::COMPRESSION,
    ];
    match transactional_id {
        Some(id) => {
            let defaults = [
                DEFAULTS[0],
                DEFAULTS[1],
                DEFAULTS[2],
                DEFAULTS[3],
                ("transaction.timeout.ms", "10000"),
            ];
            kafka.config_with(&defaults, &[("transactional.id", id)])
        }
        None => kafka.config(&DEFAULTS),
    }
}

pub async fn run(
    kafka: KafkaClients,
    settings: &StreamSettings,
    serving: Arc<Serving>,
    metrics: Arc<StreamMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let exactly_once = settings.transactional_id.is_some();
    let context = StreamContext::default();
    let consumer: Arc<StreamConsumer<StreamContext>> =
        Arc::new(consumer_config(&kafka, &settings.group, exactly_once).create_with_context(context)?);
    consumer.subscribe(&[&settings.sensor_topic])?;
    let producer: FutureProducer = producer_config(&kafka, settings.transactional_id.as_deref()).create()?;
    // The lag reporter lives as long as this consumer.
    let lag_stop = shutdown.child_token();
    let _lag_guard = lag_stop.clone().drop_guard();
    let watch = Progress {
        metrics: Arc::clone(&metrics),
        readiness: Arc::clone(&serving.readiness),
        stall_after: settings.stall_after,
    };
    tokio::spawn(report_lag(Arc::clone(&consumer), watch, lag_stop));
    tracing::info!(
        topic = settings.sensor_topic,
        group = settings.group,
        delivery = if exactly_once { "exactly-once" } else { "at-least-once" },
        "stream scoring started"
    );
    if exactly_once {
        exactly_once::run(consumer, producer, settings, serving, metrics, shutdown).await?;
    } else {
        at_least_once::run(consumer, producer, settings, serving, metrics, shutdown).await?;
    }
    tracing::info!("stream scoring stopped");
    Ok(())
}

/// Consumer errors while the broker is away: librdkafka reconnects by itself and these only
/// say so, many times a second; logged at most every 10 s.
#[derive(Debug, Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn note(&mut self, error: &KafkaError) {
        self.suppressed += 1;
        if self.last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(error = %error, errors = self.suppressed, "sensor consumer errors; librdkafka keeps reconnecting");
            self.last = Some(Instant::now());
            self.suppressed = 0;
        }
    }
}

/// What tells a stream that makes progress from one that stopped.
struct Progress {
    metrics: Arc<StreamMetrics>,
    readiness: Arc<kappa_runtime::Readiness>,
    stall_after: Duration,
}

impl Progress {
    fn handled(&self) -> u64 {
        OUTCOMES
            .iter()
            .map(|reason| self.metrics.events.get_or_create(&ReasonLabels { reason }).get())
            .sum()
    }
}

/// Publishes the consumer lag (high watermark minus position, summed over the assigned
/// partitions) every few seconds, and reports the stream not ready while events wait and none
/// has been handled for `stall_after`. Watermark look-ups block, so they run on a blocking
/// thread.
async fn report_lag(consumer: Arc<StreamConsumer<StreamContext>>, progress: Progress, stop: CancellationToken) {
    let (mut handled, mut since, mut stalled) = (progress.handled(), Instant::now(), false);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let now = progress.handled();
        if now != handled {
            (handled, since) = (now, Instant::now());
            if std::mem::take(&mut stalled) {
                progress.readiness.clear(STREAM_PROGRESS);
                tracing::info!("stream scoring makes progress again");
            }
        }
        let waiting = progress.metrics.lag.get() + progress.metrics.in_flight.get();
        if waiting == 0 {
            since = Instant::now();
        } else if !stalled && since.elapsed() >= progress.stall_after {
            stalled = true;
            let problem = format!(
                "stream scoring has delivered no prediction for {:?} while {waiting} events wait; see the log (a predictions topic refusing writes, a broker away)",
                progress.stall_after
            );
            tracing::error!("{problem}");
            progress.readiness.report(STREAM_PROGRESS, problem);
        }
        let lag = progress.metrics.lag.clone();
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
    // The consumer is gone; the next one (the supervisor's restart) watches afresh.
    if stalled {
        progress.readiness.clear(STREAM_PROGRESS);
    }
}

#[cfg(test)]
mod tests {
    use kappa_kafka::KafkaArgs;

    use super::*;

    #[test]
    fn every_problem_a_decoder_reports_is_an_outcome_the_counter_has() {
        for reason in kappa_model::schema::ProblemKind::REASONS {
            assert!(OUTCOMES.contains(&reason), "{reason}");
        }
    }

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
        let producer = producer_config(&kafka, None);
        assert_eq!(producer.get("acks"), Some("1"));
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("transactional.id"), None);
        let consumer = consumer_config(&kafka, "scorers", false);
        assert_eq!(consumer.get("auto.commit.interval.ms"), Some("250"));
        assert_eq!(consumer.get("group.id"), Some("scorers"));
        assert_eq!(
            consumer.get("enable.auto.offset.store"),
            Some("false"),
            "offsets are stored only after the prediction is acknowledged"
        );
        assert_eq!(
            consumer.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(consumer.get("isolation.level"), None);
    }

    #[test]
    fn exactly_once_commits_only_in_transactions_and_reads_only_committed_events() {
        let args = KafkaArgs {
            properties: vec![
                ("enable.auto.commit".into(), "true".into()),
                ("isolation.level".into(), "read_uncommitted".into()),
                ("transactional.id".into(), "theirs".into()),
            ],
            ..KafkaArgs::for_bootstrap("k:9092")
        };
        let kafka = args.clients().unwrap();
        let consumer = consumer_config(&kafka, "scorers", true);
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        let producer = producer_config(&kafka, Some("scorer-1"));
        assert_eq!(producer.get("transactional.id"), Some("scorer-1"));
        assert_eq!(producer.get("transaction.timeout.ms"), Some("10000"));
    }
}
