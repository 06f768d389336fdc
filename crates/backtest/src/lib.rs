//! Backtests: a retained time range of a topic replayed through one or more model versions,
//! each reading every event with its own schema, and what each would have said: anomaly rate,
//! score distribution, agreement with the first version, and precision/recall/F1/ROC AUC where
//! the events carry labels. The offsets read are recorded, so the same backtest can be run
//! again on exactly the same events. `kappa backtest` prints it; the trainer's promotion gate
//! decides on it.

mod report;

use report::Blame;
pub mod shadow;

use std::{collections::BTreeMap, time::Duration};

use kappa_dataset::scan::{Record, Scan, ScanError, event_time, scan_decoded};
use kappa_kafka::KafkaClients;
use kappa_model::{
    Model, ModelManifest,
    evaluate::quality,
    schema::{DecodedEvent, EventDecoder, LabelRule, label_rule, time_rule},
};

pub use report::{Agreement, METRICS, Offsets, Report, Scores, TopFeature, VersionReport};

/// Rows scored per call into a model: large enough that a call's overhead vanishes.
const BATCH: usize = 1024;

/// A version taking part: its manifest (name, version, threshold, schema) and its model.
pub struct Contender {
    pub manifest: ModelManifest,
    pub model: Model,
    decoder: EventDecoder,
    /// Each feature's training median, for explaining a version that cannot explain its own
    /// scores ([`kappa_model::median_replacement`]); `None` without a reference profile.
    medians: Option<Vec<f32>>,
}

impl Contender {
    /// The version's feature paths, in its input order.
    pub(crate) fn feature_names(&self) -> Vec<String> {
        self.manifest.features.iter().map(|f| f.name.clone()).collect()
    }

    /// Fails when the manifest's schema cannot be compiled.
    pub fn new(manifest: ModelManifest, model: Model) -> Result<Self, String> {
        let decoder = EventDecoder::for_manifest(&manifest)?;
        Ok(Self {
            medians: kappa_model::drift::reference_medians(&manifest),
            manifest,
            model,
            decoder,
        })
    }

    /// An admitted version, with the schema its admission compiled.
    pub fn admitted(admitted: kappa_model::admission::Admitted) -> Self {
        Self {
            medians: kappa_model::drift::reference_medians(&admitted.manifest),
            manifest: admitted.manifest,
            model: admitted.model,
            decoder: admitted.decoder,
        }
    }
}

/// The events to replay: `[from_ms, to_ms)` of `topic` by event time.
#[derive(Debug, Clone)]
pub struct Window {
    pub topic: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Bounds each broker look-up, and how long the read may go without an event.
    pub timeout: Duration,
    /// Most events the replay keeps scores for (each costs a few bytes a version); a window
    /// holding more is refused, so a caller cannot make the replay hold without bound.
    pub max_events: Option<usize>,
}

/// Why a backtest could not run.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("a backtest needs at least one version")]
    NoVersions,
    #[error("the window is empty: from_ms {from_ms} is not before to_ms {to_ms}")]
    EmptyWindow { from_ms: i64, to_ms: i64 },
    #[error("the label field: {0}")]
    Label(String),
    #[error("scoring with version {version} failed: {message}")]
    Scoring { version: u64, message: String },
    #[error("the window holds more than {max} events, more than this replay keeps scores for; narrow the window")]
    TooManyEvents { max: usize },
    #[error(transparent)]
    Scan(#[from] ScanError),
}

