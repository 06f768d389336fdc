//! Shadow scoring: a second version (`--shadow ALIAS`) kept warm beside the served one scores a
//! copy of the live traffic on a thread of its own, after each live answer is already on its way.
//! Live requests hand their inputs over without waiting (a full queue drops the shadow's copy,
//! counted), so the shadow never adds to a caller's latency or fails a call. Each shadow answer
//! goes to the shadow topic with both versions' scores and flags.

use std::{sync::Arc, time::Duration};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use kappa_api::events::ShadowPrediction;
use kappa_model::schema::{DecodedEvent, PayloadFormat};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use rdkafka::{
    ClientConfig, ClientContext,
    error::KafkaResult,
    message::DeliveryResult,
    producer::{BaseRecord, ProducerContext, ThreadedProducer},
};

use crate::{
    batcher::Scored,
    slot::{LoadedModel, ModelSlot},
};

/// Most live answers the shadow scores in one forward pass.
const BATCH: usize = 256;

/// How often the shadow thread looks for copies when it has none.
const TICK: Duration = Duration::from_millis(2);

/// What became of a live row's shadow copy (the `outcome` label); `scored` once Kafka has the
/// shadow answer.
pub const OUTCOMES: [&str; 7] = [
    "scored",
    "dropped",
    "no_shadow_model",
    "features_differ",
    "unreadable",
    "inference_failed",
    "produce_failed",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Default)]
pub struct ShadowMetrics {
    pub rows: Family<OutcomeLabels, Counter>,
    /// Shadow answers whose flag differs from the live one.
    pub flips: Counter,
}

impl ShadowMetrics {
    pub fn register(&self, registry: &mut Registry) {
        for outcome in OUTCOMES {
            let _ = self.rows.get_or_create(&OutcomeLabels { outcome });
        }
        let r = registry.sub_registry_with_prefix("kappa_predictor_shadow");
        r.register(
            "rows",
            "Live rows offered to the shadow version, by outcome (scored, or why not)",
            self.rows.clone(),
        );
        r.register(
            "flag_flips",
            "Shadow answers whose anomaly flag differs from the live answer's",
            self.flips.clone(),
        );
    }

    fn count(&self, outcome: &'static str, rows: u64) {
        self.rows.get_or_create(&OutcomeLabels { outcome }).inc_by(rows);
    }
}

/// What a live answer came from.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    Predict,
    ModelInfer,
    /// A sensor event: its position and event time.
    Stream {
        partition: i32,
        offset: i64,
        event_time_ms: i64,
    },
}

/// The shadow's copy of the input: the live rows, or, when the shadow reads other features, the
/// event itself to read with the shadow's schema.
pub enum Input {
    Rows(Vec<f32>),
    Event(Vec<u8>, PayloadFormat),
}

/// One live answer for the shadow to score again.
pub struct Offer {
    pub live: Arc<LoadedModel>,
    pub live_scores: Vec<f32>,
    pub input: Input,
    pub origin: Origin,
    pub key: String,
}

/// The live side's handle: offers copies, never waits.
pub struct Shadow {
    pub slot: Arc<ModelSlot>,
    tx: Sender<Offer>,
    metrics: Arc<ShadowMetrics>,
}

impl Shadow {
    /// The shadow's producer, made from `config` before anything starts (librdkafka may refuse
    /// the settings).
    pub fn producer(config: &ClientConfig, metrics: &Arc<ShadowMetrics>) -> KafkaResult<ShadowProducer> {
        config
            .create_with_context(Deliveries(Arc::clone(metrics)))
            .map(ShadowProducer)
    }

    /// Starts the shadow thread, producing to `topic`.
    pub fn start(
        slot: Arc<ModelSlot>,
        capacity: usize,
        ShadowProducer(producer): ShadowProducer,
        topic: String,
        instance: String,
        metrics: Arc<ShadowMetrics>,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let worker = Worker {
            slot: Arc::clone(&slot),
            rx,
            producer,
            topic,
            instance,
            metrics: Arc::clone(&metrics),
        };
        std::thread::Builder::new()
            .name("kappa-shadow".into())
            .spawn(move || worker.run())
            .expect("the system refused a thread for the shadow");
        Self { slot, tx, metrics }
    }

    /// Whether the shadow needs the raw event for an input the live version read: it reads other
    /// features than `live` (or is not loaded yet, when the rows may still do).
    pub fn wants_event(&self, live: &LoadedModel) -> bool {
        self.slot
            .current()
            .is_some_and(|shadow| shadow.feature_names != live.feature_names)
    }

    /// Hands a live answer over; drops it (counted) when the shadow is behind.
    pub fn offer(&self, scored: Scored, origin: Origin, key: &str, event: Option<(Vec<u8>, PayloadFormat)>) {
        let rows = scored.scores.len() as u64;
        let input = match event {
            Some((payload, format)) => Input::Event(payload, format),
            None => Input::Rows(scored.inputs),
        };
        let offer = Offer {
            live: scored.model,
            live_scores: scored.scores,
            input,
            origin,
            key: key.to_owned(),
        };
        match self.tx.try_send(offer) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.metrics.count("dropped", rows),
        }
    }
}

