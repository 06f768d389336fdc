//! `kappa`: the command line for Kappa's services.

mod fleet;
mod load;
mod models;
mod predict;
mod predictions;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command line for Kappa, the Kafka-native model-serving mesh.
#[derive(Debug, Parser)]
#[command(name = "kappa", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Start, follow, list and cancel training jobs on kappa-trainer.
    Train(train::TrainArgs),
    /// Simulate a connected-car fleet producing telemetry (with failures) to Kafka.
    Fleet(fleet::FleetArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Models(args) => models::run(args).await,
        Command::Predict(args) => predict::run(args).await,
        Command::Fleet(args) => fleet::run(args).await,
        Command::Load(args) => load::run(args).await,
        Command::Predictions(args) => predictions::run(args).await,
        Command::Train(args) => train::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kappa: {e:#}");
            ExitCode::FAILURE
        }
    }
}
