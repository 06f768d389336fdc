//! One training job, from reading Kafka to moving the alias.

use std::{
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use kappa_api::{
    model::{
        Activation, Distribution, Layer, Lineage, Metrics, ModelManifest, OutputKind, ReferenceProfile, SampleCounts,
    },
    registry as rpb,
    trainer::{Continuous, Job, JobPhase, JobProgress, TrainingSpec, training_spec::Range},
};
use kappa_client::{Registry, Selector};
use kappa_kafka::KafkaClients;
use kappa_model::{
    Backend, Mlp, drift,
    evaluate::{Quality, percentile, quality},
    example::serialize_tensors,
    train::{TrainData, TrainSettings, train_autoencoder},
};
use kappa_runtime::propagation::span_context_map;
use opentelemetry::trace::TraceContextExt as _;
use rand::{SeedableRng, seq::SliceRandom};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    dataset::{Screen, fit_stats, scaled, split},
    reader::{RangeQuery, Row, read_range, scan_range},
    store::JobStore,
};

/// A job as the service tracks it.
pub struct JobHandle {
    pub job: Mutex<Job>,
    pub progress: watch::Sender<JobProgress>,
    pub cancel: CancellationToken,
    pub store: Arc<JobStore>,
}

impl JobHandle {
    pub fn snapshot(&self) -> Job {
        let mut job = self.job.lock().expect("job lock poisoned").clone();
        job.progress = Some(self.progress.borrow().clone());
        job
    }

    fn set_phase(&self, phase: JobPhase, message: impl Into<String>) {
        let message = message.into();
        {
            let mut job = self.job.lock().expect("job lock poisoned");
            job.phase = phase as i32;
            job.message.clone_from(&message);
        }
        self.progress.send_modify(|p| {
            p.phase = phase as i32;
            p.message = message;
        });
        self.store.save(&self.snapshot());
    }

    fn update(&self, f: impl FnOnce(&mut Job)) {
        f(&mut self.job.lock().expect("job lock poisoned"));
        self.store.save(&self.snapshot());
    }
}

