//! `kappa train`: start, follow, list and cancel training jobs on kappa-trainer.

use clap::{Args, Subcommand};
use kappa_api::{
    model::{EventTime, TimeFormat},
    trainer::{
        BacktestGate, Continuous, FeatureSpec, GetJobRequest, Job, JobPhase, ListJobsRequest, PromotionGate, Screening,
        StartTrainingRequest, TimeRange, TrainingSpec, trainer_client::TrainerClient, training_spec::Range,
    },
};
use kappa_client::TracedChannel;
use kappa_dataset::TimeRangeArgs;
use tokio_stream::StreamExt as _;

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
    /// The range to train on: a fixed one, or the last N minutes (the window of a continuous
    /// job).
    #[command(flatten)]
    range: TimeRangeArgs,
    #[command(flatten)]
    schema: SchemaArgs,
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
    /// Gate: before the alias moves, replay this later window (FROM_MS..TO_MS, by event time)
    /// through the new version and the holder; the new one must reach the holder's
    /// --backtest-metric there. Needs labelled events of both classes in the window.
    #[arg(long, value_name = "FROM_MS..TO_MS", value_parser = parse_window, requires = "promote")]
    backtest_window: Option<(i64, i64)>,
    /// Topic of the backtest window (default: --topic).
    #[arg(long, requires = "backtest_window")]
    backtest_topic: Option<String>,
    /// What the backtest gate compares: roc_auc, f1, precision or recall.
    #[arg(long, default_value = "roc_auc", value_parser = kappa_backtest::METRICS)]
    backtest_metric: String,
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

/// `FROM_MS..TO_MS`: a window in milliseconds since the Unix epoch, from inclusive, to exclusive.
fn parse_window(text: &str) -> Result<(i64, i64), String> {
    let (from, to) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?} is not FROM_MS..TO_MS"))?;
    let ms = |s: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|e| format!("{s:?} is not milliseconds: {e}"))
    };
    let (from, to) = (ms(from)?, ms(to)?);
    if from >= to {
        return Err(format!(
            "the window {from}..{to} is empty: FROM_MS must be before TO_MS"
        ));
    }
    Ok((from, to))
}

/// How the events are read: the flags `kappa train start` and `kappa data inspect` share.
#[derive(Debug, Clone, Args)]
pub struct SchemaArgs {
    /// Feature paths in column order, comma-separated: top-level names or dot-separated paths
    /// into nested objects (`engine.coolant_temp`, `tires.0`). When omitted, every numeric field
    /// of the range is used (label, time and --exclude left out).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// A validity rule, PATH=MIN..MAX (either bound may be left out: `speed=0..`, `rpm=..9000`).
    /// Rows outside are dropped from training (counted) and refused when scored. Repeatable.
    #[arg(long = "valid-range", value_name = "PATH=MIN..MAX", value_parser = parse_valid_range)]
    pub valid_ranges: Vec<(String, Option<f64>, Option<f64>)>,
    /// Paths never inferred as features (ids, counters), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Label field path; when set, only normal events are trained on and labelled hold-out
    /// data is scored for precision, recall, F1 and ROC AUC.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Label values meaning "anomalous", comma-separated (default: true, 1).
    #[arg(long, value_delimiter = ',')]
    pub positive: Vec<String>,
    /// Path of the event-time field (default: the Kafka record timestamp).
    #[arg(long)]
    pub time_field: Option<String>,
    /// Format of --time-field: auto, ms (epoch milliseconds), s (epoch seconds) or rfc3339.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ms", "s", "rfc3339"])]
    pub time_format: String,
    /// How long after its event time a record may reach Kafka (with --time-field).
    #[arg(long, default_value_t = 0)]
    pub lateness_ms: u64,
    /// Keep gross outliers in the training rows (by default a value more than
    /// --max-robust-z robust deviations from the median drops its row).
    #[arg(long)]
    pub no_screening: bool,
    /// Robust distance of the gross-outlier screen (0: the trainer's default, 12).
    #[arg(long, default_value_t = 0.0)]
    pub max_robust_z: f64,
    /// Train even when retention has already deleted the start of the range (refused otherwise).
    #[arg(long)]
    pub allow_truncated_start: bool,
}

/// A `--time-format` value (auto, ms, s or rfc3339) as the schema's time format.
pub fn time_format(flag: &str) -> TimeFormat {
    match flag {
        "ms" => TimeFormat::EpochMillis,
        "s" => TimeFormat::EpochSeconds,
        "rfc3339" => TimeFormat::Rfc3339,
        _ => TimeFormat::Unspecified,
    }
}

pub fn parse_valid_range(raw: &str) -> Result<(String, Option<f64>, Option<f64>), String> {
    let usage = || format!("{raw:?} is not PATH=MIN..MAX (for example speed=0..250 or rpm=..9000)");
    let (path, range) = raw.split_once('=').ok_or_else(usage)?;
    let (min, max) = range.split_once("..").ok_or_else(usage)?;
    let bound = |b: &str| -> Result<Option<f64>, String> {
        let b = b.trim();
        if b.is_empty() {
            Ok(None)
        } else {
            b.parse().map(Some).map_err(|_| usage())
        }
    };
    Ok((path.trim().to_owned(), bound(min)?, bound(max)?))
}

