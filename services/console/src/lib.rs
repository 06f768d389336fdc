//! kappa-console: the mesh's web pages. It follows what the mesh already writes (the registry's
//! log over WatchModels, the predictions, monitoring and shadow topics, each predictor's
//! GetStatus), folds it into bounded summaries on threads of their own, and serves them to
//! browsers as JSON and one event stream per page. Pages, assets and the API are on
//! `--http-listen`, with the gRPC port's TLS and token file.

pub mod config;
mod fleet;
mod models;
mod monitoring;
mod serving;
mod status;
mod tail;
mod web;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use kappa_api::events::{MonitoringWindow, Prediction, ShadowPrediction};
use kappa_client::ClientSecurity;
use kappa_runtime::{
    Host, Routes, Running, ServerArgs,
    auth::{Access, Policy},
    web::WebSecurity,
};
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::message::Message as _;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

pub use config::ConsoleConfig;

/// Pages open at once (one event stream each).
const MAX_LIVE_STREAMS: usize = 256;

/// The console serves no RPC of its own on its gRPC port: health and reflection only.
fn access(_: &str) -> Access {
    Access::Unlisted
}

/// What the web handlers share.
pub struct App {
    fleet: Arc<Mutex<fleet::Fleet>>,
    /// The fleet's summary as JSON, made once a second.
    fleet_summary: watch::Receiver<Bytes>,
    models: Arc<models::Models>,
    serving: Arc<serving::Serving>,
    monitoring: Arc<Mutex<monitoring::Monitoring>>,
    topics: Vec<Arc<status::TopicStatus>>,
    sessions: web::session::Sessions,
    web: WebSecurity,
    /// The registry's and trainer's URLs and how the console calls the mesh.
    registry: String,
    trainer: Option<String>,
    mesh: ClientSecurity,
    jaeger_ui: Option<String>,
    live_streams: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
}

pub struct Console {
    config: ConsoleConfig,
    listener: TcpListener,
    mesh: ClientSecurity,
    metrics: Metrics,
}

#[derive(Clone, Default)]
struct Metrics {
    units: Gauge,
    forgotten_units: Gauge,
    sessions: Gauge,
    live_streams: Gauge,
}

impl kappa_runtime::Service for Console {
    type Config = ConsoleConfig;

    const NAME: &'static str = "kappa-console";
    const GRPC_SERVICES: &'static [&'static str] = &[];
    const ACCESS: Policy = access;

    fn server_args(config: &ConsoleConfig) -> &ServerArgs {
        &config.server
    }

    fn validate(config: &ConsoleConfig) -> Result<(), String> {
        config.validate()
    }

    fn summary(config: &ConsoleConfig) -> String {
        config.summary()
    }

    async fn build(config: ConsoleConfig, host: &mut Host) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.http_listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot bind the web address {}: {e}; set --http-listen to a free one",
                config.http_listen
            )
        })?;
        let mesh = config.mesh.security().map_err(anyhow::Error::msg)?;
        let metrics = Metrics::default();
        let registry = &mut host.metrics;
        registry.register("kappa_console_units", "Units kept in memory", metrics.units.clone());
        registry.register(
            "kappa_console_forgotten_units",
            "Units forgotten to stay within --max-units, since start",
            metrics.forgotten_units.clone(),
        );
        registry.register("kappa_console_sessions", "Browser sessions", metrics.sessions.clone());
        registry.register(
            "kappa_console_live_streams",
            "Open pages' event streams",
            metrics.live_streams.clone(),
        );
        Ok(Self {
            config,
            listener,
            mesh,
            metrics,
        })
    }

    fn start(self, host: &Host, routes: Routes) -> Running {
        let Self {
            config,
            listener,
            mesh,
            metrics,
        } = self;
        let stop = host.stop.clone();
        let fleet = Arc::new(Mutex::new(fleet::Fleet::new(
            config.max_units as usize,
            usize::from(config.unit_points),
        )));
        let monitoring = Arc::new(Mutex::new(monitoring::Monitoring::default()));
        let topics = follow_topics(&config, host, &fleet, &monitoring);
        let models = models::Models::new();
        tokio::spawn(Arc::clone(&models).follow(config.registry.to_string(), mesh.clone(), stop.clone()));
        let serving = serving::Serving::new();
        for url in &config.predictors {
            serving.watch(url.to_string(), None, mesh.clone(), stop.clone());
        }
        for name in &config.predictor_replicas {
            tokio::spawn(Arc::clone(&serving).discover(
                name.clone(),
                config.predictor_replicas_tls_name.clone(),
                mesh.clone(),
                stop.clone(),
            ));
        }
        let (summary_tx, fleet_summary) = watch::channel(Bytes::from_static(b"{}"));
        let app = Arc::new(App {
            fleet,
            fleet_summary,
            models,
            serving,
            monitoring,
            topics,
            sessions: web::session::Sessions::new(
                config.max_sessions as usize,
                Duration::from_secs(u64::from(config.session_idle_hours) * 3600),
            ),
            web: host.web.clone(),
            registry: config.registry.to_string(),
            trainer: config.trainer.as_ref().map(ToString::to_string),
            mesh,
            jaeger_ui: config.jaeger_ui.clone(),
            live_streams: Arc::new(tokio::sync::Semaphore::new(MAX_LIVE_STREAMS)),
            stop: stop.clone(),
        });
        tokio::spawn(summarise(Arc::clone(&app), summary_tx, metrics));
        let address = listener
            .local_addr()
            .map_or_else(|_| config.http_listen.to_string(), |a| a.to_string());
        tracing::info!(%address, scheme = host.web.scheme(), "serving the console's pages");
        tokio::spawn(kappa_runtime::web::serve_http(
            listener,
            host.web.tls.clone(),
            web::router(app),
            stop,
        ));
        routes.running()
    }
}