/// What a job needs from the service.
#[derive(Clone)]
pub struct JobContext {
    pub metrics: Arc<crate::metrics::TrainerMetrics>,
    pub kafka: KafkaClients,
    pub registry: kappa_client::ServiceUrl,
    pub registry_security: kappa_client::ClientSecurity,
    /// Signs what the trainer publishes, when configured.
    pub signer: Option<kappa_model::signing::ModelSigner>,
    pub max_rows: usize,
    /// Bounds each Kafka look-up, and how long a range read may go without an event.
    pub kafka_timeout: std::time::Duration,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The time range a spec asks for, resolved against the clock for "last N minutes".
pub fn time_range(spec: &TrainingSpec) -> (i64, i64) {
    match spec.range {
        Some(Range::TimeRange(r)) => (r.from_ms, r.to_ms),
        Some(Range::LastMinutes(m)) => {
            let now = now_ms();
            (now - i64::from(m) * 60_000, now)
        }
        None => (0, 0),
    }
}

/// Runs the job to a terminal phase: one round, or rounds on a sliding window for a continuous
/// job. Nothing is published by a round unless every step of it succeeds.
pub async fn run(handle: Arc<JobHandle>, ctx: JobContext) {
    let continuous = handle
        .job
        .lock()
        .expect("job lock poisoned")
        .spec
        .as_ref()
        .and_then(|s| s.continuous);
    ctx.metrics.running.inc();
    let outcome = match continuous {
        None => execute(&handle, &ctx, false).await,
        Some(c) => continuously(&handle, &ctx, c).await,
    };
    ctx.metrics.running.dec();
    let label = match &outcome {
        Ok(()) => "succeeded",
        Err(Stop::Cancelled) => "cancelled",
        Err(Stop::Failed(_)) => "failed",
    };
    ctx.metrics
        .jobs
        .get_or_create(&crate::metrics::OutcomeLabels { outcome: label })
        .inc();
    match outcome {
        Ok(()) => {}
        Err(Stop::Cancelled) => handle.set_phase(JobPhase::Cancelled, "cancelled; nothing was published"),
        Err(Stop::Failed(message)) => {
            tracing::warn!(job = handle.snapshot().job_id, message, "training job failed");
            handle.set_phase(JobPhase::Failed, message);
        }
    }
}

async fn continuously(handle: &Arc<JobHandle>, ctx: &JobContext, c: Continuous) -> Result<(), Stop> {
    let topic = handle
        .job
        .lock()
        .expect("job lock poisoned")
        .spec
        .as_ref()
        .map(|s| s.source_topic.clone())
        .unwrap_or_default();
    // One client for the whole job, and only when the every-N-events trigger needs it.
    let counter = if c.every_events > 0 {
        let kafka = ctx.kafka.clone();
        let consumer =
            tokio::task::spawn_blocking(move || kafka.config(&[]).create::<rdkafka::consumer::BaseConsumer>())
                .await
                .map_err(fail)?
                .map_err(|e| fail(format!("cannot create a Kafka client: {e}")))?;
        Some(Arc::new(consumer))
    } else {
        None
    };
    loop {
        execute(handle, ctx, true).await?;
        let runs = handle.snapshot().runs;
        if c.max_runs > 0 && runs >= c.max_runs {
            handle.set_phase(JobPhase::Succeeded, format!("{runs} rounds done"));
            return Ok(());
        }
        handle.set_phase(
            JobPhase::Queued,
            format!("round {runs} done; waiting for the next window"),
        );
        let started = std::time::Instant::now();
        let baseline = match &counter {
            Some(consumer) => event_count(consumer, &topic).await,
            None => 0,
        };
        loop {
            tokio::select! {
                () = handle.cancel.cancelled() => return Err(Stop::Cancelled),
                () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            }
            let by_time = c.every_seconds > 0 && started.elapsed().as_secs() >= u64::from(c.every_seconds);
            let by_events = match &counter {
                Some(consumer) => event_count(consumer, &topic).await.saturating_sub(baseline) >= c.every_events,
                None => false,
            };
            if by_time || by_events {
                break;
            }
        }
    }
}

/// Events in the topic so far (sum of high watermarks), for the every-N-events trigger.
async fn event_count(consumer: &Arc<rdkafka::consumer::BaseConsumer>, topic: &str) -> u64 {
    let (consumer, topic) = (Arc::clone(consumer), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        let metadata = consumer
            .fetch_metadata(Some(&topic), std::time::Duration::from_secs(5))
            .ok()?;
        let mut total = 0;
        for p in metadata.topics().first()?.partitions() {
            total += consumer
                .fetch_watermarks(&topic, p.id(), std::time::Duration::from_secs(5))
                .ok()?
                .1;
        }
        Some(total.max(0) as u64)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(0)
}

enum Stop {
    Cancelled,
    Failed(String),
}

fn fail(message: impl std::fmt::Display) -> Stop {
    Stop::Failed(message.to_string())
}

/// One round in a span of its own: the root of the trace that follows the model it publishes
/// through the registry into every predictor. A continuous job's rounds each start a new trace
/// (linked to the job's), so one model's journey is one readable trace.
async fn execute(handle: &Arc<JobHandle>, ctx: &JobContext, continuous: bool) -> Result<(), Stop> {
    let job = handle.snapshot();
    let span = tracing::info_span!(
        "training_round",
        job_id = %job.job_id,
        model = job.spec.as_ref().map_or("", |s| s.model_name.as_str()),
        round = job.runs + 1,
        published_version = Empty,
        promoted = Empty,
    );
    if continuous {
        let job_span = tracing::Span::current().context().span().span_context().clone();
        let _ = span.set_parent(opentelemetry::Context::new());
        if job_span.is_valid() {
            span.add_link(job_span);
        }
    }
    execute_round(handle, ctx, &span).instrument(span.clone()).await
}

async fn execute_round(handle: &Arc<JobHandle>, ctx: &JobContext, round: &tracing::Span) -> Result<(), Stop> {
    let (job_id, spec) = {
        let job = handle.job.lock().expect("job lock poisoned");
        (job.job_id.clone(), job.spec.clone().unwrap_or_default())
    };
    let (from_ms, to_ms) = time_range(&spec);
    let decoder = Arc::new(crate::schema::decoder(&spec).map_err(fail)?);
    let query = RangeQuery {
        topic: spec.source_topic.clone(),
        from_ms,
        to_ms,
        decoder,
        lateness_ms: crate::schema::lateness_ms(&spec),
        max_rows: ctx.max_rows,
        timeout: ctx.kafka_timeout,
    };

    handle.set_phase(
        JobPhase::Reading,
        format!("reading {} over [{from_ms}, {to_ms})", spec.source_topic),
    );
    let data = {
        let (handle, kafka, query) = (Arc::clone(handle), ctx.kafka.clone(), query.clone());
        let span = tracing::info_span!("read_kafka", topic = %query.topic, from_ms, to_ms, events = Empty);
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let data = read_range(&kafka, &query, &mut |read, skipped| {
                handle.progress.send_modify(|p| {
                    p.samples_read = read;
                    p.samples_skipped = skipped;
                });
                !handle.cancel.is_cancelled()
            });
            if let Ok(data) = &data {
                span.record("events", data.read);
            }
            data
        })
        .await
        .map_err(fail)?
        .map_err(|e| fail(format!("reading Kafka failed: {e}")))?
    };
    ctx.metrics.samples_read.inc_by(data.read);
    if handle.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let features = spec.features.len();
    // The range as it was, every usable event (anomalies and outliers too): what live data is
    // compared with. (Past --max-rows, the uniform sample of it.)
    let reference_features = feature_profiles(&spec, &data.rows);
    let mut splits = split(data.rows, spec.validation_split, spec.holdout_split, spec.seed);
    let mut skipped = data.skipped.clone();
    if splits.anomalies_excluded > 0 {
        skipped.insert("labelled_anomaly_not_trained_on".to_owned(), splits.anomalies_excluded);
    }
    // Gross outliers are screened from the rows the model is fitted on (never from the hold-out,
    // where catching them is the model's job), with statistics of those same rows.
    let fitting: Vec<&Vec<f32>> = splits.train.iter().chain(&splits.validation).collect();
    let screen = Screen::fit(&fit_stats(&fitting, features), crate::schema::screening_z(&spec));
    drop(fitting);
    let mut outliers = vec![0_u64; features];
    screen.retain(&mut splits.train, &mut outliers);
    screen.retain(&mut splits.validation, &mut outliers);
    for (feature, count) in spec.features.iter().zip(&outliers).filter(|(_, c)| **c > 0) {
        skipped.insert(format!("outlier:{}", feature.path), *count);
    }
    let skipped_total: u64 = skipped.values().sum();
    if splits.train.len() < 2 || splits.validation.is_empty() {
        return Err(fail(format!(
            "only {} usable normal events in the range ({} read, skipped {:?}); widen the range or check the schema",
            splits.train.len() + splits.validation.len(),
            data.read,
            skipped
        )));
    }
    let stats = fit_stats(&splits.train, features);
    let offset: Vec<f64> = stats.iter().map(|s| s.median).collect();
    let scale: Vec<f64> = stats.iter().map(|s| s.scale()).collect();
    let train = scaled(&splits.train, &offset, &scale);
    let validation = scaled(&splits.validation, &offset, &scale);

