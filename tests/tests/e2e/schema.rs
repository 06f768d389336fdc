//! Any telemetry, not just the car simulator's: schemas inferred from nested events in other
//! units, read by stream mode, OIP and the typed API alike, and swapped between versions.

use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kappa_api::{
    events::Prediction,
    inference::{
        InferTensorContents, ModelInferRequest, grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::InferInputTensor,
    },
    predictor::{PredictRequest, predictor_client::PredictorClient},
    trainer::{JobPhase, TrainingSpec},
};
use kappa_model::{Backend, Mlp, evaluate::roc_auc, example::autoencoder_over, example::random_weights};
use serde_json::Value;
use tonic::Code;

use crate::{support::*, trainer::*};

/// Every numeric leaf of a JSON event by its dot path, computed here independently of Kappa.
fn numeric_leaves(value: &Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numeric_leaves(v, &path, out);
            }
        }
        Value::Number(n) => {
            out.insert(prefix.to_owned(), n.as_f64().unwrap());
        }
        _ => {}
    }
}

fn leaves(event: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    numeric_leaves(event, "", &mut out);
    out
}

#[tokio::test]
async fn turbines_train_on_inferred_nested_features_and_are_scored_the_same_over_every_api() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry).start().await;
    let mut client = trainer_client(&trainer).await;
    let (history, later) = (unique("test.turbines"), unique("test.turbines-later"));
    let fleet = [
        "--profile",
        "turbine",
        "--cars",
        "20",
        "--rate",
        "0",
        "--failing-share",
        "0.3",
    ];
    run_fleet(
        &history,
        &[
            &fleet[..],
            &[
                "--events",
                "8000",
                "--failure-chance",
                "0.005",
                "--backdate-seconds",
                "3600",
                "--seed",
                "1",
            ],
        ]
        .concat(),
    );
    run_fleet(
        &later,
        &[
            &fleet[..],
            &[
                "--events",
                "2000",
                "--failure-chance",
                "0.01",
                "--backdate-seconds",
                "300",
                "--seed",
                "2",
            ],
        ]
        .concat(),
    );

    // No features named: the trainer infers the nested numeric leaves (label and time left out).
    let spec = TrainingSpec {
        label_field: "status.state".into(),
        positive_labels: vec!["failed".into()],
        time: Some(kappa_api::model::EventTime {
            field: "ts".into(),
            ..Default::default()
        }),
        epochs: 20,
        ..spec("turbine", &history, 0, i64::MAX / 2)
    };
    let job = start_job(&mut client, spec).await;
    let first = read_topic_with_timestamps(&history).await;
    let event: Value = serde_json::from_slice(&first[0].1).unwrap();
    let expected: Vec<String> = leaves(&event).into_keys().collect();
    assert_eq!(expected.len(), 7, "the turbine profile's numeric leaves: {expected:?}");
    let inferred: Vec<String> = job
        .spec
        .as_ref()
        .unwrap()
        .features
        .iter()
        .map(|f| f.path.clone())
        .collect();
    assert_eq!(inferred, expected, "notes: {:?}", job.schema_notes);
    let done = wait_done(&mut client, &job.job_id, Duration::from_secs(300)).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    let auc = done
        .lineage
        .as_ref()
        .unwrap()
        .metrics
        .as_ref()
        .unwrap()
        .roc_auc
        .unwrap();
    println!("turbine hold-out ROC AUC {auc:.4}");
    assert!(auc >= 0.95, "hold-out ROC AUC {auc}");

    // The schema travels in the manifest.
    let mut registry_client = registry_client(&registry).await;
    let (version, _) = get_model(&mut registry_client, "turbine", by_version(1)).await.unwrap();
    let manifest = version.manifest.unwrap();
    let schema = manifest.schema.clone().unwrap();
    assert_eq!(schema.label_field, "status.state");
    assert_eq!(schema.positive_labels, ["failed"]);
    assert_eq!(schema.time.unwrap().field, "ts");
    let paths: Vec<&str> = manifest.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(paths, expected);

    // Stream mode on the later window, with event time from `ts`.
    let predictions = unique("test.turbine-predictions");
    let predictor = PredictorSetup::new(&setup.topic, "turbine", "latest")
        .stream(&later, &predictions)
        .start()
        .await;
    let events = read_positioned(&later, "read_committed").await;
    let scored = wait_for_records(&predictions, events.len(), Duration::from_secs(120)).await;
    let by_source: HashMap<(i32, i64), Prediction> = scored
        .iter()
        .map(|r| {
            let p: Prediction = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
            ((p.source_partition, p.source_offset), p)
        })
        .collect();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for event in &events {
        let json: Value = serde_json::from_slice(event.value.as_ref().unwrap()).unwrap();
        let p = &by_source[&(event.partition, event.offset)];
        assert!(p.error.is_empty(), "{}", p.error);
        assert_eq!(p.model_version, 1);
        let ts = json["ts"].as_str().unwrap();
        assert_eq!(
            p.event_time_ms,
            kappa_model::schema::parse_rfc3339_ms(ts).unwrap(),
            "event time from {ts}"
        );
        assert_eq!(p.key, event.key);
        scores.push(p.score as f32);
        labels.push(json["status"]["state"] == "failed");
    }
    let stream_auc = roc_auc(&scores, &labels);
    println!(
        "turbine later window, stream mode: ROC AUC {stream_auc:.4} over {} events",
        labels.len()
    );
    assert!(
        labels.iter().filter(|l| **l).count() > 50,
        "the later window has failures"
    );
    assert!(stream_auc >= 0.95, "stream ROC AUC {stream_auc}");

    // OIP: columns in the order ModelMetadata lists them; the same scores as stream mode.
    let mut oip = GrpcInferenceServiceClient::new(predictor.channel().await);
    let columns = oip_feature_columns(&mut oip, "turbine").await;
    assert_eq!(columns, expected);
    let sample: Vec<&Positioned> = events.iter().take(64).collect();
    let rows: Vec<f32> = sample
        .iter()
        .flat_map(|e| {
            let leaves = leaves(&serde_json::from_slice(e.value.as_ref().unwrap()).unwrap());
            columns.iter().map(move |c| leaves[c] as f32).collect::<Vec<_>>()
        })
        .collect();
    let answer = oip
        .model_infer(ModelInferRequest {
            model_name: "turbine".into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![sample.len() as i64, columns.len() as i64],
                parameters: Default::default(),
                contents: Some(InferTensorContents {
                    fp32_contents: rows,
                    ..Default::default()
                }),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let oip_scores = &answer
        .outputs
        .iter()
        .find(|o| o.name == "score")
        .unwrap()
        .contents
        .as_ref()
        .unwrap()
        .fp32_contents;
    let mut typed = PredictorClient::new(predictor.channel().await);
    for (e, oip_score) in sample.iter().zip(oip_scores) {
        let stream_score = by_source[&(e.partition, e.offset)].score;
        assert!((f64::from(*oip_score) - stream_score).abs() <= 1e-5 * stream_score.abs().max(1.0));
        // Typed, with the nested event as JSON, and with the values named by path.
        let event_json = String::from_utf8(e.value.clone().unwrap()).unwrap();
        let by_json = typed
            .predict(PredictRequest {
                event_json: event_json.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_json.model_version, 1);
        assert!((by_json.score - stream_score).abs() <= 1e-5 * stream_score.abs().max(1.0));
        let by_name = typed
            .predict(PredictRequest {
                features: leaves(&serde_json::from_str(&event_json).unwrap())
                    .into_iter()
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!((by_name.score - stream_score).abs() <= 1e-5 * stream_score.abs().max(1.0));
    }

    // Missing and non-numeric features are all named in one INVALID_ARGUMENT.
    let err = typed
        .predict(PredictRequest {
            event_json: r#"{"rotor":{"rpm":"fast"},"wind":{"speed_m_s":9}}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for named in [
        r#"feature "rotor.rpm" is not a number"#,
        r#"feature "rotor.pitch_deg" is missing"#,
        r#"feature "gearbox.oil_temp_c" is missing"#,
    ] {
        assert!(err.message().contains(named), "{named} not in {:?}", err.message());
    }
    assert!(!err.message().contains("wind.speed_m_s\" is"), "{}", err.message());
}

#[tokio::test]
async fn car_events_in_the_reference_demo_units_train_with_default_flags() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry).start().await;
    // One fleet, 500 samples per car; the model trains on the first 80% of its time and is
    // judged on the rest: last week's data, this week's traffic.
    let topic = unique("test.car-reference");
    run_fleet(
        &topic,
        &[
            "--profile",
            "car-reference",
            "--cars",
            "50",
            "--rate",
            "0",
            "--failing-share",
            "0.3",
            "--failure-chance",
            "0.01",
            "--events",
            "25000",
            "--backdate-seconds",
            "7200",
            "--seed",
            "1",
        ],
    );
    let all = read_topic_with_timestamps(&topic).await;
    let first: Value = serde_json::from_slice(&all[0].1).unwrap();
    assert!(
        first["battery_voltage"].as_f64().unwrap() > 1000.0,
        "the reference units: {first}"
    );
    let mut times: Vec<i64> = all.iter().map(|(_, _, t)| *t).collect();
    times.sort_unstable();
    times.dedup();
    let split = times[times.len() * 4 / 5];

    // The user's command, default flags: only the label is named.
    let out = Command::new(binary("kappa"))
        .args([
            "train",
            "--trainer",
            &trainer.address,
            "start",
            "--model",
            "car-ref",
            "--topic",
            &topic,
        ])
        .args([
            "--label",
            "failure_occurred",
            "--from-ms",
            "0",
            "--to-ms",
            &split.to_string(),
            "--watch",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let events: Vec<(String, Vec<u8>, i64)> = all.into_iter().filter(|(_, _, t)| *t >= split).collect();
    assert!(events.len() >= 4000, "{} events in the later window", events.len());

    // Score the later window through the typed stream API with each event as JSON.
    let predictor = PredictorSetup::new(&setup.topic, "car-ref", "latest").start().await;
    let mut typed = PredictorClient::new(predictor.channel().await);
    let requests: Vec<PredictRequest> = events
        .iter()
        .enumerate()
        .map(|(i, (_, v, _))| PredictRequest {
            event_json: String::from_utf8(v.clone()).unwrap(),
            request_id: i.to_string(),
            ..Default::default()
        })
        .collect();
    let labels: Vec<bool> = events
        .iter()
        .map(|(_, v, _)| serde_json::from_slice::<Value>(v).unwrap()["failure_occurred"] == "true")
        .collect();
    let mut answers = typed
        .predict_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let (mut scores, mut flags) = (Vec::new(), Vec::new());
    while let Some(answer) = tokio_stream::StreamExt::next(&mut answers).await {
        let answer = answer.unwrap();
        assert_eq!(answer.request_id, scores.len().to_string(), "answers keep the order");
        scores.push(answer.score as f32);
        flags.push(answer.is_anomaly);
    }
    assert_eq!(scores.len(), events.len());
    let positives = labels.iter().filter(|l| **l).count();
    assert!(positives > 100, "{positives} failing events");
    let auc = roc_auc(&scores, &labels);
    let recall = flags.iter().zip(&labels).filter(|(f, l)| **f && **l).count() as f64 / positives as f64;
    println!(
        "reference-unit cars, later window: ROC AUC {auc:.4}, recall {recall:.4} at the model's threshold over {positives} failing events"
    );
    assert!(auc >= 0.98, "ROC AUC {auc}");
    assert!(recall >= 0.9, "recall {recall}");
}

#[tokio::test]
async fn a_version_with_another_schema_swaps_in_under_load_and_each_answer_uses_its_own() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let v1 = autoencoder_over("pump", &["engine.rpm", "engine.temp_c"], &[4]);
    let v1_weights = random_weights(&v1, 1);
    publish(&mut client, &v1, &v1_weights, "").await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, "pump", "latest").start().await;

    // Clients send events that carry both schemas' fields, as producers do across a migration.
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for worker in 0..8_u64 {
        let (failures, stop, answers) = (Arc::clone(&failures), Arc::clone(&stop), Arc::clone(&answers));
        let mut typed = PredictorClient::new(predictor.channel().await);
        tasks.push(tokio::spawn(async move {
            let mut i = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let x = (worker * 1000 + i) as f64;
                let event = serde_json::json!({
                    "engine": {"rpm": 900.0 + x % 300.0, "temp_c": 60.0 + x % 7.0},
                    "pump": {"flow": 3.0 + x % 5.0, "pressure": {"bar": 2.0 + x % 3.0}},
                    "vibration": [0.1, 0.2 + (x % 11.0) / 10.0],
                })
                .to_string();
                match typed
                    .predict(PredictRequest {
                        event_json: event.clone(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(answer) => answers.lock().unwrap().push((event, answer.into_inner())),
                    Err(status) => {
                        eprintln!("failed: {status:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v2 = autoencoder_over("pump", &["pump.flow", "pump.pressure.bar", "vibration.1"], &[3]);
    let v2_weights = random_weights(&v2, 2);
    publish(&mut client, &v2, &v2_weights, "").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while predictor.metric("kappa_predictor_loaded_version").await != Some(2.0) {
        assert!(Instant::now() < deadline, "the predictor never swapped to v2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request fails across the schema swap"
    );

    // Each answer is the score its version computes on its own features, recomputed here.
    let mut models = HashMap::new();
    for (v, m, w) in [(1_u64, &v1, &v1_weights), (2, &v2, &v2_weights)] {
        let (served, _) = get_model(&mut client, "pump", by_version(v)).await.unwrap();
        let manifest = served.manifest.unwrap();
        assert_eq!(manifest.features.len(), m.features.len());
        models.insert(v, (Mlp::load(&manifest, w, Backend::Native).unwrap(), manifest));
    }
    let answers = answers.lock().unwrap();
    let mut seen = BTreeMap::new();
    for (event, answer) in answers.iter() {
        let (mlp, manifest) = &models[&answer.model_version];
        let leaves = leaves(&serde_json::from_str(event).unwrap());
        let mut leaves = leaves;
        // `vibration.1` is an array element: flatten arrays for the recomputation.
        let parsed: Value = serde_json::from_str(event).unwrap();
        for (i, v) in parsed["vibration"].as_array().unwrap().iter().enumerate() {
            leaves.insert(format!("vibration.{i}"), v.as_f64().unwrap());
        }
        let row: Vec<f32> = manifest.features.iter().map(|f| leaves[&f.name] as f32).collect();
        let expected = mlp.score(&row).unwrap()[0];
        assert!(
            (answer.score - f64::from(expected)).abs() <= 1e-4 * f64::from(expected).abs().max(1.0),
            "v{} scored {} but its schema gives {expected}",
            answer.model_version,
            answer.score
        );
        *seen.entry(answer.model_version).or_insert(0) += 1;
    }
    println!("answers by version across the schema swap: {seen:?}");
    assert!(
        seen.get(&1).is_some_and(|n| *n > 10) && seen.get(&2).is_some_and(|n| *n > 10),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_protobuf_reading_and_its_json_twin_score_the_same_in_stream_mode_and_typed() {
    use kappa_api::fleet::SensorReading;
    use kappa_fleet::{CAR_FIELDS, car_autoencoder};
    use prost::Message as _;
    use rdkafka::{
        message::{Header, OwnedHeaders},
        producer::{FutureProducer, FutureRecord},
    };

    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("car-pb", &[6]);
    publish(&mut client, &m, &random_weights(&m, 5), "").await.unwrap();
    let (sensors, predictions) = (unique("test.pb-sensors"), unique("test.pb-predictions"));
    create_topic_with_partitions(&sensors, 1).await;
    let predictor = PredictorSetup::new(&setup.topic, "car-pb", "latest")
        .stream(&sensors, &predictions)
        .start()
        .await;

    let reading = SensorReading {
        car: "car9".into(),
        time_ms: 1_700_000_000_000,
        coolant_temp: 91.5,
        speed: 0.0, // proto3 cannot tell 0 from unset: it reads as 0, not as missing
        tire_pressure_1_1: 31.0,
        control_unit_firmware: 2000.0,
        ..Default::default()
    };
    let mut json = serde_json::Map::new();
    for field in CAR_FIELDS {
        let value = match field {
            "coolant_temp" => 91.5,
            "tire_pressure_1_1" => 31.0,
            "control_unit_firmware" => 2000.0,
            _ => 0.0,
        };
        json.insert(field.to_owned(), serde_json::json!(value));
    }
    let json = serde_json::to_vec(&json).unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let protobuf = reading.encode_to_vec();
    let headers = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: Some("application/x-protobuf"),
    });
    producer
        .send(
            FutureRecord::to(&sensors)
                .key("car9")
                .payload(&protobuf)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer
        .send(
            FutureRecord::to(&sensors).key("car9").payload(&json),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let scored = wait_for_records(&predictions, 2, Duration::from_secs(60)).await;
    let scores: Vec<Prediction> = scored
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_ref().unwrap()).unwrap())
        .collect();
    assert!(scores.iter().all(|p| p.error.is_empty()), "{scores:?}");
    assert!((scores[0].score - scores[1].score).abs() < 1e-6, "{scores:?}");

    let mut typed = PredictorClient::new(predictor.channel().await);
    let answer = typed
        .predict(PredictRequest {
            reading: Some(reading),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        (answer.score - scores[0].score).abs() < 1e-6,
        "{answer:?} vs {scores:?}"
    );
}

#[tokio::test]
async fn kappa_data_inspect_profiles_every_field_and_prints_the_spec_the_trainer_would_use() {
    let topic = unique("test.inspect-turbines");
    run_fleet(
        &topic,
        &[
            "--profile",
            "turbine",
            "--cars",
            "20",
            "--events",
            "1000",
            "--rate",
            "0",
            "--failing-share",
            "0.5",
        ],
    );
    let events = read_topic_with_timestamps(&topic).await;
    let failed = events
        .iter()
        .filter(|(_, v, _)| serde_json::from_slice::<Value>(v).unwrap()["status"]["state"] == "failed")
        .count() as u64;
    let out = Command::new(binary("kappa"))
        .args([
            "data",
            "inspect",
            "--kafka-bootstrap",
            &bootstrap(),
            "--topic",
            &topic,
            "--sample",
            "5000",
        ])
        .args([
            "--label",
            "status.state",
            "--positive",
            "failed",
            "--time-field",
            "ts",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // A sample larger than the topic holds every event exactly once.
    assert_eq!(report["events"], 1000, "{report}");
    let rpm = report["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "rotor.rpm")
        .unwrap();
    assert_eq!(rpm["type"], "number");
    assert_eq!(rpm["present"], 1000);
    let values: Vec<f64> = events
        .iter()
        .map(|(_, v, _)| {
            serde_json::from_slice::<Value>(v).unwrap()["rotor"]["rpm"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(rpm["min"].as_f64().unwrap(), min);
    assert_eq!(report["label"]["positive"], failed, "{}", report["label"]);
    assert_eq!(report["label"]["normal"], 1000 - failed);
    let spec: Vec<&str> = report["spec"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = leaves(&serde_json::from_slice(&events[0].1).unwrap())
        .into_keys()
        .collect();
    assert_eq!(spec, expected);
    assert_eq!(report["spec"]["labelField"], "status.state");
    assert_eq!(report["spec"]["time"]["field"], "ts");
    // Text output names the same things for a person.
    let out = Command::new(binary("kappa"))
        .args(["data", "inspect", "--kafka-bootstrap", &bootstrap(), "--topic", &topic])
        .args(["--label", "status.state", "--positive", "failed"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("gearbox.vibration_mm_s") && text.contains(&format!("label status.state: {failed} anomalous")),
        "{text}"
    );
    assert!(text.contains("left out turbine: not numeric (text)"), "{text}");
}