/// Replays `window` through `contenders`. The first contender's schema says what event time
/// is and, unless `label` overrides it, which field is the label; an event counts only when
/// every contender can read it, so all are compared on the same events. Blocking.
pub fn run(
    clients: &KafkaClients,
    window: &Window,
    contenders: &[Contender],
    label: Option<LabelRule>,
) -> Result<Report, BacktestError> {
    let first = contenders.first().ok_or(BacktestError::NoVersions)?;
    if window.from_ms >= window.to_ms {
        return Err(BacktestError::EmptyWindow {
            from_ms: window.from_ms,
            to_ms: window.to_ms,
        });
    }
    let schema = first.manifest.schema.clone().unwrap_or_default();
    let label = label.or_else(|| label_rule(&schema));
    // Reads time and label (and the first version's features) in the same pass.
    let frame = EventDecoder::new(first.decoder.features().to_vec(), label.clone(), time_rule(&schema))
        .map_err(BacktestError::Label)?;
    let lateness = schema
        .time
        .as_ref()
        .map_or(0, |t| i64::try_from(t.lateness_ms).unwrap_or(i64::MAX));
    let scope = Scan {
        topic: &window.topic,
        from_ms: window.from_ms,
        to_ms: window.to_ms.saturating_add(lateness),
        timeout: window.timeout,
        purpose: "backtest",
    };
    // Only the schemas go to the decoding threads; the models score on this one.
    let readers: Vec<(&EventDecoder, u64)> = contenders.iter().map(|c| (&c.decoder, c.manifest.version)).collect();
    let decode = |scratch: &mut Scratch, record: Record<'_>| -> Result<Decoded, String> {
        let Scratch {
            frame: frame_event,
            events,
        } = scratch;
        let payload = record.payload.ok_or_else(|| "empty".to_owned())?;
        let format = record.format;
        frame
            .decode_into(payload, format, frame_event)
            .map_err(|_| "malformed".to_owned())?;
        let time = event_time(&frame, frame_event, record.timestamp_ms).map_err(str::to_owned)?;
        if time < window.from_ms || time >= window.to_ms {
            return Err("outside_time_range".to_owned());
        }
        // The first version reads the frame's features; every other one decodes the event itself.
        events.resize_with(readers.len(), DecodedEvent::default);
        for ((decoder, version), event) in readers.iter().zip(events.iter_mut()).skip(1) {
            decoder
                .decode_into(payload, format, event)
                .map_err(|_| format!("v{version}:malformed"))?;
        }
        let mut rows = Vec::with_capacity(readers.iter().map(|(d, _)| d.features().len()).sum());
        for (i, (decoder, version)) in readers.iter().enumerate() {
            let event = if i == 0 { &*frame_event } else { &events[i] };
            decoder
                .extend_row(event, &mut rows)
                .map_err(|problems| format!("v{version}:{}", decoder.reason_key(&problems[0])))?;
        }
        Ok(Decoded {
            rows,
            label: frame_event.label,
        })
    };
    let mut replay = Replay::new(contenders);
    // A scoring failure stops the scan; `keep_going` and `on_decoded` both look at it.
    let failed = std::cell::Cell::new(false);
    let mut failure: Option<BacktestError> = None;
    // Decoded on every core while another thread reads Kafka, as the trainer reads.
    let scanned = scan_decoded(clients, &scope, &mut |_| !failed.get(), &decode, &mut |read| {
        // The rest of a hand-over after a failure is not scored.
        if failed.get() {
            return;
        }
        match read {
            Ok(_) if window.max_events.is_some_and(|max| replay.labels.len() >= max) => {
                failure = Some(BacktestError::TooManyEvents {
                    max: window.max_events.unwrap_or_default(),
                });
                failed.set(true);
            }
            Ok(decoded) => {
                if let Err(e) = replay.take(&decoded) {
                    failure = Some(e);
                    failed.set(true);
                }
            }
            Err(reason) => *replay.skipped.entry(reason).or_default() += 1,
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    replay.flush()?;
    Ok(replay.report(window, scanned, label.is_some()))
}

/// A decoding thread's reusable events: the frame (time, label, the first version's features)
/// and one per other version.
#[derive(Default)]
struct Scratch {
    frame: DecodedEvent,
    events: Vec<DecodedEvent>,
}

/// An event every version can read: the versions' rows, one after another, and its label.
struct Decoded {
    rows: Vec<f32>,
    label: Option<bool>,
}

/// What the replay has gathered so far: the rows waiting to be scored, each version's scores
/// in event order, and the labels.
struct Replay<'a> {
    contenders: &'a [Contender],
    pending: Vec<Vec<f32>>,
    /// Rows in each of `pending`.
    queued: usize,
    scores: Vec<Vec<f32>>,
    out: Vec<f32>,
    /// Each feature's share of each score of a batch: for versions that explain their scores,
    /// and by median replacement for the flagged rows of the others (NaN for the rest).
    shares: Vec<f32>,
    /// Scratch rows and scores for median replacement, kept between batches.
    replaced: (Vec<f32>, Vec<f32>),
    blame: Vec<Blame>,
    labels: Vec<Option<bool>>,
    skipped: BTreeMap<String, u64>,
}

impl<'a> Replay<'a> {
    fn new(contenders: &'a [Contender]) -> Self {
        Self {
            contenders,
            pending: contenders
                .iter()
                .map(|c| Vec::with_capacity(BATCH * c.model.n_features()))
                .collect(),
            queued: 0,
            scores: vec![Vec::new(); contenders.len()],
            out: Vec::with_capacity(BATCH),
            shares: Vec::new(),
            replaced: (Vec::new(), Vec::new()),
            blame: vec![Blame::default(); contenders.len()],
            labels: Vec::new(),
            skipped: BTreeMap::new(),
        }
    }

    /// Queues an event's rows (every version's, one after another) and its label, scoring
    /// full batches.
    fn take(&mut self, decoded: &Decoded) -> Result<(), BacktestError> {
        let mut rows = decoded.rows.as_slice();
        for (pending, contender) in self.pending.iter_mut().zip(self.contenders) {
            let (row, rest) = rows.split_at(contender.decoder.features().len());
            pending.extend_from_slice(row);
            rows = rest;
        }
        self.labels.push(decoded.label);
        self.queued += 1;
        if self.queued == BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BacktestError> {
        for (i, contender) in self.contenders.iter().enumerate() {
            if self.pending[i].is_empty() {
                continue;
            }
            let failed = |e: kappa_model::ModelError| BacktestError::Scoring {
                version: contender.manifest.version,
                message: e.to_string(),
            };
            let explained = contender
                .model
                .score_explained_into(&self.pending[i], &mut self.out, &mut self.shares)
                .map_err(failed)?;
            let threshold = contender.manifest.anomaly_threshold as f32;
            if let (false, Some(medians)) = (explained, &contender.medians) {
                // Offline, every flagged event is explained: the replay costs one more scored
                // row per feature of each.
                kappa_model::median_replacement::attribute(
                    &contender.model,
                    medians,
                    threshold,
                    &self.pending[i],
                    &self.out,
                    |flagged| flagged,
                    &mut self.shares,
                    (&mut self.replaced.0, &mut self.replaced.1),
                )
                .map_err(failed)?;
            }
            let rows = self.shares.chunks_exact(contender.model.n_features());
            for (score, shares) in self.out.iter().zip(rows) {
                // NaN: a flagged row no single feature at its median lowers the score of.
                if kappa_model::is_anomalous(*score, threshold) && !shares.iter().any(|s| s.is_nan()) {
                    self.blame[i].flagged(shares);
                }
            }
            self.scores[i].extend_from_slice(&self.out);
            self.pending[i].clear();
        }
        self.queued = 0;
        Ok(())
    }

    fn report(self, window: &Window, scanned: kappa_dataset::scan::Scanned, labelled_window: bool) -> Report {
        let labelled: Vec<usize> = (0..self.labels.len()).filter(|&i| self.labels[i].is_some()).collect();
        let truth: Vec<bool> = labelled.iter().map(|&i| self.labels[i] == Some(true)).collect();
        let flags: Vec<Vec<bool>> = self
            .contenders
            .iter()
            .zip(&self.scores)
            .map(|(c, scores)| {
                let threshold = c.manifest.anomaly_threshold as f32;
                scores
                    .iter()
                    .map(|s| kappa_model::is_anomalous(*s, threshold))
                    .collect()
            })
            .collect();
        let versions = self
            .contenders
            .iter()
            .enumerate()
            .map(|(v, contender)| {
                let threshold = contender.manifest.anomaly_threshold as f32;
                let scores = &self.scores[v];
                let labelled_scores: Vec<f32> = labelled.iter().map(|&i| scores[i]).collect();
                let both_classes = truth.iter().any(|t| *t) && truth.iter().any(|t| !*t);
                let quality = both_classes.then(|| quality(&labelled_scores, &truth, threshold));
                VersionReport::new(
                    contender,
                    scores,
                    &flags[v],
                    quality,
                    (v > 0).then(|| Agreement::between(&flags[0], &flags[v], &self.scores[0], scores)),
                    &self.blame[v],
                )
            })
            .collect();
        Report {
            topic: window.topic.clone(),
            from_ms: window.from_ms,
            to_ms: window.to_ms,
            offsets: scanned.partitions.iter().map(Offsets::from).collect(),
            read: scanned.read,
            events: self.labels.len() as u64,
            labelled: labelled.len() as u64,
            positives: truth.iter().filter(|t| **t).count() as u64,
            label_field: labelled_window,
            skipped: self.skipped,
            versions,
        }
    }
}

/// Why a version could not take part.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {what} from the registry failed: {source}")]
    Registry {
        what: String,
        source: kappa_client::GetError,
    },
    #[error("{what} (v{version}) has no manifest")]
    NoManifest { what: String, version: u64 },
    #[error("{what} (v{version}) does not load: {reason}")]
    Unloadable { what: String, version: u64, reason: String },
}

/// A version from the registry, ready to take part: admitted as a predictor would (digest,
/// structure, probe), of either format.
pub async fn fetch(
    registry: &mut kappa_client::Registry,
    name: &str,
    selector: kappa_client::Selector,
) -> Result<Contender, FetchError> {
    let what = match &selector {
        kappa_client::Selector::Version(v) => format!("{name} version {v}"),
        kappa_client::Selector::Alias(a) => format!("{name}@{a}"),
        kappa_client::Selector::Latest => format!("{name}'s latest version"),
    };
    let (header, weights) = match registry.get(name, selector).await {
        Ok(found) => found,
        Err(source) => return Err(FetchError::Registry { what, source }),
    };
    let version = header.version;
    let manifest = header.manifest.ok_or_else(|| FetchError::NoManifest {
        what: what.clone(),
        version,
    })?;
    let admitted = kappa_model::admission::load(&manifest, &weights).map_err(|e| FetchError::Unloadable {
        what,
        version,
        reason: e.to_string(),
    })?;
    Ok(Contender::admitted(admitted))
}
