//! Tiered storage (KIP-405) under Kappa's reads: the local broker copies the rolled segments of
//! a tiered topic to its remote tier and, once the local retention allows, deletes the local
//! copies. A training range must read the same rows and offsets either way.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kappa_api::{
    model::PartitionRange,
    trainer::{
        BacktestReport, BacktestRequest, InspectRequest, Inspection, Job, JobPhase, ReadRangeRequest,
        StartTrainingRequest, TrainingSpec, read_range_response::Part, training_spec::Range,
    },
};

use crate::{
    support::*,
    trainer::{spec, start_job, trainer_client, wait_done},
};

#[tokio::test]
async fn a_range_reads_the_same_rows_offsets_scores_and_profile_after_its_segments_moved_to_the_remote_tier() {
    let topic = unique("test.tiered-fleet");
    // 1 MiB segments (the broker's least), nothing deleted locally yet.
    let tiered = [
        ("remote.storage.enable", "true"),
        ("segment.bytes", "1048576"),
        ("retention.ms", "-1"),
    ];
    create_topic_with_configs(&topic, 3, &tiered).await;
    run_fleet(
        &topic,
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
            "5",
            "--backdate-seconds",
            "7200",
            // Uncompressed, so the events fill several 1 MiB segments on every partition.
            "--kafka-property",
            "compression.type=none",
        ],
    );
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry).start().await;
    let mut client = trainer_client(&trainer).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let range = spec("tiered", &topic, 0, now);
    let before = train(&mut client, range.clone()).await;
    // A second version to backtest beside the first.
    let other = train(
        &mut client,
        TrainingSpec {
            seed: 12,
            ..range.clone()
        },
    )
    .await;
    let rows_before = read_rows(&mut client, &range).await;
    let backtest_before = backtest(&mut client, &range, &[&before, &other]).await;
    let inspect_before = inspect(&mut client, &range).await;
    let lineage = before.lineage.clone().unwrap();
    for p in &lineage.partitions {
        assert_eq!(p.earliest_local_offset, Some(0), "nothing is remote yet: {p:?}");
    }
    assert!(
        inspect_before
            .partitions
            .iter()
            .all(|p| p.earliest_local_offset == Some(0))
    );

    // Local copies go one second after their upload; the active segments stay local.
    // (AlterConfigs replaces a topic's whole set, so the rest is named again.)
    alter_topic(&topic, &[tiered.as_slice(), &[("local.retention.ms", "1000")]].concat()).await;
    let local = wait_local_copies_deleted(&topic, 3).await;
    for p in &lineage.partitions {
        // The range spans both tiers on every partition.
        assert!(
            p.start_offset < local[&p.partition] && local[&p.partition] < p.end_offset,
            "partition {}: [{}, {}) with local data from {}",
            p.partition,
            p.start_offset,
            p.end_offset,
            local[&p.partition]
        );
    }

    let after = train(&mut client, range.clone()).await;
    let rows_after = read_rows(&mut client, &range).await;
    let backtest_after = backtest(&mut client, &range, &[&before, &other]).await;
    let inspect_after = inspect(&mut client, &range).await;
    // More local segments may have gone since: the job saw a boundary between the two looks.
    let local_later = earliest_local_offsets(&topic);

    let again = after.lineage.clone().unwrap();
    assert_eq!(offsets(&again.partitions), offsets(&lineage.partitions));
    for p in &again.partitions {
        let seen = p
            .earliest_local_offset
            .expect("the lineage says where the remote tier ends");
        assert!(
            local[&p.partition] <= seen && seen <= local_later[&p.partition],
            "partition {}: the lineage says {seen}, Kafka's tools {} then {}",
            p.partition,
            local[&p.partition],
            local_later[&p.partition]
        );
    }
    assert!(again.read_duration_ms > 0, "the lineage says how long the read took");
    assert_eq!(again.samples, lineage.samples);
    assert_eq!(
        again.metrics.as_ref().map(|m| (m.roc_auc, m.f1)),
        lineage.metrics.as_ref().map(|m| (m.roc_auc, m.f1))
    );

    // The backtest scores every event the same from either tier.
    assert_eq!(
        offsets(&backtest_after.partitions),
        offsets(&backtest_before.partitions)
    );
    assert_eq!(backtest_after.versions, backtest_before.versions);
    assert_eq!(
        (backtest_after.read, backtest_after.events, backtest_after.positives),
        (backtest_before.read, backtest_before.events, backtest_before.positives)
    );
    assert!(
        backtest_after
            .partitions
            .iter()
            .all(|p| p.earliest_local_offset > Some(0))
    );

    // Inspect profiles the same sample and names the remote part.
    assert_eq!(inspect_after.fields, inspect_before.fields);
    assert_eq!(inspect_after.label, inspect_before.label);
    assert_eq!(offsets(&inspect_after.partitions), offsets(&inspect_before.partitions));
    for p in &inspect_after.partitions {
        assert!(p.earliest_local_offset >= Some(local[&p.partition]), "{p:?}");
    }

    // Every row once, in offset order within its partition, and the same as before.
    assert_eq!(rows_after, rows_before);
    for partition in 0..3 {
        let offsets: Vec<i64> = rows_after.iter().filter(|r| r.0 == partition).map(|r| r.1).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} out of order"
        );
        assert!(
            offsets.first().is_some_and(|o| *o < local[&partition]),
            "no remote rows in {partition}"
        );
    }
}

