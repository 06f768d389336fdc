use std::process::ExitCode;

use clap::Parser;
use kappa_trainer::{TrainerConfig, run};
use tokio::net::TcpListener;

/// sysexits.h EX_USAGE: the configuration is wrong, retrying will not help.
const EXIT_BAD_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let config = TrainerConfig::parse();
    if let Err(problem) = config.validate() {
        eprintln!("kappa-trainer: invalid configuration: {problem}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    if config.check_config {
        println!(
            "configuration ok: listen={} metrics={:?} kafka={} properties={:?} registry={} max_concurrent_jobs={}",
            config.listen,
            config.metrics_listen,
            config.kafka.bootstrap,
            config.kafka.property_names(),
            config.registry,
            config.max_concurrent_jobs
        );
        return ExitCode::SUCCESS;
    }
    kappa_telemetry::init_logging(&config.log);

    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %config.listen, error = %e, "cannot bind the gRPC address; is another process using it?");
            return ExitCode::FAILURE;
        }
    };
    let metrics_listener = match config.metrics_listen {
        Some(address) => match TcpListener::bind(address).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(%address, error = %e, "cannot bind the metrics address; set --metrics-listen to a free one");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    match run(config, listener, metrics_listener, kappa_telemetry::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("kappa-trainer failed: {e:#}");
            eprintln!("kappa-trainer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
