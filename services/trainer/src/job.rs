//! One training job, from reading Kafka to moving the alias.

use std::sync::{Arc, Mutex};

use kappa_api::trainer::{Continuous, Job, JobPhase, JobProgress, TrainingSpec};
use kappa_kafka::KafkaClients;
use opentelemetry::trace::TraceContextExt as _;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::store::JobStore;

/// A job as the service tracks it.
pub struct JobHandle {
    pub job: Mutex<Job>,
    /// The latest progress (GetJob, the snapshot a watch starts from).
    pub progress: watch::Sender<JobProgress>,
    /// Every change, for watchers: a watch channel keeps only the latest, and a short job can
    /// go from one epoch to the next phase before a watcher wakes.
    changes: broadcast::Sender<JobProgress>,
    pub cancel: CancellationToken,
    pub store: Arc<JobStore>,
}

/// Changes a watcher may fall behind by before it skips to the latest.
const CHANGES_KEPT: usize = 1024;

impl JobHandle {
    pub fn new(job: Job, progress: JobProgress, store: Arc<JobStore>) -> Self {
        Self {
            job: Mutex::new(job),
            progress: watch::channel(progress).0,
            changes: broadcast::channel(CHANGES_KEPT).0,
            cancel: CancellationToken::new(),
            store,
        }
    }

    /// Changes the progress, and tells every watcher.
    pub fn report(&self, change: impl FnOnce(&mut JobProgress)) {
        self.progress.send_modify(change);
        let _ = self.changes.send(self.progress.borrow().clone());
    }

    /// The progress now and every change after it (`Lagged` when a watcher fell behind).
    pub fn watch(&self) -> (JobProgress, broadcast::Receiver<JobProgress>) {
        // Subscribed first: a change between the two is seen (perhaps twice), never missed.
        let changes = self.changes.subscribe();
        (self.progress.borrow().clone(), changes)
    }

    pub fn snapshot(&self) -> Job {
        let mut job = self.job.lock().expect("job lock poisoned").clone();
        job.progress = Some(self.progress.borrow().clone());
        job
    }

    pub fn set_phase(&self, phase: JobPhase, message: impl Into<String>) {
        let message = message.into();
        {
            let mut job = self.job.lock().expect("job lock poisoned");
            job.phase = phase as i32;
            job.message.clone_from(&message);
        }
        self.report(|p| {
            p.phase = phase as i32;
            p.message = message;
        });
        self.store.save(&self.snapshot());
    }

    pub fn update(&self, f: impl FnOnce(&mut Job)) {
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

/// The time range a spec asks for, resolved against the clock for "last N minutes".
pub fn time_range(spec: &TrainingSpec) -> (i64, i64) {
    kappa_dataset::resolve_range(spec.range.as_ref(), kappa_runtime::now_ms()).unwrap_or((0, 0))
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

pub enum Stop {
    Cancelled,
    Failed(String),
}

pub fn fail(message: impl std::fmt::Display) -> Stop {
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
    crate::round::execute_round(handle, ctx, &span)
        .instrument(span.clone())
        .await
}