/// Waits (bounded: 90 s) until every one of the topic's `partitions` has had local copies
/// deleted after their upload, as Kafka's own tool reports it; returns each earliest local offset.
async fn wait_local_copies_deleted(topic: &str, partitions: usize) -> std::collections::BTreeMap<i32, i64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let local = earliest_local_offsets(topic);
        if local.len() == partitions && local.values().all(|o| *o > 0) {
            return local;
        }
        assert!(Instant::now() < deadline, "the broker kept its local copies: {local:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

type Client = kappa_api::trainer::trainer_client::TrainerClient<kappa_client::TracedChannel>;

async fn train(client: &mut Client, spec: TrainingSpec) -> Job {
    let job = start_job(client, spec).await;
    let done = wait_done(client, &job.job_id, Duration::from_secs(300)).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    done
}

async fn backtest(client: &mut Client, range: &TrainingSpec, versions: &[&Job]) -> BacktestReport {
    let Some(Range::TimeRange(window)) = range.range else {
        unreachable!("the test's ranges are time ranges")
    };
    client
        .backtest(BacktestRequest {
            model: range.model_name.clone(),
            versions: versions.iter().map(|j| j.published_version.to_string()).collect(),
            window: Some(window),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn inspect(client: &mut Client, range: &TrainingSpec) -> Inspection {
    client
        .inspect(InspectRequest {
            spec: Some(range.clone()),
            sample: 500,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The offsets alone, without where the remote tier ended.
fn offsets(ranges: &[PartitionRange]) -> Vec<(i32, i64, i64)> {
    ranges
        .iter()
        .map(|r| (r.partition, r.start_offset, r.end_offset))
        .collect()
}

/// Every row ReadRange returns for `spec`: (partition, offset, values).
async fn read_rows(client: &mut Client, spec: &TrainingSpec) -> Vec<(i32, i64, Vec<u32>)> {
    let mut stream = client
        .read_range(ReadRangeRequest {
            spec: Some(spec.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let (mut width, mut rows) = (0, Vec::new());
    while let Some(part) = stream.message().await.unwrap() {
        match part.part.unwrap() {
            Part::Columns(c) => width = c.features.len(),
            Part::Rows(batch) => {
                for (i, (p, o)) in batch.partitions.iter().zip(&batch.offsets).enumerate() {
                    let values = batch.values[i * width..(i + 1) * width]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    rows.push((*p, *o, values));
                }
            }
            Part::Report(_) => {}
        }
    }
    rows
}

/// A fleet run that only creates its topic and puts a few events in it.
const FEW_EVENTS: [&str; 6] = ["--cars", "2", "--events", "10", "--rate", "0"];

#[tokio::test]
async fn topics_kappa_creates_for_events_and_predictions_are_tiered_and_compacted_ones_never() {
    // The fleet's topic with the defaults: remote storage on, 6 h locally, 180 days in all.
    let defaults = unique("test.tiered-defaults");
    run_fleet(&defaults, &FEW_EVENTS);
    let configs = topic_configs(&defaults).await;
    assert_eq!(configs["remote.storage.enable"], "true");
    assert_eq!(configs["local.retention.ms"], (6 * 3_600_000).to_string());
    assert_eq!(configs["retention.ms"], (180 * 86_400_000_i64).to_string());

    // The flags, as an operator sets them.
    let chosen = unique("test.tiered-flags");
    run_fleet(
        &chosen,
        &[
            FEW_EVENTS.as_slice(),
            &["--topic-local-retention", "30m", "--topic-retention", "forever"],
        ]
        .concat(),
    );
    let configs = topic_configs(&chosen).await;
    assert_eq!(configs["local.retention.ms"], "1800000");
    assert_eq!(configs["retention.ms"], "-1");
    let untiered = unique("test.untiered");
    run_fleet(
        &untiered,
        &[FEW_EVENTS.as_slice(), &["--topic-remote-storage=false"]].concat(),
    );
    assert_eq!(topic_configs(&untiered).await["remote.storage.enable"], "false");

    // A local copy that outlives the log is refused before anything is created.
    let inverted = std::process::Command::new(binary("kappa"))
        .args([
            "fleet",
            "--kafka-bootstrap",
            &bootstrap(),
            "--topic",
            &unique("test.never"),
        ])
        .args([
            "--events",
            "1",
            "--topic-local-retention",
            "200d",
            "--topic-retention",
            "90d",
        ])
        .output()
        .unwrap();
    assert!(!inverted.status.success());
    let stderr = String::from_utf8_lossy(&inverted.stderr);
    assert!(stderr.contains("--topic-local-retention"), "{stderr}");

    // A predictor creates its monitoring topic tiered too.
    let monitoring = unique("test.tiered-monitoring");
    let _predictor = PredictorSetup::new(&unique("test.models"), "tiered", "latest")
        .arg(format!("--monitoring-topic={monitoring}"))
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while try_topic_configs(&monitoring).await.is_none() {
        assert!(Instant::now() < deadline, "the predictor did not create {monitoring}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(topic_configs(&monitoring).await["remote.storage.enable"], "true");

    // The registry refuses to tier its compacted topic, and says why.
    let mut registry = RegistrySetup::new()
        .arg("--topic-config=remote.storage.enable=true")
        .spawn();
    let status = registry
        .exit_status(
            Duration::from_secs(60),
            "the registry kept running with a tiered models topic",
        )
        .await;
    assert!(!status.success());
    let log = registry.log_text();
    assert!(log.contains("compacted and cannot be tiered"), "{log}");
}

#[tokio::test]
async fn a_lost_remote_tier_fails_training_naming_the_missing_offsets_and_the_trainer_serves_on() {
    let topic = unique("test.tiered-lost");
    let tiered = [
        ("remote.storage.enable", "true"),
        ("segment.bytes", "1048576"),
        ("retention.ms", "-1"),
        ("local.retention.ms", "1000"),
    ];
    create_topic_with_configs(&topic, 2, &tiered).await;
    run_fleet(
        &topic,
        &[
            "--cars",
            "8",
            "--events",
            "8000",
            "--rate",
            "0",
            "--backdate-seconds",
            "7200",
            // Uncompressed, so the events fill several 1 MiB segments on every partition.
            "--kafka-property",
            "compression.type=none",
        ],
    );
    let local = wait_local_copies_deleted(&topic, 2).await;

    // `kappa data tiers` tells the same as Kafka's own tool.
    let tiers: serde_json::Value = serde_json::from_str(&run_ok(
        std::process::Command::new(binary("kappa")).args([
            "data",
            "tiers",
            "--kafka-bootstrap",
            &bootstrap(),
            "--topic",
            &topic,
            "--output",
            "json",
        ]),
        "kappa data tiers",
    ))
    .unwrap();
    let later = earliest_local_offsets(&topic);
    for p in tiers["partitions"].as_array().unwrap() {
        let partition = p["partition"].as_i64().unwrap() as i32;
        let said = p["earliest_local"].as_i64().unwrap();
        assert!(
            local[&partition] <= said && said <= later[&partition],
            "{p} against {local:?}, {later:?}"
        );
        assert_eq!(p["log_start"], 0, "{p}");
        assert_eq!(
            p["remote_records"].as_i64(),
            Some(said.min(p["end"].as_i64().unwrap())),
            "{p}"
        );
    }

    // The object store loses this topic's segments.
    let store = remote_tier_dir().join("kafka-tiered-storage");
    let mut removed = 0;
    for entry in std::fs::read_dir(&store).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(&format!("{topic}-")) {
            std::fs::remove_dir_all(entry.path()).unwrap();
            removed += 1;
        }
    }
    assert_eq!(
        removed,
        2,
        "one remote directory per partition of {topic} under {}",
        store.display()
    );

    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry)
        .arg("--kafka-timeout-seconds=10")
        .start()
        .await;
    let mut client = trainer_client(&trainer).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    // The trainer samples the range before a job exists, so the call itself fails, at once.
    let started = Instant::now();
    let refused = client
        .start_training(StartTrainingRequest {
            spec: Some(spec("lost", &topic, 0, now)),
        })
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the refusal took {:?}",
        started.elapsed()
    );
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    for (partition, offset) in &local {
        let part = format!("partition {partition} offsets [0, ");
        assert!(refused.message().contains(&part), "{partition} ({offset}): {refused:?}");
    }
    assert!(refused.message().contains("remote storage"), "{refused:?}");
    let inspect = client
        .inspect(InspectRequest {
            spec: Some(spec("lost", &topic, 0, now)),
            sample: 100,
        })
        .await
        .unwrap_err();
    assert!(inspect.message().contains("remote tier"), "{inspect:?}");

    // The trainer goes on serving: a job on a topic that lost nothing succeeds.
    let healthy = unique("test.tiered-healthy");
    run_fleet(
        &healthy,
        &[
            "--cars",
            "8",
            "--events",
            "2000",
            "--rate",
            "0",
            "--backdate-seconds",
            "3600",
        ],
    );
    train(&mut client, spec("healthy", &healthy, 0, now + 60_000)).await;
}
