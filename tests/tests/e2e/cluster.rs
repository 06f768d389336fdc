//! A three-node cluster (`deploy/kafka/cluster.sh`, replication 3, min.insync.replicas=2) losing
//! a broker to kill -9 (issue 12, test 3): a large publish commits whole or fails cleanly, no
//! stream event is lost, and the services carry on.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use kappa_api::{inference::grpc_inference_service_client::GrpcInferenceServiceClient, registry as pb};
use kappa_fleet::car_autoencoder;
use kappa_model::example::random_weights;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
};

use crate::support::*;

fn cluster_sh(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/cluster.sh");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cluster.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The cluster `make test` starts (`make kafka-cluster-up` by hand).
fn cluster() -> String {
    assert!(
        Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/cluster.sh"))
            .arg("status")
            .output()
            .unwrap()
            .status
            .success(),
        "the three-node cluster is not running: start it with `make kafka-cluster-up` (make test does)"
    );
    cluster_sh(&["bootstrap"])
}

/// (leader, replica count) of partition 0 of `topic`.
fn leader_and_replicas(bootstrap: &str, topic: &str) -> (i32, usize) {
    let consumer: BaseConsumer = kafka_config_at(bootstrap).create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partition = &metadata.topics()[0].partitions()[0];
    (partition.leader(), partition.replicas().len())
}

async fn create_replicated(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = kafka_config_at(bootstrap).create().unwrap();
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(3));
    for r in admin.create_topics([&new_topic], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_publish_and_mid_stream_loses_nothing_and_serves_on() {
    let bootstrap = cluster();
    let models = unique("test.models");
    let registry = Launch::new("kappa-registry", &models)
        .bootstrap(&bootstrap)
        .args([
            "--models-topic",
            &models,
            "--transactional-id",
            &unique("test-registry"),
        ])
        .start("kappa.registry.v1.Registry")
        .await;
    let (_, replicas) = leader_and_replicas(&bootstrap, &models);
    assert_eq!(replicas, 3, "the registry replicates its topic as the cluster allows");
    let mut client = registry_client(&registry).await;
    let small = car_autoencoder("clustered", &[8]);
    publish(&mut client, &small, &random_weights(&small, 1), "")
        .await
        .unwrap();
    // The stream scores with the small model; the large one is only published (its forward
    // pass would make the debug build's scoring the slowest thing here).
    set_alias(&mut client, "clustered", "production", 1).await.unwrap();

    let (sensors, predictions) = (unique("test.sensors"), unique("test.predictions"));
    create_replicated(&bootstrap, &sensors, 3).await;
    create_replicated(&bootstrap, &predictions, 1).await;
    let predictor = Launch::new("kappa-predictor", &models)
        .bootstrap(&bootstrap)
        .args([
            "--models-topic",
            &models,
            "--model",
            "clustered",
            "--follow",
            "production",
            "--stream",
        ])
        .args(["--sensor-topic", &sensors, "--predictions-topic", &predictions])
        .args(["--consumer-group", &unique("test-group")])
        .start("kappa.predictor.v1.Predictor")
        .await;
    let features: Vec<String> = small.features.iter().map(|f| f.name.clone()).collect();
    let row = vec![0.5_f32; features.len()];
    let events = EventFeed::start(&bootstrap, &sensors, features, row.clone(), Duration::from_millis(10));

    // A large publish (about 9 MiB, 9 chunks), and the models topic's leader killed under it.
    let large = car_autoencoder("clustered", &[65_536]);
    let weights = random_weights(&large, 2);
    let publishing = {
        let (mut client, large, weights) = (client.clone(), large.clone(), weights.clone());
        tokio::spawn(async move { publish(&mut client, &large, &weights, "large").await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (leader, _) = leader_and_replicas(&bootstrap, &models);
    cluster_sh(&["kill", &leader.to_string()]);
    let killed = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("the publish got no answer within 60 s of the kill")
        .unwrap();
    println!(
        "publish with node {leader} killed: {:?} {:?} after the kill",
        outcome.as_ref().map(|r| r.version.as_ref().map(|v| v.version)),
        killed.elapsed()
    );
    let version = match outcome {
        Ok(answer) => answer.version.unwrap().version,
        Err(status) => {
            assert!(
                matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Aborted),
                "a failed publish fails cleanly: {status:?}"
            );
            let versions = client
                .list_versions(pb::ListVersionsRequest {
                    name: "clustered".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(versions.versions.len(), 1, "nothing of the failed publish is visible");
            // The same publish, sent again, commits whole.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match publish(&mut client, &large, &weights, "large").await {
                    Ok(answer) => break answer.version.unwrap().version,
                    Err(status) => {
                        assert!(
                            Instant::now() < deadline,
                            "no publish accepted after the kill: {status:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    };
    // Whole: the bytes read back are the bytes sent.
    let (_, back) = get_model(&mut client, "clustered", by_version(version)).await.unwrap();
    assert_eq!(
        sha256(&back),
        sha256(&weights),
        "version {version} holds exactly the weights sent"
    );
    // The registry and the predictor carry on: an alias move is served.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(status) = set_alias(&mut client, "clustered", "canary", version).await {
        assert!(Instant::now() < deadline, "no alias move accepted: {status:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut oip = GrpcInferenceServiceClient::new(predictor_channel(&predictor).await);
    for _ in 0..20 {
        let answer = oip
            .model_infer(crate::security::oip_request("clustered", &row))
            .await
            .expect("the predictor keeps answering with a broker down");
        assert_eq!(answer.get_ref().model_version, "1");
    }
    println!(
        "version {version} read back whole {:?} after the kill",
        killed.elapsed()
    );
    // The node comes back; every event sent meanwhile has its prediction.
    cluster_sh(&["start", &leader.to_string()]);
    println!("node {leader} back {:?} after the kill", killed.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = events.stop().await;
    let predictions_seen = wait_all_answered(&bootstrap, &predictions, &sent, Duration::from_secs(90), &|| {
        predictor.log_text()
    })
    .await;
    println!(
        "{:?} after the kill: {} events sent through it, {predictions_seen} predictions ({} duplicates)",
        killed.elapsed(),
        sent.len(),
        predictions_seen - sent.len()
    );
}

async fn predictor_channel(predictor: &Service) -> kappa_client::TracedChannel {
    kappa_client::connect("kappa-predictor", &predictor.address)
        .await
        .unwrap()
}
