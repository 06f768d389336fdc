//! Backtests end to end: `kappa backtest` replays a labelled later window through two trained
//! versions, and its numbers are checked against the same metrics computed here, independently,
//! from the predictors' own answers on those events. The trainer's backtest gate blocks a worse
//! challenger and lets one as good through.

use std::{process::Command, time::Duration};

use kappa_api::{
    predictor::{PredictRequest, predictor_client::PredictorClient},
    trainer::{BacktestGate, JobPhase, PromotionGate, TimeRange, TrainingSpec, trainer_client::TrainerClient},
};
use kappa_client::TracedChannel;

use crate::{
    support::*,
    trainer::{spec, start_job, trainer_client, wait_done},
};

/// What the test computes itself for one version over the window's events.
#[derive(Debug)]
pub(crate) struct Truth {
    pub anomalies: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub roc_auc: f64,
}

/// Precision, recall and F1 from the flags the predictor answered, and ROC AUC by counting
/// every (anomaly, normal) pair (ties count half): deliberately not the sort-based formula the
/// backtest uses.
pub(crate) fn truth(scores: &[f64], flags: &[bool], labels: &[bool]) -> Truth {
    let count = |f: &dyn Fn(bool, bool) -> bool| flags.iter().zip(labels).filter(|(p, l)| f(**p, **l)).count() as f64;
    let tp = count(&|p, l| p && l);
    let fp = count(&|p, l| p && !l);
    let fn_ = count(&|p, l| !p && l);
    let precision = tp / (tp + fp);
    let recall = tp / (tp + fn_);
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (sp, _) in scores.iter().zip(labels).filter(|(_, l)| **l) {
        for (sn, _) in scores.iter().zip(labels).filter(|(_, l)| !**l) {
            pairs += 1.0;
            wins += if sp > sn {
                1.0
            } else if sp == sn {
                0.5
            } else {
                0.0
            };
        }
    }
    Truth {
        anomalies: flags.iter().filter(|f| **f).count() as u64,
        precision,
        recall,
        f1: 2.0 * precision * recall / (precision + recall),
        roc_auc: wins / pairs,
    }
}

fn close(report: &serde_json::Value, field: &str, expected: f64) {
    let actual = report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no {field} in {report:#}"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "{field}: the backtest says {actual}, the independent computation {expected}"
    );
}

async fn train(client: &mut TrainerClient<TracedChannel>, spec: TrainingSpec) -> kappa_api::trainer::Job {
    let job = start_job(client, spec).await;
    wait_done(client, &job.job_id, Duration::from_secs(300)).await
}

pub(crate) fn backtest(args: &[&str]) -> String {
    run_ok(
        Command::new(binary("kappa")).arg("backtest").args(args),
        "kappa backtest",
    )
}