/// Starts a follower for each topic the pages read; their states, for the status line.
fn follow_topics(
    config: &ConsoleConfig,
    host: &Host,
    fleet: &Arc<Mutex<fleet::Fleet>>,
    monitoring: &Arc<Mutex<monitoring::Monitoring>>,
) -> Vec<Arc<status::TopicStatus>> {
    let fleet = Arc::clone(fleet);
    let predictions =
        follow_payloads(
            config,
            host,
            &config.predictions_topic,
            move |payload| match serde_json::from_slice::<Prediction>(payload) {
                Ok(prediction) => fleet
                    .lock()
                    .expect("fleet lock")
                    .add(prediction, kappa_runtime::now_ms()),
                Err(e) => tracing::debug!(error = %e, "a predictions record is not a Kappa prediction"),
            },
        );
    let windows = Arc::clone(monitoring);
    let monitoring_topic = follow_payloads(config, host, &config.monitoring_topic, move |payload| {
        let mut monitoring = windows.lock().expect("monitoring lock");
        match serde_json::from_slice::<MonitoringWindow>(payload) {
            Ok(window) => monitoring.add_window(window),
            Err(_) => monitoring.undecodable += 1,
        }
    });
    let shadows = Arc::clone(monitoring);
    let shadow_topic = follow_payloads(config, host, &config.shadow_topic, move |payload| {
        let mut monitoring = shadows.lock().expect("monitoring lock");
        match serde_json::from_slice::<ShadowPrediction>(payload) {
            Ok(answer) => monitoring.add_shadow(&answer, kappa_runtime::now_ms()),
            Err(_) => monitoring.undecodable += 1,
        }
    });
    vec![predictions, monitoring_topic, shadow_topic]
}

/// Follows `topic` from `--lookback-seconds` ago, handing each record's value to `on_payload`.
fn follow_payloads(
    config: &ConsoleConfig,
    host: &Host,
    topic: &str,
    mut on_payload: impl FnMut(&[u8]) + Send + 'static,
) -> Arc<status::TopicStatus> {
    let status = Arc::new(status::TopicStatus::new(topic));
    tail::follow(
        host.kafka.clone(),
        topic.to_owned(),
        config.lookback,
        Arc::clone(&status),
        host.stop.clone(),
        move |message| {
            if let Some(payload) = message.payload() {
                on_payload(payload);
            }
        },
    );
    status
}

/// Once a second: the fleet's summary, serialised once for every open page, and the gauges.
async fn summarise(app: Arc<App>, summary: watch::Sender<Bytes>, metrics: Metrics) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = app.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let fleet = Arc::clone(&app.fleet);
        // Ranking 100,000 units takes milliseconds: not on an async worker.
        let made = tokio::task::spawn_blocking(move || {
            let summary = fleet.lock().expect("fleet lock").summary(kappa_runtime::now_ms());
            let json = serde_json::to_vec(&summary).expect("a summary serialises");
            (summary.units, summary.forgotten_units, json)
        })
        .await;
        let Ok((units, forgotten, json)) = made else { continue };
        metrics.units.set(units as i64);
        metrics.forgotten_units.set(forgotten as i64);
        metrics.sessions.set(app.sessions.len() as i64);
        metrics
            .live_streams
            .set((MAX_LIVE_STREAMS - app.live_streams.available_permits()) as i64);
        summary.send_replace(Bytes::from(json));
    }
}
