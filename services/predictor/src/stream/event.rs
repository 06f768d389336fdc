//! One sensor event on its way to a prediction record: read off the borrowed message, scored
//! through the batcher, serialised. Both delivery modes share this; they differ in how the
//! record and the event's offset reach Kafka.

use std::{sync::Arc, time::Instant};

use kappa_api::events::Prediction;
use kappa_dataset::range::payload_format;
use kappa_model::schema::{DecodedEvent, PayloadFormat};
use kappa_runtime::propagation::kafka_headers as trace_headers;
use opentelemetry::trace::TraceContextExt as _;
use rdkafka::{
    Message,
    message::{BorrowedMessage, OwnedHeaders},
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{batcher::Scored, error::PredictError, serving::Serving, slot::LoadedModel};

/// An event read through the current version's schema: the row to score and its event time.
type Prepared = Result<(Arc<LoadedModel>, Vec<f32>, Option<i64>), (&'static str, String)>;

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Shared by every event of the topic (one allocation per topic, not per event).
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// An event taken off the consumer, owning what its prediction needs.
pub struct Event {
    pub source: Source,
    key: String,
    timestamp_ms: i64,
    prepared: Prepared,
    /// The payload, kept only for a shadow version that reads other features than the live one.
    shadow_event: Option<(Vec<u8>, PayloadFormat)>,
    received: Instant,
    span: tracing::Span,
}

/// A prediction ready to produce, keyed like its event.
pub struct Record {
    pub source: Source,
    /// What became of the event (`scored`, or why not): counted once the record is delivered.
    pub outcome: &'static str,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Option<OwnedHeaders>,
    /// The event's span (none for untraced events), which producing the record runs in too.
    pub span: tracing::Span,
}

/// Admits the event to the current version and reads it with that version's schema, so the
/// row is exactly what the version was trained on even while a new schema swaps in. An event
/// older than the cutover of an alias moved by event time goes to the version before the move,
/// read with that version's schema.
fn prepare(serving: &Serving, payload: Option<&[u8]>, format: PayloadFormat, timestamp_ms: i64) -> Prepared {
    let current = serving.admit("", "").map_err(|e| ("no_model", e.to_string()))?;
    let payload = payload.ok_or(("empty", "the event has no value".to_owned()))?;
    let mut event = DecodedEvent::default();
    current
        .decoder
        .decode_into(payload, format, &mut event)
        .map_err(|e| ("malformed", e))?;
    let mut model = current;
    if let Some(cutover) = serving.slot.cutover()
        && event.time_ms.unwrap_or(timestamp_ms) < cutover.until_ms
        && cutover.version != model.version
    {
        match serving.slot.warm(cutover.version) {
            Some(earlier) => {
                // The earlier version may read other fields, or time from another one.
                earlier
                    .decoder
                    .decode_into(payload, format, &mut event)
                    .map_err(|e| ("malformed", e))?;
                model = earlier;
            }
            None => {
                serving.metrics.cutover_fallbacks.inc();
            }
        }
    }
    let mut row = Vec::with_capacity(model.n_features());
    if let Err(problems) = model.decoder.extend_row(&event, &mut row) {
        return Err((problems[0].kind.reason(), model.decoder.describe(&problems)));
    }
    // Set only when the version's schema takes event time from a field.
    Ok((model, row, event.time_ms))
}

/// What an event's prediction needs of its message, copied off the consumer, so the decoding,
/// scoring and producing can run on any async worker while the consumer reads on.
pub struct Arrival {
    source: Source,
    key: String,
    timestamp_ms: i64,
    format: PayloadFormat,
    payload: Option<Vec<u8>>,
    parent: Option<opentelemetry::Context>,
    received: Instant,
}

/// The topic name of the last event, so each event's [`Source`] shares it.
#[derive(Default)]
pub struct TopicNames(Option<Arc<str>>);

impl TopicNames {
    fn get(&mut self, topic: &str) -> Arc<str> {
        match &self.0 {
            Some(name) if &**name == topic => Arc::clone(name),
            _ => Arc::clone(self.0.insert(Arc::from(topic))),
        }
    }
}

impl Arrival {
    pub fn take(message: &BorrowedMessage<'_>, topics: &mut TopicNames) -> Self {
        let headers = message.headers();
        let parent = trace_headers::extract(headers);
        Self {
            source: Source {
                topic: topics.get(message.topic()),
                partition: message.partition(),
                offset: message.offset(),
            },
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
            format: payload_format(headers),
            payload: message.payload().map(<[u8]>::to_vec),
            parent: parent.span().span_context().is_valid().then_some(parent),
            received: Instant::now(),
        }
    }

    /// Reads the event with the current version's schema (see [`prepare`]).
    pub fn read(self, serving: &Serving) -> Event {
        let source = self.source;
        // An event that carries a trace gets a span in it, and its prediction carries the trace
        // on. Untraced events get none: one trace per sensor reading would bury everything else.
        let span = match self.parent {
            Some(parent) => {
                let span = tracing::info_span!(
                    "score_event",
                    otel.kind = "consumer",
                    messaging.system = "kafka",
                    messaging.destination.name = %source.topic,
                    messaging.kafka.partition = source.partition,
                    messaging.kafka.offset = source.offset,
                    model_version = tracing::field::Empty,
                );
                let _ = span.set_parent(parent);
                span
            }
            None => tracing::Span::none(),
        };
        let prepared = if self.key.len() > MAX_KEY_BYTES {
            Err((
                "key_too_long",
                format!(
                    "the event's key is {} bytes; events keyed by more than {MAX_KEY_BYTES} bytes are not scored",
                    self.key.len()
                ),
            ))
        } else {
            prepare(serving, self.payload.as_deref(), self.format, self.timestamp_ms)
        };
        let shadow_event = match (&serving.shadow, &prepared, self.payload) {
            (Some(shadow), Ok((live, _, _)), Some(payload)) if shadow.wants_event(live) => Some((payload, self.format)),
            _ => None,
        };
        Event {
            key: self.key,
            timestamp_ms: self.timestamp_ms,
            prepared,
            shadow_event,
            received: self.received,
            span,
            source,
        }
    }
}

/// The longest event key a prediction is keyed by; a longer one is answered with an error
/// prediction keyed by the key's digest, so no event can make a record the predictions topic
/// refuses.
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest error text a prediction carries.
const MAX_ERROR_BYTES: usize = 2048;

/// `key` when it is at most `limit` bytes, else `sha256:` and its digest (71 bytes).
fn bounded_key(key: String, limit: usize) -> String {
    if key.len() <= limit {
        key
    } else {
        format!("sha256:{}", kappa_model::sha256_hex(key.as_bytes()))
    }
}

/// The longest key an error prediction for a refused record keeps: no longer than a digest.
const REFUSED_KEY_BYTES: usize = 71;

/// `text` cut to [`MAX_ERROR_BYTES`] at a character boundary.
fn bounded_error(mut text: String) -> String {
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl Record {
    /// What replaces a prediction the predictions topic refused for good (too large for it, or
    /// invalid): an error prediction for the same event, small enough for any topic.
    pub fn refused(&self, why: &str) -> Self {
        let prediction = Prediction {
            key: bounded_key(self.key.clone(), REFUSED_KEY_BYTES),
            source_partition: self.source.partition,
            source_offset: self.source.offset,
            error: bounded_error(format!(
                "the prediction could not be written to the predictions topic: {why}"
            )),
            ..Default::default()
        };
        Self {
            source: self.source.clone(),
            outcome: self.outcome,
            key: prediction.key.clone(),
            value: serde_json::to_vec(&prediction).expect("a prediction always serialises"),
            headers: self.headers.clone(),
            span: self.span.clone(),
        }
    }
}

impl Event {
    /// Serialises the event's prediction from its outcome: a score, or the reason there is none.
    fn finish(self, outcome: Outcome, serving: &Serving) -> Record {
        let span = self.span;
        let _in_span = span.enter();
        let mut prediction = Prediction {
            key: bounded_key(self.key, MAX_KEY_BYTES),
            source_partition: self.source.partition,
            source_offset: self.source.offset,
            event_time_ms: self.timestamp_ms,
            ..Default::default()
        };
        if let Ok((_, _, Some(time))) = &self.prepared {
            prediction.event_time_ms = *time;
        }
        let reason = match outcome {
            Ok(scored) => {
                let score = scored.scores[0];
                prediction.score = f64::from(score);
                prediction.is_anomaly = kappa_model::is_anomalous(score, scored.model.threshold);
                prediction.model_name = scored.model.name.clone();
                prediction.model_version = scored.model.version;
                if prediction.is_anomaly {
                    prediction.top_features = crate::explain::contributions(
                        &scored.model,
                        &scored.inputs,
                        &scored.shares,
                        serving.explain_top,
                    );
                }
                span.record("model_version", scored.model.version);
                if let Some(shadow) = &serving.shadow {
                    let origin = crate::shadow::Origin::Stream {
                        partition: self.source.partition,
                        offset: self.source.offset,
                        event_time_ms: prediction.event_time_ms,
                    };
                    shadow.offer(scored, origin, &prediction.key, self.shadow_event);
                }
                "scored"
            }
            Err((reason, message)) => {
                prediction.error = bounded_error(message);
                prediction.model_name = serving.model_name.clone();
                reason
            }
        };
        prediction.latency_ms = self.received.elapsed().as_secs_f64() * 1000.0;
        let headers = (!span.is_none()).then(|| trace_headers::inject(&span.context(), OwnedHeaders::new()));
        // Sized for a typical prediction, so serialising does not grow the buffer several times.
        let mut value = Vec::with_capacity(256);
        serde_json::to_writer(&mut value, &prediction).expect("a prediction always serialises");
        Record {
            source: self.source,
            outcome: reason,
            key: prediction.key,
            value,
            headers,
            span: span.clone(),
        }
    }
}

/// Scores events and serialises their predictions, in the events' order. The rows of
/// consecutive events on the same version go to the batcher as one request (up to
/// `--max-request-rows`), so a group of events costs one trip to an inference thread instead of
/// one each. An event that cannot be scored gets a prediction carrying the reason; a full
/// inference queue is waited out, never answered with an error. `None` only when the
/// predictor is shutting down: the events then have no records, and no offset of theirs may
/// be committed.
pub async fn evaluate_all(events: Vec<Event>, serving: &Serving) -> Option<Vec<Record>> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(events.len());
    let mut run: Option<Run> = None;
    for event in &events {
        match &event.prepared {
            Err(e) => outcomes.push(Some(Err(e.clone()))),
            Ok((model, _, _)) => {
                let joins = run
                    .as_ref()
                    .is_some_and(|r| Arc::ptr_eq(&r.model, model) && r.events.len() < serving.max_request_rows);
                if !joins && let Some(full) = run.take() {
                    full.score(serving, &events, &mut outcomes).await?;
                }
                let run = run.get_or_insert_with(|| Run::new(Arc::clone(model)));
                run.events.push(outcomes.len());
                outcomes.push(None);
            }
        }
    }
    if let Some(last) = run {
        last.score(serving, &events, &mut outcomes).await?;
    }
    Some(
        events
            .into_iter()
            .zip(outcomes)
            .map(|(event, outcome)| {
                let outcome = outcome.expect("every prepared event belongs to a scored run");
                event.finish(outcome, serving)
            })
            .collect(),
    )
}

/// What became of one event: its scores, or the reason it has none.
type Outcome = Result<Scored, (&'static str, String)>;

/// Consecutive events on one version, scored in one request.
struct Run {
    model: Arc<LoadedModel>,
    /// The events' places in the group.
    events: Vec<usize>,
}

impl Run {
    fn new(model: Arc<LoadedModel>) -> Self {
        Self {
            model,
            events: Vec::new(),
        }
    }

    /// Scores the run and gives each of its events its own slice; `None` at shutdown. A lone
    /// event, or a run refused as a whole, is scored event by event, so a refusal lands on
    /// the event that caused it.
    async fn score(self, serving: &Serving, events: &[Event], outcomes: &mut [Option<Outcome>]) -> Option<()> {
        let rows = self.events.len();
        let f = self.model.n_features();
        if rows > 1 {
            let inputs = self
                .events
                .iter()
                .flat_map(|&at| prepared_row(&events[at]))
                .copied()
                .collect();
            match serving.score_waiting(Arc::clone(&self.model), inputs, rows).await {
                Ok(scored) => {
                    for (i, &at) in self.events.iter().enumerate() {
                        let row = i * f..(i + 1) * f;
                        // Only an anomaly's record is explained, from its values and shares.
                        let explained = !scored.shares.is_empty()
                            && kappa_model::is_anomalous(scored.scores[i], scored.model.threshold);
                        let own = Scored {
                            model: Arc::clone(&scored.model),
                            scores: vec![scored.scores[i]],
                            shares: if explained {
                                scored.shares[row.clone()].to_vec()
                            } else {
                                Vec::new()
                            },
                            // Only a shadow and an explanation read the inputs back.
                            inputs: if serving.shadow.is_some() || explained {
                                scored.inputs[row].to_vec()
                            } else {
                                Vec::new()
                            },
                            outputs: Vec::new(),
                        };
                        outcomes[at] = Some(Ok(own));
                    }
                    return Some(());
                }
                Err(PredictError::ShuttingDown) => return None,
                Err(_) => {}
            }
        }
        for &at in &self.events {
            let row = prepared_row(&events[at]).to_vec();
            outcomes[at] = Some(score(serving, Arc::clone(&self.model), row).await?);
        }
        Some(())
    }
}

/// The row of an event in a run (only prepared events join one).
fn prepared_row(event: &Event) -> &[f32] {
    match &event.prepared {
        Ok((_, row, _)) => row,
        Err(_) => unreachable!("a run holds prepared events only"),
    }
}

/// Scores one row, waiting out a full queue; `None` when the predictor is shutting down.
async fn score(serving: &Serving, model: Arc<LoadedModel>, row: Vec<f32>) -> Option<Outcome> {
    let scored = match serving.score_waiting(model, row, 1).await {
        Ok(scored) => scored,
        Err(PredictError::ShuttingDown) => return None,
        Err(PredictError::Inference(message)) => return Some(Err(("inference_failed", message))),
        Err(e) => return Some(Err(("invalid_input", e.to_string()))),
    };
    Some(Ok(scored))
}
