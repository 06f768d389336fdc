//! Harness: broker access, service processes, and gRPC helpers.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use kappa_api::{
    model::ModelManifest,
    registry::{self as pb, registry_client::RegistryClient},
};
use kappa_client::TracedChannel;
use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
};
use tonic::{Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

pub fn bootstrap() -> String {
    std::env::var("KAPPA_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A port for a service to listen on, free when asked. Taken below Linux's ephemeral range
/// (32768-60999), where the kernel hands out the local ports of outgoing connections: a port
/// the kernel picked for us could be given to any client's connection before the service
/// binds it, and CI saw a registry fail to bind its metrics port so.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u16 = 20_000;
    const LAST: u16 = 32_000;
    // Each process starts at a place of its own, so two test binaries at once start apart.
    static NEXT: std::sync::LazyLock<AtomicU32> = std::sync::LazyLock::new(|| AtomicU32::new(std::process::id() * 7));
    for _ in FIRST..LAST {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % u32::from(LAST - FIRST);
        let port = FIRST + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {LAST} on 127.0.0.1");
}

/// Binaries are built next to the test executable's `deps/` folder (`make test` builds them).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which `make test` does)",
        path.display()
    );
    path
}

fn log_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("e2e-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A service process; killed when dropped so a failing test leaves nothing running.
pub struct Service {
    child: Child,
    pub address: String,
    pub log: PathBuf,
    /// `http://host:port/metrics`.
    pub metrics_url: String,
}

/// The one way the tests start a Kappa service: the binary with its own loopback gRPC and metrics
/// ports, the test broker, a log file per process, and whatever the test adds.
pub struct Launch {
    binary: &'static str,
    label: String,
    bootstrap: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Launch {
    /// `binary` (e.g. `kappa-registry`); `label` names its log file.
    pub fn new(binary: &'static str, label: &str) -> Self {
        Self {
            binary,
            label: label.to_owned(),
            bootstrap: bootstrap(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Another broker than the test broker.
    pub fn bootstrap(mut self, bootstrap: &str) -> Self {
        self.bootstrap = bootstrap.to_owned();
        self
    }

    /// Another broker than the test broker, with the client properties of a principal.
    pub fn kafka(mut self, bootstrap: &str, properties_file: &std::path::Path) -> Self {
        self.bootstrap = bootstrap.to_owned();
        self.args
            .push(format!("--kafka-properties-file={}", properties_file.display()));
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn envs(mut self, envs: &[(String, String)]) -> Self {
        self.envs.extend(envs.iter().cloned());
        self
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn(self) -> Service {
        let (port, metrics_port) = (free_port(), free_port());
        let log = log_dir().join(format!("{}-{}-{port}.log", self.label, self.binary));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary(self.binary))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--kafka-bootstrap", &self.bootstrap])
            // KAPPA_TEST_LOG (a --log filter) to see more of every service, e.g. rumqttc=trace.
            .args([
                "--log",
                &std::env::var("KAPPA_TEST_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()),
            ])
            .args(&self.args)
            .envs(self.envs)
            // The test's own environment must not point the service elsewhere.
            .env_remove("KAPPA_LISTEN")
            .env_remove("KAPPA_METRICS_LISTEN")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Service {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log,
            metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
        }
    }

    /// Starts the process and waits until grpc.health.v1 reports `service_name` SERVING.
    pub async fn start(self, service_name: &str) -> Service {
        let service = self.spawn();
        wait_serving(&service, service_name).await;
        service
    }
}

impl Service {
    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "service did not stop within 30 s of SIGTERM; log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no clean-up of any kind, as in a crash.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `lines` lines, whether the process still runs and its metrics: what a
    /// failure report needs when the log is too long to be shown whole.
    pub async fn report(&mut self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        let (status, metrics) = match self.child.try_wait() {
            Ok(Some(status)) => (format!("exited: {status}"), String::new()),
            Ok(None) => ("still running".to_owned(), scrape(&self.metrics_url).await),
            Err(e) => (format!("status unknown: {e}"), String::new()),
        };
        let kappa: Vec<&str> = metrics.lines().filter(|l| l.starts_with("kappa_")).collect();
        format!(
            "{status}; its kappa_ metrics:\n{}\nthe last {lines} of its {} log lines:\n{tail}",
            kappa.join("\n"),
            all.len()
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registry settings for one test: its own topic and transactional id.
#[derive(Clone)]
pub struct RegistrySetup {
    pub topic: String,
    pub transactional_id: String,
    pub extra_args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

impl RegistrySetup {
    pub fn new() -> Self {
        Self {
            topic: unique("test.models"),
            transactional_id: unique("test-registry"),
            extra_args: Vec::new(),
            envs: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Exports spans to the test Jaeger.
    pub fn traced(mut self) -> Self {
        self.envs = tracing_env();
        self
    }

    fn launch(&self) -> Launch {
        Launch::new("kappa-registry", &self.topic)
            .args(["--models-topic", &self.topic])
            .args(["--transactional-id", &self.transactional_id])
            .args(self.extra_args.iter().cloned())
            .envs(&self.envs)
    }

    /// Starts the registry process without waiting for it.
    pub fn spawn(&self) -> Service {
        self.launch().spawn()
    }

    /// Starts the registry and waits until its health check reports SERVING.
    pub async fn start(&self) -> Service {
        self.launch().start("kappa.registry.v1.Registry").await
    }
}

pub use tonic_health::pb::health_check_response::ServingStatus as HealthStatus;

/// One grpc.health.v1 check of `service_name`; None when the call fails.
pub async fn health_status(service: &Service, service_name: &str) -> Option<HealthStatus> {
    let channel = Channel::from_shared(service.address.clone())
        .unwrap()
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service_name.to_owned(),
        })
        .await
        .ok()?;
    HealthStatus::try_from(response.into_inner().status).ok()
}

/// Polls grpc.health.v1 until `service_name` is SERVING (bounded: 60 s).
pub async fn wait_serving(service: &Service, service_name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = Channel::from_shared(service.address.clone()).unwrap().connect().await {
            let mut health = HealthClient::new(channel);
            if let Ok(r) = health
                .check(HealthCheckRequest {
                    service: service_name.to_owned(),
                })
                .await
                && r.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{service_name} at {} not SERVING within 60 s; log:\n{}",
            service.address,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn registry_client(service: &Service) -> RegistryClient<TracedChannel> {
    kappa_client::Registry::connect(&service.address)
        .await
        .unwrap()
        .rpc()
        .clone()
}

/// Publishes with the project's one registry client (a streamed header, then 1 MiB chunks).
pub async fn publish(
    client: &mut RegistryClient<TracedChannel>,
    manifest: &ModelManifest,
    weights: &[u8],
    key: &str,
) -> Result<pb::PublishResponse, Status> {
    kappa_client::Registry::from(client.clone())
        .publish(manifest, weights, key)
        .await
}

/// Points `alias` of `name` at `version`.
pub async fn set_alias(
    client: &mut RegistryClient<TracedChannel>,
    name: &str,
    alias: &str,
    version: u64,
) -> Result<(), Status> {
    client
        .set_alias(pb::SetAliasRequest {
            name: name.to_owned(),
            alias: alias.to_owned(),
            version,
            effective_from_ms: 0,
        })
        .await
        .map(drop)
}

/// A version and its weights through the project's registry client; a digest mismatch fails
/// the test, any other error is the registry's status.
pub async fn get_model(
    client: &mut RegistryClient<TracedChannel>,
    name: &str,
    selector: Option<pb::get_model_request::Selector>,
) -> Result<(pb::ModelVersion, Vec<u8>), Status> {
    use kappa_client::{GetError, Selector};
    let selector = match selector {
        None => Selector::Latest,
        Some(pb::get_model_request::Selector::Version(v)) => Selector::Version(v),
        Some(pb::get_model_request::Selector::Alias(a)) => Selector::Alias(a),
    };
    match kappa_client::Registry::from(client.clone()).get(name, selector).await {
        Ok(got) => Ok(got),
        Err(GetError::Status(status)) => Err(status),
        Err(other) => panic!("GetModel {name}: {other}"),
    }
}

pub fn by_version(v: u64) -> Option<pb::get_model_request::Selector> {
    Some(pb::get_model_request::Selector::Version(v))
}

pub fn by_alias(a: &str) -> Option<pb::get_model_request::Selector> {
    Some(pb::get_model_request::Selector::Alias(a.to_owned()))
}

/// SHA-256 computed here, independently of the code under test.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn kafka_config() -> ClientConfig {
    kafka_config_at(&bootstrap())
}

pub fn kafka_config_at(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Creates a topic directly with the admin API, bypassing Kappa.
pub async fn create_topic(topic: &str, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
    let mut new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    let results = admin.create_topics([&new_topic], &AdminOptions::new()).await.unwrap();
    for r in results {
        r.unwrap();
    }
}

/// (low, high) watermarks of partition 0: high counts every record ever written, aborted ones
/// and transaction markers included.
pub async fn watermarks(topic: &str) -> (i64, i64) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka_config().set("group.id", "kappa-e2e").create().unwrap();
        consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap()
}

/// A raw record as any Kafka consumer sees it.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// A record with its position, as any Kafka consumer sees it.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: i64,
    pub headers: Vec<(String, String)>,
}

impl Positioned {
    /// The value of the record's header `name`, when it has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads every partition of `topic` with a plain librdkafka consumer at the given isolation
/// level: (key, value or None for a tombstone, timestamp in ms) of every record, in offset order
/// within a partition.
pub async fn read_partition(topic: &str, isolation: &str) -> Vec<(String, Option<Vec<u8>>, i64)> {
    read_positioned(topic, isolation)
        .await
        .into_iter()
        .map(|r| (r.key, r.value, r.timestamp_ms))
        .collect()
}

/// Every record of every partition of `topic`, with its partition and offset.
pub async fn read_positioned(topic: &str, isolation: &str) -> Vec<Positioned> {
    read_positioned_at(&bootstrap(), topic, isolation).await
}

/// [`read_positioned`] on the broker at `bootstrap`.
pub async fn read_positioned_at(bootstrap: &str, topic: &str, isolation: &str) -> Vec<Positioned> {
    let (topic, isolation, bootstrap) = (topic.to_owned(), isolation.to_owned(), bootstrap.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka_config_at(&bootstrap)
            .set("group.id", unique("kappa-e2e-reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
        // A topic nobody has written to yet holds nothing.
        if partitions.is_empty() {
            return Vec::new();
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut at_end = std::collections::BTreeSet::new();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "reading {topic} did not reach its end within 30 s"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => records.push(Positioned {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    value: m.payload().map(<[u8]>::to_vec),
                    timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                    headers: m
                        .headers()
                        .map(|h| {
                            use rdkafka::message::Headers as _;
                            h.iter()
                                .map(|x| {
                                    let value = String::from_utf8_lossy(x.value.unwrap_or_default());
                                    (x.key.to_owned(), value.into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                    if at_end.len() == partitions.len() {
                        return records;
                    }
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
    })
    .await
    .unwrap()
}

/// Every record of partition 0 as any `isolation` consumer sees it.
pub async fn read_topic(topic: &str, isolation: &str) -> Vec<RawRecord> {
    read_partition(topic, isolation)
        .await
        .into_iter()
        .map(|(key, value, _)| RawRecord { key, value })
        .collect()
}

/// grpcurl, installed by `scripts/tools.sh` (which `make test` runs).
pub fn grpcurl() -> PathBuf {
    let path = std::env::var_os("KAPPA_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kappa/bin/grpcurl"));
    assert!(
        path.exists(),
        "grpcurl is missing at {}: run scripts/tools.sh (make test does)",
        path.display()
    );
    path
}

/// Runs `grpcurl -plaintext [-d DATA] ADDRESS COMMAND` against `service` and returns stdout;
/// panics with grpcurl's stderr when it fails.
pub fn run_grpcurl(service: &Service, data: Option<&str>, command: &str) -> String {
    let mut cmd = Command::new(grpcurl());
    cmd.arg("-plaintext");
    if let Some(data) = data {
        cmd.args(["-d", data]);
    }
    let out = cmd
        .arg(service.address.trim_start_matches("http://"))
        .arg(command)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpcurl {command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Predictor settings for one test.
#[derive(Clone)]
pub struct PredictorSetup {
    pub topic: String,
    pub model: String,
    pub follow: String,
    pub extra_args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

impl PredictorSetup {
    pub fn new(topic: &str, model: &str, follow: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            model: model.to_owned(),
            follow: follow.to_owned(),
            extra_args: Vec::new(),
            envs: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Exports spans to the test Jaeger.
    pub fn traced(mut self) -> Self {
        self.envs = tracing_env();
        self
    }

    /// Stream mode: scores `sensors` into `predictions` in a consumer group of its own.
    pub fn stream(self, sensors: &str, predictions: &str) -> Self {
        self.arg("--stream")
            .arg(format!("--sensor-topic={sensors}"))
            .arg(format!("--predictions-topic={predictions}"))
            .arg(format!("--consumer-group={}", unique("test-group")))
    }

    pub fn spawn(&self) -> Predictor {
        let service = Launch::new("kappa-predictor", &self.topic)
            .args(["--models-topic", &self.topic])
            .args(["--model", &self.model, "--follow", &self.follow])
            .args(self.extra_args.iter().cloned())
            .envs(&self.envs)
            .spawn();
        Predictor {
            metrics_url: service.metrics_url.clone(),
            service,
        }
    }

    /// Starts the predictor and waits until it serves a model.
    pub async fn start(&self) -> Predictor {
        let predictor = self.spawn();
        wait_serving(&predictor.service, "kappa.predictor.v1.Predictor").await;
        predictor
    }
}

pub struct Predictor {
    pub service: Service,
    pub metrics_url: String,
}

impl Predictor {
    /// A channel through the project's one channel builder, as every Kappa client connects.
    pub async fn channel(&self) -> TracedChannel {
        kappa_client::connect("kappa-predictor", &self.service.address)
            .await
            .unwrap()
    }

    /// The Prometheus text of the metrics endpoint, fetched with a plain HTTP/1.1 request.
    pub async fn metrics(&self) -> String {
        scrape(&self.metrics_url).await
    }

    pub fn log_text_contains(&self, needle: &str) -> bool {
        self.service.log_text().contains(needle)
    }

    /// Value of one metric line (exact series text before the value), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Produces records straight into a topic with a plain producer, bypassing Kappa entirely.
pub async fn produce_raw(topic: &str, records: Vec<(String, Vec<u8>)>) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka_config().create().unwrap();
    for (key, value) in records {
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value).partition(0),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

/// A fixture model produced by PyTorch (crates/model/tests/fixtures).
pub struct Fixture {
    pub manifest: ModelManifest,
    pub weights: Vec<u8>,
    pub inputs: Vec<Vec<f32>>,
    pub scores: Vec<f32>,
}

pub fn fixture(name: &str) -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/model/tests/fixtures");
    let manifest =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.manifest.json"))).unwrap()).unwrap();
    let io: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.io.json"))).unwrap()).unwrap();
    let floats = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect::<Vec<_>>()
    };
    Fixture {
        manifest,
        weights: std::fs::read(dir.join(format!("{name}.safetensors"))).unwrap(),
        inputs: io["inputs"].as_array().unwrap().iter().map(floats).collect(),
        scores: floats(&io["scores"]),
    }
}

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/model/tests/fixtures")
}

/// Produces keyed records with the default partitioner; returns (partition, offset) of each.
pub async fn produce_keyed(topic: &str, records: &[(String, Vec<u8>)]) -> Vec<(i32, i64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka_config().set("linger.ms", "5").create().unwrap();
    let sends = records
        .iter()
        .map(|(key, value)| producer.send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(10)));
    futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| {
            let delivered = r.unwrap();
            (delivered.partition, delivered.offset)
        })
        .collect()
}

pub async fn create_topic_with_partitions(topic: &str, partitions: i32) {
    create_topic_with_partitions_at(&bootstrap(), topic, partitions).await;
}

pub async fn create_topic_with_partitions_at(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = kafka_config_at(bootstrap).create().unwrap();
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&new_topic], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

/// (key, value, timestamp ms) of every committed record in partition 0.
pub async fn read_topic_with_timestamps(topic: &str) -> Vec<(String, Vec<u8>, i64)> {
    read_partition(topic, "read_committed")
        .await
        .into_iter()
        .map(|(key, value, ts)| (key, value.unwrap_or_default(), ts))
        .collect()
}

/// Starts kappa-trainer against a registry, with a jobs topic of its own.
pub async fn start_trainer(registry: &Service) -> Service {
    start_trainer_with_jobs(registry, &unique("test.jobs")).await
}

/// Starts kappa-trainer keeping its jobs in `jobs_topic`, and waits until it serves.
pub async fn start_trainer_with_jobs(registry: &Service, jobs_topic: &str) -> Service {
    start_trainer_with_args(registry, jobs_topic, &[]).await
}

/// Starts kappa-trainer with extra flags.
pub async fn start_trainer_with_args(registry: &Service, jobs_topic: &str, extra: &[&str]) -> Service {
    start_trainer_with_env(registry, jobs_topic, extra, &[]).await
}

/// Starts kappa-trainer with extra flags and environment.
pub async fn start_trainer_with_env(
    registry: &Service,
    jobs_topic: &str,
    extra: &[&str],
    envs: &[(String, String)],
) -> Service {
    Launch::new("kappa-trainer", jobs_topic)
        .args(["--registry", &registry.address])
        .args(["--jobs-topic", jobs_topic])
        .args(extra.iter().copied())
        .envs(envs)
        .start("kappa.trainer.v1.Trainer")
        .await
}

/// Runs `kappa fleet` into `topic`; panics if it fails.
pub fn run_fleet(topic: &str, args: &[&str]) {
    let out = Command::new(binary("kappa"))
        .args(["fleet", "--kafka-bootstrap", &bootstrap(), "--topic", topic])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kappa fleet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// offsets_for_times for `ms` on every partition, as any Kafka client would resolve it.
pub async fn offsets_for_time(topic: &str, partitions: i32, ms: i64) -> Vec<i64> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka_config().set("group.id", "kappa-e2e").create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(ms))
                .unwrap();
        }
        let found = consumer.offsets_for_times(tpl, Duration::from_secs(10)).unwrap();
        (0..partitions)
            .map(|p| match found.find_partition(&topic, p).unwrap().offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap().1,
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Produces keyed records with explicit Kafka timestamps.
pub async fn produce_with_timestamps(topic: &str, records: &[(String, Vec<u8>)], timestamps: &[i64]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka_config().set("linger.ms", "5").create().unwrap();
    let sends = records.iter().zip(timestamps).map(|((key, value), ts)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(value).timestamp(*ts),
            Duration::from_secs(10),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
}

/// The body of `GET /metrics` at `url`, fetched with a plain HTTP/1.1 request.
pub async fn scrape(url: &str) -> String {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    })
    .await
    .unwrap()
}

/// Value of the series `series` (exact text before the value) in a metrics body.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The local Jaeger's query API (host:port) that `make test` starts.
pub fn jaeger_api() -> String {
    std::env::var("KAPPA_TEST_JAEGER_API").unwrap_or_else(|_| "127.0.0.1:16686".to_owned())
}

/// Environment that makes a service export its spans to the test Jaeger, promptly.
pub fn tracing_env() -> Vec<(String, String)> {
    let otlp = std::env::var("KAPPA_TEST_OTLP_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4317".to_owned());
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), otlp),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ]
}

/// `GET path` over HTTP/1.0 (so the body is never chunked): status code and body.
pub async fn http_get(host_port: &str, path: &str) -> (u16, String) {
    let (addr, path) = (host_port.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr)
            .unwrap_or_else(|e| panic!("cannot reach {addr} ({e}); is it running? `make test` starts it"));
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, body.to_owned())
    })
    .await
    .unwrap()
}

/// A fresh W3C `traceparent` (sampled) and its trace and span ids, as a client would send.
pub fn new_traceparent() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

/// The version's feature paths in input-column order, as ModelMetadata gives them to OIP clients.
pub async fn oip_feature_columns(
    oip: &mut kappa_api::inference::grpc_inference_service_client::GrpcInferenceServiceClient<TracedChannel>,
    model: &str,
) -> Vec<String> {
    use kappa_api::inference::{ModelMetadataRequest, infer_parameter::ParameterChoice};
    let metadata = oip
        .model_metadata(ModelMetadataRequest {
            name: model.to_owned(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    match metadata
        .parameters
        .get("features_json")
        .and_then(|p| p.parameter_choice.clone())
    {
        Some(ParameterChoice::StringParam(json)) => serde_json::from_str(&json).unwrap(),
        other => panic!("ModelMetadata has no features_json parameter: {other:?}"),
    }
}

/// A signing key pair made by `kappa keys new` in `dir`: (private key, public key) paths.
pub fn signing_keys(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let made = Command::new(binary("kappa"))
        .args(["keys", "new", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (dir.join("kappa-signing.key"), dir.join("kappa-signing.pub.pem"))
}

/// Writes a version straight into the models topic, as a buggy or hostile writer could.
pub async fn write_raw_version(topic: &str, manifest: ModelManifest, weights: &[u8]) {
    write_raw_record(
        topic,
        kappa_api::model::VersionRecord {
            manifest: Some(manifest),
            ..Default::default()
        },
        weights,
    )
    .await;
}

/// Writes `record` (its manifest names the version) and the weights as one chunk, bypassing Kappa.
pub async fn write_raw_record(topic: &str, mut record: kappa_api::model::VersionRecord, weights: &[u8]) {
    use prost::Message as _;
    let manifest = record.manifest.clone().unwrap_or_default();
    let (name, version) = (manifest.name, manifest.version);
    let chunk = kappa_api::model::WeightChunk {
        index: 0,
        data: weights.to_vec(),
    };
    record.chunk_count = 1;
    produce_raw(
        topic,
        vec![
            (format!("model/{name}/{version}/chunk/0"), chunk.encode_to_vec()),
            (format!("model/{name}/{version}"), record.encode_to_vec()),
        ],
    )
    .await;
}

/// Moves `alias` of `name` to `version` by writing its record straight into the models topic.
pub async fn write_raw_alias(topic: &str, name: &str, alias: &str, version: u64) {
    use prost::Message as _;
    let record = kappa_api::model::AliasRecord {
        name: name.to_owned(),
        alias: alias.to_owned(),
        version,
        ..Default::default()
    };
    produce_raw(topic, vec![(format!("alias/{name}/{alias}"), record.encode_to_vec())]).await;
}

/// The secure local broker (`make kafka-secure-up`, which `make test` starts): its bootstrap and
/// the directory of its principals' librdkafka property files.
pub fn secure_broker() -> (String, PathBuf) {
    let bootstrap = std::env::var("KAPPA_TEST_SECURE_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9094".to_owned());
    let clients = std::env::var_os("KAPPA_TEST_SECURE_KAFKA_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/.state-secure/clients"));
    assert!(
        clients.join("registry.properties").exists() && std::net::TcpStream::connect(&bootstrap).is_ok(),
        "the secure broker is not running at {bootstrap} with its clients in {}: run `make kafka-secure-up` (make test does)",
        clients.display()
    );
    (bootstrap, clients)
}

/// A plain librdkafka client configuration for `bootstrap` from a properties file, read here
/// independently of Kappa's own parsing.
pub fn client_config_from(bootstrap: &str, properties: &std::path::Path) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for line in std::fs::read_to_string(properties).unwrap().lines() {
        let line = line.trim();
        if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            config.set(k.trim(), v.trim());
        }
    }
    config
}

/// The messages of a Publish stream (a header, then 1 MiB chunks), for tests that drive the raw
/// RPC (stalls, floods, cancellations).
pub fn publish_messages(manifest: &ModelManifest, weights: &[u8], key: &str) -> Vec<pb::PublishRequest> {
    use pb::publish_request::Part;
    let header = pb::PublishRequest {
        part: Some(Part::Header(pb::PublishHeader {
            manifest: Some(manifest.clone()),
            idempotency_key: key.to_owned(),
            ..Default::default()
        })),
    };
    std::iter::once(header)
        .chain(weights.chunks(1024 * 1024).map(|c| pb::PublishRequest {
            part: Some(Part::Chunk(c.to_vec())),
        }))
        .collect()
}

/// Deletes the records of `partition` before `offset`, as retention would, with the admin API.
pub async fn delete_records_before(topic: &str, partition: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        .unwrap();
    let result = admin.delete_records(&tpl, &AdminOptions::new()).await.unwrap();
    for element in result.elements() {
        element.error().unwrap();
    }
}

/// Sensor events sent at a steady pace until stopped, by a producer that (like a device gateway
/// or the MQTT bridge) holds what it cannot deliver until the broker is back.
pub struct EventFeed {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(i32, i64)>>,
}

impl EventFeed {
    /// One JSON event with `features` set to `row` every `every`, keyed by one of 7 cars.
    pub fn start(bootstrap: &str, topic: &str, features: Vec<String>, row: Vec<f32>, every: Duration) -> Self {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        use std::sync::atomic::Ordering;
        let producer: FutureProducer = kafka_config_at(bootstrap)
            .set("message.timeout.ms", "180000")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, topic) = (Arc::clone(&stop), topic.to_owned());
        let task = tokio::spawn(async move {
            let mut deliveries = Vec::new();
            let mut i = 0_u64;
            while !flag.load(Ordering::Relaxed) {
                let event: serde_json::Map<String, serde_json::Value> = features
                    .iter()
                    .zip(&row)
                    .map(|(f, v)| (f.clone(), serde_json::json!(v)))
                    .collect();
                let (key, value) = (format!("car{}", i % 7), serde_json::to_vec(&event).unwrap());
                let record = FutureRecord::to(&topic).key(&key).payload(&value);
                deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
                i += 1;
                tokio::time::sleep(every).await;
            }
            let mut sent = Vec::new();
            for delivery in deliveries {
                let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
                sent.push((delivered.partition, delivered.offset));
            }
            sent
        });
        Self { stop, task }
    }

    /// Stops sending and returns where every event landed (each acknowledged by the broker).
    pub async fn stop(self) -> std::collections::BTreeSet<(i32, i64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap().into_iter().collect()
    }
}

/// Waits (up to `within`) until every event in `sent` has a prediction in `predictions`, none
/// of them an error; returns how many predictions there were (duplicates included).
pub async fn wait_all_answered(
    bootstrap: &str,
    predictions: &str,
    sent: &std::collections::BTreeSet<(i32, i64)>,
    within: Duration,
    log: &dyn Fn() -> String,
) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let records = read_positioned_at(bootstrap, predictions, "read_committed").await;
        let answered: std::collections::BTreeSet<(i32, i64)> = records
            .iter()
            .map(|r| {
                let a: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                assert!(a["error"].as_str().is_none_or(str::is_empty), "{a}");
                let partition = a["sourcePartition"].as_i64().unwrap_or(0) as i32;
                (partition, a["sourceOffset"].as_str().map_or(0, |s| s.parse().unwrap()))
            })
            .collect();
        let missing = sent.difference(&answered).count();
        if missing == 0 {
            return records.len();
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} events never answered:\n{}",
            sent.len(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The local MQTT broker's TLS listener (`make mqtt-up`): its URL, its CA and the directory of
/// the users' password files (`bridge.password`, `fleet.password`).
pub fn secure_mqtt() -> (String, PathBuf, PathBuf) {
    let port = std::env::var("KAPPA_TEST_MQTT_TLS_PORT").unwrap_or_else(|_| "8883".to_owned());
    let state = std::env::var_os("KAPPA_TEST_MQTT_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/mqtt/.state"));
    let (ca, clients) = (state.join("tls/ca.pem"), state.join("clients"));
    assert!(
        ca.exists() && std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok(),
        "the MQTT broker's TLS listener is not up on 127.0.0.1:{port} with its CA at {}: run `make mqtt-up` (make test does)",
        ca.display()
    );
    (format!("mqtts://127.0.0.1:{port}"), ca, clients)
}

/// Waits until `topic` holds at least `n` records, then returns them.
pub async fn wait_for_records(topic: &str, n: usize, limit: Duration) -> Vec<Positioned> {
    let deadline = Instant::now() + limit;
    loop {
        let (_, high) = watermarks_all(topic).await;
        if high >= n as i64 {
            return read_positioned(topic, "read_committed").await;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} holds {high} of {n} records after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// (partitions, records) of a topic, summed over its partitions; (0, 0) while it does not exist.
pub async fn watermarks_all(topic: &str) -> (usize, i64) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        let Ok(metadata) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) else {
            return (0, 0);
        };
        let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let total = partitions
            .iter()
            .filter_map(|p| consumer.fetch_watermarks(&topic, *p, Duration::from_secs(5)).ok())
            .map(|(low, high)| high - low)
            .sum();
        (partitions.len(), total)
    })
    .await
    .unwrap()
}
