//! `kappa fleet` against the real broker: what it writes is what the trainer and predictor read.

use std::process::Command;

use crate::support::*;

/// `kappa fleet` against the test broker, writing to `topic`.
fn fleet_command(topic: &str) -> Command {
    let mut command = Command::new(binary("kappa"));
    command.args(["fleet", "--kafka-bootstrap", &bootstrap(), "--topic", topic]);
    command
}

fn fleet(topic: &str, seed: u64, extra: &[&str]) -> String {
    run_ok(
        fleet_command(topic).args(["--seed", &seed.to_string()]).args(extra),
        "kappa fleet",
    )
}

#[tokio::test]
async fn the_fleet_writes_keyed_plausible_labelled_telemetry_with_back_dated_timestamps() {
    let topic = unique("test.fleet");
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let report = fleet(
        &topic,
        7,
        &[
            "--cars",
            "20",
            "--events",
            "2000",
            "--rate",
            "0",
            "--failing-share",
            "0.5",
            "--backdate-seconds",
            "3600",
        ],
    );
    assert!(
        report.contains("2000 events sent, 2000 acknowledged by Kafka, 0 failed"),
        "{report}"
    );

    let records = read_topic_with_timestamps(&topic).await;
    assert_eq!(records.len(), 2000);
    let (mut failing, mut cars) = (0, std::collections::HashSet::new());
    for (key, value, timestamp) in &records {
        let event: serde_json::Value = serde_json::from_slice(value).unwrap();
        assert_eq!(event["car"].as_str().unwrap(), key, "records are keyed by car id");
        cars.insert(key.clone());
        for field in kappa_fleet::CAR_FIELDS {
            assert!(
                event[field].as_f64().is_some_and(f64::is_finite),
                "{field} missing in {event}"
            );
        }
        let voltage = event["battery_voltage"].as_f64().unwrap();
        assert!(
            (11.0..=15.5).contains(&voltage),
            "battery voltage {voltage} is not a 12 V system"
        );
        let pct = event["battery_percentage"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&pct), "battery percentage {pct}");
        for tire in ["tire_pressure_1_1", "tire_pressure_2_2"] {
            assert!((19.0..=35.0).contains(&event[tire].as_f64().unwrap()));
        }
        let label = event["failure_occurred"].as_str().unwrap();
        if label == "true" {
            failing += 1;
        }
        assert!(
            *timestamp >= before_ms - 3_600_000 && *timestamp <= before_ms,
            "event time {timestamp} is not in the back-dated hour"
        );
    }
    assert_eq!(cars.len(), 20);
    assert!(
        failing > 0 && failing < 2000,
        "{failing} of 2000 events labelled failing"
    );

    // The same seed gives the same telemetry.
    let again = unique("test.fleet");
    fleet(
        &again,
        7,
        &[
            "--cars",
            "20",
            "--events",
            "200",
            "--rate",
            "0",
            "--failing-share",
            "0.5",
        ],
    );
    // Kafka keeps order per car (per key), not across the topic's partitions: compare each
    // car's telemetry, the shorter run's being the start of the longer one's.
    let by_car = |records: Vec<(String, Vec<u8>, i64)>| {
        let mut cars: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
        for (car, value, _) in records {
            cars.entry(car).or_default().push(value);
        }
        cars
    };
    let first = by_car(records);
    let second = by_car(read_topic_with_timestamps(&again).await);
    assert_eq!(second.values().map(Vec::len).sum::<usize>(), 200);
    for (car, events) in &second {
        assert_eq!(&first[car][..events.len()], &events[..], "{car}");
    }
}

#[tokio::test]
async fn the_fleet_takes_the_services_kafka_flags_and_the_operator_overrides_its_defaults() {
    // The fleet's producer defaults to acks=all; an operator's value replaces it, and librdkafka
    // refuses this one by name, so the override is seen to reach the client.
    let topic = unique("test.fleet-props");
    let out = fleet_command(&topic)
        .args(["--events", "5", "--rate", "0", "--kafka-property", "acks=bogus"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("acks") && stderr.contains("--kafka-property"),
        "{stderr}"
    );

    // Properties from a file (a mounted Secret), as the services read them: these are applied
    // and the fleet delivers.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.properties");
    std::fs::write(
        &file,
        "# as a Secret would hold it\nclient.id=kappa-fleet-e2e\nenable.idempotence=false\nacks=1\n",
    )
    .unwrap();
    let out = Command::new(binary("kappa"))
        .args([
            "fleet",
            "--kafka-bootstrap",
            &bootstrap(),
            "--topic",
            &topic,
            "--events",
            "5",
            "--rate",
            "0",
        ])
        .arg("--kafka-properties-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_topic_with_timestamps(&topic).await.len(), 5);
}
