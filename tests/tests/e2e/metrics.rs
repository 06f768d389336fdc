//! Every service's `/metrics`: valid OpenMetrics text (checked by the reference Python parser),
//! every series the manual documents is exposed, and the series move after traffic.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use kappa_api::{
    predictor::{PredictRequest, predictor_client::PredictorClient},
    trainer::JobPhase,
};
use kappa_fleet::{CAR_FIELDS, car_autoencoder};
use kappa_model::example::random_weights;

use crate::{
    support::*,
    trainer::{spec, start_job, trainer_client, wait_done},
};

/// Metric family names the manual's Observability page (docs/observability.md) documents, by service prefix.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/observability.md")).unwrap();
    let section = readme
        .split("\n## Observability")
        .nth(1)
        .expect("docs/observability.md has an Observability section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `kappa_")) {
        let series = line.trim_start_matches("| `").split('`').next().unwrap();
        let name = series.split('{').next().unwrap();
        let service = name.split('_').take(2).collect::<Vec<_>>().join("_");
        names.entry(service).or_default().insert(name.to_owned());
    }
    names
}

/// The families in `text` as the reference parser reads them (name -> type); panics when the
/// parser rejects the text.
fn parse_openmetrics(text: &str) -> BTreeMap<String, String> {
    let python = std::env::var("KAPPA_TEST_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap();
        format!("{home}/.cache/kappa/py/bin/python")
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check_openmetrics.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} ({e}); `make test` installs it (scripts/tools.sh)"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(n, t)| (n.to_owned(), t.to_owned())))
        .collect()
}

/// Checks one scrape and returns it. Series with labels appear with their first label set, so
/// `all_present` is asked for only after traffic.
async fn checked_scrape(
    url: &str,
    service: &str,
    documented: &BTreeMap<String, BTreeSet<String>>,
    all_present: bool,
) -> String {
    let text = scrape(url).await;
    let families = parse_openmetrics(&text);
    // OpenMetrics names counters without `_total`; docs/observability.md names the exposed series.
    let exposed: BTreeSet<String> = families
        .iter()
        .map(|(name, kind)| {
            if kind == "counter" {
                format!("{name}_total")
            } else {
                name.clone()
            }
        })
        .collect();
    // Every server also exposes the runtime's connection series.
    let wanted: BTreeSet<String> = documented[service]
        .union(&documented["kappa_server"])
        .cloned()
        .collect();
    let wanted = &wanted;
    let missing: Vec<_> = wanted.difference(&exposed).collect();
    assert!(
        !all_present || missing.is_empty(),
        "{service}: documented but not exposed: {missing:?}\n{text}"
    );
    let undocumented: Vec<_> = exposed.difference(wanted).collect();
    assert!(
        undocumented.is_empty(),
        "{service}: exposed but not in docs/observability.md: {undocumented:?}"
    );
    text
}

fn value(text: &str, series: &str) -> f64 {
    series_value(text, series).unwrap_or(0.0)
}

