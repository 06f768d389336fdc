//! `make demo`'s script, run as a newcomer would (Kafka and Jaeger already up, as `make test`
//! leaves them), on topics and ports of its own so it cannot disturb the other tests.

use std::{path::Path, process::Command, time::Instant};

use crate::support::*;

#[test]
fn the_demo_retrains_to_version_2_and_both_predictors_swap_without_a_failed_call() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = binary("kappa").parent().unwrap().parent().unwrap().to_owned();
    let port = |_| free_port().to_string();
    let ports: Vec<String> = (0..10).map(port).collect();
    let started = Instant::now();
    let output = Command::new(root.join("scripts/demo.sh"))
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target)
        .env("DEMO_SECONDS", "1")
        .env("DEMO_RETRAIN_SECONDS", "20")
        .env("DEMO_MODELS_TOPIC", unique("test.demo-models"))
        .env("DEMO_SENSOR_TOPIC", unique("test.demo-sensors"))
        .env("DEMO_PREDICTIONS_TOPIC", unique("test.demo-predictions"))
        .env("DEMO_MONITORING_TOPIC", unique("test.demo-monitoring"))
        .env("DEMO_TURBINE_TOPIC", unique("test.demo-turbines"))
        .env("DEMO_CONSUMER_GROUP", unique("test-demo"))
        .env("DEMO_REGISTRY_PORT", &ports[0])
        .env("DEMO_PREDICTOR_PORT", &ports[1])
        .env("DEMO_PREDICTOR_B_PORT", &ports[2])
        .env("DEMO_TRAINER_PORT", &ports[3])
        .env("DEMO_REGISTRY_METRICS_PORT", &ports[4])
        .env("DEMO_PREDICTOR_METRICS_PORT", &ports[5])
        .env("DEMO_PREDICTOR_B_METRICS_PORT", &ports[6])
        .env("DEMO_TRAINER_METRICS_PORT", &ports[7])
        .env("DEMO_BRIDGE_PORT", &ports[8])
        .env("DEMO_BRIDGE_METRICS_PORT", &ports[9])
        .env("DEMO_MQTT_PREFIX", unique("test-demo-cars"))
        .env("KAPPA_KAFKA_BOOTSTRAP", bootstrap())
        .env("KAPPA_DEMO_RUN_DIR", std::env::temp_dir().join(unique("kappa-demo")))
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the demo failed:\n{text}");
    for replica in ["a", "b"] {
        assert!(
            text.contains(&format!("predictor {replica}: serving v1,")),
            "replica {replica} first served version 1:\n{text}"
        );
        assert!(
            text.contains(&format!("predictor {replica}: swapped to version 2,"))
                && text.contains("refused versions 0, failed requests 0"),
            "replica {replica} swapped to version 2 without a failed request:\n{text}"
        );
    }
    assert!(
        text.contains("the swap to version 2 under load:") && text.contains(", 0 failed (as the client saw it)"),
        "the client kept calling through the swap and saw no failure:\n{text}"
    );
    // The client saw both versions answer on each replica: the swap happened under its load.
    let answered_by_both = text
        .lines()
        .filter(|l| l.contains(&format!("127.0.0.1:{}:", ports[1])) || l.contains(&format!("127.0.0.1:{}:", ports[2])))
        .filter(|l| l.contains(" v1 x") && l.contains(" v2 x"))
        .count();
    assert_eq!(answered_by_both, 2, "each replica answered with v1, then v2:\n{text}");
    // The turbine fleet: its schema inferred from its own nested fields, then served.
    assert!(
        text.contains("features (7): gearbox.oil_temp_c, gearbox.vibration_mm_s, generator.power_kw"),
        "the turbine features were inferred:\n{text}"
    );
    assert!(
        text.contains("label status.state:"),
        "the inspection shows the label balance:\n{text}"
    );
    let scored = text
        .lines()
        .find(|l| l.contains("200 rows:"))
        .unwrap_or_else(|| panic!("the turbine events were scored:\n{text}"));
    let anomalies: u32 = scored
        .split("200 rows: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{scored}"));
    assert!(
        scored.ends_with(", 0 refused"),
        "every turbine event was scored: {scored}\n{text}"
    );
    assert!(
        anomalies > 0,
        "failing turbines among the last 200 events are flagged: {scored}"
    );
    // The cars' 20,000 history messages came in over MQTT, each produced once by the bridge.
    assert!(
        text.contains("kappa-bridge: 20000 messages produced to"),
        "the history went cars -> MQTT -> bridge -> Kafka:\n{text}"
    );
    // The history went to the remote tier before round 1, which read it back from there: every
    // record it read that was in the topic then (the live fleet had not started).
    let remote = text
        .lines()
        .find_map(|l| l.split("round 1 read its history back from the remote tier: ").nth(1))
        .and_then(|rest| {
            let mut words = rest.split(' ');
            Some((words.next()?.parse::<u64>().ok()?, words.nth(1)?.parse::<u64>().ok()?))
        });
    assert!(
        remote.is_some_and(|(remote, read)| remote > 0 && remote == read),
        "round 1 read from the remote tier: {remote:?}\n{text}"
    );
    // The shifted coolant sensors are named by the predictors' monitoring windows.
    assert!(
        text.contains("DRIFT: ") && text.contains("    coolant_temp  "),
        "drift was shown:\n{text}"
    );
    // v2 and v1 replayed over the drifted minutes, on labelled events.
    let labelled = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("labelled: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        text.contains("backtest of ") && text.contains("v1 against v2: v1 flags") && labelled.is_some_and(|n| n > 0),
        "the backtest of v2 against v1 was shown on labelled events:\n{text}"
    );
    assert!(text.contains("Demo complete"), "{text}");
    println!("the demo took {:.0} s", started.elapsed().as_secs_f64());
}
