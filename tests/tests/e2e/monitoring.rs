//! Drift monitoring end to end: the trainer stores a reference profile of the data a version was
//! fitted on, and the predictor compares the live inputs with it, window by window, in its
//! metrics and on the monitoring topic.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use kappa_api::trainer::{JobPhase, TrainingSpec};

use crate::{
    support::*,
    trainer::{spec, start_job, trainer_client, wait_done},
};

/// Scores JSON lines through the predictor with the real CLI.
fn score_lines(predictor: &Predictor, lines: &[serde_json::Value], dir: &Path, name: &str) {
    let file = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    run_ok(
        Command::new(binary("kappa"))
            .args(["predict", "--predictor", &predictor.service.address])
            .arg(&file),
        "kappa predict",
    );
}

/// The monitoring records written so far, in order.
async fn windows(topic: &str) -> Vec<serde_json::Value> {
    read_positioned(topic, "read_committed")
        .await
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

/// Waits for a window after the first `seen` that satisfies `wanted`; returns it and its index.
async fn next_window(
    topic: &str,
    seen: usize,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> (usize, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = windows(topic).await;
        if let Some((i, w)) = all.iter().enumerate().skip(seen).find(|(_, w)| wanted(w)) {
            return (i, w.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no such monitoring window after {seen}: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The proto3 JSON mapping leaves out zero values (`events`, a `psi` of 0).
fn events(window: &serde_json::Value) -> u64 {
    window["events"].as_str().map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn live_inputs_like_the_training_data_stay_under_the_drift_threshold_and_a_shifted_feature_alone_crosses_it() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry).start().await;
    let mut client = trainer_client(&trainer).await;
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("fleet.jsonl");
    let history = unique("test.fleet-history");
    // A healthy fleet of 20 cars over 10 minutes. Its readings drift on their own (batteries
    // drain), so "live data like the training data" is drawn from the same minutes: every third
    // reading of the range the model is trained on.
    run_fleet(
        &history,
        &[
            "--cars",
            "20",
            "--events",
            "12000",
            "--rate",
            "0",
            "--failing-share",
            "0",
            "--seed",
            "3",
            "--backdate-seconds",
            "3600",
            "--jsonl",
            jsonl.to_str().unwrap(),
        ],
    );
    let job = start_job(
        &mut client,
        TrainingSpec {
            epochs: 3,
            ..spec("monitored", &history, 0, i64::MAX / 2)
        },
    )
    .await;
    let done = wait_done(&mut client, &job.job_id, Duration::from_secs(300)).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    let reference = done
        .lineage
        .unwrap()
        .reference
        .expect("the lineage carries a reference profile");
    assert_eq!(reference.features.len(), kappa_fleet::CAR_FIELDS.len());
    for feature in &reference.features {
        assert_eq!(feature.shares.len(), feature.edges.len() + 1, "{feature:?}");
        assert!((feature.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{feature:?}");
    }
    assert!(reference.validation_scores.is_some());

    let monitoring = unique("test.monitoring");
    create_topic(&monitoring, &[]).await;
    let predictor = PredictorSetup::new(&setup.topic, "monitored", "latest")
        .arg("--monitor-window-seconds=5")
        .arg("--monitor-min-rows=1000")
        .arg(format!("--monitoring-topic={monitoring}"))
        .start()
        .await;
    let mut lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .step_by(3)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // In random order: the readings are in time order and drift on their own within the range,
    // so a window that caught only the start of the file would compare the first minutes alone.
    use rand::{SeedableRng as _, seq::SliceRandom as _};
    lines.shuffle(&mut rand::rngs::StdRng::seed_from_u64(5));
    assert_eq!(lines.len(), 4000);

    // Readings like the ones trained on: no feature drifts.
    score_lines(&predictor, &lines, dir.path(), "later.jsonl");
    let (a, window) = next_window(&monitoring, 0, |w| events(w) >= 1000).await;
    assert_eq!(window["modelName"], "monitored");
    assert_eq!(window["modelVersion"], "1");
    let features = window["features"].as_array().unwrap();
    assert_eq!(features.len(), kappa_fleet::CAR_FIELDS.len(), "{window:#}");
    for f in features {
        assert!(
            f["psi"].as_f64().unwrap_or(0.0) < 0.2,
            "{f} drifted on data like the training data: {window:#}"
        );
    }
    assert_eq!(window["drifted"].as_array().map_or(0, Vec::len), 0, "{window:#}");
    let largest = features
        .iter()
        .map(|f| f["psi"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    println!(
        "like the training data: {} rows, largest feature PSI {largest:.3}",
        events(&window)
    );
    let metric = |feature: &str| {
        format!("kappa_predictor_feature_drift_psi{{model=\"monitored\",version=\"1\",feature=\"{feature}\"}}")
    };
    let coolant = predictor
        .metric(&metric("coolant_temp"))
        .await
        .expect("the drift series");
    assert!(coolant < 0.2, "{coolant}");

    // A quiet window, then the same readings with the coolant 30 degrees hotter.
    let (quiet, _) = next_window(&monitoring, a + 1, |w| events(w) == 0).await;
    let hotter: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l["coolant_temp"] = serde_json::json!(l["coolant_temp"].as_f64().unwrap() + 30.0);
            l
        })
        .collect();
    score_lines(&predictor, &hotter, dir.path(), "hotter.jsonl");
    let (_, window) = next_window(&monitoring, quiet + 1, |w| events(w) >= 1000).await;
    let drifted: Vec<&str> = window["drifted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(drifted, ["coolant_temp"], "exactly the shifted feature: {window:#}");
    for f in window["features"].as_array().unwrap() {
        let psi = f["psi"].as_f64().unwrap_or(0.0);
        if f["feature"] == "coolant_temp" {
            assert!(psi >= 0.2, "{window:#}");
        } else {
            assert!(psi < 0.2, "{f} moved although only the coolant did: {window:#}");
        }
    }
    println!(
        "coolant +30: {} rows, drifted {drifted:?}, {}",
        events(&window),
        window["features"]
    );
    let coolant = predictor.metric(&metric("coolant_temp")).await.unwrap();
    let speed = predictor.metric(&metric("speed")).await.unwrap();
    assert!(coolant >= 0.2 && speed < 0.2, "coolant {coolant}, speed {speed}");

    // What an operator runs: the windows so far (one closes every 5 s, rows or not), the drifted
    // one named.
    let so_far = windows(&monitoring).await.len().to_string();
    let out = Command::new(binary("kappa"))
        .args(["monitor", "--kafka-bootstrap", &bootstrap(), "--model", "monitored"])
        .args(["--topic", &monitoring, "--last-seconds", "600", "--windows", &so_far])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(text.contains("no feature drifted (PSI < 0.2)"), "{text}");
    assert!(
        text.contains("DRIFT: coolant_temp") && text.contains("    coolant_temp"),
        "{text}"
    );
}