impl SchemaArgs {
    /// The features with their rules; a rule for a path not among --features is an error.
    pub fn features(&self) -> anyhow::Result<Vec<FeatureSpec>> {
        let mut features: Vec<FeatureSpec> = self
            .features
            .iter()
            .map(|path| FeatureSpec {
                path: path.trim().to_owned(),
                min: None,
                max: None,
            })
            .collect();
        for (path, min, max) in &self.valid_ranges {
            match features.iter_mut().find(|f| &f.path == path) {
                Some(f) => (f.min, f.max) = (*min, *max),
                None => anyhow::bail!(
                    "--valid-range {path}: {path} is not among --features; name the features the rule applies to"
                ),
            }
        }
        Ok(features)
    }

    pub fn time(&self) -> Option<EventTime> {
        let field = self.time_field.clone()?;
        Some(EventTime {
            field,
            format: time_format(&self.time_format) as i32,
            lateness_ms: self.lateness_ms,
        })
    }

    /// A spec with these features and this schema (label, time, exclusions, screening), the
    /// rest default: what `train start` sends and `data inspect` prints.
    pub fn spec(&self, features: Vec<FeatureSpec>) -> TrainingSpec {
        TrainingSpec {
            features,
            exclude: self.exclude.clone(),
            label_field: self.label.clone(),
            positive_labels: self.positive.clone(),
            time: self.time(),
            screening: Some(self.screening()),
            allow_truncated_start: self.allow_truncated_start,
            ..TrainingSpec::default()
        }
    }

    pub fn screening(&self) -> Screening {
        Screening {
            disabled: self.no_screening,
            max_robust_z: self.max_robust_z,
        }
    }
}

async fn connect(url: &str, security: &kappa_client::ClientSecurity) -> anyhow::Result<TrainerClient<TracedChannel>> {
    let channel = kappa_client::connect_with("kappa-trainer", url, security)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (--trainer or KAPPA_TRAINER)"))?;
    Ok(TrainerClient::new(channel))
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
    if let Some(spec) = &job.spec {
        let paths: Vec<&str> = spec.features.iter().map(|f| f.path.as_str()).collect();
        text.push_str(&format!("\n  features ({}): {}", paths.len(), paths.join(", ")));
    }
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
        text.push_str(&format!(
            "\n  tiers: {}; read in {:.1} s",
            kappa_dataset::range::describe_tiers(&lineage.partitions),
            lineage.read_duration_ms as f64 / 1000.0
        ));
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

pub async fn run(args: TrainArgs, security: &kappa_client::ClientSecurity) -> anyhow::Result<()> {
    let mut client = connect(&args.trainer, security).await?;
    match args.command {
        TrainCommand::Start(s) => {
            // A continuous job's last N minutes are its window, not a range of its own.
            let range = match s.range.range() {
                Some(Range::LastMinutes(_)) if s.every_seconds.is_some() => None,
                range => range,
            };
            let spec = TrainingSpec {
                model_name: s.model,
                source_topic: s.topic,
                range,
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
                    backtest: s.backtest_window.map(|(from_ms, to_ms)| BacktestGate {
                        topic: s.backtest_topic.clone().unwrap_or_default(),
                        window: Some(TimeRange { from_ms, to_ms }),
                        metric: s.backtest_metric.clone(),
                    }),
                }),
                seed: s.seed,
                continuous: s.every_seconds.map(|every| Continuous {
                    window_minutes: s.range.last_minutes.unwrap_or(60),
                    every_seconds: every,
                    every_events: 0,
                    max_runs: s.max_runs,
                }),
                ..s.schema.spec(s.schema.features()?)
            };
            let job = client
                .start_training(StartTrainingRequest { spec: Some(spec) })
                .await
                .map_err(status)?
                .into_inner();
            println!("started {}", job.job_id);
            for note in &job.schema_notes {
                println!("  {note}");
            }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        schema: SchemaArgs,
    }

    #[test]
    fn feature_paths_take_validity_rules_and_bad_ones_are_named() {
        assert_eq!(
            parse_valid_range("speed=0..250").unwrap(),
            ("speed".into(), Some(0.0), Some(250.0))
        );
        assert_eq!(
            parse_valid_range("engine.rpm=..9000").unwrap(),
            ("engine.rpm".into(), None, Some(9000.0))
        );
        assert_eq!(parse_valid_range("t=-40..").unwrap(), ("t".into(), Some(-40.0), None));
        for bad in ["speed", "speed=0-250", "speed=a..b"] {
            assert!(parse_valid_range(bad).unwrap_err().contains("PATH=MIN..MAX"), "{bad}");
        }
        let flags = Flags::try_parse_from([
            "t",
            "--features",
            "engine.rpm,wind.speed",
            "--valid-range",
            "engine.rpm=0..9000",
            "--label",
            "status.state",
            "--positive",
            "failed,broken",
            "--time-field",
            "ts",
            "--time-format",
            "rfc3339",
        ])
        .unwrap();
        let features = flags.schema.features().unwrap();
        assert_eq!((features[0].min, features[0].max), (Some(0.0), Some(9000.0)));
        assert_eq!((features[1].min, features[1].max), (None, None));
        assert_eq!(flags.schema.time().unwrap().format, TimeFormat::Rfc3339 as i32);
        let orphan = Flags::try_parse_from(["t", "--features", "a", "--valid-range", "b=0..1"]).unwrap();
        assert!(
            orphan
                .schema
                .features()
                .unwrap_err()
                .to_string()
                .contains("b is not among --features")
        );
        assert!(Flags::try_parse_from(["t"]).unwrap().schema.time().is_none());
    }
}
