use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use kappa_client::ServiceUrl;
use kappa_runtime::ServerArgs;

/// kappa-console serves the mesh's web pages: live anomalies per unit, models with their
/// lineage and alias history, drift and shadow agreement, and what each predictor serves. It
/// reads only what exists (the registry and predictors over gRPC; the predictions, monitoring
/// and shadow topics in Kafka) and keeps bounded summaries in memory. Pages are on
/// --http-listen; grpc.health.v1, reflection and /metrics are where every Kappa server has them.
#[derive(Debug, Clone, Parser)]
#[command(name = "kappa-console", version, about, long_about = None,
          mut_arg("listen", |a| a.default_value("127.0.0.1:50055").required(false)),
          mut_arg("metrics_listen", |a| a.default_value("127.0.0.1:9105")))]
pub struct ConsoleConfig {
    /// Address of the web pages (HTTP/1.1; HTTPS with --tls-cert, the gRPC port's certificate).
    #[arg(long, env = "KAPPA_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,

    /// Where kappa-registry listens: models, versions, aliases and their history.
    #[arg(long, env = "KAPPA_REGISTRY", default_value = "http://127.0.0.1:50051")]
    pub registry: ServiceUrl,

    /// Where kappa-trainer listens: backtests started from the Monitoring page (the signed-in
    /// user needs the train role). Without it, no backtests.
    #[arg(long, env = "KAPPA_TRAINER")]
    pub trainer: Option<ServiceUrl>,

    /// A kappa-predictor replica to show on the Serving page (repeat the flag, or separate with
    /// commas in KAPPA_PREDICTORS).
    #[arg(long = "predictor", env = "KAPPA_PREDICTORS", value_delimiter = ',')]
    pub predictors: Vec<ServiceUrl>,

    /// A URL whose host name resolves to every predictor replica (on Kubernetes, a headless
    /// Service): each address is shown as a replica of its own, the name resolved again every
    /// 10 s so replicas that come and go appear and leave. Repeat for more.
    #[arg(long = "predictor-replicas", env = "KAPPA_PREDICTOR_REPLICAS", value_delimiter = ',')]
    pub predictor_replicas: Vec<ServiceUrl>,

    /// The name the replicas' certificates carry, checked instead of the --predictor-replicas
    /// host over https:// (a headless Service's name is seldom in them; the predictors' own
    /// Service's is).
    #[arg(
        long = "predictor-replicas-tls-name",
        env = "KAPPA_PREDICTOR_REPLICAS_TLS_NAME",
        value_name = "NAME"
    )]
    pub predictor_replicas_tls_name: Option<String>,

    /// Topic of the predictions stream scoring writes (the Fleet pages).
    #[arg(long, env = "KAPPA_PREDICTIONS_TOPIC", default_value = "predictions",
          value_parser = kappa_runtime::args::non_empty)]
    pub predictions_topic: String,

    /// Topic of the predictors' monitoring windows (drift, anomaly rate).
    #[arg(long, env = "KAPPA_MONITORING_TOPIC", default_value = "model-monitoring",
          value_parser = kappa_runtime::args::non_empty)]
    pub monitoring_topic: String,

    /// Topic of the shadow answers (agreement between a served version and its shadow).
    #[arg(long, env = "KAPPA_SHADOW_TOPIC", default_value = "shadow-predictions",
          value_parser = kappa_runtime::args::non_empty)]
    pub shadow_topic: String,

    /// How far back the pages start when the console starts, in seconds: each topic is read
    /// from this long ago, then followed.
    #[arg(long = "lookback-seconds", env = "KAPPA_LOOKBACK_SECONDS", default_value = "600",
          value_name = "SECONDS", value_parser = kappa_runtime::args::seconds)]
    pub lookback: Duration,

    /// Units (the predictions' record keys: cars, turbines, pumps) kept in memory; past it, the
    /// units silent the longest are forgotten first (counted). Bounds the console's memory.
    #[arg(long, env = "KAPPA_MAX_UNITS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_units: u32,

    /// Latest scores kept per unit for its plot.
    #[arg(long, env = "KAPPA_UNIT_POINTS", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(2..=4096))]
    pub unit_points: u16,

    /// Jaeger's web UI (e.g. http://127.0.0.1:16686): a version's page links to its training
    /// trace there. Without it, no links.
    #[arg(long, env = "KAPPA_JAEGER_UI")]
    pub jaeger_ui: Option<String>,

    /// Browser sessions kept at once; past it, the least recently used is signed out.
    #[arg(long, env = "KAPPA_MAX_SESSIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_sessions: u32,

    /// Hours a browser session lasts without use.
    #[arg(long = "session-idle-hours", env = "KAPPA_SESSION_IDLE_HOURS", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=720))]
    pub session_idle_hours: u32,

    #[command(flatten)]
    pub mesh: kappa_client::PeerSecurityArgs<TheMesh>,

    #[command(flatten)]
    pub server: ServerArgs,
}

/// The mesh (registry, predictors and trainer), as the console calls it: --mesh-tls-ca,
/// --mesh-tls-cert, --mesh-tls-key, --mesh-token-file, --mesh-allow-plaintext-token.
#[derive(Debug, Clone)]
pub struct TheMesh;

impl kappa_client::Peer for TheMesh {
    const FLAG: &'static str = "mesh";
    const ENV: &'static str = "MESH";
    const CALLED: &'static str = "the mesh (registry, predictors, trainer)";
    const TOKEN_HELP: &'static str = "File with the console's own bearer token (the read role): the pages' reads. An alias move is made with the signed-in user's token, so the registry checks and records them";
}

impl ConsoleConfig {
    pub fn validate(&self) -> Result<(), String> {
        let security = self.mesh.security()?;
        for url in std::iter::once(&self.registry)
            .chain(&self.predictors)
            .chain(&self.predictor_replicas)
            .chain(&self.trainer)
        {
            url.check_token_transport(&security)?;
        }
        if let Some(jaeger) = &self.jaeger_ui
            && !(jaeger.starts_with("http://") || jaeger.starts_with("https://"))
        {
            return Err(format!("--jaeger-ui {jaeger:?} must be an http:// or https:// URL"));
        }
        Ok(())
    }

    pub fn summary(&self) -> String {
        format!(
            "http={} registry={} predictors={} predictor_replicas={} predictions={} monitoring={} shadow={} max_units={} unit_points={}",
            self.http_listen,
            self.registry,
            self.predictors.len(),
            self.predictor_replicas.len(),
            self.predictions_topic,
            self.monitoring_topic,
            self.shadow_topic,
            self.max_units,
            self.unit_points
        )
    }
}
