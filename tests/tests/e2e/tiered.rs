//! Tiered storage (KIP-405) under Kappa's reads: the local broker copies the rolled segments of
//! a tiered topic to its remote tier and, once the local retention allows, deletes the local
//! copies. A training range must read the same rows and offsets either way.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kappa_api::trainer::{JobPhase, ReadRangeRequest, read_range_response::Part};

use crate::{
    support::*,
    trainer::{spec, start_job, trainer_client, wait_done},
};

#[tokio::test]
async fn a_training_range_reads_the_same_rows_and_offsets_after_its_segments_moved_to_the_remote_tier() {
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
            "24000",
            "--rate",
            "0",
            "--failing-share",
            "0.3",
            "--seed",
            "5",
            "--backdate-seconds",
            "7200",
        ],
    );
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry).start().await;
    let mut client = trainer_client(&trainer).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let range = spec("tiered", &topic, 0, now);
    let before = start_job(&mut client, range.clone()).await;
    let before = wait_done(&mut client, &before.job_id, Duration::from_secs(300)).await;
    assert_eq!(before.phase, JobPhase::Succeeded as i32, "{}", before.message);
    let rows_before = read_rows(&mut client, &range).await;

    // Local copies go one second after their upload; the active segments stay local.
    // (AlterConfigs replaces a topic's whole set, so the rest is named again.)
    alter_topic(&topic, &[tiered.as_slice(), &[("local.retention.ms", "1000")]].concat()).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let local = loop {
        let local = earliest_local_offsets(&topic);
        if local.len() == 3 && local.values().all(|o| *o > 0) {
            break local;
        }
        assert!(Instant::now() < deadline, "the broker kept its local copies: {local:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let lineage = before.lineage.clone().unwrap();
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

    let after = start_job(&mut client, range.clone()).await;
    let after = wait_done(&mut client, &after.job_id, Duration::from_secs(300)).await;
    assert_eq!(after.phase, JobPhase::Succeeded as i32, "{}", after.message);
    let again = after.lineage.clone().unwrap();
    assert_eq!(again.partitions, lineage.partitions);
    assert_eq!(again.samples, lineage.samples);
    assert_eq!(
        again.metrics.as_ref().map(|m| (m.roc_auc, m.f1)),
        lineage.metrics.as_ref().map(|m| (m.roc_auc, m.f1))
    );

    // Every row once, in offset order within its partition, and the same as before.
    let rows_after = read_rows(&mut client, &range).await;
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

/// Every row ReadRange returns for `spec`: (partition, offset, values).
async fn read_rows(
    client: &mut kappa_api::trainer::trainer_client::TrainerClient<kappa_client::TracedChannel>,
    spec: &kappa_api::trainer::TrainingSpec,
) -> Vec<(i32, i64, Vec<u32>)> {
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
