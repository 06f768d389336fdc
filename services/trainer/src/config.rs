use std::time::Duration;

use clap::Parser;
use kappa_client::ServiceUrl;
use kappa_runtime::ServerArgs;

/// kappa-trainer trains anomaly detectors from a time range of a Kafka topic and publishes them
/// to kappa-registry (kappa.trainer.v1.Trainer, grpc.health.v1 and reflection on one port).
#[derive(Debug, Clone, Parser)]
#[command(name = "kappa-trainer", version, about, long_about = None,
          mut_arg("listen", |a| a.default_value("127.0.0.1:50053").required(false)),
          mut_arg("metrics_listen", |a| a.default_value("127.0.0.1:9103")))]
pub struct TrainerConfig {
    /// Where kappa-registry listens; trained models are published there.
    #[arg(long, env = "KAPPA_REGISTRY", default_value = "http://127.0.0.1:50051")]
    pub registry: ServiceUrl,

    /// TLS and token towards the registry: --registry-tls-ca, --registry-tls-cert,
    /// --registry-tls-key, --registry-token-file, --registry-allow-plaintext-token.
    #[command(flatten)]
    pub registry_client: kappa_client::PeerSecurityArgs<TheRegistry>,

    /// Compacted topic where job states are kept, so past jobs survive a restart.
    #[arg(long, env = "KAPPA_JOBS_TOPIC", default_value = "kappa.training-jobs",
          value_parser = kappa_runtime::args::non_empty)]
    pub jobs_topic: String,

    /// Replication factor of the jobs topic when the trainer creates it; by default one replica
    /// per broker of the cluster, up to 3.
    #[arg(long, env = "KAPPA_REPLICATION_FACTOR", value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: Option<i32>,

    /// Training jobs that may run at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "KAPPA_MAX_CONCURRENT_JOBS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_concurrent_jobs: u32,

    /// Most events a job holds in memory. A range holding more is not held: validation, hold-out
    /// and scaling come from a uniform sample of this size, and every training epoch re-reads the
    /// range from Kafka in blocks of this size (Kafka as the data lake). A backtest gate's window
    /// holding more blocks the promotion, naming this bound.
    #[arg(long, env = "KAPPA_MAX_ROWS", default_value_t = 2_000_000,
          value_parser = kappa_runtime::args::at_least_one)]
    pub max_rows: usize,

    /// Seconds each Kafka look-up of a training range may take, and how long reading a range
    /// may go without receiving an event before the job fails (the broker away, a partition
    /// without a leader). librdkafka reconnects meanwhile, so a shorter outage only pauses it.
    #[arg(long = "kafka-timeout-seconds", env = "KAPPA_KAFKA_TIMEOUT_SECONDS", default_value = "30",
          value_name = "SECONDS", value_parser = kappa_runtime::args::seconds)]
    pub kafka_timeout: Duration,

    /// Sign every model this trainer publishes with this Ed25519 private key (PKCS#8 PEM, from
    /// `kappa keys new` or `openssl genpkey -algorithm ed25519`), so predictors with
    /// --trusted-keys serve them.
    #[arg(long, env = "KAPPA_SIGNING_KEY", value_name = "PEM",
          value_parser = kappa_model::signing::ModelSigner::parse_flag)]
    pub signing_key: Option<kappa_model::signing::ModelSigner>,

    /// Listen addresses, Kafka, security, logging: what every Kappa server takes.
    #[command(flatten)]
    pub server: ServerArgs,
}

impl TrainerConfig {
    /// How the trainer reaches the registry: its TLS settings and token, read now.
    pub fn registry_security(&self) -> Result<kappa_client::ClientSecurity, String> {
        self.registry_client.security()
    }
}

/// The registry, as the trainer calls it.
#[derive(Debug, Clone)]
pub struct TheRegistry;

impl kappa_client::Peer for TheRegistry {
    const FLAG: &'static str = "registry";
    const ENV: &'static str = "REGISTRY";
    const CALLED: &'static str = "the registry";
    const TOKEN_HELP: &'static str = "File holding the trainer's bearer token for the registry (it needs the write role to publish and move aliases, and read to compare with the holder)";
}
