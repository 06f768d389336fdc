//! The one host of every Kappa server. A service says what is its own (its configuration, its
//! access policy, its gRPC services and background components) by implementing [`Service`];
//! the host does the rest the same way for all of them: flags and `--check-config`, logging and
//! tracing, the Kafka clients, TLS, tokens, message and connection limits, grpc.health.v1 with
//! readiness and supervision, reflection, the metrics server, serving and draining.
//!
//! Start-up builds first and spawns after: everything that can fail (clients, topics, the
//! service's own state) happens before the first background task of the service starts, and
//! what the host itself started (file watchers, the readiness publisher) stops when a later
//! step fails, because the stop token is cancelled on every way out.

mod args;
mod routes;

use std::{future::Future, net::SocketAddr, pin::Pin, process::ExitCode, sync::Arc};

use kappa_kafka::KafkaClients;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::{args::ServerArgs, routes::Routes};
use crate::{Readiness, auth::Policy, init_telemetry, shutdown_signal};

/// sysexits.h EX_USAGE: the configuration is wrong, retrying will not help.
const EXIT_BAD_CONFIG: u8 = 64;

/// A Kappa server, as the host runs it.
pub trait Service: Sized + Send + 'static {
    /// Its flags: [`ServerArgs`] flattened, and its own.
    type Config: clap::Parser + Send + 'static;

    /// The binary's name (`kappa-registry`): logs, traces' `service.name`, metric prefixes.
    const NAME: &'static str;

    /// The full names of the gRPC services it serves beside health and reflection: reflection
    /// lists them, and readiness is published under each of them and under "".
    const GRPC_SERVICES: &'static [&'static str];

    /// The role each of its gRPC methods needs.
    const ACCESS: Policy;

    fn server_args(config: &Self::Config) -> &ServerArgs;

    /// What its flags' parsers cannot check: relations between its own flags.
    fn validate(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Its own settings for `--check-config` and the start-up log, secrets excluded.
    fn summary(config: &Self::Config) -> String;

    /// Components that hold it NOT_SERVING from the start until they clear themselves (a log
    /// not replayed yet, no model loaded yet), with what they wait for.
    fn waits_for(_config: &Self::Config) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Builds everything that can fail (clients, topics, state), registering its metrics on
    /// `host.metrics`. Nothing of the service may run yet: that is [`Service::start`]'s.
    fn build(config: Self::Config, host: &mut Host) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Starts its background components and adds its gRPC services to `routes`. It cannot fail:
    /// whatever could was done in [`Service::build`].
    fn start(self, host: &Host, routes: Routes) -> Running;
}

/// What the host owns and lends to the service while it builds and starts.
pub struct Host {
    /// Kafka client settings from the common flags (Kappa's defaults, then the operator's).
    pub kafka: KafkaClients,
    /// The metrics served at /metrics; the service registers its own while it builds.
    pub metrics: MetricsRegistry,
    pub readiness: Arc<Readiness>,
    /// Cancelled when the service stops (or fails to start): background work ends with it.
    pub stop: CancellationToken,
    /// The gRPC address bound (port 0 resolved).
    pub address: SocketAddr,
    /// This replica, as its records name it (load spans, monitoring windows): `host:port`.
    pub instance: String,
    /// TLS and tokens for a port of the service's own beside gRPC (the console's web pages):
    /// serve it with [`crate::web::serve_http`].
    pub web: crate::web::WebSecurity,
}

type Hook = Box<dyn FnOnce() + Send>;
type Finish = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A started service: its routes, and what it does when shutdown begins and after the server
/// has stopped.
pub struct Running {
    routes: Routes,
    on_drain: Option<Hook>,
    finish: Option<Finish>,
}

impl Running {
    /// Called when shutdown begins, after readiness turned NOT_SERVING and before the listener
    /// closes (the trainer cancels its jobs here).
    #[must_use]
    pub fn on_drain(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.on_drain = Some(Box::new(hook));
        self
    }

    /// Awaited once the last call has been answered (or dropped after the grace period), before
    /// the stop token is cancelled (the trainer flushes its jobs' states here).
    #[must_use]
    pub fn finally(mut self, finish: impl Future<Output = anyhow::Result<()>> + Send + 'static) -> Self {
        self.finish = Some(Box::pin(finish));
        self
    }
}