    handle.set_phase(JobPhase::Training, format!("training on {} events", splits.train.len()));
    let settings = TrainSettings {
        hidden: spec.hidden_layers.iter().map(|h| *h as usize).collect(),
        epochs: spec.epochs,
        batch_size: spec.batch_size as usize,
        learning_rate: spec.learning_rate,
        weight_decay: 0.01,
        seed: spec.seed,
    };
    // Past the memory cap, `splits` came from a uniform sample of the range; training then reads
    // the range from Kafka again every epoch, a block of at most `max_rows` rows at a time.
    let streamed = data.usable
        > (splits.train.len() + splits.validation.len() + splits.holdout.len()) as u64 + splits.anomalies_excluded;
    let streamed_rows = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let streamed_anomalies = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let trained = {
        let handle = Arc::clone(handle);
        let metrics = Arc::clone(&ctx.metrics);
        let rows_per_epoch = splits.train.len();
        let (kafka, held_out, cap) = (ctx.kafka.clone(), splits.held_out.clone(), ctx.max_rows);
        let (offset, scale, screen) = (offset.clone(), scale.clone(), screen.clone());
        let (streamed_rows, streamed_anomalies) = (Arc::clone(&streamed_rows), Arc::clone(&streamed_anomalies));
        let span = tracing::info_span!("train", epochs = spec.epochs, rows = rows_per_epoch, streamed);
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let progress = handle.progress.clone();
            let cancel = handle.cancel.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
            let mut stream_epoch = |sink: &mut dyn FnMut(&[f32]) -> bool| -> Result<(), String> {
                let mut block: Vec<Vec<f32>> = Vec::with_capacity(cap.min(1 << 20));
                // The sink says when to stop (cancelled); the reader polls it between records.
                let open = std::cell::Cell::new(true);
                let (mut rows, mut anomalies) = (0_u64, 0_u64);
                let mut flush = |block: &mut Vec<Vec<f32>>| {
                    block.shuffle(&mut rng);
                    open.set(open.get() && sink(&scaled(block, &offset, &scale)));
                    block.clear();
                };
                scan_range(
                    &kafka,
                    &query,
                    &mut |_, _| open.get() && !cancel.is_cancelled(),
                    &mut |row| {
                        if held_out.contains(&row.id) {
                            return;
                        }
                        if row.label == Some(true) {
                            anomalies += 1;
                            return;
                        }
                        if screen.outlier(&row.values).is_some() {
                            return;
                        }
                        rows += 1;
                        block.push(row.values);
                        if block.len() >= cap {
                            flush(&mut block);
                        }
                    },
                )
                .map_err(|e| format!("re-reading the range from Kafka failed: {e}"))?;
                if !block.is_empty() && open.get() {
                    flush(&mut block);
                }
                streamed_rows.store(rows, std::sync::atomic::Ordering::Relaxed);
                streamed_anomalies.store(anomalies, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            };
            let mut epoch_started = std::time::Instant::now();
            let source = if streamed {
                TrainData::Streamed(&mut stream_epoch)
            } else {
                TrainData::InMemory(&train)
            };
            train_autoencoder(
                source,
                &validation,
                features,
                &settings,
                &mut |epoch, loss, validation_loss| {
                    progress.send_modify(|p| {
                        p.epoch = epoch;
                        p.loss = loss;
                        p.validation_loss = validation_loss;
                    });
                    metrics.loss.set(loss);
                    // Streamed epochs include their Kafka re-read, which is part of their cost.
                    let rows = if streamed {
                        streamed_rows.load(std::sync::atomic::Ordering::Relaxed) as usize
                    } else {
                        rows_per_epoch
                    };
                    metrics
                        .samples_per_second
                        .set(rows as f64 / epoch_started.elapsed().as_secs_f64().max(1e-9));
                    epoch_started = std::time::Instant::now();
                    !cancel.is_cancelled()
                },
                &|| cancel.is_cancelled(),
            )
        })
        .await
        .map_err(fail)?
        .map_err(fail)?
    };
    if streamed {
        // The streamed epochs saw every anomaly of the range, not just the sample's.
        skipped.remove("labelled_anomaly_not_trained_on");
        let anomalies = streamed_anomalies.load(std::sync::atomic::Ordering::Relaxed);
        if anomalies > 0 {
            skipped.insert("labelled_anomaly_not_trained_on".to_owned(), anomalies);
        }
    }
    if !trained.completed || handle.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }

    handle.set_phase(JobPhase::Evaluating, "scoring validation and hold-out data");
    let evaluating = tracing::info_span!("evaluate", holdout = splits.holdout.len()).entered();
    let mut widths = vec![features as u32];
    widths.extend(&spec.hidden_layers);
    widths.push(features as u32);
    let layers = widths
        .windows(2)
        .enumerate()
        .map(|(i, w)| Layer {
            in_features: w[0],
            out_features: w[1],
            activation: if i + 2 == widths.len() {
                Activation::Linear
            } else {
                Activation::Relu
            } as i32,
        })
        .collect();
    let mut manifest = ModelManifest {
        name: spec.model_name.clone(),
        description: format!(
            "autoencoder trained by kappa-trainer job {job_id} on {}",
            spec.source_topic
        ),
        features: crate::schema::manifest_features(&spec, &offset, &scale),
        schema: Some(crate::schema::event_schema(&spec)),
        layers,
        output: OutputKind::ReconstructionError as i32,
        ..ModelManifest::default()
    };
    let weights = serialize_tensors(&trained.tensors);
    let model = Mlp::load(&manifest, &weights, Backend::Native)
        .map_err(|e| fail(format!("the trained model is invalid: {e}")))?;
    let flat = |rows: &[Vec<f32>]| rows.iter().flatten().copied().collect::<Vec<f32>>();
    let validation_scores = model.score(&flat(&splits.validation)).map_err(fail)?;
    manifest.anomaly_threshold = f64::from(percentile(&validation_scores, spec.threshold_percentile));
    let above = validation_scores
        .iter()
        .filter(|s| f64::from(**s) > manifest.anomaly_threshold)
        .count();
    let reference = ReferenceProfile {
        features: reference_features,
        validation_scores: drift::of("score", validation_scores.iter().map(|s| f64::from(*s))),
        validation_anomaly_rate: above as f64 / validation_scores.len().max(1) as f64,
    };
    let holdout_rows: Vec<Vec<f32>> = splits.holdout.iter().map(|(r, _)| r.clone()).collect();
    let holdout_labels: Vec<bool> = splits.holdout.iter().map(|(_, l)| *l).collect();
    let has_both = holdout_labels.contains(&true) && holdout_labels.contains(&false);
    let new_quality = if has_both {
        let scores = model.score(&flat(&holdout_rows)).map_err(fail)?;
        Some(quality(&scores, &holdout_labels, manifest.anomaly_threshold as f32))
    } else {
        None
    };

    drop(evaluating);
    handle.set_phase(JobPhase::Publishing, "publishing to kappa-registry");
    if handle.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let mut registry = Registry::connect_with(ctx.registry.as_str(), &ctx.registry_security)
        .await
        .map_err(fail)?;
    let holder = if spec.promote_alias.is_empty() {
        Holder::Free
    } else {
        current_holder(&mut registry, &spec).await
    };
    let lineage = Lineage {
        training_job_id: job_id.clone(),
        source_topic: spec.source_topic.clone(),
        partitions: data.partitions.clone(),
        time_from_ms: from_ms,
        time_to_ms: to_ms,
        samples: Some(SampleCounts {
            train: if streamed {
                streamed_rows.load(std::sync::atomic::Ordering::Relaxed)
            } else {
                splits.train.len() as u64
            },
            validation: splits.validation.len() as u64,
            holdout: splits.holdout.len() as u64,
            skipped,
        }),
        hyperparameters: [
            ("hidden_layers".to_owned(), format!("{:?}", spec.hidden_layers)),
            ("epochs".to_owned(), spec.epochs.to_string()),
            ("batch_size".to_owned(), spec.batch_size.to_string()),
            ("learning_rate".to_owned(), spec.learning_rate.to_string()),
            ("optimizer".to_owned(), "AdamW(weight_decay=0.01)".to_owned()),
            ("threshold_percentile".to_owned(), spec.threshold_percentile.to_string()),
            ("seed".to_owned(), spec.seed.to_string()),
            (
                "scaling".to_owned(),
                "robust: offset = median, scale = (q99 - q1) / 4.653 (then 1.4826 MAD, then std, then 1)".to_owned(),
            ),
            (
                "screening".to_owned(),
                match crate::schema::screening_z(&spec) {
                    Some(z) => format!(
                        "gross outliers dropped from training and validation rows: |x - median| > {z} x max(1.4826 MAD, (q99 - q1) / 4.653)"
                    ),
                    None => "off".to_owned(),
                },
            ),
            (
                "data".to_owned(),
                if streamed {
                    format!(
                        "re-read from Kafka every epoch: {} usable events exceed --max-rows {}; validation, hold-out and scaling from a uniform sample",
                        data.usable, ctx.max_rows
                    )
                } else {
                    "held in memory".to_owned()
                },
            ),
        ]
        .into(),
        metrics: Some(Metrics {
            loss_curve: trained.loss_curve.clone(),
            validation_loss_curve: trained.validation_curve.clone(),
            precision: new_quality.map(|q| q.precision),
            recall: new_quality.map(|q| q.recall),
            f1: new_quality.map(|q| q.f1),
            roc_auc: new_quality.map(|q| q.roc_auc),
        }),
        parent_version: holder.version(),
        trace_context: span_context_map(round),
        reference: Some(reference),
    };
    manifest.lineage = Some(lineage.clone());
    ctx.metrics.published.inc();
    let version = publish(
        &mut registry,
        &manifest,
        weights,
        &format!("{job_id}:{}", handle.snapshot().runs),
        ctx.signer.as_ref(),
    )
    .instrument(tracing::info_span!("publish", model = %spec.model_name))
    .await
    .map_err(fail)?;
    round.record("published_version", version);
    handle.update(|job| {
        job.published_version = version;
        job.published_versions.push(version);
        job.lineage = Some(lineage);
    });
    tracing::info!(
        job = job_id,
        version,
        skipped = skipped_total,
        ?new_quality,
        "published a trained model"
    );

    if !spec.promote_alias.is_empty() {
        let (mut promote, mut reason) = decide(&spec, new_quality, &holder, &holdout_rows, &holdout_labels);
        if let Some(gate) = spec.gate.as_ref().and_then(|g| g.backtest.as_ref()).filter(|_| promote) {
            manifest.version = version;
            let challenger =
                kappa_backtest::Contender::new(manifest.clone(), kappa_model::Model::Mlp(model)).map_err(fail)?;
            let (passes, why) = backtest_gate(ctx, &spec, gate, challenger, holder)
                .instrument(tracing::info_span!("backtest_gate", model = %spec.model_name))
                .await;
            promote = passes;
            reason = if passes {
                format!("{reason}; {why}")
            } else {
                format!("not promoted: {why} (hold-out: {reason})")
            };
        }
        round.record("promoted", promote);
        tracing::info!(promote, reason, "champion/challenger decision");
        if promote {
            ctx.metrics.promoted.inc();
            registry
                .rpc()
                .set_alias(rpb::SetAliasRequest {
                    name: spec.model_name.clone(),
                    alias: spec.promote_alias.clone(),
                    version,
                    effective_from_ms: 0,
                })
                .await
                .map_err(|s| fail(format!("moving the alias failed: {}", s.message())))?;
        }
        handle.update(|job| {
            job.promoted = promote;
            job.promotion_reason = reason;
        });
    }
    handle.update(|job| job.runs += 1);
    if spec.continuous.is_none() {
        handle.set_phase(JobPhase::Succeeded, format!("published version {version}"));
    }
    Ok(())
}

