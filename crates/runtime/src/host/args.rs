//! The flags every Kappa server takes, declared once and flattened into each service's
//! configuration. Each service gives `--listen` and `--metrics-listen` its own default port with
//! clap's `mut_arg` (see the services' `config.rs`).

use std::{net::SocketAddr, time::Duration};

use clap::Args;
use kappa_kafka::KafkaArgs;

use crate::{LogArgs, ServerSecurityArgs};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Options every Kappa server takes")]
pub struct ServerArgs {
    /// gRPC listen address (the service's API, grpc.health.v1 and reflection). Port 0 picks a
    /// free port; the chosen address is logged.
    #[arg(long, env = "KAPPA_LISTEN")]
    pub listen: SocketAddr,

    /// Prometheus metrics listen address (GET /metrics); port 0 picks a free port.
    #[arg(long, env = "KAPPA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub security: ServerSecurityArgs,

    /// Seconds in-flight work gets to finish after SIGTERM before the server stops: calls being
    /// answered, events being scored, messages on their way to Kafka, jobs recording their end.
    #[arg(long = "shutdown-grace-seconds", env = "KAPPA_SHUTDOWN_GRACE_SECONDS", default_value = "10",
          value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub shutdown_grace: Duration,

    /// Validate the configuration, print it and exit without connecting to anything.
    #[arg(long)]
    pub check_config: bool,

    #[command(flatten)]
    pub log: LogArgs,
}

impl ServerArgs {
    /// What a single flag's parser cannot check: the Kafka properties file, the TLS and token
    /// files, and OpenTelemetry's variables.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        self.security.check()?;
        crate::OtelSettings::from_env().map(drop)
    }

    /// `listen=… metrics=… <kafka> tls=… auth=…` for `--check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let metrics = self.metrics_listen.map_or_else(|| "off".to_owned(), |a| a.to_string());
        format!(
            "listen={} metrics={metrics} {} {}",
            self.listen,
            self.kafka.summary(),
            self.security.summary()
        )
    }
}
