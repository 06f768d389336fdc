//! kappa-registry against the real broker: the registry contract of DESIGN.md.

use std::time::{Duration, Instant};

use kappa_api::{
    model::{Lineage, Metrics, ModelManifest, PartitionRange, SampleCounts},
    registry::{self as pb, watch_models_response::Event},
};
use kappa_fleet::car_autoencoder;
use kappa_model::example::{random_tensors, random_weights, serialize_tensors};
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::support::*;

fn manifest(name: &str) -> ModelManifest {
    car_autoencoder(name, &[6])
}

/// A manifest with lineage filled in, as the trainer will publish it.
fn manifest_with_lineage(name: &str, job: &str) -> ModelManifest {
    let mut m = manifest(name);
    m.lineage = Some(Lineage {
        training_job_id: job.to_owned(),
        source_topic: "sensor-data".to_owned(),
        partitions: vec![PartitionRange {
            partition: 0,
            start_offset: 10,
            end_offset: 2010,
            earliest_local_offset: Some(1500),
        }],
        time_from_ms: 1_700_000_000_000,
        time_to_ms: 1_700_000_600_000,
        samples: Some(SampleCounts {
            train: 1600,
            validation: 200,
            holdout: 200,
            skipped: [("nan".to_owned(), 3)].into(),
        }),
        hyperparameters: [("epochs".to_owned(), "20".to_owned())].into(),
        metrics: Some(Metrics {
            loss_curve: vec![0.9, 0.5, 0.2],
            roc_auc: Some(0.97),
            ..Default::default()
        }),
        parent_version: 0,
        trace_context: Default::default(),
        read_duration_ms: 1234,
        reference: Some(kappa_api::model::ReferenceProfile {
            features: vec![kappa_api::model::Distribution {
                name: "speed".to_owned(),
                edges: vec![10.0, 50.0],
                shares: vec![0.2, 0.5, 0.3],
            }],
            validation_scores: None,
            validation_anomaly_rate: 0.01,
        }),
    });
    m
}

