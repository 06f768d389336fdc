//! Poison events in stream scoring (issue 30, item 4): an event whose prediction the predictions
//! topic cannot take, or whose key no record should carry, ends as an error prediction with the
//! reason, and the events after it are scored as before.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use kappa_fleet::CAR_FIELDS;

use crate::support::*;

fn event(key: &str, value: f64) -> (String, Vec<u8>) {
    let event: serde_json::Map<String, serde_json::Value> = CAR_FIELDS
        .iter()
        .map(|f| ((*f).to_owned(), serde_json::json!(value)))
        .collect();
    (key.to_owned(), serde_json::to_vec(&event).unwrap())
}

#[tokio::test]
async fn an_event_the_predictions_topic_cannot_take_ends_as_an_error_and_the_stream_goes_on() {
    poison_ends_as_an_error(Delivery::AtLeastOnce).await;
}

/// Exactly-once aborted and scored the same batch again forever before; batched with others,
/// the refused record is found by sending the suspects alone.
#[tokio::test]
async fn exactly_once_answers_a_poison_event_with_an_error_and_commits_the_rest_once() {
    poison_ends_as_an_error(Delivery::ExactlyOnce).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
}

async fn poison_ends_as_an_error(delivery: Delivery) {
    let (setup, _registry, _client, manifest) = registry_with_car_model("poisoned").await;
    let model = manifest.name.clone();
    let (sensors, predictions) = (unique("test.sensors"), unique("test.predictions"));
    create_topic_with_partitions(&sensors, 1).await;
    // Room for a prediction with an ordinary key, not for one keyed by 900 bytes (one record a
    // batch, as the topic's limit is a batch's).
    create_topic(&predictions, &[("max.message.bytes", "1000")]).await;
    let setup = PredictorSetup::new(&setup.topic, &model, "latest").stream(&sensors, &predictions);
    let (streaming, isolation) = match delivery {
        Delivery::AtLeastOnce => (
            setup.arg("--kafka-property=batch.num.messages=1").start().await,
            "read_uncommitted",
        ),
        // Batched as the producer likes: the record too large fails the others of its batch.
        Delivery::ExactlyOnce => (setup.arg("--stream-exactly-once").start().await, "read_committed"),
    };

    // Random letters: the producer's compression cannot shrink them under the topic's limit.
    let too_large: String = {
        use rand::Rng as _;
        let mut rng = rand::rng();
        (0..900).map(|_| char::from(rng.random_range(b'a'..=b'z'))).collect()
    };
    let too_long = "l".repeat(5_000);
    let mut events = vec![event(&too_large, 1.0), event(&too_long, 1.0)];
    events.extend((0..50).map(|i| event(&format!("car{i}"), 1.0)));
    let sent = produce_keyed(&sensors, &events).await;
    let wanted: HashSet<i64> = sent.iter().map(|(_, offset)| *offset).collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    let answers: HashMap<i64, serde_json::Value> = loop {
        let read = read_topic(&predictions, isolation).await;
        if delivery == Delivery::ExactlyOnce {
            let offsets: Vec<&str> = read
                .iter()
                .map(|r| std::str::from_utf8(r.value.as_deref().unwrap()).unwrap())
                .collect();
            let unique: HashSet<&&str> = offsets.iter().collect();
            assert_eq!(unique.len(), offsets.len(), "a prediction was committed twice");
        }
        let answers: HashMap<i64, serde_json::Value> = read
            .iter()
            .map(|r| {
                let answer: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                let offset = answer["sourceOffset"].as_str().map_or(0, |s| s.parse().unwrap());
                (offset, answer)
            })
            .collect();
        if wanted.iter().all(|o| answers.contains_key(o)) {
            break answers;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events unanswered; the stream stalled:\n{}",
            wanted.iter().filter(|o| !answers.contains_key(o)).count(),
            wanted.len(),
            streaming.service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (refused, long) = (&answers[&sent[0].1], &answers[&sent[1].1]);
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("could not be written to the predictions topic"),
        "{refused}"
    );
    assert!(refused["key"].as_str().unwrap().starts_with("sha256:"), "{refused}");
    let error = long["error"].as_str().unwrap_or_default();
    assert!(error.contains("5000 bytes"), "{long}");
    assert!(long["key"].as_str().unwrap().len() < 100, "{long}");
    for (_, offset) in &sent[2..] {
        let answer = &answers[offset];
        assert_eq!(answer["error"].as_str().unwrap_or_default(), "", "{answer}");
        assert!(answer["score"].as_f64().is_some_and(f64::is_finite), "{answer}");
    }
    assert_eq!(
        streaming
            .metric("kappa_predictor_stream_refused_predictions_total")
            .await,
        Some(1.0)
    );
    assert_eq!(
        streaming
            .metric(r#"kappa_predictor_stream_events_total{reason="key_too_long"}"#)
            .await,
        Some(1.0)
    );
}

/// A stream that stops delivering while events wait is not ready (component `stream_progress`),
/// and ready again once predictions flow (issue 30, item 4). The predictions topic takes no
/// record older than the broker's clock (`message.timestamp.before.max.ms=0`): every write is
/// refused, and retried, until the topic is fixed.
#[tokio::test]
async fn a_stream_that_stops_delivering_is_reported_not_ready_until_it_flows_again() {
    let (setup, _registry, _client, manifest) = registry_with_car_model("stalled").await;
    let (sensors, predictions) = (unique("test.sensors"), unique("test.predictions"));
    create_topic_with_partitions(&sensors, 1).await;
    create_topic(&predictions, &[("message.timestamp.before.max.ms", "0")]).await;
    let streaming = PredictorSetup::new(&setup.topic, &manifest.name, "latest")
        .stream(&sensors, &predictions)
        .arg("--stream-stall-seconds=3")
        .start()
        .await;
    let name = "kappa.predictor.v1.Predictor";
    assert_eq!(
        health_status(&streaming.service, name).await,
        Some(HealthStatus::Serving)
    );
    let events: Vec<(String, Vec<u8>)> = (0..20).map(|i| event(&format!("car{i}"), 1.0)).collect();
    produce_keyed(&sensors, &events).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while health_status(&streaming.service, name).await != Some(HealthStatus::NotServing) {
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            streaming.service.log_text(),
            scrape(&streaming.metrics_url).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        streaming
            .service
            .log_text()
            .contains("stream scoring has delivered no prediction"),
        "the log says why"
    );

    alter_topic(
        &predictions,
        &[("message.timestamp.before.max.ms", "9223372036854775807")],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while health_status(&streaming.service, name).await != Some(HealthStatus::Serving) {
        assert!(Instant::now() < deadline, "{}", streaming.service.log_text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        wait_for_records(&predictions, 20, Duration::from_secs(30)).await.len(),
        20
    );
}