#[tokio::test]
async fn every_services_metrics_are_valid_documented_and_move_with_traffic() {
    let documented = documented();
    assert_eq!(
        documented.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "kappa_console",
            "kappa_predictor",
            "kappa_registry",
            "kappa_server",
            "kappa_trainer"
        ]
    );
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let registry_metrics = registry.metrics_url.clone();
    let before = checked_scrape(&registry_metrics, "kappa_registry", &documented, false).await;
    assert!(value(&before, "kappa_registry_replay_seconds") > 0.0, "{before}");

    let mut m = car_autoencoder("metered", &[8]);
    // A reference profile, as the trainer writes one, so the drift series exist too.
    m.lineage = Some(kappa_api::model::Lineage {
        reference: Some(kappa_api::model::ReferenceProfile {
            features: CAR_FIELDS
                .iter()
                .map(|f| kappa_model::drift::of(f, (0..100).map(f64::from)).unwrap())
                .collect(),
            validation_scores: kappa_model::drift::of("score", (0..100).map(|i| f64::from(i) / 10.0)),
            validation_anomaly_rate: 0.01,
        }),
        ..Default::default()
    });
    let weights = random_weights(&m, 1);
    publish(&mut registry_client(&registry).await, &m, &weights, "")
        .await
        .unwrap();
    let after = checked_scrape(&registry_metrics, "kappa_registry", &documented, true).await;
    for (series, by) in [
        (r#"kappa_registry_publishes_total{outcome="created"}"#, 1.0),
        ("kappa_registry_published_bytes_total", weights.len() as f64),
        (r#"kappa_registry_requests_total{rpc="Publish",code="OK"}"#, 1.0),
    ] {
        assert_eq!(value(&after, series) - value(&before, series), by, "{series}\n{after}");
    }
    assert!(value(&after, "kappa_registry_log_position") > value(&before, "kappa_registry_log_position"));
    assert_eq!(value(&after, "kappa_registry_fenced"), 0.0);

    let sensors = unique("test.metered-sensors");
    create_topic(&sensors, &[]).await;
    let predictor = PredictorSetup::new(&setup.topic, "metered", "latest")
        .stream(&sensors, &unique("test.metered-predictions"))
        .arg("--monitor-window-seconds=1")
        .arg("--monitor-min-rows=1")
        .arg(format!("--monitoring-topic={}", unique("test.metered-monitoring")))
        .arg("--shadow=latest")
        .arg(format!("--shadow-topic={}", unique("test.metered-shadow")))
        .start()
        .await;
    let before = checked_scrape(&predictor.metrics_url, "kappa_predictor", &documented, false).await;
    assert_eq!(value(&before, "kappa_predictor_loaded_version"), 1.0);
    assert_eq!(value(&before, "kappa_predictor_model_ready"), 1.0);
    let mut client = PredictorClient::new(predictor.channel().await);
    for _ in 0..5 {
        client
            .predict(PredictRequest {
                features: CAR_FIELDS.iter().map(|f| ((*f).to_owned(), 1.0)).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    produce_raw(&sensors, vec![("car1".into(), b"{not json".to_vec())]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let text = checked_scrape(&predictor.metrics_url, "kappa_predictor", &documented, false).await;
        if value(&text, r#"kappa_predictor_stream_events_total{reason="malformed"}"#) >= 1.0
            && text.contains("kappa_predictor_feature_drift_psi{")
            && value(&text, r#"kappa_predictor_shadow_rows_total{outcome="scored"}"#) >= 5.0
        {
            break checked_scrape(&predictor.metrics_url, "kappa_predictor", &documented, true).await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the malformed event was never counted, no monitoring window measured the calls, or the shadow did not score them:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (series, by) in [
        (r#"kappa_predictor_requests_total{rpc="Predict",code="OK"}"#, 5.0),
        (r#"kappa_predictor_request_duration_seconds_count{rpc="Predict"}"#, 5.0),
        ("kappa_predictor_batch_size_count", 5.0),
    ] {
        assert_eq!(value(&after, series) - value(&before, series), by, "{series}\n{after}");
    }

    let trainer = TrainerSetup::new(&registry).start().await;
    let trainer_metrics = trainer.metrics_url.clone();
    let before = checked_scrape(&trainer_metrics, "kappa_trainer", &documented, false).await;
    let topic = unique("test.metered-fleet");
    run_fleet(
        &topic,
        &[
            "--cars",
            "5",
            "--events",
            "500",
            "--rate",
            "0",
            "--backdate-seconds",
            "600",
        ],
    );
    let mut client = trainer_client(&trainer).await;
    let job = start_job(&mut client, spec("metered-trained", &topic, 0, i64::MAX / 2)).await;
    let done = wait_done(&mut client, &job.job_id, Duration::from_secs(120)).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    let after = checked_scrape(&trainer_metrics, "kappa_trainer", &documented, true).await;
    for (series, by) in [
        (r#"kappa_trainer_jobs_total{outcome="succeeded"}"#, 1.0),
        ("kappa_trainer_samples_read_total", 500.0),
        ("kappa_trainer_published_total", 1.0),
    ] {
        assert_eq!(value(&after, series) - value(&before, series), by, "{series}\n{after}");
    }
    assert!(value(&after, "kappa_trainer_loss") > 0.0);
    assert!(value(&after, "kappa_trainer_training_samples_per_second") > 0.0);
    assert_eq!(value(&after, "kappa_trainer_jobs_running"), 0.0);

    // The console: its series documented, its gauges set once a second.
    let console = Launch::new("kappa-console", "metrics")
        .args([
            format!("--http-listen=127.0.0.1:{}", free_port()),
            format!("--registry={}", registry.address),
            format!("--predictions-topic={}", unique("test.metrics-predictions")),
        ])
        .start("")
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = checked_scrape(&console.metrics_url, "kappa_console", &documented, true).await;
    assert_eq!(value(&text, "kappa_console_units"), 0.0, "{text}");
    assert_eq!(value(&text, "kappa_console_live_streams"), 0.0, "{text}");
}