#[tokio::test]
async fn a_backtest_of_two_versions_matches_an_independent_computation_and_its_gate_blocks_a_worse_challenger() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry).start().await;
    let mut client = trainer_client(&trainer).await;
    let history = unique("test.backtest-history");
    create_topic_with_partitions(&history, 3).await;
    run_fleet(
        &history,
        &[
            "--cars",
            "24",
            "--events",
            "12000",
            "--rate",
            "0",
            "--failing-share",
            "0.3",
            "--seed",
            "8",
            "--backdate-seconds",
            "7200",
        ],
    );
    let records = read_positioned(&history, "read_committed").await;
    let (first, last) = (
        records.iter().map(|r| r.timestamp_ms).min().unwrap(),
        records.iter().map(|r| r.timestamp_ms).max().unwrap(),
    );
    // Trained on the first half, backtested on the second.
    let (split, end) = (first + (last - first) / 2, last + 1);
    // A few records in the window that are no events at all.
    let junk: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("junk-{i}"), b"{not json".to_vec())).collect();
    produce_with_timestamps(&history, &junk, &[split + 1; 5]).await;

    // v1: the full detector, promoted to the free alias.
    let strong = TrainingSpec {
        epochs: 12,
        hidden_layers: vec![12, 6, 12],
        promote_alias: "production".into(),
        ..spec("backtested", &history, first, split)
    };
    let done = train(&mut client, strong.clone()).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    assert!(done.promoted, "{}", done.promotion_reason);

    // v2: a challenger on two features that say nothing about failures. It reads other
    // features than the holder, so the hold-out cannot compare them: the backtest gate must.
    let gate = BacktestGate {
        topic: String::new(),
        window: Some(TimeRange {
            from_ms: split,
            to_ms: end,
        }),
        metric: "roc_auc".into(),
    };
    let weak = TrainingSpec {
        epochs: 2,
        hidden_layers: vec![2],
        features: ["speed", "throttle_pos"]
            .iter()
            .map(|p| kappa_api::trainer::FeatureSpec {
                path: (*p).into(),
                ..Default::default()
            })
            .collect(),
        promote_alias: "production".into(),
        gate: Some(PromotionGate {
            backtest: Some(gate.clone()),
            ..Default::default()
        }),
        ..spec("backtested", &history, first, split)
    };
    let done = train(&mut client, weak).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    assert_eq!(done.published_version, 2);
    assert!(
        !done.promoted,
        "a worse challenger was promoted: {}",
        done.promotion_reason
    );
    assert!(
        done.promotion_reason.contains("roc_auc") && done.promotion_reason.contains("< holder v1's"),
        "{}",
        done.promotion_reason
    );
    println!("weak challenger: {}", done.promotion_reason);

    // The backtest of v2 against the alias, as a user runs it.
    let window = [
        "--registry",
        &registry.address,
        "--kafka-bootstrap",
        &bootstrap(),
        "--model",
        "backtested",
        "--version",
        "2",
        "--against",
        "production",
        "--from-ms",
        &split.to_string(),
        "--to-ms",
        &end.to_string(),
    ];
    let json: serde_json::Value =
        serde_json::from_str(&backtest(&[&window[..], &["--output", "json"]].concat())).unwrap();
    println!("{}", backtest(&window));

    // The same events, scored by predictors serving each version, and the metrics computed here.
    let mut answers = Vec::new();
    let mut models = registry_client(&registry).await;
    for version in ["2", "1"] {
        // A predictor follows an alias (or the latest version): one per version.
        let alias = format!("pinned-v{version}");
        set_alias(&mut models, "backtested", &alias, version.parse().unwrap())
            .await
            .unwrap();
        let predictor = PredictorSetup::new(&setup.topic, "backtested", &alias).start().await;
        let mut typed = PredictorClient::new(predictor.channel().await);
        let mut scored = Vec::new();
        for r in records
            .iter()
            .filter(|r| r.timestamp_ms >= split && r.timestamp_ms < end)
        {
            let event = String::from_utf8(r.value.clone().unwrap()).unwrap();
            let label = serde_json::from_str::<serde_json::Value>(&event).unwrap()["failure_occurred"] == "true";
            let request = PredictRequest {
                event_json: event,
                ..Default::default()
            };
            let answer = typed.predict(request).await.unwrap().into_inner();
            assert_eq!(answer.model_version.to_string(), version);
            scored.push((answer.score, answer.is_anomaly, label, (r.partition, r.offset)));
        }
        answers.push(scored);
    }
    let labels: Vec<bool> = answers[0].iter().map(|a| a.2).collect();
    assert_eq!(json["events"], labels.len() as u64, "{json:#}");
    assert_eq!(json["labelled"], labels.len() as u64);
    assert_eq!(json["positives"], labels.iter().filter(|l| **l).count() as u64);
    assert_eq!(json["skipped"]["malformed"], 5, "{json:#}");
    // The offsets read are the ones the broker's time index gives for the window.
    let offsets = json["offsets"].as_array().unwrap();
    assert_eq!(offsets.len(), 3);
    let starts = offsets_for_time(&history, 3, split).await;
    for o in offsets {
        let p = o["partition"].as_i64().unwrap() as usize;
        assert_eq!(o["start_offset"].as_i64().unwrap(), starts[p], "{o}");
    }
    for (i, version) in [2, 1].into_iter().enumerate() {
        let report = &json["versions"][i];
        assert_eq!(report["version"], version);
        let scores: Vec<f64> = answers[i].iter().map(|a| a.0).collect();
        let flags: Vec<bool> = answers[i].iter().map(|a| a.1).collect();
        let t = truth(&scores, &flags, &labels);
        println!("v{version} computed here: {t:?}");
        assert_eq!(report["anomalies"], t.anomalies, "{report:#}");
        close(report, "precision", t.precision);
        close(report, "recall", t.recall);
        close(report, "f1", t.f1);
        close(report, "roc_auc", t.roc_auc);
    }
    let same = answers[0].iter().zip(&answers[1]).filter(|(a, b)| a.1 == b.1).count();
    close(
        &json["versions"][1]["agreement"],
        "rate",
        same as f64 / labels.len() as f64,
    );
    assert!(
        json["versions"][1]["roc_auc"].as_f64().unwrap() > json["versions"][0]["roc_auc"].as_f64().unwrap() + 0.1,
        "the full detector should beat two uninformative features by far: {json:#}"
    );

    // v3: the full detector trained again with another seed passes the same gate.
    let again = TrainingSpec {
        seed: 12,
        gate: Some(PromotionGate {
            max_regression: Some(0.05),
            backtest: Some(gate),
            ..Default::default()
        }),
        ..strong
    };
    let done = train(&mut client, again).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    assert!(done.promoted, "{}", done.promotion_reason);
    assert!(
        done.promotion_reason.contains("on the backtest on"),
        "{}",
        done.promotion_reason
    );
    println!("as good a challenger: {}", done.promotion_reason);
}