/// Who holds the alias a job would move.
enum Holder {
    /// Nothing: the model or the alias does not exist yet.
    Free,
    // Boxed: a version and its model are large beside the other two.
    Held(Box<(rpb::ModelVersion, kappa_model::Model)>),
    /// The registry could not say, or the holder's model does not load. A challenger is then
    /// not compared with anything, so it is not promoted: the gate fails closed.
    Unreadable(String),
}

impl Holder {
    fn version(&self) -> u64 {
        match self {
            Holder::Held(held) => held.0.version,
            Holder::Free | Holder::Unreadable(_) => 0,
        }
    }
}

/// The version the alias points at now, with its model.
/// Each feature's distribution over the rows of the range, in the spec's feature order.
fn feature_profiles(spec: &TrainingSpec, rows: &[Row]) -> Vec<Distribution> {
    spec.features
        .iter()
        .enumerate()
        .map(|(i, feature)| {
            drift::of(&feature.path, rows.iter().map(|row| f64::from(row.values[i]))).unwrap_or_else(|| Distribution {
                name: feature.path.clone(),
                ..Distribution::default()
            })
        })
        .collect()
}

async fn current_holder(registry: &mut Registry, spec: &TrainingSpec) -> Holder {
    let selector = Selector::Alias(spec.promote_alias.clone());
    match registry.get(&spec.model_name, selector).await {
        Ok((header, weights)) => {
            let Some(manifest) = header.manifest.as_ref() else {
                return Holder::Unreadable(format!("version {} has no manifest", header.version));
            };
            match kappa_model::admission::load(manifest, &weights) {
                Ok(model) => Holder::Held(Box::new((header, model))),
                Err(e) => Holder::Unreadable(format!("version {} does not load: {e}", header.version)),
            }
        }
        Err(kappa_client::GetError::Status(status)) if status.code() == tonic::Code::NotFound => Holder::Free,
        Err(e) => Holder::Unreadable(e.to_string()),
    }
}

