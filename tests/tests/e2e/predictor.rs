//! kappa-predictor against the real broker and registry: the predictor contract of DESIGN.md.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kappa_api::{
    inference::{
        InferTensorContents, ModelInferRequest, ModelMetadataRequest, ServerLiveRequest, ServerReadyRequest,
        grpc_inference_service_client::GrpcInferenceServiceClient,
    },
    predictor::{PredictRequest, predictor_client::PredictorClient},
    registry as pb,
};
use kappa_fleet::{CAR_FIELDS, car_autoencoder};
use kappa_model::example::random_weights;
use tonic::{Code, transport::Channel};

use crate::support::*;

const TOLERANCE: f32 = 1e-5;

fn infer_request(model: &str, rows: &[Vec<f32>]) -> ModelInferRequest {
    let columns = rows.first().map_or(18, Vec::len);
    kappa_client::oip::infer_request(model, rows.concat(), columns)
}

fn sensor_request(value: f64) -> PredictRequest {
    PredictRequest {
        features: CAR_FIELDS
            .iter()
            .map(|f| ((*f).to_owned(), value))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

/// Registry + a published fixture, then a predictor following `latest`.
async fn serve_fixture(name: &str) -> (Service, Predictor, Fixture, RegistrySetup) {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let f = fixture(name);
    publish(&mut client, &f.manifest, &f.weights, "").await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, name, "latest").start().await;
    (registry, predictor, f, setup)
}

#[tokio::test]
async fn served_scores_equal_pytorch_at_batch_1_and_64_over_both_apis() {
    for name in ["autoencoder", "classifier"] {
        let (_registry, predictor, f, _) = serve_fixture(name).await;
        let mut oip = GrpcInferenceServiceClient::new(predictor.channel().await);
        let response = oip
            .model_infer(infer_request(name, &f.inputs))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.model_version, "1");
        let scores = &response
            .outputs
            .iter()
            .find(|o| o.name == "score")
            .unwrap()
            .contents
            .as_ref()
            .unwrap()
            .fp32_contents;
        assert_eq!(scores.len(), 64);
        for (i, (a, e)) in scores.iter().zip(&f.scores).enumerate() {
            assert!(
                (a - e).abs() <= TOLERANCE,
                "{name} batch 64 row {i}: {a} vs PyTorch {e}"
            );
        }
        let flags = &response
            .outputs
            .iter()
            .find(|o| o.name == "is_anomaly")
            .unwrap()
            .contents
            .as_ref()
            .unwrap()
            .bool_contents;
        let threshold = f.manifest.anomaly_threshold as f32;
        assert_eq!(flags, &f.scores.iter().map(|s| *s > threshold).collect::<Vec<_>>());

        let mut typed = PredictorClient::new(predictor.channel().await);
        for (i, row) in f.inputs.iter().enumerate().take(8) {
            let request = PredictRequest {
                features: f
                    .manifest
                    .features
                    .iter()
                    .zip(row)
                    .map(|(feat, v)| (feat.name.clone(), f64::from(*v)))
                    .collect(),
                request_id: format!("row-{i}"),
                ..Default::default()
            };
            let answer = typed.predict(request).await.unwrap().into_inner();
            assert_eq!(answer.request_id, format!("row-{i}"));
            assert_eq!(answer.model_version, 1);
            assert!(
                (answer.score as f32 - f.scores[i]).abs() <= TOLERANCE,
                "{name} batch 1 row {i}"
            );
        }
    }
}