/// Runs the service `S` as a process: parses its flags, validates them (exit 64 when they are
/// wrong), answers `--check-config`, sets up logging and tracing, binds its addresses, and serves
/// until SIGTERM or Ctrl-C.
pub async fn host<S: Service>() -> ExitCode {
    let config = match parse_config::<S::Config>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let args = S::server_args(&config).clone();
    if let Err(problem) = args.validate().and_then(|()| S::validate(&config)) {
        eprintln!("{}: invalid configuration: {problem}", S::NAME);
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    if args.check_config {
        if let Some(warning) = args.security.warning() {
            eprintln!("{}: warning: {warning}", S::NAME);
        }
        println!("configuration ok: {} {}", args.summary(), S::summary(&config));
        return ExitCode::SUCCESS;
    }
    let _telemetry = match init_telemetry(S::NAME, &args.log) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("{}: cannot set up tracing: {e:#}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    let (listener, metrics_listener) = match bind(&args).await {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    match serve::<S>(config, listener, metrics_listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{} failed: {e:#}", S::NAME);
            eprintln!("{}: {e:#}", S::NAME);
            ExitCode::FAILURE
        }
    }
}

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

async fn bind(args: &ServerArgs) -> Result<(TcpListener, Option<TcpListener>), ExitCode> {
    let listener = TcpListener::bind(args.listen).await.map_err(|e| {
        tracing::error!(address = %args.listen, error = %e, "cannot bind the gRPC address; is another process using it? (--listen)");
        ExitCode::FAILURE
    })?;
    let metrics = match args.metrics_listen {
        Some(address) => Some(TcpListener::bind(address).await.map_err(|e| {
            tracing::error!(%address, error = %e, "cannot bind the metrics address; set --metrics-listen to a free one");
            ExitCode::FAILURE
        })?),
        None => None,
    };
    Ok((listener, metrics))
}

/// Builds `S` and serves it on `listener` until `shutdown` resolves; then reports NOT_SERVING,
/// drains, stops the background work and waits (up to the grace period) for it to finish.
pub async fn serve<S: Service>(
    config: S::Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let args = S::server_args(&config).clone();
    let stop = CancellationToken::new();
    // Every way out of this function, `?` included, stops what was started.
    let _stop_on_exit = stop.clone().drop_guard();
    let kafka = args.kafka.clients().map_err(anyhow::Error::msg)?;
    if let Some(warning) = args.security.warning() {
        tracing::warn!("{warning}");
    }
    let security = args
        .security
        .load(S::ACCESS, kappa_api::streaming_paths(), stop.clone())
        .map_err(anyhow::Error::msg)?;
    let reflection = kappa_api::reflection::for_services(S::GRPC_SERVICES)?;
    let address = listener.local_addr()?;
    let metrics_address = metrics_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let summary = format!("{} {}", args.summary(), S::summary(&config));

    let (reporter, health) = tonic_health::server::health_reporter();
    let names: Vec<&'static str> = std::iter::once("").chain(S::GRPC_SERVICES.iter().copied()).collect();
    let waits = S::waits_for(&config);
    let waits: Vec<(&'static str, &str)> = waits.iter().map(|(c, why)| (*c, why.as_str())).collect();
    let readiness = Readiness::start(reporter, &names, &waits).await;
    let mut metrics = MetricsRegistry::default();
    readiness.register(&mut metrics, &S::NAME.replace('-', "_"));
    security.connections.register(&mut metrics);

    let mut host = Host {
        kafka,
        metrics,
        readiness: Arc::clone(&readiness),
        stop: stop.clone(),
        address,
        instance: format!("{}:{}", crate::hostname(), address.port()),
        web: crate::web::WebSecurity {
            tls: security.http_tls.clone(),
            auth: security.auth.clone(),
        },
    };
    let service = S::build(config, &mut host).await?;

    // Nothing below fails until the server runs: from here on, things start.
    let metrics = std::mem::take(&mut host.metrics);
    if let (Some(listener), Some(address)) = (metrics_listener, metrics_address) {
        tracing::info!(%address, "serving Prometheus metrics at /metrics");
        tokio::spawn(crate::serve_metrics(
            listener,
            Arc::new(metrics),
            stop.clone(),
            security.metrics_tls.clone(),
        ));
    }
    let routes = Routes::new(&security, health, reflection);
    let Running {
        routes,
        on_drain,
        finish,
    } = service.start(&host, routes);
    tracing::info!(%address, settings = %summary, "{} listening for gRPC", S::NAME);
    crate::serve_gracefully(
        routes.into_router(),
        listener,
        &security,
        shutdown,
        &readiness,
        args.shutdown_grace,
        || on_drain.map_or((), |hook| hook()),
    )
    .await?;
    if let Some(finish) = finish {
        finish.await?;
    }
    stop.cancel();
    // Supervised work (stream scoring, the bridge) finishes what it started and commits.
    readiness.stopped(args.shutdown_grace).await;
    tracing::info!("{} stopped", S::NAME);
    Ok(())
}
