//! One setup builder per service: each names its topics and flags for one test and starts the binary through [`Launch`](super::Launch).

use std::time::{Duration, Instant};

use kappa_api::registry::registry_client::RegistryClient;
use kappa_client::TracedChannel;

use super::*;

/// Flags and environment a test adds to a service's own.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

/// What every setup builder takes beside its own settings.
pub trait WithExtra: Sized {
    fn extra_mut(&mut self) -> &mut Extra;

    fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_mut().args.push(arg.into());
        self
    }

    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_mut().args.extend(args.into_iter().map(Into::into));
        self
    }

    fn envs(mut self, envs: &[(String, String)]) -> Self {
        self.extra_mut().envs.extend(envs.iter().cloned());
        self
    }

    /// Exports spans to the test Jaeger.
    fn traced(self) -> Self {
        self.envs(&tracing_env())
    }
}

/// Registry settings for one test: its own topic and transactional id.
#[derive(Clone)]
pub struct RegistrySetup {
    pub topic: String,
    pub transactional_id: String,
    /// Extra flags and environment for the process.
    pub extra: Extra,
}

impl WithExtra for RegistrySetup {
    fn extra_mut(&mut self) -> &mut Extra {
        &mut self.extra
    }
}

impl RegistrySetup {
    pub fn new() -> Self {
        Self {
            topic: unique("test.models"),
            transactional_id: unique("test-registry"),
            extra: Extra::default(),
        }
    }

    /// A registry that accepts only models signed by a key in `trusted` (a directory) and signs
    /// its alias moves and deletions with a key of its own, whose public half it adds to
    /// `trusted` as `registry.pem`: predictors given the same directory follow it.
    pub fn verifying(self, trusted: &std::path::Path) -> Self {
        let key = kappa_model::signing::ModelSigner::generate();
        let private = trusted.join("registry.key");
        std::fs::write(&private, key.private_pem().unwrap()).unwrap();
        std::fs::write(trusted.join("registry.pem"), key.public_pem().unwrap()).unwrap();
        self.arg(format!("--trusted-keys={}", trusted.display()))
            .arg(format!("--signing-key={}", private.display()))
    }

