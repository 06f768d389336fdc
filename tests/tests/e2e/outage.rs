//! A broker that goes away and comes back, on a broker of the test's own (so no other test
//! loses its broker): the predictor keeps serving from memory and picks up what is published
//! after the outage; the registry answers writes during it in bounded time and accepts them
//! again afterwards, without a restart.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kappa_api::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

use crate::support::*;

/// A single-node broker in a state directory of its own, on free ports.
struct OwnBroker {
    env: Vec<(String, String)>,
    bootstrap: String,
    _state: tempfile::TempDir,
}

impl OwnBroker {
    fn start() -> Self {
        let state = tempfile::tempdir().unwrap();
        let port = free_port();
        let env = vec![
            ("KAFKA_STATE_DIR".to_owned(), state.path().display().to_string()),
            ("KAFKA_PORT".to_owned(), port.to_string()),
            ("KAFKA_CONTROLLER_PORT".to_owned(), free_port().to_string()),
        ];
        let broker = Self {
            env,
            bootstrap: format!("127.0.0.1:{port}"),
            _state: state,
        };
        broker.run("up");
        broker
    }

    fn run(&self, action: &str) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/kafka.sh");
        let out = Command::new(script)
            .arg(action)
            .envs(self.env.iter().cloned())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kafka.sh {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/kafka.sh");
        let _ = Command::new(script).arg("down").envs(self.env.iter().cloned()).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_broker_outage_the_predictor_serves_and_then_picks_up_what_is_published_after() {
    let broker = OwnBroker::start();
    let models = unique("test.models");
    let registry = Launch::new("kappa-registry", &models)
        .bootstrap(&broker.bootstrap)
        .args([
            "--models-topic",
            &models,
            "--transactional-id",
            &unique("test-registry"),
        ])
        .start("kappa.registry.v1.Registry")
        .await;
    let fixture = fixture("autoencoder");
    let name = fixture.manifest.name.clone();
    let mut client = registry_client(&registry).await;
    publish(&mut client, &fixture.manifest, &fixture.weights, "")
        .await
        .unwrap();
    let predictor = Launch::new("kappa-predictor", &models)
        .bootstrap(&broker.bootstrap)
        .args(["--models-topic", &models, "--model", &name])
        .start("kappa.predictor.v1.Predictor")
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let newest = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let channel = kappa_client::connect("kappa-predictor", &predictor.address)
            .await
            .unwrap();
        let (stop, calls, failures, newest) = (stop.clone(), calls.clone(), failures.clone(), newest.clone());
        let (name, row) = (name.clone(), fixture.inputs[0].clone());
        load.push(tokio::spawn(async move {
            let mut oip = GrpcInferenceServiceClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                match oip.model_infer(crate::security::oip_request(&name, &row)).await {
                    Ok(answer) => {
                        let version = answer.get_ref().model_version.parse().unwrap_or(0);
                        newest.fetch_max(version, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                calls.fetch_add(1, Ordering::Relaxed);
                // A steady stream, not a CPU-bound one: the suite runs other tests beside it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    broker.run("down");
    let outage = Instant::now();
    // A write during the outage is answered, UNAVAILABLE, in bounded time.
    let weights2 = kappa_model::example::random_weights(&fixture.manifest, 2);
    let started = Instant::now();
    let during = tokio::time::timeout(
        Duration::from_secs(60),
        publish(&mut client, &fixture.manifest, &weights2, "after-outage"),
    )
    .await
    .expect("a publish during the outage got no answer within 60 s");
    assert_eq!(during.unwrap_err().code(), tonic::Code::Unavailable);
    println!("publish during the outage answered in {:?}", started.elapsed());
    let left = Duration::from_secs(20).saturating_sub(outage.elapsed());
    tokio::time::sleep(left).await;
    broker.run("up");
    let back = Instant::now();

    // Writes are accepted again without a restart, and the predictor serves the new version.
    let deadline = Instant::now() + Duration::from_secs(30);
    let version = loop {
        match publish(&mut client, &fixture.manifest, &weights2, "after-outage").await {
            Ok(answer) => {
                assert!(
                    back.elapsed() < Duration::from_secs(30),
                    "the write took {:?} after the broker came back",
                    back.elapsed()
                );
                break answer.version.unwrap().version;
            }
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "no write accepted 30 s after the broker came back: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    println!("write accepted {:?} after the broker came back", back.elapsed());
    let published = Instant::now();
    let deadline = published + Duration::from_secs(10);
    while newest.load(Ordering::Relaxed) < version {
        assert!(
            Instant::now() < deadline,
            "the predictor never served version {version} after the outage; log:\n{}",
            predictor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "version {version} served {:?} after its publish returned",
        published.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (calls, failures) = (calls.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    assert!(calls > 100, "{calls} calls");
    assert_eq!(
        failures, 0,
        "{failures} of {calls} inference calls failed through the outage"
    );
}
