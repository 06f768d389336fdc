use std::time::Duration;

use clap::Parser;
use kappa_model::Backend;
use kappa_modellog::Follow;
use kappa_runtime::ServerArgs;

/// kappa-predictor serves a model from the Kafka models topic over gRPC: the Open Inference
/// Protocol (inference.GRPCInferenceService), the typed kappa.predictor.v1.Predictor API,
/// grpc.health.v1 and server reflection on one port. New versions are swapped in as they land.
#[derive(Debug, Clone, Parser)]
#[command(name = "kappa-predictor", version, about, long_about = None,
          mut_arg("listen", |a| a.default_value("127.0.0.1:50052").required(false)),
          mut_arg("metrics_listen", |a| a.default_value("127.0.0.1:9102")))]
pub struct PredictorConfig {
    /// The registry's compacted models topic, read directly (the registry need not be running).
    #[arg(long, env = "KAPPA_MODELS_TOPIC", default_value = "kappa.models", value_parser = kappa_runtime::args::non_empty)]
    pub models_topic: String,

    /// Name of the model to serve.
    #[arg(long, env = "KAPPA_MODEL", value_parser = parse_model_name)]
    pub model: String,

    /// Which version to serve: an alias (e.g. production) or `latest` for the highest version.
    #[arg(long, env = "KAPPA_FOLLOW", default_value = "latest", value_parser = parse_follow)]
    pub follow: Follow,

    /// Most rows the dynamic batcher puts together from several requests in one forward pass.
    /// A single request with more rows (up to --max-request-rows) is scored whole, on its own.
    #[arg(long, env = "KAPPA_MAX_BATCH_SIZE", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_batch_size: u32,

    /// Most rows one request may carry (OIP tensors, typed streams count one row per message);
    /// a request with more is refused with INVALID_ARGUMENT.
    #[arg(long, env = "KAPPA_MAX_REQUEST_ROWS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_request_rows: u32,