#[tokio::test]
async fn publish_then_get_returns_identical_bytes_and_versions_count_up() {
    let registry = RegistrySetup::new().start().await;
    let mut client = registry_client(&registry).await;
    let m = manifest("roundtrip");
    for (seed, expected_version) in [(1, 1), (2, 2), (3, 3)] {
        let weights = random_weights(&m, seed);
        let published = publish(&mut client, &m, &weights, "").await.unwrap();
        let version = published.version.unwrap();
        assert_eq!(version.version, expected_version);
        assert_eq!(version.weights_sha256, sha256(&weights));
        assert_eq!(version.weights_size, weights.len() as u64);
        assert!(!published.deduplicated);

        let (header, back) = get_model(&mut client, "roundtrip", by_version(expected_version))
            .await
            .unwrap();
        assert_eq!(back, weights, "GetModel must return the published bytes");
        assert_eq!(header.weights_sha256, sha256(&back));
        assert_eq!(header.manifest.unwrap().features, m.features);
    }
    // No selector means the latest version.
    let (latest, _) = get_model(&mut client, "roundtrip", None).await.unwrap();
    assert_eq!(latest.version, 3);
    // manifest_only answers with the header alone.
    let mut stream = client
        .get_model(pb::GetModelRequest {
            name: "roundtrip".into(),
            selector: by_version(2),
            manifest_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut parts = Vec::new();
    while let Some(part) = tokio_stream::StreamExt::next(&mut stream).await {
        parts.push(part.unwrap().part.unwrap());
    }
    assert!(
        matches!(parts.as_slice(), [pb::get_model_response::Part::Header(h)] if h.version == 2),
        "{parts:?}"
    );
}

/// GetModel reuses its Kafka consumers between reads: a read abandoned half way (the client
/// hung up) must leave nothing behind for the next read of another version, and interleaved
/// reads of versions with many chunks each return their own bytes.
#[tokio::test]
async fn reads_of_many_chunked_versions_in_any_order_and_abandoned_ones_return_exact_bytes() {
    let registry = RegistrySetup::new().arg("--chunk-bytes").arg("4096").start().await;
    let mut client = registry_client(&registry).await;
    // 18 -> 64 -> 18: about 10 KiB of weights, so three or more chunks per version.
    let m = car_autoencoder("chunked", &[64]);
    let mut published = Vec::new();
    for seed in 1..=3 {
        let weights = random_weights(&m, seed);
        assert!(weights.len() > 2 * 4096, "the test model is {} bytes", weights.len());
        let version = publish(&mut client, &m, &weights, "").await.unwrap().version.unwrap();
        published.push((version.version, weights));
    }
    for round in 0..4 {
        for (version, weights) in published.iter().rev().chain(published.iter()) {
            // Take the header and the first chunk, then hang up.
            let mut abandoned = client
                .get_model(pb::GetModelRequest {
                    name: "chunked".into(),
                    selector: by_version(*version),
                    manifest_only: false,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(abandoned.next().await.unwrap().is_ok());
            assert!(abandoned.next().await.unwrap().is_ok());
            drop(abandoned);
            let (header, back) = get_model(&mut client, "chunked", by_version(*version)).await.unwrap();
            assert_eq!(header.version, *version);
            assert!(back == *weights, "round {round}: version {version} came back different");
        }
    }
}

#[tokio::test]
async fn a_50_mib_model_round_trips_and_an_oversized_one_is_refused_without_writing() {
    // 18 -> 2048 -> 2048 -> 2048 -> 2560 -> 18: 13.7 M FP32 parameters, about 52 MiB.
    let big = car_autoencoder("big", &[2048, 2048, 2048, 2560]);
    let weights = random_weights(&big, 5);
    assert!(
        weights.len() >= 50 * 1024 * 1024,
        "the test model is {} bytes",
        weights.len()
    );

    let registry = RegistrySetup::new().start().await;
    let mut client = registry_client(&registry).await;
    let version = publish(&mut client, &big, &weights, "").await.unwrap().version.unwrap();
    assert_eq!(version.weights_sha256, sha256(&weights));
    let (_, back) = get_model(&mut client, "big", by_version(version.version))
        .await
        .unwrap();
    assert!(back == weights, "the 50 MiB model came back different");

    let small_limit = RegistrySetup::new()
        .arg("--max-model-bytes")
        .arg((16 * 1024 * 1024).to_string());
    let limited = small_limit.start().await;
    let mut client = registry_client(&limited).await;
    let before = watermarks(&small_limit.topic).await;
    let err = publish(&mut client, &big, &weights, "").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("--max-model-bytes"),
        "the message names the limit: {}",
        err.message()
    );
    assert_eq!(
        watermarks(&small_limit.topic).await,
        before,
        "a refused publish must write nothing"
    );
    assert_eq!(
        client
            .list_versions(pb::ListVersionsRequest { name: "big".into() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

async fn snapshot(client: &mut pb::registry_client::RegistryClient<kappa_client::TracedChannel>) -> String {
    let models = client.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner();
    let mut text = format!("{models:?}\n");
    for m in &models.models {
        let versions = client
            .list_versions(pb::ListVersionsRequest { name: m.name.clone() })
            .await
            .unwrap();
        text.push_str(&format!("{:?}\n", versions.into_inner()));
    }
    text
}

#[tokio::test]
async fn a_restarted_registry_rebuilds_the_same_state_from_kafka_alone() {
    let setup = RegistrySetup::new();
    let first = setup.start().await;
    let mut client = registry_client(&first).await;
    for (name, n) in [("engine", 3), ("tires", 2)] {
        for seed in 0..n {
            let m = manifest_with_lineage(name, &format!("job-{name}-{seed}"));
            publish(&mut client, &m, &random_weights(&m, seed), &format!("key-{seed}"))
                .await
                .unwrap();
        }
    }
    set_alias(&mut client, "engine", "production", 2).await.unwrap();
    set_alias(&mut client, "engine", "staging", 3).await.unwrap();
    set_alias(&mut client, "tires", "production", 1).await.unwrap();
    client
        .delete_version(pb::DeleteVersionRequest {
            name: "engine".into(),
            version: 1,
            force: false,
        })
        .await
        .unwrap();
    let before = snapshot(&mut client).await;
    assert!(
        before.contains("job-engine-2") && before.contains("roc_auc: Some(0.97)"),
        "lineage is listed: {before}"
    );
    assert!(first.terminate().success(), "the registry exits cleanly on SIGTERM");

    let second = setup.start().await;
    let mut client = registry_client(&second).await;
    assert_eq!(snapshot(&mut client).await, before);
    // Version numbers continue after the highest ever assigned.
    let m = manifest("engine");
    let v = publish(&mut client, &m, &random_weights(&m, 99), "")
        .await
        .unwrap()
        .version
        .unwrap();
    assert_eq!(v.version, 4);
}

#[tokio::test]
async fn eight_concurrent_publishes_get_eight_consecutive_versions() {
    let registry = RegistrySetup::new().start().await;
    let m = manifest("concurrent");
    let mut tasks = Vec::new();
    for seed in 0..8 {
        let mut client = registry_client(&registry).await;
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            publish(&mut client, &m, &random_weights(&m, seed), &format!("writer-{seed}"))
                .await
                .unwrap()
                .version
                .unwrap()
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap().version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());
}

#[tokio::test]
async fn kill_9_during_a_publish_leaves_no_partial_version_and_the_retry_yields_one_version() {
    let setup = RegistrySetup::new().arg("--fault-delay-before-commit-ms").arg("30000");
    let doomed = setup.start().await;
    // Several chunks, so the open transaction holds chunk records as well as the version record.
    let m_big = car_autoencoder("crash", &[512, 512]);
    let weights = random_weights(&m_big, 1);
    let mut client = registry_client(&doomed).await;
    let in_flight = {
        let (m_big, weights) = (m_big.clone(), weights.clone());
        tokio::spawn(async move { publish(&mut client, &m_big, &weights, "retry-me").await })
    };
    // Wait until the transaction's records, the version record included, are on the broker.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let uncommitted = read_topic(&setup.topic, "read_uncommitted").await;
        if uncommitted.iter().any(|r| r.key == "model/crash/1") {
            assert!(uncommitted.iter().any(|r| r.key.starts_with("model/crash/1/chunk/")));
            break;
        }
        assert!(Instant::now() < deadline, "the publish never reached the broker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    doomed.kill9();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the client of the killed registry gets an error"
    );

    let restarted = RegistrySetup {
        extra: Extra {
            args: Vec::new(),
            ..setup.extra.clone()
        },
        ..setup.clone()
    }
    .start()
    .await;
    let mut client = registry_client(&restarted).await;
    assert_eq!(
        client
            .list_versions(pb::ListVersionsRequest { name: "crash".into() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "no partial version is visible through the registry"
    );
    let committed = read_topic(&setup.topic, "read_committed").await;
    assert!(
        committed.iter().all(|r| !r.key.starts_with("model/crash")),
        "a read_committed consumer sees none of the aborted records: {committed:?}"
    );

    let retry = publish(&mut client, &m_big, &weights, "retry-me").await.unwrap();
    assert_eq!(retry.version.as_ref().unwrap().version, 1);
    let again = publish(&mut client, &m_big, &weights, "retry-me").await.unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.version.unwrap().version, 1);
    let versions = client
        .list_versions(pb::ListVersionsRequest { name: "crash".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions.versions.len(), 1, "exactly one version after the retries");
}

#[tokio::test]
async fn after_compaction_live_versions_and_latest_aliases_survive_and_deleted_versions_are_gone() {
    let setup = RegistrySetup::new()
        .arg("--topic-config")
        .arg("segment.ms=200,min.cleanable.dirty.ratio=0.01,delete.retention.ms=100,min.compaction.lag.ms=0");
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = manifest("compact");
    let mut digests = Vec::new();
    for seed in 0..3 {
        let w = random_weights(&m, seed);
        digests.push(sha256(&w));
        publish(&mut client, &m, &w, "").await.unwrap();
    }
    for v in [1, 2, 3, 1] {
        set_alias(&mut client, "compact", "production", v).await.unwrap();
    }
    set_alias(&mut client, "compact", "canary", 2).await.unwrap();
    client
        .delete_version(pb::DeleteVersionRequest {
            name: "compact".into(),
            version: 2,
            force: true,
        })
        .await
        .unwrap();
    let records_before = read_topic(&setup.topic, "read_committed").await.len();

    // The cleaner only compacts closed segments: keep writing so segments roll, until the
    // superseded alias records and the deleted version's chunks are gone.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        set_alias(&mut client, "compact", "tick", 3).await.unwrap();
        let records = read_topic(&setup.topic, "read_committed").await;
        let production = records.iter().filter(|r| r.key == "alias/compact/production").count();
        let deleted_chunks = records
            .iter()
            .filter(|r| r.key.starts_with("model/compact/2/chunk/") && r.value.is_some())
            .count();
        if production == 1 && deleted_chunks == 0 {
            assert!(records.len() < records_before, "compaction removed records");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log cleaner did not compact the topic within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    drop(client);
    assert!(registry.terminate().success());

    let fresh = RegistrySetup {
        extra: Extra {
            args: Vec::new(),
            ..setup.extra.clone()
        },
        ..setup.clone()
    }
    .start()
    .await;
    let mut client = registry_client(&fresh).await;
    for (v, digest) in [(1, &digests[0]), (3, &digests[2])] {
        let (_, w) = get_model(&mut client, "compact", by_version(v)).await.unwrap();
        assert_eq!(&sha256(&w), digest, "version {v} survives compaction intact");
    }
    let (prod, _) = get_model(&mut client, "compact", by_alias("production")).await.unwrap();
    assert_eq!(prod.version, 1, "the alias keeps its latest value");
    let err = get_model(&mut client, "compact", by_version(2)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        get_model(&mut client, "compact", by_alias("canary"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let next = publish(&mut client, &m, &random_weights(&m, 9), "")
        .await
        .unwrap()
        .version
        .unwrap();
    assert_eq!(next.version, 4, "a deleted version's number is never reused");
}

#[tokio::test]
async fn bad_input_gets_precise_codes_and_writes_nothing() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = manifest("valid");
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    client
        .delete_version(pb::DeleteVersionRequest {
            name: "valid".into(),
            version: 1,
            force: false,
        })
        .await
        .unwrap();
    publish(&mut client, &m, &random_weights(&m, 2), "").await.unwrap();
    let before = watermarks(&setup.topic).await;

    // Weights whose shapes do not match the declared layers.
    let mut wider = m.clone();
    wider.layers[0].out_features = 7;
    wider.layers[1].in_features = 7;
    let err = publish(&mut client, &m, &random_weights(&wider, 1), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("shape [7, 18]"), "{}", err.message());

    // Non-finite weights.
    let mut tensors = random_tensors(&m, 1);
    tensors[2].2[5] = f32::INFINITY;
    let err = publish(&mut client, &m, &serialize_tensors(&tensors), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("non-finite"), "{}", err.message());

    // Not safetensors at all.
    let err = publish(&mut client, &m, b"definitely not safetensors", "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Empty and invalid names.
    for name in ["", "Upper/Case"] {
        let mut bad = m.clone();
        bad.name = name.to_owned();
        let err = publish(&mut client, &bad, &random_weights(&m, 1), "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "name {name:?}");
        assert!(err.message().contains("invalid name"), "{}", err.message());
    }

    // A manifest that claims a version that is not the next (a signed one must name it), and a
    // chunk before the header.
    let mut versioned = m.clone();
    versioned.version = 5;
    let header = pb::PublishRequest {
        part: Some(pb::publish_request::Part::Header(pb::PublishHeader {
            manifest: Some(versioned),
            ..Default::default()
        })),
    };
    let chunk = pb::PublishRequest {
        part: Some(pb::publish_request::Part::Chunk(random_weights(&m, 1))),
    };
    let taken = client
        .publish(tokio_stream::iter(vec![header, chunk]))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::Aborted, "{}", taken.message());
    let next = taken
        .metadata()
        .get(pb::NEXT_VERSION_METADATA)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    assert!(
        next.is_some_and(|n| taken.message().contains(&format!("next version is {n}"))),
        "{taken:?}"
    );
    let chunk_first = vec![pb::PublishRequest {
        part: Some(pb::publish_request::Part::Chunk(vec![1, 2, 3])),
    }];
    assert_eq!(
        client
            .publish(tokio_stream::iter(chunk_first))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // Unknown model, version and alias.
    assert_eq!(
        get_model(&mut client, "nope", None).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        get_model(&mut client, "valid", by_version(42))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        get_model(&mut client, "valid", by_alias("ghost"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let err = client
        .delete_alias(pb::DeleteAliasRequest {
            name: "valid".into(),
            alias: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // An alias on a deleted version, and on a version that never existed.
    let err = client
        .set_alias(pb::SetAliasRequest {
            name: "valid".into(),
            alias: "production".into(),
            version: 1,
            effective_from_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("deleted"), "{}", err.message());
    let err = client
        .set_alias(pb::SetAliasRequest {
            name: "valid".into(),
            alias: "production".into(),
            version: 9,
            effective_from_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    assert_eq!(
        watermarks(&setup.topic).await,
        before,
        "refused requests must not write to the topic"
    );
    // ... and the service is still serving.
    let (v, _) = get_model(&mut client, "valid", None).await.unwrap();
    assert_eq!(v.version, 2);
}

#[tokio::test]
async fn watch_delivers_events_in_log_order_and_resumes_from_a_position() {
    let registry = RegistrySetup::new().start().await;
    let mut client = registry_client(&registry).await;
    let m = manifest("watched");
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    publish(&mut client, &m, &random_weights(&m, 2), "").await.unwrap();
    set_alias(&mut client, "watched", "production", 1).await.unwrap();
    set_alias(&mut client, "watched", "production", 2).await.unwrap();
    client
        .delete_alias(pb::DeleteAliasRequest {
            name: "watched".into(),
            alias: "production".into(),
        })
        .await
        .unwrap();
    client
        .delete_version(pb::DeleteVersionRequest {
            name: "watched".into(),
            version: 1,
            force: false,
        })
        .await
        .unwrap();

    let mut stream = client
        .watch_models(pb::WatchModelsRequest {
            from_position: 0,
            name: "watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while events.len() < 6 {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("watch stalled");
        events.push(next.unwrap().unwrap());
    }
    let described: Vec<String> = events
        .iter()
        .map(|e| match e.event.as_ref().unwrap() {
            Event::Published(p) => format!("published {}", p.version.as_ref().unwrap().version),
            Event::Deleted(d) => format!("deleted {}", d.version),
            Event::AliasSet(a) => format!("alias {}={}", a.alias, a.version),
            Event::AliasDeleted(a) => format!("alias {} deleted", a.alias),
        })
        .collect();
    assert_eq!(
        described,
        [
            "published 1",
            "published 2",
            "alias production=1",
            "alias production=2",
            "alias production deleted",
            "deleted 1"
        ]
    );
    assert!(
        events.windows(2).all(|w| w[0].position < w[1].position),
        "positions increase"
    );

    // Live: an event written after the watch started arrives on it.
    publish(&mut client, &m, &random_weights(&m, 3), "").await.unwrap();
    let live = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("live event")
        .unwrap()
        .unwrap();
    assert!(matches!(live.event, Some(Event::Published(ref p)) if p.version.as_ref().unwrap().version == 3));
    drop(stream);

    // Resume after the third event: exactly the events that followed it.
    let resume_from = events[2].position + 1;
    let mut resumed = client
        .watch_models(pb::WatchModelsRequest {
            from_position: resume_from,
            name: "watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut positions = Vec::new();
    while positions.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(20), resumed.next())
            .await
            .expect("resume stalled");
        positions.push(e.unwrap().unwrap().position);
    }
    let expected: Vec<i64> = events[3..].iter().map(|e| e.position).chain([live.position]).collect();
    assert_eq!(positions, expected);
}

/// `kappa models watch | head -1`: when the reader hangs up, the CLI ends as Unix tools do, by
/// SIGPIPE, instead of panicking on the next line it prints.
#[tokio::test]
async fn the_cli_ends_quietly_when_its_reader_hangs_up() {
    use std::{io::BufRead as _, os::unix::process::ExitStatusExt as _};
    let registry = RegistrySetup::new().start().await;
    let mut client = registry_client(&registry).await;
    let m = manifest("piped");
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    let mut watch = std::process::Command::new(binary("kappa"))
        .args(["models", "watch", "--registry", &registry.address, "--name", "piped"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let stdout = watch.stdout.take().unwrap();
    let reader =
        tokio::task::spawn_blocking(move || std::io::BufReader::new(stdout).read_line(&mut first).map(|_| first));
    let first = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the watch printed its first event")
        .unwrap()
        .unwrap();
    assert!(first.contains("published piped v1"), "{first}");
    // The reader is gone (its end of the pipe dropped with it); the next event is a write into
    // a closed pipe.
    publish(&mut client, &m, &random_weights(&m, 2), "").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the CLI kept running after its reader hung up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}: {stderr}");
}

#[tokio::test]
async fn the_registry_refuses_a_models_topic_with_delete_policy() {
    let setup = RegistrySetup::new();
    create_topic(&setup.topic, &[("cleanup.policy", "delete")]).await;
    let mut service = setup.spawn();
    let status = service
        .exit_status(
            Duration::from_secs(60),
            "the registry kept running on a delete-policy topic",
        )
        .await;
    assert!(!status.success());
    let log = service.log_text();
    assert!(
        log.contains("cleanup.policy=delete") && log.contains("cleanup.policy=compact"),
        "the error tells the operator what to do:\n{log}"
    );
}

#[tokio::test]
async fn a_second_registry_fences_the_first_which_then_refuses_writes() {
    let setup = RegistrySetup::new();
    let old = setup.start().await;
    let mut old_client = registry_client(&old).await;
    let m = manifest("fenced");
    publish(&mut old_client, &m, &random_weights(&m, 1), "").await.unwrap();

    let new = setup.start().await;
    let err = publish(&mut old_client, &m, &random_weights(&m, 2), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("fenced"), "{}", err.message());

    let mut new_client = registry_client(&new).await;
    let v = publish(&mut new_client, &m, &random_weights(&m, 2), "")
        .await
        .unwrap()
        .version
        .unwrap();
    assert_eq!(v.version, 2);
}

#[tokio::test]
async fn grpcurl_discovers_the_registry_through_reflection_and_calls_it() {
    let registry = RegistrySetup::new().start().await;
    let mut client = registry_client(&registry).await;
    let m = manifest("reflected");
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();

    let services: Vec<String> = run_grpcurl(&registry, None, "list")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "kappa.registry.v1.Registry"
        ],
        "reflection advertises exactly what this server serves"
    );
    let listed = run_grpcurl(
        &registry,
        Some(r#"{"name":"reflected"}"#),
        "kappa.registry.v1.Registry/ListVersions",
    );
    let json: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(json["versions"][0]["version"], "1");
    assert_eq!(
        json["versions"][0]["manifest"]["features"].as_array().unwrap().len(),
        18
    );
    let health = run_grpcurl(
        &registry,
        Some(r#"{"service":"kappa.registry.v1.Registry"}"#),
        "grpc.health.v1.Health/Check",
    );
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_cancelled_mid_transaction_never_reuse_a_version_number_or_an_idempotency_key() {
    // Every transaction stays open 1.5 s before it commits; half the callers give up after 0.3 s.
    let setup = RegistrySetup::new().arg("--fault-delay-before-commit-ms=1500");
    let registry = setup.start().await;
    let client = registry_client(&registry).await;
    let m = manifest("raced");
    let sent: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("key-{i}"), random_weights(&m, 100 + i)))
        .collect();
    let mut calls = Vec::new();
    for (i, (key, weights)) in sent.iter().enumerate() {
        let mut request = tonic::Request::new(tokio_stream::iter(publish_messages(&m, weights, key)));
        let cancelled = i % 2 == 0;
        if cancelled {
            request.set_timeout(Duration::from_millis(300));
        }
        let mut client = client.clone();
        calls.push(tokio::spawn(async move { (cancelled, client.publish(request).await) }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for call in calls {
        let (cancelled, result) = call.await.unwrap();
        match result {
            Ok(_) => assert!(!cancelled, "a call cut off after 0.3 s cannot have seen a 1.5 s commit"),
            Err(status) => {
                assert!(cancelled, "a normal publish failed: {status:?}");
                assert!(
                    matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                    "{status:?}"
                );
            }
        }
    }

    // Every key, retried with its weights, names a version holding exactly those weights; no
    // version number holds two models, and a restarted registry says the same.
    let mapping = |versions: Vec<pb::ModelVersion>| -> Vec<(u64, String)> {
        versions.into_iter().map(|v| (v.version, v.weights_sha256)).collect()
    };
    let mut client = registry_client(&registry).await;
    for (key, weights) in &sent {
        let answer = publish(&mut client, &m, weights, key).await.unwrap();
        assert_eq!(answer.version.unwrap().weights_sha256, sha256(weights), "{key}");
    }
    let versions = mapping(
        client
            .list_versions(pb::ListVersionsRequest { name: "raced".into() })
            .await
            .unwrap()
            .into_inner()
            .versions,
    );
    let digests: std::collections::BTreeSet<&String> = versions.iter().map(|(_, d)| d).collect();
    assert_eq!(
        digests.len(),
        versions.len(),
        "a version number holds two models: {versions:?}"
    );
    assert_eq!(
        versions.len(),
        sent.len(),
        "one version per distinct model: {versions:?}"
    );
    for (_, weights) in &sent {
        assert!(digests.contains(&sha256(weights)));
    }
    drop(registry);
    let restarted = setup.start().await;
    let replayed = mapping(
        registry_client(&restarted)
            .await
            .list_versions(pb::ListVersionsRequest { name: "raced".into() })
            .await
            .unwrap()
            .into_inner()
            .versions,
    );
    assert_eq!(replayed, versions, "the log says the same after a replay");
}

/// A publish streams its chunks into an open transaction while the client uploads, when no
/// other write is under way. A client that hangs up mid-upload leaves nothing a reader sees and
/// no version number used; one that stalls past the registry's hold (2 s) is rolled back and
/// buffered instead, so an alias move meanwhile is not held up, and it still publishes.
#[tokio::test]
async fn streamed_publishes_abandoned_or_stalled_leave_nothing_half_written_and_hold_up_no_other_write() {
    use pb::publish_request::Part;
    let setup = RegistrySetup::new().arg("--chunk-bytes").arg("4096");
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    // 18 -> 64 -> 18: about 10 KiB of weights, three chunks of 4 KiB. Only a declared size
    // of more than a chunk is streamed.
    let mut m = car_autoencoder("streamed", &[64]);
    m.weights_size = random_weights(&m, 1).len() as u64;
    let other = manifest("bystander");
    let bystander = publish(&mut client, &other, &random_weights(&other, 1), "")
        .await
        .unwrap()
        .version
        .unwrap();
    let chunked = |weights: &[u8]| -> Vec<pb::PublishRequest> {
        weights
            .chunks(3000)
            .map(|c| pb::PublishRequest {
                part: Some(Part::Chunk(c.to_vec())),
            })
            .collect()
    };
    let header = |key: &str| publish_messages(&m, &[], key).remove(0);

    // Hung up after two upload messages, which cover the first chunk record.
    let abandoned = random_weights(&m, 7);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let call = tokio::spawn({
        let mut client = client.clone();
        async move { client.publish(tokio_stream::wrappers::ReceiverStream::new(rx)).await }
    });
    tx.send(header("abandoned")).await.unwrap();
    for message in chunked(&abandoned).into_iter().take(2) {
        tx.send(message).await.unwrap();
    }
    let key = |index: u32| format!("model/streamed/1/chunk/{index}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read_partition(&setup.topic, "read_uncommitted")
        .await
        .iter()
        .any(|(k, _, _)| *k == key(0))
    {
        assert!(
            Instant::now() < deadline,
            "the first chunk never reached the log while uploading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    call.abort();
    drop(tx);

    // The next publish gets version 1 and its own bytes; the abandoned chunk was rolled back.
    let weights = random_weights(&m, 8);
    let published = publish(&mut client, &m, &weights, "kept").await.unwrap();
    assert_eq!(published.version.as_ref().unwrap().version, 1);
    let (_, bytes) = get_model(&mut client, "streamed", by_version(1)).await.unwrap();
    assert_eq!(bytes, weights);
    let committed: Vec<_> = read_partition(&setup.topic, "read_committed").await;
    let first_chunks: Vec<_> = committed.iter().filter(|(k, _, _)| *k == key(0)).collect();
    assert_eq!(first_chunks.len(), 1, "only the kept publish's chunk is committed");
    assert!(
        read_partition(&setup.topic, "read_uncommitted")
            .await
            .iter()
            .filter(|(k, _, _)| *k == key(0))
            .count()
            >= 2,
        "the abandoned upload's chunk was written while it uploaded (then rolled back)"
    );

    // Stalled past the hold after its first message: an alias move goes through meanwhile.
    let stalled = random_weights(&m, 9);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let call = tokio::spawn({
        let mut client = client.clone();
        async move { client.publish(tokio_stream::wrappers::ReceiverStream::new(rx)).await }
    });
    let mut messages = chunked(&stalled).into_iter();
    tx.send(header("stalled")).await.unwrap();
    tx.send(messages.next().unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved = tokio::time::timeout(
        Duration::from_secs(20),
        set_alias(&mut client, "bystander", "production", bystander.version),
    )
    .await
    .expect("an alias move waited on a stalled upload");
    moved.unwrap();
    assert!(!call.is_finished(), "the stalled publish is still uploading");
    for message in messages {
        tx.send(message).await.unwrap();
    }
    drop(tx);
    let answer = call.await.unwrap().unwrap().into_inner();
    assert_eq!(answer.version.unwrap().version, 2);
    let (_, bytes) = get_model(&mut client, "streamed", by_version(2)).await.unwrap();
    assert_eq!(bytes, stalled);

    // Weights that fail validation after streaming: refused, rolled back, no version used.
    let mut bad = random_weights(&m, 10);
    let nan = f32::NAN.to_le_bytes();
    let at = bad.len() - 8;
    bad[at..at + 4].copy_from_slice(&nan);
    let status = client
        .publish(tokio_stream::iter(
            std::iter::once(header("bad")).chain(chunked(&bad)).collect::<Vec<_>>(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let weights = random_weights(&m, 11);
    let published = publish(&mut client, &m, &weights, "after-bad").await.unwrap();
    assert_eq!(published.version.unwrap().version, 3);

    // A restarted registry sees the same three versions and the alias.
    drop(registry);
    let restarted = setup.start().await;
    let mut client = registry_client(&restarted).await;
    assert_eq!(listed_versions(&mut client, "streamed").await, [1, 2, 3]);
    let (_, bytes) = get_model(&mut client, "streamed", by_version(2)).await.unwrap();
    assert_eq!(bytes, stalled);
}