/// Champion/challenger: the new model must pass the gate and score at least as well as the
/// holder on the same hold-out rows (ROC AUC, then F1 on a tie).
fn decide(
    spec: &TrainingSpec,
    new: Option<Quality>,
    holder: &Holder,
    rows: &[Vec<f32>],
    labels: &[bool],
) -> (bool, String) {
    let gate = spec.gate.clone().unwrap_or_default();
    let Some(new) = new else {
        return if gate.min_roc_auc.is_some() || gate.min_recall.is_some() {
            (
                false,
                "not promoted: the gate needs labelled hold-out data with both classes".into(),
            )
        } else {
            (true, "promoted: no labels to evaluate, no gate".into())
        };
    };
    if let Some(min) = gate.min_roc_auc.filter(|m| new.roc_auc < *m) {
        return (
            false,
            format!("not promoted: ROC AUC {:.4} is below the gate {min}", new.roc_auc),
        );
    }
    if let Some(min) = gate.min_recall.filter(|m| new.recall < *m) {
        return (
            false,
            format!("not promoted: recall {:.4} is below the gate {min}", new.recall),
        );
    }
    let (version, model) = match holder {
        Holder::Held(held) => (&held.0, &held.1),
        Holder::Free => {
            return (
                true,
                format!(
                    "promoted: passes the gate (ROC AUC {:.4}, recall {:.4}) and the alias was free",
                    new.roc_auc, new.recall
                ),
            );
        }
        Holder::Unreadable(why) => {
            return (
                false,
                format!(
                    "not promoted: the alias {:?} is held by a version that could not be read ({why}), \
                     so the new model could not be compared with it; move the alias by hand once it can",
                    spec.promote_alias
                ),
            );
        }
    };
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let features_match = version.manifest.as_ref().is_some_and(|m| {
        m.features
            .iter()
            .map(|f| f.name.as_str())
            .eq(spec.features.iter().map(|f| f.path.as_str()))
    });
    if !features_match {
        return (
            true,
            format!(
                "promoted: passes the gate; holder v{} uses other features, so it was not compared",
                version.version
            ),
        );
    }
    let old = match model.score(&flat) {
        Ok(scores) => quality(
            &scores,
            labels,
            version.manifest.as_ref().map_or(0.0, |m| m.anomaly_threshold as f32),
        ),
        Err(e) => {
            return (
                true,
                format!("promoted: the holder v{} could not be scored ({e})", version.version),
            );
        }
    };
    let allowance = gate.max_regression.unwrap_or(0.0);
    let better = if allowance > 0.0 {
        new.roc_auc >= old.roc_auc - allowance
    } else {
        (new.roc_auc, new.f1) >= (old.roc_auc, old.f1)
    };
    let allowed = if allowance > 0.0 {
        format!(" - {allowance}")
    } else {
        String::new()
    };
    if better {
        (
            true,
            format!(
                "promoted: ROC AUC {:.4} >= holder v{}'s {:.4}{allowed} on the same hold-out",
                new.roc_auc, version.version, old.roc_auc
            ),
        )
    } else {
        (
            false,
            format!(
                "not promoted: ROC AUC {:.4} < holder v{}'s {:.4}{allowed} on the same hold-out",
                new.roc_auc, version.version, old.roc_auc
            ),
        )
    }
}