#[tokio::test]
async fn metadata_names_features_and_version_and_health_follows_loading() {
    let (_registry, predictor, f, setup) = serve_fixture("autoencoder").await;
    let mut oip = GrpcInferenceServiceClient::new(predictor.channel().await);
    assert!(oip.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(
        oip.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = oip
        .model_metadata(ModelMetadataRequest {
            name: "autoencoder".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, ["1"]);
    assert_eq!(meta.inputs[0].shape, [-1, 18]);
    let names = match meta.parameters["feature_names"].parameter_choice.clone().unwrap() {
        kappa_api::inference::infer_parameter::ParameterChoice::StringParam(s) => s,
        other => panic!("feature_names is {other:?}"),
    };
    let expected: Vec<&str> = f.manifest.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, expected.join(","));

    // A predictor for a model that does not exist yet stays NOT_SERVING and says why on requests.
    let waiting = PredictorSetup::new(&setup.topic, "not-yet", "latest").spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut typed = PredictorClient::new(
        Channel::from_shared(waiting.service.address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let err = typed.predict(sensor_request(1.0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // Kubernetes' probes: not ready (no model), yet alive, so it is not restarted while it waits.
    for (name, expected) in [
        ("kappa.predictor.v1.Predictor", HealthStatus::NotServing),
        ("", HealthStatus::NotServing),
        ("liveness", HealthStatus::Serving),
    ] {
        assert_eq!(health_status(&waiting.service, name).await, Some(expected), "{name:?}");
    }
    assert_eq!(
        health_status(&predictor.service, "liveness").await,
        Some(HealthStatus::Serving)
    );
}

#[tokio::test]
async fn hot_swap_under_load_fails_no_request_and_serves_each_version_within_a_second() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("fleet", &[8]);
    publish(&mut client, &m, &random_weights(&m, 0), "").await.unwrap();
    set_alias(&mut client, "fleet", "production", 1).await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, "fleet", "production")
        .arg("--inference-threads")
        .arg("2")
        .start()
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let latest_seen = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..40 {
        let channel = predictor.channel().await;
        let (stop, latest_seen) = (Arc::clone(&stop), Arc::clone(&latest_seen));
        workers.push(tokio::spawn(async move {
            let mut typed = PredictorClient::new(channel);
            let (mut ok, mut highest) = (0_u64, 0_u64);
            while !stop.load(Ordering::Relaxed) {
                let answer = typed
                    .predict(sensor_request(f64::from(w)))
                    .await
                    .unwrap_or_else(|e| panic!("request failed during swaps: {e:?}"))
                    .into_inner();
                assert!(
                    answer.model_version >= highest,
                    "version went backwards on one connection: {highest} -> {}",
                    answer.model_version
                );
                highest = answer.model_version;
                latest_seen.fetch_max(highest, Ordering::Relaxed);
                ok += 1;
            }
            ok
        }));
    }

    let started = Instant::now();
    let mut swap_times = Vec::new();
    for version in 2..=21_u64 {
        publish(&mut client, &m, &random_weights(&m, version), "")
            .await
            .unwrap();
        set_alias(&mut client, "fleet", "production", version).await.unwrap();
        let moved = Instant::now();
        while latest_seen.load(Ordering::Relaxed) < version {
            assert!(
                moved.elapsed() < Duration::from_secs(5),
                "version {version} not served 5 s after the alias moved"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        swap_times.push(moved.elapsed());
        // Spread the 20 swaps over about 20 s of load.
        let next = Duration::from_millis(1000 * (version - 1));
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        total += worker
            .await
            .expect("a client saw a failed request or a version going backwards");
    }
    let slowest = swap_times.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(1),
        "slowest alias-move-to-serving took {slowest:?}: {swap_times:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(19),
        "the load ran for {:?}",
        started.elapsed()
    );
    assert!(total > 1000, "only {total} requests completed");
    assert_eq!(predictor.metric("kappa_predictor_loaded_version").await, Some(21.0));
    assert!(predictor.metric("kappa_predictor_swaps_total").await.unwrap() >= 21.0);
}

#[tokio::test]
async fn moving_the_alias_back_swaps_back_to_the_previous_version() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("rollback", &[8]);
    for seed in 1..=2 {
        publish(&mut client, &m, &random_weights(&m, seed), "").await.unwrap();
    }
    let set = |version| pb::SetAliasRequest {
        name: "rollback".into(),
        alias: "production".into(),
        version,
        effective_from_ms: 0,
    };
    client.set_alias(set(1)).await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, "rollback", "production")
        .start()
        .await;
    let mut typed = PredictorClient::new(predictor.channel().await);
    let v1_score = typed.predict(sensor_request(3.0)).await.unwrap().into_inner();
    assert_eq!(v1_score.model_version, 1);

    client.set_alias(set(2)).await.unwrap();
    wait_for_version(&mut typed, 2).await;
    client.set_alias(set(1)).await.unwrap();
    let back = wait_for_version(&mut typed, 1).await;
    assert_eq!(
        back.score, v1_score.score,
        "the rolled-back version scores exactly as before"
    );
}

async fn wait_for_version(
    typed: &mut PredictorClient<kappa_client::TracedChannel>,
    version: u64,
) -> kappa_api::predictor::PredictResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = typed.predict(sensor_request(3.0)).await.unwrap().into_inner();
        if answer.model_version == version {
            return answer;
        }
        assert!(Instant::now() < deadline, "version {version} not served within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_corrupt_version_is_never_served_and_the_failure_shows_in_metrics() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("guarded", &[8]);
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, "guarded", "latest").start().await;
    let mut typed = PredictorClient::new(predictor.channel().await);
    assert_eq!(
        typed
            .predict(sensor_request(1.0))
            .await
            .unwrap()
            .into_inner()
            .model_version,
        1
    );

    // Version 2: the digest in the manifest does not match the bytes.
    let weights = random_weights(&m, 2);
    let mut bad_digest = m.clone();
    bad_digest.version = 2;
    bad_digest.weights_sha256 = "00".repeat(32);
    write_raw_version(&setup.topic, bad_digest, &weights).await;
    // Version 3: the digest is right but the tensors do not fit the declared layers.
    let wider = car_autoencoder("guarded", &[9]);
    let wrong_shapes = random_weights(&wider, 3);
    let mut bad_shapes = m.clone();
    bad_shapes.version = 3;
    bad_shapes.weights_sha256 = sha256(&wrong_shapes);
    write_raw_version(&setup.topic, bad_shapes, &wrong_shapes).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let digest = predictor
            .metric(r#"kappa_predictor_load_failures_total{reason="digest_mismatch"}"#)
            .await;
        let shapes = predictor
            .metric(r#"kappa_predictor_load_failures_total{reason="invalid_model"}"#)
            .await;
        if digest == Some(1.0) && shapes == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "load failures not reported: {}",
            predictor.metrics().await
        );
        assert_eq!(
            typed
                .predict(sensor_request(1.0))
                .await
                .unwrap()
                .into_inner()
                .model_version,
            1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        assert_eq!(
            typed
                .predict(sensor_request(1.0))
                .await
                .unwrap()
                .into_inner()
                .model_version,
            1
        );
    }
    assert_eq!(predictor.metric("kappa_predictor_loaded_version").await, Some(1.0));
    let mut oip = GrpcInferenceServiceClient::new(predictor.channel().await);
    let meta = oip
        .model_metadata(ModelMetadataRequest {
            name: "guarded".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert!(
        meta.into_inner().parameters.contains_key("last_load_error"),
        "the failure is visible in model metadata"
    );
    assert!(predictor.service.log_text().contains("version 3 refused"));
    drop(registry);
}

#[tokio::test]
async fn with_the_registry_stopped_a_fresh_predictor_loads_from_kafka_alone() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("standalone", &[8]);
    for seed in 1..=3 {
        publish(&mut client, &m, &random_weights(&m, seed), "").await.unwrap();
    }
    // Alias an older version, so the predictor must read chunks it no longer holds in memory.
    set_alias(&mut client, "standalone", "production", 1).await.unwrap();
    drop(client);
    assert!(registry.terminate().success());

    for (follow, expected) in [("latest", 3), ("production", 1)] {
        let predictor = PredictorSetup::new(&setup.topic, "standalone", follow).start().await;
        let mut typed = PredictorClient::new(predictor.channel().await);
        assert_eq!(
            typed
                .predict(sensor_request(2.0))
                .await
                .unwrap()
                .into_inner()
                .model_version,
            expected,
            "{follow}"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_precise_codes_and_the_service_keeps_serving() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("strict", &[8]);
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, "strict", "latest")
        .arg("--max-batch-size")
        .arg("8")
        .arg("--max-request-rows")
        .arg("16")
        .start()
        .await;
    let mut oip = GrpcInferenceServiceClient::new(predictor.channel().await);
    let mut typed = PredictorClient::new(predictor.channel().await);
    let good = vec![vec![1.0_f32; 18]];

    let expect = |result: Result<tonic::Response<_>, tonic::Status>, code: Code, needle: &str| {
        let err = result
            .map(|_: tonic::Response<kappa_api::inference::ModelInferResponse>| ())
            .unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(
            err.message().contains(needle),
            "{:?} should mention {needle:?}",
            err.message()
        );
    };
    expect(
        oip.model_infer(infer_request("strict", &[vec![1.0; 17]])).await,
        Code::InvalidArgument,
        "[N, 18]",
    );
    expect(
        oip.model_infer(infer_request("strict", &[vec![f32::NAN; 18]])).await,
        Code::InvalidArgument,
        "finite",
    );
    let mut empty = infer_request("strict", &good);
    empty.inputs[0].shape = vec![0, 18];
    empty.inputs[0].contents = Some(InferTensorContents::default());
    expect(oip.model_infer(empty).await, Code::InvalidArgument, "empty");
    // More rows than the dynamic batch size is one request scored whole; past
    // --max-request-rows it is refused, naming the flag.
    let whole = oip
        .model_infer(infer_request("strict", &vec![vec![1.0; 18]; 9]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.outputs[0].shape, vec![9]);
    expect(
        oip.model_infer(infer_request("strict", &vec![vec![1.0; 18]; 17])).await,
        Code::InvalidArgument,
        "at most 16 per request (--max-request-rows)",
    );
    expect(
        oip.model_infer(infer_request("nope", &good)).await,
        Code::NotFound,
        "not served here",
    );
    let mut old = infer_request("strict", &good);
    old.model_version = "7".into();
    expect(oip.model_infer(old).await, Code::NotFound, "not loaded");
    // FP32, FP64, INT64 and INT32 are read; a type outside them is named with those.
    let mut strings = infer_request("strict", &good);
    strings.inputs[0].datatype = "BYTES".into();
    expect(
        oip.model_infer(strings).await,
        Code::InvalidArgument,
        "send FP32, FP64, INT64 or INT32",
    );
    let mut ints = infer_request("strict", &good);
    ints.inputs[0].datatype = "INT32".into();
    expect(
        oip.model_infer(ints).await,
        Code::InvalidArgument,
        "holds 0 INT32 values",
    );
    let mut raw_short = infer_request("strict", &good);
    raw_short.inputs[0].contents = None;
    raw_short.raw_input_contents = vec![vec![0; 10]];
    expect(oip.model_infer(raw_short).await, Code::InvalidArgument, "bytes");
    // A made-up shape whose size overflows 64 bits is refused, not wrapped into a small size.
    for rows in [1_i64 << 62, i64::MAX] {
        let mut huge = infer_request("strict", &good);
        huge.inputs[0].shape = vec![rows, 18];
        expect(
            oip.model_infer(huge.clone()).await,
            Code::InvalidArgument,
            "larger than any request",
        );
        huge.inputs[0].contents = None;
        huge.raw_input_contents = vec![vec![0; 72]];
        expect(
            oip.model_infer(huge).await,
            Code::InvalidArgument,
            "larger than any request",
        );
    }

    let mut missing = sensor_request(1.0);
    missing.features.remove("speed");
    let err = typed.predict(missing).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"speed\" is missing"), "{}", err.message());
    let mut nan = sensor_request(1.0);
    nan.features.insert("speed".into(), f64::NAN);
    assert_eq!(typed.predict(nan).await.unwrap_err().code(), Code::InvalidArgument);
    let mut other = sensor_request(1.0);
    other.model = "other".into();
    assert_eq!(typed.predict(other).await.unwrap_err().code(), Code::NotFound);

    // Still serving, and raw_input_contents works as standard clients send it.
    let mut raw = infer_request("strict", &good);
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![good[0].iter().flat_map(|v| v.to_le_bytes()).collect()];
    let answer = oip.model_infer(raw).await.unwrap().into_inner();
    assert_eq!(answer.raw_output_contents.len(), 2);
    assert_eq!(answer.raw_output_contents[0].len(), 4);
    assert_eq!(
        typed
            .predict(sensor_request(1.0))
            .await
            .unwrap()
            .into_inner()
            .model_version,
        1
    );
}

#[tokio::test]
async fn grpcurl_lists_every_predictor_service_through_reflection() {
    let (_registry, predictor, _, _) = serve_fixture("autoencoder").await;
    let services: Vec<String> = run_grpcurl(&predictor.service, None, "list")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "inference.GRPCInferenceService",
            "kappa.predictor.v1.Predictor"
        ]
    );
    let body = format!(
        "{{\"features\":{{{}}}}}",
        CAR_FIELDS
            .iter()
            .map(|f| format!("\"{f}\":1.5"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let answer = run_grpcurl(&predictor.service, Some(&body), "kappa.predictor.v1.Predictor/Predict");
    let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(json["modelVersion"], "1");
    assert_eq!(json["modelName"], "autoencoder");
}

#[tokio::test]
async fn the_tritonclient_from_pypi_gets_metadata_and_correct_results() {
    let (_registry, predictor, _f, _) = serve_fixture("autoencoder").await;
    let python = std::env::var("KAPPA_PYTHON")
        .unwrap_or_else(|_| format!("{}/.cache/kappa/py/bin/python", std::env::var("HOME").unwrap()));
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: scripts/tools.sh installs tritonclient into that venv (make test runs it)"
    );
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oip/tritonclient_check.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(predictor.service.address.trim_start_matches("http://"))
        .arg(fixture_dir().join("autoencoder.io.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tritonclient check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("64 scores match"), "{stdout}");
}

fn sensor_events(range: std::ops::Range<usize>) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| {
            let car = format!("car{}", i % 25);
            let mut event: serde_json::Map<String, serde_json::Value> = CAR_FIELDS
                .iter()
                .map(|f| ((*f).to_owned(), serde_json::json!((i % 7) as f64 + 0.5)))
                .collect();
            event.insert("car".into(), serde_json::json!(car));
            event.insert("time".into(), serde_json::json!(1_700_000_000 + i));
            (car, serde_json::to_vec(&event).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn stream_mode_answers_every_event_and_loses_none_across_a_kill_9() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("streamed", &[8]);
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    let (sensors, predictions) = (unique("test.sensors"), unique("test.predictions"));
    create_topic_with_partitions(&sensors, 3).await;
    create_topic_with_partitions(&predictions, 1).await;
    let streaming = PredictorSetup::new(&setup.topic, "streamed", "latest")
        .stream(&sensors, &predictions)
        // The restarted member should not wait out the default 45 s session of the killed one.
        .arg("--kafka-property=session.timeout.ms=6000");

    let mut sent = produce_keyed(&sensors, &sensor_events(0..1500)).await;
    let malformed = vec![
        ("car1".to_owned(), b"{not json".to_vec()),
        ("car2".to_owned(), b"{\"speed\": 3}".to_vec()),
    ];
    sent.extend(produce_keyed(&sensors, &malformed).await);

    let first = streaming.start().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_topic(&predictions, "read_committed").await.len() < 300 {
        assert!(
            Instant::now() < deadline,
            "stream mode produced no predictions:\n{}",
            first.service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.service.kill9();
    sent.extend(produce_keyed(&sensors, &sensor_events(1500..3000)).await);
    let second = streaming.start().await;

    let wanted: std::collections::HashSet<(i32, i64)> = sent.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (answers, answered) = loop {
        let records = read_topic(&predictions, "read_committed").await;
        let answers: Vec<serde_json::Value> = records
            .iter()
            .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
            .collect();
        let answered: std::collections::HashSet<(i32, i64)> = answers
            .iter()
            .map(|a| {
                let partition = a["sourcePartition"].as_i64().unwrap_or(0) as i32;
                let offset = a["sourceOffset"].as_str().map_or(0, |s| s.parse().unwrap());
                (partition, offset)
            })
            .collect();
        if wanted.is_subset(&answered) {
            break (answers, answered);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events still unanswered after the restart",
            wanted.difference(&answered).count(),
            wanted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let duplicates = answers.len() - answered.len();
    println!(
        "{} events, {} predictions, {duplicates} duplicates after kill -9",
        wanted.len(),
        answers.len()
    );
    let records = read_topic(&predictions, "read_committed").await;
    for (record, answer) in records.iter().zip(&answers) {
        if answer["error"].as_str().is_some_and(|e| !e.is_empty()) {
            continue;
        }
        assert_eq!(
            answer["key"].as_str().unwrap(),
            record.key,
            "the prediction names the event's key, and is keyed by it"
        );
        assert!(answer["key"].as_str().unwrap().starts_with("car"));
        assert_eq!(answer["modelVersion"], "1");
        assert_eq!(answer["modelName"], "streamed");
        assert!(answer["eventTimeMs"].as_str().unwrap().parse::<i64>().unwrap() >= 1_700_000_000_000);
    }
    let errors: Vec<&str> = answers
        .iter()
        .filter_map(|a| a["error"].as_str())
        .filter(|e| !e.is_empty())
        .collect();
    assert!(errors.iter().any(|e| e.contains("not JSON")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("is missing")), "{errors:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.metric("kappa_predictor_stream_lag").await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "stream lag never reached 0: {}",
            second.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        second
            .metric(r#"kappa_predictor_stream_events_total{reason="scored"}"#)
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn stream_mode_lands_each_keys_predictions_in_the_order_of_its_events() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("ordered", &[8]);
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    let (sensors, predictions) = (unique("test.sensors"), unique("test.predictions"));
    create_topic_with_partitions(&sensors, 3).await;
    create_topic_with_partitions(&predictions, 2).await;
    // A backlog, so that many groups of events are scored at once when the predictor starts.
    let sent = produce_keyed(&sensors, &sensor_events(0..6000)).await;
    let streaming = PredictorSetup::new(&setup.topic, "ordered", "latest")
        .stream(&sensors, &predictions)
        .start()
        .await;
    let wanted: std::collections::BTreeSet<(i32, i64)> = sent.iter().copied().collect();
    let answered = wait_all_answered(&bootstrap(), &predictions, &wanted, Duration::from_secs(90), &|| {
        streaming.service.log_text()
    })
    .await;
    assert_eq!(answered, wanted.len(), "one prediction per event");

    // Each key's predictions, as any reader of the predictions topic sees them: in the order of
    // the key's events (a key's events share a partition, its predictions share one too).
    let mut by_key: std::collections::HashMap<String, Vec<(i32, i64)>> = std::collections::HashMap::new();
    for record in read_positioned(&predictions, "read_committed").await {
        let a: serde_json::Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        let source = (
            a["sourcePartition"].as_i64().unwrap_or(0) as i32,
            a["sourceOffset"].as_str().map_or(0, |s| s.parse().unwrap()),
        );
        by_key.entry(record.key).or_default().push(source);
    }
    assert_eq!(by_key.len(), 25, "every car answered");
    for (key, sources) in &by_key {
        let out_of_order = sources.windows(2).filter(|w| w[0] >= w[1]).count();
        assert_eq!(
            out_of_order,
            0,
            "{key}: {out_of_order} of {} predictions land before an earlier event's",
            sources.len()
        );
    }
}

/// (partition, offset) of every prediction's source event, in the order read.
fn answered_sources(records: &[RawRecord]) -> Vec<(i32, i64)> {
    records
        .iter()
        .map(|r| {
            let a: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            let partition = a["sourcePartition"].as_i64().unwrap_or(0) as i32;
            let offset = a["sourceOffset"].as_str().map_or(0, |s| s.parse().unwrap());
            (partition, offset)
        })
        .collect()
}

#[tokio::test]
async fn exactly_once_stream_scoring_answers_each_event_once_across_two_kill_9s() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("once", &[8]);
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    let (sensors, predictions) = (unique("test.sensors"), unique("test.predictions"));
    create_topic_with_partitions(&sensors, 3).await;
    create_topic_with_partitions(&predictions, 1).await;
    let streaming = PredictorSetup::new(&setup.topic, "once", "latest")
        .stream(&sensors, &predictions)
        .arg("--stream-exactly-once")
        // The same id across restarts: each new process aborts what the killed one left open.
        .arg(format!("--stream-transactional-id={}", unique("scorer")))
        // Small batches, so a kill lands between and inside transactions.
        .arg("--stream-max-in-flight=50")
        .arg("--kafka-property=session.timeout.ms=6000");

    let mut sent = produce_keyed(&sensors, &[("car1".to_owned(), b"{not json".to_vec())]).await;
    // Events keep arriving through both kills, so each lands mid-stream, between or inside
    // transactions.
    let producing = {
        let sensors = sensors.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for chunk in 0..300 {
                sent.extend(produce_keyed(&sensors, &sensor_events(chunk * 50..(chunk + 1) * 50)).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        })
    };
    for round in 0..2 {
        let predictor = streaming.start().await;
        // Killed once it has committed transactions of its own (after the dead member's
        // session has ended and its partitions came over).
        let committed = r#"kappa_predictor_stream_transactions_total{reason="committed"}"#;
        let deadline = Instant::now() + Duration::from_secs(30);
        while predictor.metric(committed).await.unwrap_or(0.0) < 3.0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no progress:\n{}",
                predictor.service.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        predictor.service.kill9();
        let answered = read_topic(&predictions, "read_committed").await.len();
        println!("round {round}: killed with {answered} events answered");
    }
    let last = streaming.start().await;
    sent.extend(producing.await.unwrap());
    let wanted: std::collections::BTreeSet<(i32, i64)> = sent.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let answered = loop {
        let answered = answered_sources(&read_topic(&predictions, "read_committed").await);
        if answered.len() >= wanted.len() {
            // Let any stray duplicate land before counting.
            tokio::time::sleep(Duration::from_secs(2)).await;
            break answered_sources(&read_topic(&predictions, "read_committed").await);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events answered:\n{}",
            answered.len(),
            wanted.len(),
            last.service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let distinct: std::collections::BTreeSet<(i32, i64)> = answered.iter().copied().collect();
    println!(
        "{} events, {} committed predictions, {} distinct, after two kill -9s",
        wanted.len(),
        answered.len(),
        distinct.len()
    );
    assert_eq!(distinct, wanted, "one prediction per source event");
    assert_eq!(answered.len(), wanted.len(), "no event answered twice");
    // The killed processes' open transactions were aborted: uncommitted readers see more.
    let uncommitted = read_topic(&predictions, "read_uncommitted").await.len();
    println!("{uncommitted} records including aborted ones");
    assert!(
        last.metric(r#"kappa_predictor_stream_transactions_total{reason="committed"}"#)
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn kappa_predict_scores_every_row_of_the_demo_csv() {
    let csv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/car-sensor-data.csv");
    assert!(csv.exists(), "the demo data is expected at {}", csv.display());
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("csv", &[8]);
    publish(&mut client, &m, &random_weights(&m, 1), "").await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, "csv", "latest").start().await;
    let out = tokio::process::Command::new(binary("kappa"))
        .args([
            "predict",
            "--predictor",
            &predictor.service.address,
            "--id-field",
            "car",
        ])
        .arg(&csv)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary = String::from_utf8(out.stderr).unwrap();
    assert!(
        summary.contains("10000 rows:") && summary.contains("0 refused"),
        "{summary}"
    );
    assert_eq!(stdout.lines().count(), 10_000);
    assert!(
        stdout.lines().next().unwrap().starts_with("car1  score "),
        "{stdout:.200}"
    );
    assert!(stdout.lines().all(|l| l.ends_with("csv v1")));
}

#[tokio::test]
async fn predict_stream_answers_in_order_and_reports_bad_messages() {
    let (_registry, predictor, f, _) = serve_fixture("autoencoder").await;
    let mut typed = PredictorClient::new(predictor.channel().await);
    let requests: Vec<PredictRequest> = f
        .inputs
        .iter()
        .enumerate()
        .map(|(i, row)| PredictRequest {
            features: f
                .manifest
                .features
                .iter()
                .zip(row)
                .map(|(feat, v)| (feat.name.clone(), f64::from(*v)))
                .collect(),
            request_id: i.to_string(),
            ..Default::default()
        })
        .collect();
    let mut answers = typed
        .predict_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(answer) = tokio_stream::StreamExt::next(&mut answers).await {
        let answer = answer.unwrap();
        assert_eq!(
            answer.request_id,
            n.to_string(),
            "answers keep the order of the requests"
        );
        assert!((answer.score as f32 - f.scores[n]).abs() <= TOLERANCE);
        assert_eq!(answer.model_version, 1);
        n += 1;
    }
    assert_eq!(n, 64);

    // A bad message ends the stream with a precise status; the answers before it arrive.
    let mut bad = sensor_request(1.0);
    bad.features.remove("coolant_temp");
    let mut answers = typed
        .predict_stream(tokio_stream::iter(vec![sensor_request(1.0), bad]))
        .await
        .unwrap()
        .into_inner();
    assert!(tokio_stream::StreamExt::next(&mut answers).await.unwrap().is_ok());
    let err = tokio_stream::StreamExt::next(&mut answers).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("coolant_temp"), "{}", err.message());
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_with_traffic() {
    let (_registry, predictor, f, _) = serve_fixture("autoencoder").await;
    let before = predictor
        .metric(r#"kappa_predictor_requests_total{rpc="ModelInfer",code="OK"}"#)
        .await
        .unwrap_or(0.0);
    let mut oip = GrpcInferenceServiceClient::new(predictor.channel().await);
    for _ in 0..5 {
        oip.model_infer(infer_request("autoencoder", &f.inputs[..4]))
            .await
            .unwrap();
    }
    let text = predictor.metrics().await;
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed line {line:?}"));
        // The predictor's own series, and the connection series every Kappa server has.
        assert!(
            series.starts_with("kappa_predictor_") || series.starts_with("kappa_server_"),
            "{line}"
        );
        assert!(value.parse::<f64>().is_ok(), "value of {line:?} is not a number");
    }
    let after = predictor
        .metric(r#"kappa_predictor_requests_total{rpc="ModelInfer",code="OK"}"#)
        .await
        .unwrap();
    assert_eq!(after - before, 5.0);
    assert!(predictor.metric("kappa_predictor_batch_size_count").await.unwrap() >= 5.0);
    assert_eq!(predictor.metric("kappa_predictor_model_ready").await, Some(1.0));
}

#[test]
fn check_config_validates_without_connecting_and_bad_config_exits_64() {
    let ok = std::process::Command::new(binary("kappa-predictor"))
        .args([
            "--model",
            "fleet",
            "--follow",
            "production",
            "--kafka-bootstrap",
            "nowhere:1",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration ok"));
    let bad = std::process::Command::new(binary("kappa-predictor"))
        .args(["--model", "Bad/Name", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--model"));
    // A value that does not even parse is a bad configuration too: same exit code, the flag named.
    for (flag, value) in [("--follow", "Bad/Alias"), ("--listen", "not-an-address")] {
        let bad = std::process::Command::new(binary("kappa-predictor"))
            .args(["--model", "fleet", flag, value, "--check-config"])
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(64), "{flag} {value}");
        assert!(String::from_utf8_lossy(&bad.stderr).contains(flag), "{flag}");
    }
    let help = std::process::Command::new(binary("kappa-predictor"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--follow"));
    let registry = std::process::Command::new(binary("kappa-registry"))
        .args(["--chunk-bytes", "4096", "--max-model-bytes", "1024", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(registry.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&registry.stderr).contains("--max-model-bytes"));
    // Every value is typed when it is parsed: durations, addresses, names, counts.
    for (binary_name, flag, value) in [
        ("kappa-registry", "--models-topic", " "),
        ("kappa-registry", "--shutdown-grace-seconds", "ten"),
        ("kappa-registry", "--replication-factor", "0"),
        ("kappa-predictor", "--max-queue-delay-us", "0.5"),
        ("kappa-predictor", "--consumer-group", ""),
        ("kappa-trainer", "--registry", "ftp://127.0.0.1:50051"),
        ("kappa-trainer", "--registry", "http://"),
        ("kappa-trainer", "--max-rows", "0"),
    ] {
        let mut command = std::process::Command::new(binary(binary_name));
        if binary_name == "kappa-predictor" {
            command.args(["--model", "fleet"]);
        }
        let bad = command.args([flag, value, "--check-config"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(64), "{binary_name} {flag} {value:?}: {stderr}");
        assert!(stderr.contains(flag), "{binary_name} {flag}: {stderr}");
    }
}
