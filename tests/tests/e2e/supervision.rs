//! Background work that fails is survived or shows in health, never silent (issue 12, tests 5
//! and 6): panics injected through the predictor's hidden fault hooks, watched through
//! grpc.health.v1 `Watch` with a real client while inference callers keep going.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kappa_api::predictor::{PredictRequest, predictor_client::PredictorClient};
use kappa_fleet::{CAR_FIELDS, car_autoencoder};
use kappa_model::example::random_weights;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::*;

const SERVICE: &str = "kappa.predictor.v1.Predictor";

fn request(value: f64) -> PredictRequest {
    PredictRequest {
        features: CAR_FIELDS
            .iter()
            .map(|f| ((*f).to_owned(), value))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

/// Callers that keep predicting until stopped; they count answers and failures.
struct Callers {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Callers {
    async fn start(predictor: &Predictor, n: usize) -> Self {
        let (stop, ok, failed) = (Arc::default(), Arc::default(), Arc::default());
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut client = PredictorClient::new(predictor.channel().await);
            let (stop, ok, failed): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
                (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.predict(request(1.0 + i as f64)).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }));
        }
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

async fn wait_for_version(predictor: &Predictor, version: u64, within: Duration) {
    let mut client = PredictorClient::new(predictor.channel().await);
    let deadline = Instant::now() + within;
    loop {
        if let Ok(answer) = client.predict(request(2.0)).await
            && answer.into_inner().model_version == version
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "version {version} not served within {within:?}:\n{}",
            predictor.service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_loader_panic_shows_in_health_watch_and_is_survived_and_an_inference_panic_fails_one_call() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("supervised", &[8]);
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, "supervised", "latest")
        .arg("--fault-panic-loader-on-version=2")
        .arg("--fault-panic-inference-on=12345")
        .start()
        .await;

    let mut health = HealthClient::new(predictor.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = vec![watch.message().await.unwrap().unwrap().status];
    let callers = Callers::start(&predictor, 3).await;

    publish(&mut client, &m, &random_weights(&m, 2), "").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, watch.message())
            .await
            .unwrap_or_else(|_| panic!("health Watch sent {seen:?} only:\n{}", predictor.service.log_text()));
        seen.push(next.unwrap().unwrap().status);
    }
    let (serving, not_serving) = (HealthStatus::Serving as i32, HealthStatus::NotServing as i32);
    assert_eq!(
        seen,
        vec![serving, not_serving, serving],
        "Watch streams the loader's failure and its restart"
    );
    wait_for_version(&predictor, 2, Duration::from_secs(10)).await;
    assert!(predictor.log_text_contains("loader panicked on its way to version 2"));
    assert_eq!(
        predictor
            .metric(r#"kappa_predictor_component_restarts_total{component="loader"}"#)
            .await,
        Some(1.0)
    );

    // A panic in the forward pass fails the calls of that batch, and nothing else.
    let mut typed = PredictorClient::new(predictor.channel().await);
    let refused = typed.predict(request(12345.0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    assert!(refused.message().contains("panicked"), "{}", refused.message());
    typed
        .predict(request(3.0))
        .await
        .expect("the inference thread carries on");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, failed) = callers.stop().await;
    assert!(ok > 100, "only {ok} calls answered");
    // A caller's call can share the panicking batch; with 3 paced callers that is rare, and
    // each such call gets INTERNAL. Nothing else may fail: the loader's panic fails no call.
    assert!(failed <= 3, "{failed} of {} calls failed", ok + failed);
    assert!(
        predictor
            .metric("kappa_predictor_inference_panics_total")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(watch_status(&predictor).await, serving);
}

async fn watch_status(predictor: &Predictor) -> i32 {
    health_status(&predictor.service, SERVICE)
        .await
        .map_or(-1, |s| s as i32)
}

#[tokio::test]
async fn a_weight_read_that_fails_is_tried_again_and_the_version_served() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("retried", &[8]);
    for seed in 1..=3 {
        publish(&mut client, &m, &random_weights(&m, seed), "").await.unwrap();
    }
    // The follower keeps only the newest version's weights, so serving version 1 reads its
    // chunks from the topic; the first two reads fail as if the broker had gone away.
    set_alias(&mut client, "retried", "production", 1).await.unwrap();
    let started = Instant::now();
    let predictor = PredictorSetup::new(&setup.topic, "retried", "production")
        .arg("--fault-fail-weight-reads=2")
        .start()
        .await;
    println!("served after two failed reads in {:?}", started.elapsed());
    wait_for_version(&predictor, 1, Duration::from_secs(5)).await;
    assert_eq!(
        predictor
            .metric(r#"kappa_predictor_load_failures_total{reason="read_failed"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(predictor.metric("kappa_predictor_load_retries_total").await, Some(2.0));
    assert!(
        predictor.log_text_contains("not loaded yet"),
        "{}",
        predictor.service.log_text()
    );
}