    fn launch(&self) -> Launch {
        Launch::new("kappa-registry", &self.topic)
            .args(["--models-topic", &self.topic])
            .args(["--transactional-id", &self.transactional_id])
            .extra(&self.extra)
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

/// Predictor settings for one test.
#[derive(Clone)]
pub struct PredictorSetup {
    pub topic: String,
    pub model: String,
    pub follow: String,
    /// Extra flags and environment for the process.
    pub extra: Extra,
}

impl WithExtra for PredictorSetup {
    fn extra_mut(&mut self) -> &mut Extra {
        &mut self.extra
    }
}

impl PredictorSetup {
    pub fn new(topic: &str, model: &str, follow: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            model: model.to_owned(),
            follow: follow.to_owned(),
            extra: Extra::default(),
        }
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
            .extra(&self.extra)
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

    /// Waits (up to 20 s) until `series` reads `value`; panics naming `what` otherwise.
    pub async fn wait_for_metric(&self, series: &str, value: f64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric(series).await != Some(value) {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Value of one metric line (exact series text before the value), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Trainer settings for one test: the registry it publishes to and a jobs topic of its own.
#[derive(Clone)]
pub struct TrainerSetup {
    pub registry: String,
    pub jobs_topic: String,
    /// Extra flags and environment for the process.
    pub extra: Extra,
}

impl WithExtra for TrainerSetup {
    fn extra_mut(&mut self) -> &mut Extra {
        &mut self.extra
    }
}

impl TrainerSetup {
    pub fn new(registry: &Service) -> Self {
        Self {
            registry: registry.address.clone(),
            jobs_topic: unique("test.jobs"),
            extra: Extra::default(),
        }
    }

    /// Keeps the jobs in `topic` (to restart a trainer on the same jobs).
    pub fn jobs(mut self, topic: &str) -> Self {
        topic.clone_into(&mut self.jobs_topic);
        self
    }

    /// Starts the trainer and waits until it serves.
    pub async fn start(&self) -> Service {
        Launch::new("kappa-trainer", &self.jobs_topic)
            .args(["--registry", &self.registry])
            .args(["--jobs-topic", &self.jobs_topic])
            .extra(&self.extra)
            .start("kappa.trainer.v1.Trainer")
            .await
    }
}

/// Bridge settings for one test: the MQTT filter `<prefix>/+/telemetry` on the test HiveMQ, a
/// share group and client id of its own, and the Kafka topics it writes.
#[derive(Clone)]
pub struct BridgeSetup {
    pub mqtt_url: String,
    pub prefix: String,
    pub share_group: Option<String>,
    pub client_id: String,
    pub sensors: String,
    pub dead_letter: Option<String>,
    /// Extra flags and environment for the process.
    pub extra: Extra,
}

impl WithExtra for BridgeSetup {
    fn extra_mut(&mut self) -> &mut Extra {
        &mut self.extra
    }
}

impl BridgeSetup {
    /// The plain MQTT port of the test broker.
    pub const MQTT_PORT: u16 = 1883;

    pub fn new(prefix: &str, sensors: &str) -> Self {
        Self {
            mqtt_url: format!("mqtt://127.0.0.1:{}", Self::MQTT_PORT),
            prefix: prefix.to_owned(),
            share_group: Some(unique("bridges")),
            client_id: unique("bridge"),
            sensors: sensors.to_owned(),
            dead_letter: Some(format!("{sensors}.dead-letter")),
            extra: Extra::default(),
        }
    }

    pub fn mqtt_url(mut self, url: &str) -> Self {
        url.clone_into(&mut self.mqtt_url);
        self
    }

    /// `None`: the bridge's default group.
    pub fn share_group(mut self, group: Option<&str>) -> Self {
        self.share_group = group.map(str::to_owned);
        self
    }

    pub fn client_id(mut self, id: &str) -> Self {
        id.clone_into(&mut self.client_id);
        self
    }

    /// `None`: the bridge's default dead-letter topic.
    pub fn dead_letter(mut self, topic: Option<&str>) -> Self {
        self.dead_letter = topic.map(str::to_owned);
        self
    }

    pub fn launch(&self) -> Launch {
        let mut args = vec![
            format!("--mqtt-url={}", self.mqtt_url),
            format!("--mqtt-topic={}/+/telemetry", self.prefix),
            format!("--mqtt-client-id={}", self.client_id),
            format!("--sensor-topic={}", self.sensors),
        ];
        args.extend(self.share_group.iter().map(|g| format!("--mqtt-share-group={g}")));
        args.extend(self.dead_letter.iter().map(|d| format!("--dead-letter-topic={d}")));
        Launch::new("kappa-bridge", &self.sensors).args(args).extra(&self.extra)
    }

    /// Starts the bridge without waiting for it.
    pub fn spawn(&self) -> Service {
        self.launch().spawn()
    }

    /// Starts the bridge and waits until it is ready (connected to MQTT).
    pub async fn start(&self) -> Service {
        self.launch().start("").await
    }
}

/// A registry of its own, a client of it, and a car autoencoder published as version 1 under a
/// fresh name starting with `prefix`.
pub async fn registry_with_car_model(
    prefix: &str,
) -> (
    RegistrySetup,
    Service,
    RegistryClient<TracedChannel>,
    kappa_api::model::ModelManifest,
) {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let manifest = kappa_fleet::car_autoencoder(&unique(prefix), &[8]);
    let weights = kappa_model::example::random_weights(&manifest, 1);
    publish(&mut client, &manifest, &weights, "").await.unwrap();
    (setup, registry, client, manifest)
}
