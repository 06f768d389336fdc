//! The part of every service's `main` that is the same: validate, `--check-config`, logging,
//! binding, running until a signal, and the exit code.

use std::{future::Future, net::SocketAddr, process::ExitCode};

use tokio::net::TcpListener;

use crate::{LogArgs, OtelSettings, init_telemetry, shutdown_signal};

/// sysexits.h EX_USAGE: the configuration is wrong, retrying will not help.
const EXIT_BAD_CONFIG: u8 = 64;

/// Parses a service's flags and environment into its typed configuration. A value that does not
/// parse is a bad configuration like any other (exit 64, not clap's 2), so operators and probes
/// see one code for "fix the configuration"; `--help` and `--version` print and exit 0.
pub fn parse_config<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        let _ = e.print();
        match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
            _ => ExitCode::from(EXIT_BAD_CONFIG),
        }
    })
}

/// What a service's configuration tells the shared `main`.
pub struct ServiceStart<'a> {
    pub name: &'static str,
    pub validation: Result<(), String>,
    pub check_config: bool,
    /// Printed by `--check-config` after the addresses, secrets excluded.
    pub summary: String,
    pub log: &'a LogArgs,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
}

/// Runs a service: `run(listener, metrics_listener, shutdown)` is its library entry point.
pub async fn service_main<F, Fut>(start: ServiceStart<'_>, run: F) -> ExitCode
where
    F: FnOnce(TcpListener, Option<TcpListener>, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = start.name;
    let validation = start.validation.and_then(|()| OtelSettings::from_env().map(|_| ()));
    if let Err(problem) = validation {
        eprintln!("{name}: invalid configuration: {problem}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    if start.check_config {
        let metrics = start.metrics_listen.map_or_else(|| "off".to_owned(), |a| a.to_string());
        println!(
            "configuration ok: listen={} metrics={metrics} {}",
            start.listen, start.summary
        );
        return ExitCode::SUCCESS;
    }
    let _telemetry = match init_telemetry(name, start.log) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("{name}: cannot set up tracing: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(start.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %start.listen, error = %e, "cannot bind the gRPC address; is another process using it? (--listen)");
            return ExitCode::FAILURE;
        }
    };
    let metrics_listener = match start.metrics_listen {
        Some(address) => match TcpListener::bind(address).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(%address, error = %e, "cannot bind the metrics address; set --metrics-listen to a free one");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    match run(listener, metrics_listener, Box::pin(shutdown_signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{name} failed: {e:#}");
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
