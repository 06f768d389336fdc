//! A broker that goes away and comes back, on a broker of the test's own (so no other test
//! loses its broker): the predictor keeps serving from memory and picks up what is published
//! after the outage; the registry answers writes during it in bounded time and accepts them
//! again afterwards, without a restart; stream scoring answers every event sent before, during
//! and after; a training job asked for during the outage is refused or fails with a reason.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kappa_api::{
    inference::grpc_inference_service_client::GrpcInferenceServiceClient,
    trainer::{FeatureSpec, JobPhase, StartTrainingRequest},
};

use crate::support::*;

/// A single-node broker in a state directory of its own, on free ports.
pub(crate) struct OwnBroker {
    env: Vec<(String, String)>,
    pub(crate) bootstrap: String,
    _state: tempfile::TempDir,
}

impl OwnBroker {
    pub(crate) fn start() -> Self {
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

    pub(crate) fn run(&self, action: &str) {
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
    let (sensors, predictions) = (unique("test.sensors"), unique("test.predictions"));
    create_topic_with_partitions_at(&broker.bootstrap, &sensors, 3).await;
    create_topic_with_partitions_at(&broker.bootstrap, &predictions, 1).await;
    let predictor = Launch::new("kappa-predictor", &models)
        .bootstrap(&broker.bootstrap)
        .args(["--models-topic", &models, "--model", &name, "--stream"])
        .args(["--sensor-topic", &sensors, "--predictions-topic", &predictions])
        .args(["--consumer-group", &unique("test-group")])
        .start("kappa.predictor.v1.Predictor")
        .await;
    let trainer = Launch::new("kappa-trainer", &models)
        .bootstrap(&broker.bootstrap)
        .args(["--registry", &registry.address, "--jobs-topic", &unique("test.jobs")])
        .args(["--kafka-timeout-seconds", "5"])
        .start("kappa.trainer.v1.Trainer")
        .await;

    // Sensor events before, during and after the outage.
    let features: Vec<String> = fixture.manifest.features.iter().map(|f| f.name.clone()).collect();
    let events = EventFeed::start(
        &broker.bootstrap,
        &sensors,
        features,
        fixture.inputs[0].clone(),
        Duration::from_millis(20),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

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
    // A training job asked for during the outage: refused with UNAVAILABLE, or failed with a
    // reason, in bounded time; never hanging.
    let mut training = crate::trainer::trainer_client(&trainer).await;
    let spec = kappa_api::trainer::TrainingSpec {
        features: fixture
            .manifest
            .features
            .iter()
            .map(|f| FeatureSpec {
                path: f.name.clone(),
                ..Default::default()
            })
            .collect(),
        label_field: String::new(),
        ..crate::trainer::spec("outage", &sensors, 0, i64::MAX / 2)
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        training.start_training(StartTrainingRequest { spec: Some(spec) }),
    )
    .await
    .expect("StartTraining during the outage got no answer within 30 s");
    match answer {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            println!(
                "training during the outage refused in {:?}: {}",
                started.elapsed(),
                status.message()
            );
        }
        Ok(job) => {
            let job = crate::trainer::wait_done(&mut training, &job.into_inner().job_id, Duration::from_secs(60)).await;
            assert_eq!(job.phase(), JobPhase::Failed, "{job:?}");
            assert!(!job.message.is_empty(), "a failed job says why: {job:?}");
            println!(
                "training during the outage failed in {:?}: {}",
                started.elapsed(),
                job.message
            );
        }
    }
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
    // Every event sent before, during and after the outage gets its prediction.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = events.stop().await;
    wait_all_answered(&broker.bootstrap, &predictions, &sent, Duration::from_secs(60), &|| {
        predictor.log_text()
    })
    .await;
    println!("all {} events sent around the outage were answered", sent.len());
    let (calls, failures) = (calls.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    assert!(calls > 100, "{calls} calls");
    assert_eq!(
        failures, 0,
        "{failures} of {calls} inference calls failed through the outage"
    );
}
