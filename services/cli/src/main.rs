//! `kappa`: the command line for Kappa's services.

mod backtest;
mod compare;
mod data;
mod fleet;
mod health;
mod keys;
mod load;
mod models;
mod monitor;
mod onnx;
mod predict;
mod predictions;
mod recent;
mod secret_file;
mod token;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::Instrument as _;

/// Command line for Kappa, the Kafka-native model-serving mesh.
#[derive(Debug, Parser)]
#[command(name = "kappa", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// How the commands that call Kappa's services reach them (TLS, token).
    #[command(flatten)]
    security: kappa_client::ClientSecurityArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish, list, fetch, alias, delete and watch models in kappa-registry.
    Models(models::ModelsArgs),
    /// Score a CSV file or JSON lines through kappa-predictor.
    Predict(predict::PredictArgs),
    /// Keep calling predictors for a while and report failures, latency and versions seen.
    Load(load::LoadArgs),
    /// Summarise recent stream predictions: anomaly rate, cars flagged, versions that answered.
    Predictions(predictions::PredictionsArgs),
    /// Replay a retained range of a topic through versions: anomaly rate, scores, agreement,
    /// precision/recall/F1/ROC AUC where the events carry labels.
    Backtest(Box<backtest::BacktestArgs>),
    /// Compare a shadow version's answers with the served version's on the same live traffic.
    Compare(compare::CompareArgs),
    /// Follow a model's monitoring windows: drift per feature, anomaly rate against training.
    Monitor(monitor::MonitorArgs),
    /// Start, follow, list and cancel training jobs on kappa-trainer.
    Train(train::TrainArgs),
    /// Simulate a connected-car fleet sending telemetry (with failures) to Kafka or over MQTT.
    Fleet(Box<fleet::FleetArgs>),
    /// Look at a topic's events before training on them: fields, types, spread, label balance.
    Data(data::DataArgs),
    /// Make bearer tokens for the services' --auth-tokens files.
    Token(token::TokenArgs),
    /// Ask a service's grpc.health.v1 whether it serves (exit 0) or not (exit 1): a probe that
    /// speaks TLS, for Kubernetes, whose gRPC probes cannot.
    Health(health::HealthArgs),
    /// Make Ed25519 keys that sign models (trainer --signing-key, predictor --trusted-keys).
    Keys(keys::KeysArgs),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Self::Models(_) => "kappa models",
            Self::Predict(_) => "kappa predict",
            Self::Load(_) => "kappa load",
            Self::Predictions(_) => "kappa predictions",
            Self::Train(_) => "kappa train",
            Self::Fleet(_) => "kappa fleet",
            Self::Monitor(_) => "kappa monitor",
            Self::Backtest(_) => "kappa backtest",
            Self::Compare(_) => "kappa compare",
            Self::Data(_) => "kappa data",
            Self::Token(_) => "kappa token",
            Self::Keys(_) => "kappa keys",
            Self::Health(_) => "kappa health",
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    end_quietly_when_the_reader_goes();
    let cli = Cli::parse();
    // With OTEL_EXPORTER_OTLP_ENDPOINT set, a command is a trace of its own: its gRPC calls
    // carry the context, so e.g. `kappa train start` roots the model's whole journey.
    let telemetry = match kappa_runtime::OtelSettings::from_env() {
        Ok(settings) if settings.endpoint.is_some() => {
            let quiet = kappa_runtime::LogArgs {
                log_format: kappa_runtime::LogFormat::Text,
                log: "warn".into(),
            };
            match kappa_runtime::init_telemetry("kappa-cli", &quiet) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("kappa: tracing is off: {e:#}");
                    None
                }
            }
        }
        Ok(_) => None,
        // The variables may be meant for other programs: the command still runs, untraced.
        Err(e) => {
            eprintln!("kappa: tracing is off: {e}");
            None
        }
    };
    // Commands that send many requests leave each one a root of its own, sampled like any
    // inference request; the others are one trace.
    let span = if matches!(cli.command, Command::Load(_) | Command::Predict(_) | Command::Health(_)) {
        tracing::Span::none()
    } else {
        tracing::info_span!("kappa", otel.name = cli.command.name(), otel.kind = "client")
    };
    let result = async {
        let security = || cli.security.security().map_err(anyhow::Error::msg);
        match cli.command {
            Command::Models(args) => models::run(args, &security()?).await,
            Command::Predict(args) => predict::run(args, &security()?).await,
            Command::Fleet(args) => fleet::run(*args).await,
            Command::Monitor(args) => monitor::run(args).await,
            Command::Compare(args) => compare::run(args).await,
            Command::Backtest(args) => backtest::run(*args, &security()?).await,
            Command::Data(args) => data::run(args).await,
            Command::Load(args) => load::run(args, &security()?).await,
            Command::Predictions(args) => predictions::run(args).await,
            Command::Train(args) => train::run(args, &security()?).await,
            Command::Token(args) => token::run(args),
            Command::Keys(args) => keys::run(args),
            Command::Health(args) => health::run(args, &security()?).await,
        }
    }
    .instrument(span)
    .await;
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kappa: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `kappa models list | head -1`: Rust ignores SIGPIPE, so the next print to the closed pipe
/// panics ("failed printing to stdout"). A command line tool should end as `ls` or `grep` do,
/// silently, when whoever reads its output has had enough.
#[cfg(unix)]
#[allow(unsafe_code)]
fn end_quietly_when_the_reader_goes() {
    // SAFETY: runs first in main, before any other thread exists; SIG_DFL installs no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_when_the_reader_goes() {}