/// The backtest gate: the spec's later window replayed through the challenger and the holder;
/// the challenger must reach the holder's metric there, less the gate's allowance. Fails closed:
/// a window without labelled events of both classes, or that cannot be read, promotes nothing.
async fn backtest_gate(
    ctx: &JobContext,
    spec: &TrainingSpec,
    gate: &kappa_api::trainer::BacktestGate,
    challenger: kappa_backtest::Contender,
    holder: Holder,
) -> (bool, String) {
    // The holder's model was loaded for the hold-out comparison; the backtest reuses it.
    let Holder::Held(held) = holder else {
        return (
            true,
            "nothing held the alias, so there was nothing to beat on the backtest window".into(),
        );
    };
    let (version, model) = *held;
    let holder_version = version.version;
    let Some(manifest) = version.manifest else {
        return (false, format!("holder v{holder_version} has no manifest"));
    };
    let holder = match kappa_backtest::Contender::new(manifest, model) {
        Ok(holder) => holder,
        Err(e) => {
            return (
                false,
                format!("the backtest could not read holder v{holder_version}'s schema: {e}"),
            );
        }
    };
    let range = gate.window.unwrap_or_default();
    if range.to_ms > now_ms() {
        return (
            false,
            format!(
                "the backtest window [{}, {}) has not ended yet, so it cannot be judged whole; train again after it",
                range.from_ms, range.to_ms
            ),
        );
    }
    let window = kappa_backtest::Window {
        topic: if gate.topic.is_empty() {
            spec.source_topic.clone()
        } else {
            gate.topic.clone()
        },
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        timeout: ctx.kafka_timeout,
    };
    let metric = if gate.metric.is_empty() {
        "roc_auc"
    } else {
        gate.metric.as_str()
    };
    let described = format!("backtest on {} [{}, {})", window.topic, window.from_ms, window.to_ms);
    let kafka = ctx.kafka.clone();
    let span = tracing::Span::current();
    let report = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        kappa_backtest::run(&kafka, &window, &[challenger, holder], None)
    })
    .await;
    let report = match report {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return (false, format!("the {described} failed: {e}")),
        Err(e) => return (false, format!("the {described} failed: {e}")),
    };
    let (new, old) = (&report.versions[0], &report.versions[1]);
    let (Some(new_value), Some(old_value)) = (new.metric(metric), old.metric(metric)) else {
        return (
            false,
            format!(
                "the {described} has {} labelled events ({} anomalies) of {} scored: {metric} needs both classes",
                report.labelled, report.positives, report.events
            ),
        );
    };
    let allowance = spec.gate.as_ref().and_then(|g| g.max_regression).unwrap_or(0.0);
    tracing::info!(metric, new_value, old_value, events = report.events, "backtest gate");
    let comparison = format!(
        "{metric} {new_value:.4} {} holder v{holder_version}'s {old_value:.4}{} on the {described} ({} events)",
        if new_value >= old_value - allowance { ">=" } else { "<" },
        if allowance > 0.0 {
            format!(" - {allowance}")
        } else {
            String::new()
        },
        report.events
    );
    (new_value >= old_value - allowance, comparison)
}

