//! Shadow scoring end to end: a stream predictor serving one version keeps a second one warm
//! (`--shadow`) and scores a copy of all its traffic with it, stream and gRPC, off the request
//! path: no call fails, every live answer gets a shadow answer with both versions' scores, the
//! shadow's scores are the ones that version gives when served, and `kappa compare` sums it up.
//! A shadow over other features reads the events with its own schema.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use kappa_api::predictor::{PredictRequest, predictor_client::PredictorClient};
use kappa_fleet::{CAR_FIELDS, car_autoencoder};
use kappa_model::example::{autoencoder_over, random_weights};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::*;

/// Shadow answers on `topic`, once there are at least `expected` of them.
pub(crate) async fn shadow_answers(
    topic: &str,
    expected: usize,
    log: &dyn Fn() -> String,
) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records: Vec<(String, serde_json::Value)> = read_positioned(topic, "read_uncommitted")
            .await
            .into_iter()
            .map(|r| (r.key, serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()))
            .collect();
        if records.len() >= expected {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {expected} shadow answers:\n{}",
            records.len(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn reading(i: usize) -> Vec<u8> {
    let event: serde_json::Map<String, serde_json::Value> = CAR_FIELDS
        .iter()
        .enumerate()
        .map(|(f, name)| {
            (
                (*name).to_owned(),
                serde_json::json!(((i * 7 + f * 3) % 11) as f64 * 0.3),
            )
        })
        .collect();
    serde_json::to_vec(&event).unwrap()
}

/// Produces `n` readings (numbered from `first`); returns where each landed and its payload.
async fn produce(topic: &str, first: usize, n: usize) -> BTreeMap<(i32, i64), Vec<u8>> {
    let producer: FutureProducer = kafka_config_at(&bootstrap()).set("linger.ms", "5").create().unwrap();
    let mut sent = BTreeMap::new();
    for i in first..first + n {
        let (key, payload) = (format!("car-{}", i % 13), reading(i));
        let delivered = producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        sent.insert((delivered.partition, delivered.offset), payload);
    }
    sent
}

/// What a predictor serving `alias` answers for each payload.
async fn served_scores(setup: &RegistrySetup, alias: &str, payloads: &[&Vec<u8>]) -> (u64, Vec<f64>) {
    let predictor = PredictorSetup::new(&setup.topic, "shadowed", alias).start().await;
    let mut typed = PredictorClient::new(predictor.channel().await);
    let mut version = 0;
    let mut scores = Vec::new();
    for payload in payloads {
        let request = PredictRequest {
            event_json: String::from_utf8((*payload).clone()).unwrap(),
            ..Default::default()
        };
        let answer = typed.predict(request).await.unwrap().into_inner();
        version = answer.model_version;
        scores.push(answer.score);
    }
    (version, scores)
}

fn position(answer: &serde_json::Value) -> (i32, i64) {
    (
        answer["sourcePartition"].as_i64().unwrap_or(0) as i32,
        answer["sourceOffset"].as_str().map_or(0, |s| s.parse().unwrap()),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs())
}

#[tokio::test]
async fn a_shadow_version_scores_a_copy_of_every_live_answer_without_failing_a_call() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let full = car_autoencoder("shadowed", &[8]);
    let subset = autoencoder_over("shadowed", &CAR_FIELDS[..10], &[4]);
    publish(&mut client, &full, &random_weights(&full, 1), "")
        .await
        .unwrap();
    // The candidate flags nothing, so the flags disagree wherever the live version flags.
    let lenient = kappa_api::model::ModelManifest {
        anomaly_threshold: 1e30,
        ..full.clone()
    };
    publish(&mut client, &lenient, &random_weights(&full, 2), "")
        .await
        .unwrap();
    publish(&mut client, &subset, &random_weights(&subset, 3), "")
        .await
        .unwrap();
    for (alias, version) in [("production", 1), ("candidate", 2)] {
        set_alias(&mut client, "shadowed", alias, version).await.unwrap();
    }
    let (sensors, predictions, shadows) = (
        unique("test.shadow-sensors"),
        unique("test.shadow-predictions"),
        unique("test.shadow-answers"),
    );
    create_topic_with_partitions(&sensors, 3).await;
    create_topic(&predictions, &[]).await;
    create_topic(&shadows, &[]).await;
    let predictor = PredictorSetup::new(&setup.topic, "shadowed", "production")
        .stream(&sensors, &predictions)
        .arg("--shadow=candidate")
        .arg(format!("--shadow-topic={shadows}"))
        .start()
        .await;
    predictor
        .wait_for_metric("kappa_predictor_shadow_version", 2.0, "the shadow never loaded v2")
        .await;

    // Stream events and gRPC calls at the same time.
    let grpc = {
        let channel = predictor.channel().await;
        tokio::spawn(async move {
            let mut typed = PredictorClient::new(channel);
            let mut answered = BTreeMap::new();
            for i in 0..400 {
                let request = PredictRequest {
                    event_json: String::from_utf8(reading(10_000 + i)).unwrap(),
                    request_id: format!("req-{i}"),
                    ..Default::default()
                };
                let answer = typed.predict(request).await.expect("a live call failed").into_inner();
                answered.insert(answer.request_id, answer.score);
            }
            answered
        })
    };
    let sent = produce(&sensors, 0, 900).await;
    let answered = grpc.await.unwrap();
    assert_eq!(answered.len(), 400);
    let expected = sent.len() + answered.len();
    let records = shadow_answers(&shadows, expected, &|| predictor.service.log_text()).await;
    assert_eq!(records.len(), expected, "one shadow answer per live answer");

    let live: BTreeMap<(i32, i64), f64> = read_positioned(&predictions, "read_committed")
        .await
        .iter()
        .map(|r| {
            let p: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            (position(&p), p["score"].as_f64().unwrap())
        })
        .collect();
    let mut stream_answers = BTreeMap::new();
    for (key, a) in &records {
        assert_eq!(a["modelName"], "shadowed");
        assert_eq!(
            (a["liveVersion"].as_str(), a["shadowVersion"].as_str()),
            (Some("1"), Some("2")),
            "{a}"
        );
        match a["origin"].as_str().unwrap() {
            "stream" => {
                let at = position(a);
                assert!(
                    close(a["liveScore"].as_f64().unwrap(), live[&at]),
                    "{a} vs live {}",
                    live[&at]
                );
                stream_answers.insert(at, a["shadowScore"].as_f64().unwrap());
            }
            "predict" => assert!(close(a["liveScore"].as_f64().unwrap(), answered[key]), "{key}: {a}"),
            other => panic!("unexpected origin {other}: {a}"),
        }
    }
    assert_eq!(
        stream_answers.keys().collect::<BTreeSet<_>>(),
        sent.keys().collect::<BTreeSet<_>>(),
        "every stream event has a shadow answer"
    );
    // The shadow's scores are what v2 answers when it is the served version.
    let sample: Vec<(&(i32, i64), &Vec<u8>)> = sent.iter().step_by(45).collect();
    let (version, scores) =
        served_scores(&setup, "candidate", &sample.iter().map(|(_, p)| *p).collect::<Vec<_>>()).await;
    assert_eq!(version, 2);
    for ((at, _), served) in sample.iter().zip(scores) {
        assert!(
            close(stream_answers[at], served),
            "{at:?}: shadow {} vs served {served}",
            stream_answers[at]
        );
    }
    assert_eq!(
        predictor
            .metric("kappa_predictor_shadow_rows_total{outcome=\"dropped\"}")
            .await,
        Some(0.0)
    );
    let flips = records
        .iter()
        .filter(|(_, a)| {
            a["liveIsAnomaly"].as_bool().unwrap_or(false) != a["shadowIsAnomaly"].as_bool().unwrap_or(false)
        })
        .count();
    assert!(
        flips > 0,
        "the lenient candidate should disagree with the live version somewhere"
    );
    assert_eq!(
        predictor.metric("kappa_predictor_shadow_flag_flips_total").await,
        Some(flips as f64)
    );

    // kappa compare says the same as the records.
    let out = Command::new(binary("kappa"))
        .args(["compare", "--kafka-bootstrap", &bootstrap(), "--model", "shadowed"])
        .args(["--topic", &shadows, "--last-seconds", "600", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let windows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let total: u64 = windows.iter().map(|w| w["answers"].as_u64().unwrap()).sum();
    let disagreeing: u64 = windows
        .iter()
        .map(|w| w["live_only"].as_u64().unwrap() + w["shadow_only"].as_u64().unwrap())
        .sum();
    assert_eq!((total, disagreeing), (expected as u64, flips as u64), "{windows:#?}");
    let text = Command::new(binary("kappa"))
        .args(["compare", "--kafka-bootstrap", &bootstrap(), "--model", "shadowed"])
        .args(["--topic", &shadows, "--last-seconds", "600"])
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&text.stdout));

    // The candidate moves to a version over other features: the shadow reads the events with
    // its own schema.
    set_alias(&mut client, "shadowed", "candidate", 3).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while predictor.metric("kappa_predictor_shadow_version").await != Some(3.0) {
        assert!(Instant::now() < deadline, "the shadow never moved to v3");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let later = produce(&sensors, 900, 200).await;
    let records = shadow_answers(&shadows, expected + later.len(), &|| predictor.service.log_text()).await;
    let on_v3: BTreeMap<(i32, i64), f64> = records
        .iter()
        .filter(|(_, a)| a["shadowVersion"] == "3")
        .map(|(_, a)| (position(a), a["shadowScore"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        on_v3.keys().collect::<BTreeSet<_>>(),
        later.keys().collect::<BTreeSet<_>>()
    );
    let sample: Vec<(&(i32, i64), &Vec<u8>)> = later.iter().step_by(20).collect();
    let (version, scores) =
        served_scores(&setup, "candidate", &sample.iter().map(|(_, p)| *p).collect::<Vec<_>>()).await;
    assert_eq!(version, 3);
    for ((at, _), served) in sample.iter().zip(scores) {
        assert!(
            close(on_v3[at], served),
            "{at:?}: shadow {} vs served {served}",
            on_v3[at]
        );
    }
    println!(
        "{} live answers shadowed by v2 ({flips} flag flips), {} stream events by v3 over 10 features",
        expected,
        later.len()
    );
}