    /// How long a batch may wait for more requests, in microseconds, when requests are coming in
    /// together (the last batch held more than one). 0 (the default) sends what is queued at
    /// once. Either way a lone request, or a client sending one request at a time, never waits.
    #[arg(long = "max-queue-delay-us", env = "KAPPA_MAX_QUEUE_DELAY_US", default_value = "0",
          value_name = "MICROSECONDS", value_parser = kappa_runtime::args::micros)]
    pub max_queue_delay: Duration,

    /// Requests that may wait for an inference thread; beyond that, RESOURCE_EXHAUSTED.
    #[arg(long, env = "KAPPA_QUEUE_CAPACITY", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,

    /// Features named in each anomaly's prediction record (`top_features`), largest share of the
    /// score first: Kappa's autoencoders say them in the scoring pass itself, other versions with
    /// a reference profile by median replacement (--explain-budget-rows); typed `Predict` answers
    /// name every feature. 0 turns explanations off.
    #[arg(long, env = "KAPPA_EXPLAIN_TOP", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub explain_top: u32,

    /// Rows a second the predictor may score to explain the anomalies of versions that cannot
    /// explain themselves (ONNX graphs, raw-output MLPs): each flagged event costs one row per
    /// feature, that feature set to its training median (from the version's reference profile).
    /// Flagged events past it go unexplained, counted in
    /// kappa_predictor_explanations_skipped_total{reason="budget"}. 0 turns this off.
    #[arg(long, env = "KAPPA_EXPLAIN_BUDGET_ROWS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(0..=100_000_000))]
    pub explain_budget_rows: u32,

    /// Dedicated inference threads (never the async workers).
    #[arg(long, env = "KAPPA_INFERENCE_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub inference_threads: u32,

    /// Forward-pass implementation: `native` (hand-written, fastest for small MLPs) or `candle`.
    /// Both match PyTorch within 1e-5.
    #[arg(long, env = "KAPPA_BACKEND", default_value = "native")]
    pub backend: Backend,

    /// Also score the sensor topic: consume it in a consumer group, produce one prediction per
    /// event to the predictions topic, and store offsets only after the prediction is acknowledged.
    #[arg(long, env = "KAPPA_STREAM")]
    pub stream: bool,

    /// Topic of sensor events (JSON objects with the sensor fields, or protobuf SensorReading with
    /// header content-type: application/x-protobuf), keyed by car id.
    #[arg(long, env = "KAPPA_SENSOR_TOPIC", default_value = "sensor-data", value_parser = kappa_runtime::args::non_empty)]
    pub sensor_topic: String,

    /// Topic the predictions are produced to, keyed by car id (JSON).
    #[arg(long, env = "KAPPA_PREDICTIONS_TOPIC", default_value = "model-predictions", value_parser = kappa_runtime::args::non_empty)]
    pub predictions_topic: String,

    /// Consumer group for stream mode; replicas in one group share the partitions.
    #[arg(long, env = "KAPPA_CONSUMER_GROUP", default_value = "kappa-predictor", value_parser = kappa_runtime::args::non_empty)]
    pub consumer_group: String,

    /// Events being scored and produced at once in stream mode.
    #[arg(long, env = "KAPPA_STREAM_MAX_IN_FLIGHT", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub stream_max_in_flight: u32,

    /// Stream mode delivers exactly once: each batch's predictions and its consumed offsets are
    /// written in one Kafka transaction, so readers with `isolation.level=read_committed` see
    /// one prediction per event across crashes and rebalances. Needs a broker that allows
    /// transactions (and, with ACLs, this principal's transactional id).
    #[arg(long, env = "KAPPA_STREAM_EXACTLY_ONCE", requires = "stream")]
    pub stream_exactly_once: bool,

    /// Transactional id of this replica's exactly-once producer; default
    /// `<consumer-group>-<hostname>-<gRPC port>`. Keep it stable across restarts of one replica
    /// (a StatefulSet pod name): the restarted replica then aborts what its predecessor left
    /// open at once, instead of readers waiting for the transaction to time out (10 s).
    #[arg(long, env = "KAPPA_STREAM_TRANSACTIONAL_ID", requires = "stream_exactly_once",
          value_parser = kappa_runtime::args::non_empty)]
    pub stream_transactional_id: Option<String>,

    /// Seconds stream scoring may deliver nothing while events wait before the predictor
    /// reports NOT_SERVING (component `stream_progress`, with the count waiting): a stream that
    /// stopped progressing (a broker refusing every write, a producer stuck) must not look
    /// healthy. Cleared as soon as events flow again.
    #[arg(long = "stream-stall-seconds", env = "KAPPA_STREAM_STALL_SECONDS", default_value = "120",
          value_name = "SECONDS", value_parser = kappa_runtime::args::seconds, requires = "stream")]
    pub stream_stall: Duration,

    /// Largest model this predictor loads, in bytes; a larger version is refused (reason
    /// `too_large`) before its weights are fetched, and the previous one keeps serving.
    #[arg(long, env = "KAPPA_MAX_MODEL_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_model_bytes: u64,

    /// Serve only versions signed by one of these Ed25519 public keys: a PEM file, or a
    /// directory of them (`*.pem`, `*.pub`, e.g. a mounted ConfigMap). An unsigned or otherwise
    /// signed version is refused like a corrupt one, and the previous version keeps serving.
    #[arg(long, env = "KAPPA_TRUSTED_KEYS", value_name = "PATH",
          value_parser = kappa_model::signing::TrustedKeys::parse_flag)]
    pub trusted_keys: Option<kappa_model::signing::TrustedKeys>,

    /// How often the inputs and scores of the served version are compared with its training
    /// data (the reference profile in its lineage): each window sets the drift series and
    /// writes one record to --monitoring-topic.
    #[arg(long = "monitor-window-seconds", env = "KAPPA_MONITOR_WINDOW_SECONDS", default_value = "60",
          value_name = "SECONDS", value_parser = kappa_runtime::args::seconds)]
    pub monitor_window: Duration,

    /// Windows with fewer scored rows than this report their count but no drift (too few rows
    /// to tell drift from chance).
    #[arg(long, env = "KAPPA_MONITOR_MIN_ROWS", default_value_t = 100)]
    pub monitor_min_rows: u64,

    /// Topic the monitoring records go to (JSON, keyed by model name); empty to keep them to
    /// the metrics.
    #[arg(long, env = "KAPPA_MONITORING_TOPIC", default_value = "model-monitoring")]
    pub monitoring_topic: String,

    /// Keep a second version warm (an alias, or `latest`) and score a copy of the live traffic
    /// with it, gRPC and stream, off the request path: it never adds to a caller's latency or
    /// fails a call, and its work is dropped first under load (counted). Each shadow answer
    /// goes to --shadow-topic with both versions' scores and flags; `kappa compare` sums it up.
    #[arg(long, env = "KAPPA_SHADOW", value_name = "ALIAS", value_parser = parse_follow)]
    pub shadow: Option<Follow>,

    /// Topic of the shadow answers (JSON, keyed like the live answer).
    #[arg(long, env = "KAPPA_SHADOW_TOPIC", default_value = "shadow-predictions",
          value_parser = kappa_runtime::args::non_empty)]
    pub shadow_topic: String,

    /// Live answers that may wait for the shadow; beyond that, shadow work is dropped (never
    /// the live request).
    #[arg(long, env = "KAPPA_SHADOW_QUEUE_CAPACITY", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub shadow_queue_capacity: u32,

    /// How the predictions, monitoring and shadow topics are created when they do not exist.
    #[command(flatten)]
    pub tiering: kappa_kafka::TieringArgs,

    #[command(flatten)]
    pub faults: crate::faults::FaultArgs,

    /// Listen addresses, Kafka, security, logging: what every Kappa server takes.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A name the registry could hold.
fn parse_model_name(text: &str) -> Result<String, String> {
    kappa_model::validate_name(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

/// `latest`, or an alias that could exist (the registry's alias alphabet).
fn parse_follow(text: &str) -> Result<Follow, String> {
    let follow = Follow::parse(text);
    if let Follow::Alias(alias) = &follow {
        kappa_model::validate_alias(alias).map_err(|e| e.to_string())?;
    }
    Ok(follow)
}