async fn publish(
    registry: &mut Registry,
    manifest: &ModelManifest,
    weights: Vec<u8>,
    key: &str,
    signer: Option<&kappa_model::signing::ModelSigner>,
) -> Result<u64, String> {
    registry
        .publish_signed(manifest, &weights, &format!("trainer-job:{key}"), signer)
        .await
        .map(|r| r.version.unwrap_or_default().version)
        .map_err(|s| format!("publishing failed: {:?}: {}", s.code(), s.message()))
}

#[cfg(test)]
mod tests {
    use kappa_api::{
        model::ModelManifest,
        trainer::{FeatureSpec, PromotionGate},
    };
    use kappa_model::example::{autoencoder_over, random_weights};

    use super::*;

    fn q(roc_auc: f64, recall: f64) -> Quality {
        Quality {
            precision: 0.9,
            recall,
            f1: 0.9,
            roc_auc,
        }
    }

    fn spec(paths: &[&str], gate: PromotionGate) -> TrainingSpec {
        TrainingSpec {
            features: paths
                .iter()
                .map(|p| FeatureSpec {
                    path: (*p).to_owned(),
                    min: None,
                    max: None,
                })
                .collect(),
            gate: Some(gate),
            ..TrainingSpec::default()
        }
    }

    /// A holder over `paths` and labelled rows it scores: anomalies far from normal rows, so
    /// any autoencoder ranks them (ROC AUC 1) unless it is asked about other features.
    fn holder(paths: &[&str]) -> Holder {
        let mut manifest: ModelManifest = autoencoder_over("m", paths, &[2]);
        manifest.version = 3;
        let mlp = Mlp::load(&manifest, &random_weights(&manifest, 9), Backend::Native).unwrap();
        let version = rpb::ModelVersion {
            version: 3,
            manifest: Some(manifest),
            ..Default::default()
        };
        Holder::Held(Box::new((version, kappa_model::Model::Mlp(mlp))))
    }