/// A train caller's backtest window costs the trainer at most --max-rows events: a window
/// holding more blocks the promotion with the reason instead of being held whole (issue 30,
/// item 6).
#[tokio::test]
async fn a_backtest_gate_window_larger_than_max_rows_blocks_the_promotion_with_the_reason() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry).args(["--max-rows=300"]).start().await;
    let mut client = trainer_client(&trainer).await;
    let history = unique("test.backtest-bounded");
    create_topic_with_partitions(&history, 1).await;
    run_fleet(
        &history,
        &[
            "--cars",
            "10",
            "--events",
            "2000",
            "--rate",
            "0",
            "--failing-share",
            "0.3",
            "--seed",
            "3",
            "--backdate-seconds",
            "3600",
        ],
    );
    let records = read_positioned(&history, "read_committed").await;
    let (first, last) = (
        records.iter().map(|r| r.timestamp_ms).min().unwrap(),
        records.iter().map(|r| r.timestamp_ms).max().unwrap(),
    );
    let split = first + (last - first) / 2;
    let holder = TrainingSpec {
        epochs: 2,
        promote_alias: "production".into(),
        ..spec("bounded-gate", &history, first, split)
    };
    let done = train(&mut client, holder.clone()).await;
    assert!(done.promoted, "{}", done.promotion_reason);
    let gated = TrainingSpec {
        gate: Some(PromotionGate {
            backtest: Some(BacktestGate {
                topic: String::new(),
                window: Some(TimeRange {
                    from_ms: split,
                    to_ms: last + 1,
                }),
                metric: "roc_auc".into(),
            }),
            ..Default::default()
        }),
        ..holder
    };
    let done = train(&mut client, gated).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    assert!(
        !done.promoted,
        "promoted past an unbounded window: {}",
        done.promotion_reason
    );
    assert!(
        done.promotion_reason.contains("more than 300 events"),
        "{}",
        done.promotion_reason
    );
}
