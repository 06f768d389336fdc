//! `kappa train`: start, follow, list and cancel training jobs on kappa-trainer.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use kappa_api::trainer::{
    Continuous, GetJobRequest, Job, JobPhase, ListJobsRequest, PromotionGate, StartTrainingRequest, TimeRange,
    TrainingSpec, trainer_client::TrainerClient, training_spec::Range,
};
use kappa_telemetry::{TracedChannel, traced};
use tokio_stream::StreamExt as _;
use tonic::transport::Endpoint;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Where kappa-trainer listens.
    #[arg(long, env = "KAPPA_TRAINER", default_value = "http://127.0.0.1:50053", global = true)]
    trainer: String,
    #[command(subcommand)]
    command: TrainCommand,
}

#[derive(Debug, Subcommand)]
enum TrainCommand {
    /// Start a training job; with --watch, follow it to the end and print the result.
    Start(Box<StartArgs>),
    /// Show one job: phase, progress, published version, promotion decision, lineage metrics.
    Status {
        job_id: String,
        /// Print the job as proto3 JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job's progress until it ends.
    Watch { job_id: String },
    /// List jobs, oldest first.
    List,
    /// Cancel a job; a cancelled job publishes nothing.
    Cancel { job_id: String },
}

#[derive(Debug, Args)]
struct StartArgs {
    /// Name to publish the model under.
    #[arg(long)]
    model: String,
    /// Topic of sensor events to train on.
    #[arg(long, default_value = "sensor-data")]
    topic: String,
    /// Start of the time range, in milliseconds since the Unix epoch (inclusive).
    #[arg(long, requires = "to_ms", conflicts_with = "last_minutes")]
    from_ms: Option<i64>,
    /// End of the time range, in milliseconds since the Unix epoch (exclusive).
    #[arg(long)]
    to_ms: Option<i64>,
    /// Train on the last N minutes instead of a fixed range.
    #[arg(long)]
    last_minutes: Option<u32>,
    /// Features, comma-separated; all 18 sensor fields when omitted.
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// Label field; when set, only normal events are trained on and labelled hold-out data is scored.
    #[arg(long, default_value = "failure_occurred")]
    label: String,
    /// Hidden layer widths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,8,16")]
    hidden: Vec<u32>,
    #[arg(long, default_value_t = 20)]
    epochs: u32,
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    #[arg(long, default_value_t = 0.001)]
    learning_rate: f64,
    /// Percentile of validation errors on normal data used as the anomaly threshold.
    #[arg(long, default_value_t = 99.0)]
    threshold_percentile: f64,
    /// Alias to promote the model to when it passes the gate and beats the holder.
    #[arg(long)]
    promote: Option<String>,
    /// Gate: minimum hold-out ROC AUC for promotion.
    #[arg(long)]
    min_roc_auc: Option<f64>,
    /// Gate: minimum hold-out recall for promotion.
    #[arg(long)]
    min_recall: Option<f64>,
    /// Gate: promote even when the hold-out ROC AUC is up to this much below the holder's.
    #[arg(long)]
    max_regression: Option<f64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Retrain every N seconds on the last --last-minutes (continuous mode).
    #[arg(long, requires = "last_minutes")]
    every_seconds: Option<u32>,
    /// Stop continuous mode after this many rounds (0 = until cancelled).
    #[arg(long, default_value_t = 0)]
    max_runs: u32,
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
}

async fn connect(url: &str) -> anyhow::Result<TrainerClient<TracedChannel>> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach kappa-trainer at {url}; is it running? (--trainer or KAPPA_TRAINER)"))?;
    Ok(TrainerClient::new(traced(channel)))
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn phase(p: i32) -> String {
    JobPhase::try_from(p).map_or_else(
        |_| p.to_string(),
        |p| p.as_str_name().trim_start_matches("JOB_PHASE_").to_lowercase(),
    )
}

fn describe(job: &Job) -> String {
    let mut text = format!("{}  {}  {}", job.job_id, phase(job.phase), job.message);
    if job.published_version > 0 {
        text.push_str(&format!(
            "\n  published version {} (all: {:?})",
            job.published_version, job.published_versions
        ));
    }
    if !job.promotion_reason.is_empty() {
        text.push_str(&format!("\n  {}", job.promotion_reason));
    }
    if let Some(lineage) = &job.lineage {
        if let Some(m) = &lineage.metrics {
            let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
            text.push_str(&format!(
                "\n  hold-out: ROC AUC {}  precision {}  recall {}  F1 {}  final loss {}",
                f(m.roc_auc),
                f(m.precision),
                f(m.recall),
                f(m.f1),
                f(m.loss_curve.last().copied())
            ));
        }
        if let Some(s) = &lineage.samples {
            text.push_str(&format!(
                "\n  samples: train {}  validation {}  hold-out {}  skipped {:?}",
                s.train, s.validation, s.holdout, s.skipped
            ));
        }
        if let Some(trace_id) = lineage
            .trace_context
            .get("traceparent")
            .and_then(|t| t.split('-').nth(1))
        {
            text.push_str(&format!("\n  trace {trace_id} (its journey in Jaeger)"));
        }
        for p in &lineage.partitions {
            text.push_str(&format!(
                "\n  read {}[{}] offsets [{}, {})",
                lineage.source_topic, p.partition, p.start_offset, p.end_offset
            ));
        }
    }
    text
}

async fn watch(client: &mut TrainerClient<TracedChannel>, job_id: &str) -> anyhow::Result<Job> {
    let mut stream = client
        .watch_job(GetJobRequest {
            job_id: job_id.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner();
    while let Some(p) = stream.next().await {
        let p = p.map_err(status)?;
        eprintln!(
            "  {:<11} epoch {:>3}  loss {:>9.5}  validation {:>9.5}  read {}  skipped {}  {}",
            phase(p.phase),
            p.epoch,
            p.loss,
            p.validation_loss,
            p.samples_read,
            p.samples_skipped,
            p.message
        );
    }
    Ok(client
        .get_job(GetJobRequest {
            job_id: job_id.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner())
}

pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.trainer).await?;
    match args.command {
        TrainCommand::Start(s) => {
            let range = match (s.from_ms, s.to_ms, s.last_minutes) {
                (Some(from_ms), Some(to_ms), _) => Some(Range::TimeRange(TimeRange { from_ms, to_ms })),
                (_, _, Some(m)) if s.every_seconds.is_none() => Some(Range::LastMinutes(m)),
                _ => None,
            };
            let spec = TrainingSpec {
                model_name: s.model,
                source_topic: s.topic,
                range,
                features: s.features,
                label_field: s.label,
                hidden_layers: s.hidden,
                epochs: s.epochs,
                batch_size: s.batch_size,
                learning_rate: s.learning_rate,
                threshold_percentile: s.threshold_percentile,
                promote_alias: s.promote.unwrap_or_default(),
                gate: Some(PromotionGate {
                    min_roc_auc: s.min_roc_auc,
                    min_recall: s.min_recall,
                    max_regression: s.max_regression,
                }),
                seed: s.seed,
                continuous: s.every_seconds.map(|every| Continuous {
                    window_minutes: s.last_minutes.unwrap_or(60),
                    every_seconds: every,
                    every_events: 0,
                    max_runs: s.max_runs,
                }),
                ..TrainingSpec::default()
            };
            let job = client
                .start_training(StartTrainingRequest { spec: Some(spec) })
                .await
                .map_err(status)?
                .into_inner();
            println!("started {}", job.job_id);
            if s.watch {
                let job = watch(&mut client, &job.job_id).await?;
                println!("{}", describe(&job));
                anyhow::ensure!(job.phase == JobPhase::Succeeded as i32, "the job did not succeed");
            }
        }
        TrainCommand::Status { job_id, json } => {
            let job = client
                .get_job(GetJobRequest { job_id })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                println!("{}", serde_json::to_string(&job)?);
            } else {
                println!("{}", describe(&job));
            }
        }
        TrainCommand::Watch { job_id } => println!("{}", describe(&watch(&mut client, &job_id).await?)),
        TrainCommand::List => {
            for job in client
                .list_jobs(ListJobsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .jobs
            {
                let model = job.spec.as_ref().map_or("", |s| s.model_name.as_str());
                println!(
                    "{}  {:<10}  {model}  v{}  {}",
                    job.job_id,
                    phase(job.phase),
                    job.published_version,
                    job.message
                );
            }
        }
        TrainCommand::Cancel { job_id } => {
            let job = client
                .cancel_job(GetJobRequest { job_id })
                .await
                .map_err(status)?
                .into_inner();
            println!("cancel requested for {}", job.job_id);
        }
    }
    Ok(())
}
