//! Explanations end to end: a trained autoencoder says, in the same scoring pass, which sensors
//! made an event anomalous — through typed `Predict` (every feature's share) and in stream mode's
//! prediction records (the top ones of each anomaly).

use std::time::Duration;

use kappa_api::{
    inference::{
        ModelMetadataRequest, grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::InferRequestedOutputTensor,
    },
    model::FeatureContribution,
    predictor::{PredictRequest, predictor_client::PredictorClient},
    trainer::{JobPhase, TrainingSpec},
};
use serde_json::{Map, Value};

use crate::{
    support::*,
    trainer::{spec, start_job, trainer_client, wait_done},
};

/// A failure mode of the simulated car as what it does to a healthy reading, and the sensors it
/// drives (the simulator's physics: `kappa-fleet`'s car). Drive-shaft wear (vibration 1.5 times
/// what the speed gives) is left out: the small autoencoder trained here flags almost none of it,
/// so there are no flagged events of it to explain.
struct FailureMode {
    name: &'static str,
    inject: fn(&mut Map<String, Value>),
    sensors: &'static [&'static str],
}

const TIRES: [&str; 4] = [
    "tire_pressure_1_1",
    "tire_pressure_1_2",
    "tire_pressure_2_1",
    "tire_pressure_2_2",
];
const ACCELEROMETERS: [&str; 4] = [
    "accelerometer_1_1_value",
    "accelerometer_1_2_value",
    "accelerometer_2_1_value",
    "accelerometer_2_2_value",
];

fn failure_modes() -> [FailureMode; 4] {
    [
        FailureMode {
            name: "overheating",
            inject: |r| {
                r.insert("coolant_temp".into(), 125.0.into());
            },
            sensors: &["coolant_temp"],
        },
        FailureMode {
            name: "tire pressure loss",
            inject: |r| TIRES.iter().for_each(|t| _ = r.insert((*t).into(), 22.0.into())),
            sensors: &TIRES,
        },
        FailureMode {
            name: "shock failure",
            inject: |r| {
                ACCELEROMETERS
                    .iter()
                    .for_each(|a| _ = r.insert((*a).into(), 3.5.into()))
            },
            sensors: &ACCELEROMETERS,
        },
        FailureMode {
            name: "outdated firmware",
            inject: |r| {
                r.insert("control_unit_firmware".into(), 1000.0.into());
            },
            sensors: &["control_unit_firmware"],
        },
    ]
}

