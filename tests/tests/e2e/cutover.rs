//! Cutover by event time: an alias moved with an effective event time makes stream scoring use
//! the new version for exactly the events at or after it, whatever order they arrive in across
//! partitions, and a fresh predictor replaying the sensor topic gives every event the same
//! version and score.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kappa_api::registry as pb;
use kappa_fleet::{CAR_FIELDS, car_autoencoder};
use kappa_model::example::random_weights;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tonic::Code;

use crate::support::*;

/// (partition, offset) → (version, score) of every prediction on `topic`, once `expected` are there.
async fn answers(topic: &str, expected: usize, log: &dyn Fn() -> String) -> BTreeMap<(i32, i64), (u64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = BTreeMap::new();
        for r in read_positioned(topic, "read_committed").await {
            let a: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            assert!(a["error"].as_str().is_none_or(str::is_empty), "{a}");
            let at = (
                a["sourcePartition"].as_i64().unwrap_or(0) as i32,
                a["sourceOffset"].as_str().map_or(0, |s| s.parse().unwrap()),
            );
            let version = a["modelVersion"].as_str().unwrap().parse().unwrap();
            seen.insert(at, (version, a["score"].as_f64().unwrap()));
        }
        if seen.len() >= expected {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {expected} events answered:\n{}",
            seen.len(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn an_alias_moved_at_an_event_time_scores_earlier_events_with_the_old_version_in_any_order_and_on_replay() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let m = car_autoencoder("cutover", &[8]);
    for seed in 1..=2 {
        publish(&mut client, &m, &random_weights(&m, seed), "").await.unwrap();
    }
    let set = |version, effective_from_ms| pb::SetAliasRequest {
        name: "cutover".into(),
        alias: "production".into(),
        version,
        effective_from_ms,
    };
    // A cutover needs a version before it, and a time that is one.
    let refused = client.set_alias(set(2, 1_000)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("points at no version yet"),
        "{}",
        refused.message()
    );
    let refused = client.set_alias(set(2, -5)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    client.set_alias(set(1, 0)).await.unwrap();

    let sensors = unique("test.cutover-sensors");
    let predictions = unique("test.cutover-predictions");
    create_topic_with_partitions(&sensors, 3).await;
    create_topic(&predictions, &[]).await;
    let predictor = PredictorSetup::new(&setup.topic, "cutover", "production")
        .stream(&sensors, &predictions)
        .start()
        .await;

    // The move applies from an event time the stream has not reached.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let cutover = now + 600_000;
    let moved = client.set_alias(set(2, cutover)).await.unwrap().into_inner();
    assert_eq!(moved.previous_version, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while predictor.metric("kappa_predictor_cutover_from_ms").await != Some(cutover as f64)
        || predictor.metric("kappa_predictor_loaded_version").await != Some(2.0)
    {
        assert!(Instant::now() < deadline, "the predictor never took the cutover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Events on both sides of the cutover, out of order: partition 0 gets the later events
    // first, partitions 1 and 2 the earlier ones after them, each in falling event time; one
    // event falls exactly on the cutover.
    let producer: FutureProducer = kafka_config_at(&bootstrap()).set("linger.ms", "5").create().unwrap();
    let mut times = BTreeMap::new();
    let plan: Vec<(i32, i64)> = (0..=60)
        .map(|i| (0, cutover + 60_000 - i * 1_000))
        .chain((0..60).map(|i| (1 + (i % 2) as i32, cutover - 1 - i * 1_000)))
        .collect();
    for (i, (partition, ts)) in plan.iter().enumerate() {
        let reading: serde_json::Map<String, serde_json::Value> = CAR_FIELDS
            .iter()
            .enumerate()
            .map(|(f, name)| ((*name).to_owned(), serde_json::json!(((i + f) % 7) as f64 * 0.5)))
            .collect();
        let payload = serde_json::to_vec(&reading).unwrap();
        let key = format!("car-{i}");
        let record = FutureRecord::to(&sensors)
            .key(&key)
            .payload(&payload)
            .partition(*partition)
            .timestamp(*ts);
        let delivered = producer.send(record, Duration::from_secs(10)).await.unwrap();
        times.insert((delivered.partition, delivered.offset), *ts);
    }
    assert_eq!(times.values().filter(|t| **t == cutover).count(), 1);
    let live = answers(&predictions, times.len(), &|| predictor.service.log_text()).await;
    for (at, (version, _)) in &live {
        let expected = if times[at] < cutover { 1 } else { 2 };
        assert_eq!(
            *version, expected,
            "event at {at:?} with time {} (cutover {cutover}) scored by v{version}",
            times[at]
        );
    }
    let before = times.values().filter(|t| **t < cutover).count();
    println!(
        "live: {before} events before the cutover scored by v1, {} after by v2",
        times.len() - before
    );

    // Replay: a fresh predictor reads the models log (the alias record carries the cutover) and
    // the whole sensor topic in a group of its own.
    let replayed_topic = unique("test.cutover-replay");
    create_topic(&replayed_topic, &[]).await;
    let replay = PredictorSetup::new(&setup.topic, "cutover", "production")
        .stream(&sensors, &replayed_topic)
        .start()
        .await;
    let replayed = answers(&replayed_topic, times.len(), &|| replay.service.log_text()).await;
    assert_eq!(
        replayed, live,
        "the replay gives every event the version and score it got live"
    );
    assert_eq!(
        predictor.metric("kappa_predictor_cutover_fallbacks_total").await,
        Some(0.0)
    );
}