/// Counts each shadow answer once Kafka has it (or has refused it).
struct Deliveries(Arc<ShadowMetrics>);

/// The producer of a shadow that has not started yet.
pub struct ShadowProducer(ThreadedProducer<Deliveries>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        match result {
            Ok(_) => self.0.count("scored", 1),
            Err((e, _)) => {
                tracing::debug!(error = %e, "Kafka refused a shadow answer");
                self.0.count("produce_failed", 1);
            }
        }
    }
}

struct Worker {
    slot: Arc<ModelSlot>,
    rx: Receiver<Offer>,
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    instance: String,
    metrics: Arc<ShadowMetrics>,
}

impl Worker {
    fn run(self) {
        let mut offers: Vec<Offer> = Vec::with_capacity(BATCH);
        let mut inputs: Vec<f32> = Vec::new();
        let mut scores: Vec<f32> = Vec::new();
        // Which offers' rows are in `inputs`, and how many rows each put there.
        let mut taken: Vec<(usize, usize)> = Vec::with_capacity(BATCH);
        let mut event = DecodedEvent::default();
        loop {
            // Polled, not woken: a live request handing over a copy never has to wake this
            // thread (a futex call on the request path); copies wait at most one tick.
            while offers.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(offer) => offers.push(offer),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if offers.is_empty() {
                std::thread::sleep(TICK);
                continue;
            }
            let Some(shadow) = self.slot.current() else {
                let rows = offers.iter().map(|o| o.live_scores.len() as u64).sum();
                self.metrics.count("no_shadow_model", rows);
                offers.clear();
                continue;
            };
            inputs.clear();
            taken.clear();
            for (i, offer) in offers.iter().enumerate() {
                let before = inputs.len();
                let rows = offer.live_scores.len();
                match &offer.input {
                    Input::Rows(values) if offer.live.feature_names == shadow.feature_names => {
                        inputs.extend_from_slice(values);
                    }
                    Input::Rows(_) => {
                        self.metrics.count("features_differ", rows as u64);
                        continue;
                    }
                    Input::Event(payload, format) => {
                        let read = shadow.decoder.decode_into(payload, *format, &mut event).is_ok()
                            && shadow.decoder.extend_row(&event, &mut inputs).is_ok();
                        if !read {
                            inputs.truncate(before);
                            self.metrics.count("unreadable", rows as u64);
                            continue;
                        }
                    }
                }
                taken.push((i, rows));
            }
            if !inputs.is_empty() {
                match shadow.model.score_into(&inputs, &mut scores) {
                    Ok(()) => self.publish(&shadow, &offers, &taken, &scores),
                    Err(e) => {
                        tracing::warn!(version = shadow.version, error = %e, "the shadow's forward pass failed");
                        self.metrics
                            .count("inference_failed", taken.iter().map(|(_, r)| *r as u64).sum());
                    }
                }
            }
            offers.clear();
        }
    }

    fn publish(&self, shadow: &LoadedModel, offers: &[Offer], taken: &[(usize, usize)], scores: &[f32]) {
        let now_ms = kappa_runtime::now_ms();
        let mut at = 0;
        for &(i, rows) in taken {
            let offer = &offers[i];
            for row in 0..rows {
                let (live_score, shadow_score) = (offer.live_scores[row], scores[at + row]);
                let (live_flag, shadow_flag) = (
                    kappa_model::is_anomalous(live_score, offer.live.threshold),
                    kappa_model::is_anomalous(shadow_score, shadow.threshold),
                );
                if live_flag != shadow_flag {
                    self.metrics.flips.inc();
                }
                let mut record = ShadowPrediction {
                    model_name: shadow.name.clone(),
                    live_version: offer.live.version,
                    live_score: f64::from(live_score),
                    live_is_anomaly: live_flag,
                    shadow_version: shadow.version,
                    shadow_score: f64::from(shadow_score),
                    shadow_is_anomaly: shadow_flag,
                    row: row as u32,
                    scored_at_ms: now_ms,
                    predictor: self.instance.clone(),
                    ..ShadowPrediction::default()
                };
                record.origin = match offer.origin {
                    Origin::Predict => "predict".into(),
                    Origin::ModelInfer => "model_infer".into(),
                    Origin::Stream {
                        partition,
                        offset,
                        event_time_ms,
                    } => {
                        record.source_partition = partition;
                        record.source_offset = offset;
                        record.event_time_ms = event_time_ms;
                        "stream".into()
                    }
                };
                let value = serde_json::to_vec(&record).expect("a shadow prediction always serialises");
                self.send(&offer.key, &value);
            }
            at += rows;
        }
    }

    /// Hands the record to the producer; a full producer queue is waited out briefly (this is
    /// the shadow's own thread), then the record is dropped, counted.
    fn send(&self, key: &str, value: &[u8]) {
        let mut wait = Duration::from_millis(5);
        let mut record = BaseRecord::to(&self.topic).key(key).payload(value);
        for _ in 0..5 {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(wait);
                    wait *= 2;
                }
                Err((e, _)) => {
                    tracing::debug!(error = %e, "a shadow answer was not produced");
                    break;
                }
            }
        }
        self.metrics.count("produce_failed", 1);
    }
}