#[tokio::test]
async fn a_flagged_events_top_feature_is_the_sensor_its_failure_mode_drives() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry).start().await;
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("fleet.jsonl");
    let history = unique("test.explained-fleet");
    run_fleet(
        &history,
        &[
            "--cars",
            "20",
            "--events",
            "6000",
            "--rate",
            "0",
            "--failing-share",
            "0",
            "--seed",
            "5",
            "--backdate-seconds",
            "3600",
            "--jsonl",
            jsonl.to_str().unwrap(),
        ],
    );
    let mut client = trainer_client(&trainer).await;
    let job = start_job(
        &mut client,
        TrainingSpec {
            epochs: 5,
            ..spec("explained", &history, 0, i64::MAX / 2)
        },
    )
    .await;
    let done = wait_done(&mut client, &job.job_id, Duration::from_secs(300)).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    let predictor = PredictorSetup::new(&setup.topic, "explained", "latest").start().await;
    let mut typed = PredictorClient::new(predictor.channel().await);

    // Healthy readings of the second half of the range (engines warm), each given one failure.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let healthy: Vec<Map<String, Value>> = text
        .lines()
        .skip(3000)
        .step_by(15)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for mode in failure_modes() {
        let (mut flagged, mut named, mut misnamed) = (0, 0, Vec::new());
        for reading in &healthy {
            let mut event = reading.clone();
            (mode.inject)(&mut event);
            let answer = typed
                .predict(PredictRequest {
                    event_json: Value::Object(event).to_string(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            check_explanation(&answer.explanation, mode.name);
            if answer.is_anomaly {
                flagged += 1;
                let top = &answer.explanation[0];
                if mode.sensors.contains(&top.feature.as_str()) {
                    named += 1;
                    let (low, high) = (top.typical_low.unwrap(), top.typical_high.unwrap());
                    assert!(
                        top.value < low || top.value > high,
                        "{}: {} = {} should lie outside its training range [{low}, {high}]",
                        mode.name,
                        top.feature,
                        top.value
                    );
                } else {
                    misnamed.push(top.feature.clone());
                }
            }
        }
        // Enough flagged events of each mode for the share below to mean something.
        assert!(
            flagged * 5 >= healthy.len(),
            "{}: only {flagged} of {} events flagged",
            mode.name,
            healthy.len()
        );
        assert!(
            named * 10 >= flagged * 9,
            "{}: the top feature was a driven sensor for {named} of {flagged} flagged events; the others named {misnamed:?}",
            mode.name
        );
    }
    oip_names_the_shares_on_request(&predictor, &healthy).await;
    let sensors = stream_records_name_the_top_features(&setup, &healthy).await;
    backtest_names_what_made_the_flagged_events(&registry, &sensors);
}

/// `kappa backtest` over the stream's events (every other one overheating): the version's
/// flagged events are blamed on the coolant.
fn backtest_names_what_made_the_flagged_events(registry: &Service, sensors: &str) {
    let json = run_ok(
        kappa_backtest(&registry.address, "explained", "1", sensors).args(["--output", "json"]),
        "kappa backtest",
    );
    let report: Value = serde_json::from_str(&json).unwrap();
    let version = &report["versions"][0];
    let anomalies = version["anomalies"].as_u64().unwrap();
    let top = &version["top_features"][0];
    assert_eq!(top["feature"], "coolant_temp", "{version}");
    assert!(
        top["flagged_events"].as_u64().unwrap() * 10 >= anomalies * 9,
        "coolant_temp topped {} of {anomalies} flagged events: {version}",
        top["flagged_events"]
    );
    let text = run_ok(
        &mut kappa_backtest(&registry.address, "explained", "1", sensors),
        "kappa backtest",
    );
    println!("{text}");
    assert!(
        text.contains("v1 flagged events, by the feature with the largest share: coolant_temp in"),
        "{text}"
    );
}

/// Open Inference Protocol: `explanation` `[N, F]` when asked for by name, the same shares the
/// typed API gives; not sent unasked.
async fn oip_names_the_shares_on_request(predictor: &Predictor, healthy: &[Map<String, Value>]) {
    let mut oip = GrpcInferenceServiceClient::new(predictor.channel().await);
    let metadata = oip
        .model_metadata(ModelMetadataRequest {
            name: "explained".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<&str> = metadata.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(listed, ["score", "is_anomaly", "explanation"]);
    let columns: Vec<String> = match &metadata.parameters["features_json"].parameter_choice {
        Some(kappa_api::inference::infer_parameter::ParameterChoice::StringParam(json)) => {
            serde_json::from_str(json).unwrap()
        }
        other => panic!("features_json: {other:?}"),
    };
    let rows: Vec<Map<String, Value>> = healthy
        .iter()
        .take(8)
        .map(|reading| {
            let mut event = reading.clone();
            (failure_modes()[0].inject)(&mut event);
            event
        })
        .collect();
    let values: Vec<f32> = rows
        .iter()
        .flat_map(|row| columns.iter().map(|c| row[c].as_f64().unwrap() as f32))
        .collect();
    let mut request = kappa_client::oip::infer_request("explained", values.clone(), columns.len());
    let unasked = oip.model_infer(request.clone()).await.unwrap().into_inner();
    assert!(unasked.outputs.iter().all(|o| o.name != "explanation"), "sent unasked");
    request.outputs = ["score", "explanation"]
        .map(|name| InferRequestedOutputTensor {
            name: name.into(),
            ..Default::default()
        })
        .to_vec();
    let answer = oip.model_infer(request).await.unwrap().into_inner();
    let explanation = answer.outputs.iter().find(|o| o.name == "explanation").unwrap();
    assert_eq!(explanation.shape, [rows.len() as i64, columns.len() as i64]);
    let shares = &explanation.contents.as_ref().unwrap().fp32_contents;
    let mut typed = PredictorClient::new(predictor.channel().await);
    for (row, event) in shares.chunks_exact(columns.len()).zip(&rows) {
        let answer = typed
            .predict(PredictRequest {
                event_json: Value::Object(event.clone()).to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for contribution in &answer.explanation {
            let at = columns.iter().position(|c| *c == contribution.feature).unwrap();
            assert!(
                (f64::from(row[at]) - contribution.share).abs() < 1e-6,
                "{}: OIP {} vs typed {}",
                contribution.feature,
                row[at],
                contribution.share
            );
        }
    }
}

/// Stream mode: the record of each anomaly names its top features (`--explain-top`, 3 by
/// default); a normal event's record names none.
async fn stream_records_name_the_top_features(setup: &RegistrySetup, healthy: &[Map<String, Value>]) -> String {
    let (sensors, predictions) = (unique("test.explained-sensors"), unique("test.explained-predictions"));
    create_topic_with_partitions(&sensors, 1).await;
    let _streaming = PredictorSetup::new(&setup.topic, "explained", "latest")
        .stream(&sensors, &predictions)
        .start()
        .await;
    let overheating = &failure_modes()[0];
    let events: Vec<(String, Vec<u8>)> = healthy
        .iter()
        .enumerate()
        .map(|(i, reading)| {
            let mut event = reading.clone();
            // Every other event overheats.
            if i % 2 == 0 {
                (overheating.inject)(&mut event);
            }
            (format!("car{i}"), Value::Object(event).to_string().into_bytes())
        })
        .collect();
    produce_keyed(&sensors, &events).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let records: Vec<Value> = loop {
        let read = read_topic(&predictions, "read_uncommitted").await;
        if read.len() >= events.len() {
            break read
                .iter()
                .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} predictions",
            read.len(),
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (mut anomalies, mut named) = (0, 0);
    for record in &records {
        let top = record["topFeatures"].as_array().cloned().unwrap_or_default();
        if record["isAnomaly"].as_bool() != Some(true) {
            assert!(top.is_empty(), "a normal event's record explains nothing: {record}");
            continue;
        }
        anomalies += 1;
        assert_eq!(top.len(), 3, "{record}");
        let shares: Vec<f64> = top.iter().map(|t| t["share"].as_f64().unwrap()).collect();
        assert!(shares.windows(2).all(|w| w[0] >= w[1]) && shares[0] <= 1.0, "{record}");
        named += usize::from(top[0]["feature"] == "coolant_temp");
    }
    assert!(
        anomalies * 5 >= events.len() / 2,
        "only {anomalies} anomalies in {}",
        events.len()
    );
    assert!(
        named * 10 >= anomalies * 9,
        "coolant_temp first in {named} of {anomalies} anomalies"
    );
    sensors
}

/// Every feature once, largest share first, the shares summing to 1.
fn check_explanation(explanation: &[FeatureContribution], mode: &str) {
    assert_eq!(
        explanation.len(),
        kappa_fleet::CAR_FIELDS.len(),
        "{mode}: {explanation:?}"
    );
    let total: f64 = explanation.iter().map(|c| c.share).sum();
    assert!((total - 1.0).abs() < 1e-4, "{mode}: shares sum to {total}");
    assert!(
        explanation.windows(2).all(|w| w[0].share >= w[1].share),
        "{mode}: not largest first: {explanation:?}"
    );
}
