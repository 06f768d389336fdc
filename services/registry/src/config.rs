use std::time::Duration;

use clap::Parser;
use kappa_runtime::ServerArgs;

/// kappa-registry stores versioned models with aliases in a compacted Kafka topic and serves
/// them over gRPC (kappa.registry.v1.Registry, grpc.health.v1 and server reflection on one port).
#[derive(Debug, Clone, Parser)]
#[command(name = "kappa-registry", version, about, long_about = None,
          mut_arg("listen", |a| a.default_value("127.0.0.1:50051").required(false)),
          mut_arg("metrics_listen", |a| a.default_value("127.0.0.1:9101")))]
pub struct RegistryConfig {
    /// The compacted topic holding every model version, weight chunk and alias.
    #[arg(long, env = "KAPPA_MODELS_TOPIC", default_value = "kappa.models", value_parser = kappa_runtime::args::non_empty)]
    pub models_topic: String,

    /// Transactional id of the registry's producer. A new registry with the same id fences the
    /// old one, which then refuses writes. Keep it fixed per models topic.
    #[arg(long, env = "KAPPA_TRANSACTIONAL_ID", default_value = "kappa-registry", value_parser = kappa_runtime::args::non_empty)]
    pub transactional_id: String,

    /// Size of the weight chunks written to Kafka, in bytes. Must fit the topic's max.message.bytes.
    #[arg(long, env = "KAPPA_CHUNK_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=8 * 1024 * 1024))]
    pub chunk_bytes: u32,

    /// Largest safetensors file accepted by Publish, in bytes; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "KAPPA_MAX_MODEL_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_model_bytes: u64,

    /// Replication factor used when the registry creates the models topic; by default one
    /// replica per broker of the cluster, up to 3 (with min.insync.replicas=2 on the brokers,
    /// a published version then survives the loss of any one broker).
    #[arg(long, env = "KAPPA_REPLICATION_FACTOR", value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: Option<i32>,

    /// Extra topic config used when the registry creates the models topic, KEY=VALUE, repeatable
    /// (e.g. segment.ms=10000 min.cleanable.dirty.ratio=0.01 so compaction runs soon in development).
    #[arg(long = "topic-config", env = "KAPPA_TOPIC_CONFIGS", value_delimiter = ',', value_name = "KEY=VALUE",
          value_parser = parse_key_value)]
    pub topic_configs: Vec<(String, String)>,

    /// Fault injection for tests: after a write's records reach the broker, wait this long before
    /// committing, so a test can kill the registry with a transaction open.
    #[arg(long = "fault-delay-before-commit-ms", env = "KAPPA_FAULT_DELAY_BEFORE_COMMIT_MS", hide = true,
          default_value = "0", value_parser = kappa_runtime::args::millis)]
    pub fault_delay_before_commit: Duration,

    /// Bytes of weights all Publish streams in progress may hold together; a publish that would
    /// go past it gets RESOURCE_EXHAUSTED (a small one still fits while large ones wait).
    #[arg(long, env = "KAPPA_MAX_PUBLISH_BUFFER_BYTES", default_value_t = 1024 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=(1 << 40)))]
    pub max_publish_buffer_bytes: u64,

    /// Longest pause between two messages of a Publish stream, in seconds; a stalled publisher
    /// gets DEADLINE_EXCEEDED and its buffered bytes are released.
    #[arg(long = "publish-idle-seconds", env = "KAPPA_PUBLISH_IDLE_SECONDS", default_value = "30",
          value_name = "SECONDS", value_parser = kappa_runtime::args::seconds)]
    pub publish_idle: Duration,

    /// GetModel (with weights) and WatchModels streams served at once; each holds a Kafka
    /// consumer. Beyond it, RESOURCE_EXHAUSTED.
    #[arg(long, env = "KAPPA_MAX_READ_STREAMS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_read_streams: u32,

    /// WatchModels streams one caller (a principal; without tokens, a peer address) may hold
    /// at once; beyond it, RESOURCE_EXHAUSTED. Watches together take at most half of
    /// --max-read-streams, so GetModel always has the other half.
    #[arg(long, env = "KAPPA_MAX_WATCH_STREAMS_PER_CALLER", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_watch_streams_per_caller: u32,

    /// Accept only models signed by one of these Ed25519 public keys: a PEM file, or a directory
    /// of them (`*.pem`, `*.pub`). Unsigned or otherwise signed publishes get PERMISSION_DENIED.
    #[arg(long, env = "KAPPA_TRUSTED_KEYS", value_name = "PATH",
          value_parser = kappa_model::signing::TrustedKeys::parse_flag)]
    pub trusted_keys: Option<kappa_model::signing::TrustedKeys>,

    /// Sign every alias move and deletion with this Ed25519 private key (PKCS#8 PEM; `kappa keys
    /// new` makes one), so predictors with `--trusted-keys` (which must then hold its public key)
    /// follow only moves this registry made, and never an old one written to the topic again.
    /// Required with --trusted-keys.
    #[arg(long, env = "KAPPA_REGISTRY_SIGNING_KEY", value_name = "PATH",
          value_parser = kappa_model::signing::ModelSigner::parse_flag)]
    pub signing_key: Option<kappa_model::signing::ModelSigner>,

    /// Listen addresses, Kafka, security, logging: what every Kappa server takes.
    #[command(flatten)]
    pub server: ServerArgs,
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

impl RegistryConfig {
    /// Checks what a single flag's parser cannot: relations between flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_publish_buffer_bytes < self.max_model_bytes {
            return Err(format!(
                "--max-publish-buffer-bytes ({}) is smaller than --max-model-bytes ({}); the largest model could never be published",
                self.max_publish_buffer_bytes, self.max_model_bytes
            ));
        }
        if self.trusted_keys.is_some() && self.signing_key.is_none() {
            return Err(
                "--trusted-keys needs --signing-key: predictors that trust only signed models follow only signed alias moves and deletions; make a key with `kappa keys new`, pass it here and add its public key to the predictors' --trusted-keys".into(),
            );
        }
        if self.publish_idle.is_zero() {
            return Err("--publish-idle-seconds must be above 0".into());
        }
        if self.max_model_bytes < u64::from(self.chunk_bytes) {
            return Err(format!(
                "--max-model-bytes ({}) is smaller than --chunk-bytes ({}); no model could be published",
                self.max_model_bytes, self.chunk_bytes
            ));
        }
        let chunks = self.max_model_bytes.div_ceil(u64::from(self.chunk_bytes));
        if chunks > u64::from(kappa_modellog::MAX_CHUNKS) {
            return Err(format!(
                "--max-model-bytes ({}) would take {chunks} chunks of --chunk-bytes ({}); readers accept {} at most: raise --chunk-bytes",
                self.max_model_bytes,
                self.chunk_bytes,
                kappa_modellog::MAX_CHUNKS
            ));
        }
        Ok(())
    }

    /// The topic's max.message.bytes: one chunk plus generous room for key and record overhead.
    pub fn topic_max_message_bytes(&self) -> usize {
        self.chunk_bytes as usize + 64 * 1024
    }
}