    #[test]
    fn the_gate_and_the_holder_decide_promotion_with_the_reason_said() {
        let paths = ["a", "b.c"];
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|i| if i % 4 == 0 { vec![50.0, -50.0] } else { vec![0.1, 0.0] })
            .collect();
        let labels: Vec<bool> = (0..40).map(|i| i % 4 == 0).collect();
        let no_gate = PromotionGate::default();
        let gate = PromotionGate {
            min_roc_auc: Some(0.9),
            min_recall: Some(0.8),
            max_regression: None,
            backtest: None,
        };

        let (promote, why) = decide(&spec(&paths, no_gate), None, &Holder::Free, &[], &[]);
        assert!(promote && why.contains("no labels"), "{why}");
        let (promote, why) = decide(&spec(&paths, gate.clone()), None, &Holder::Free, &[], &[]);
        assert!(!promote && why.contains("needs labelled hold-out"), "{why}");
        let (promote, why) = decide(
            &spec(&paths, gate.clone()),
            Some(q(0.85, 0.95)),
            &Holder::Free,
            &[],
            &[],
        );
        assert!(
            !promote && why.contains("ROC AUC 0.8500 is below the gate 0.9"),
            "{why}"
        );
        let (promote, why) = decide(&spec(&paths, gate.clone()), Some(q(0.95, 0.5)), &Holder::Free, &[], &[]);
        assert!(!promote && why.contains("recall 0.5000 is below the gate 0.8"), "{why}");
        let (promote, why) = decide(&spec(&paths, gate.clone()), Some(q(0.95, 0.9)), &Holder::Free, &[], &[]);
        assert!(promote && why.contains("the alias was free"), "{why}");

        // The holder ranks these rows perfectly: a challenger below it is not promoted, one a
        // hair below is with an allowance, and a holder over other features is not compared.
        let held = holder(&paths);
        let (promote, why) = decide(&spec(&paths, gate.clone()), Some(q(0.95, 0.9)), &held, &rows, &labels);
        assert!(!promote && why.contains("< holder v3's 1.0000"), "{why}");
        let lenient = PromotionGate {
            max_regression: Some(0.06),
            ..gate.clone()
        };
        let (promote, why) = decide(&spec(&paths, lenient), Some(q(0.95, 0.9)), &held, &rows, &labels);
        assert!(promote && why.contains(">= holder v3's 1.0000 - 0.06"), "{why}");
        let other = holder(&["x", "y"]);
        let (promote, why) = decide(&spec(&paths, gate.clone()), Some(q(0.95, 0.9)), &other, &rows, &labels);
        assert!(promote && why.contains("uses other features"), "{why}");
        // A holder that cannot be read blocks the move: the gate fails closed.
        let unknown = Holder::Unreadable("the registry is unavailable".into());
        let (promote, why) = decide(
            &spec(&paths, gate.clone()),
            Some(q(0.99, 0.99)),
            &unknown,
            &rows,
            &labels,
        );
        assert!(
            !promote && why.contains("could not be read (the registry is unavailable)"),
            "{why}"
        );
    }
}
