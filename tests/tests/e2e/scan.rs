//! The range scan that the trainer and backtests read through, against the real broker: its
//! records are decoded on several threads, yet the caller gets each exactly once and in the
//! order it was read; a stop or a panic in a decoder ends the scan instead of hanging it.

use std::{collections::HashMap, time::Duration};

use kappa_dataset::scan::{Record, Scan, Scanned, scan_decoded};
use kappa_kafka::KafkaClients;

use crate::support::*;

/// Produces `records` events spread over 3 partitions; returns each (partition, offset)'s payload.
async fn topic_of(records: usize) -> (String, HashMap<(i32, i64), Vec<u8>>) {
    let topic = unique("scan");
    create_topic_with_partitions(&topic, 3).await;
    let events: Vec<(String, Vec<u8>)> = (0..records)
        .map(|i| {
            (
                format!("car-{}", i % 17),
                format!("{{\"event\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 90)).into_bytes(),
            )
        })
        .collect();
    let placed = produce_keyed(&topic, &events).await;
    let produced = placed.into_iter().zip(events.into_iter().map(|(_, v)| v)).collect();
    (topic, produced)
}

fn scope(topic: &str) -> Scan<'_> {
    Scan {
        topic,
        from_ms: 0,
        to_ms: i64::MAX / 2,
        timeout: Duration::from_secs(20),
        purpose: "scan-test",
    }
}

/// What a decoder makes of a record: where it was, what it held, and a decoding thread's count
/// (to show the scratch space is the decoder's own).
type Seen = ((i32, i64), Vec<u8>, u64);

fn decode(count: &mut u64, record: Record<'_>) -> Seen {
    *count += 1;
    // Some records take longer, so decoders finish their batches out of order.
    if record.offset % 997 == 0 {
        std::thread::sleep(Duration::from_millis(3));
    }
    (
        (record.partition, record.offset),
        record.payload.unwrap_or_default().to_vec(),
        *count,
    )
}

fn scan_all(topic: &str, stop_after: Option<u64>) -> (Scanned, Vec<Seen>) {
    let clients = KafkaClients::plain(bootstrap());
    let mut seen = Vec::new();
    let scanned = scan_decoded(
        &clients,
        &scope(topic),
        &mut |handed| stop_after.is_none_or(|n| handed < n),
        &decode,
        &mut |one| seen.push(one),
    )
    .unwrap();
    (scanned, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn decoded_records_reach_the_caller_once_each_and_in_read_order() {
    let (topic, produced) = topic_of(20_000).await;
    let (scanned, seen) = tokio::task::spawn_blocking(move || scan_all(&topic, None))
        .await
        .unwrap();
    assert!(scanned.complete);
    assert_eq!(scanned.read, 20_000);
    assert_eq!(seen.len(), 20_000);
    let mut last: HashMap<i32, i64> = HashMap::new();
    for ((partition, offset), payload, count) in &seen {
        assert!(*count >= 1);
        if let Some(before) = last.insert(*partition, *offset) {
            assert!(
                *offset > before,
                "partition {partition}: offset {offset} handed out after {before}"
            );
        }
        assert_eq!(
            Some(payload),
            produced.get(&(*partition, *offset)),
            "partition {partition} offset {offset}"
        );
    }
    let distinct: std::collections::HashSet<_> = seen.iter().map(|(at, _, _)| *at).collect();
    assert_eq!(distinct.len(), produced.len(), "every record exactly once");
    for range in &scanned.partitions {
        assert_eq!(last.get(&range.partition), Some(&(range.end_offset - 1)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_scan_ends_early_and_says_it_is_incomplete() {
    let (topic, _) = topic_of(20_000).await;
    let (scanned, seen) = tokio::task::spawn_blocking(move || scan_all(&topic, Some(1_000)))
        .await
        .unwrap();
    assert!(!scanned.complete);
    assert!(seen.len() >= 1_000 && seen.len() < 20_000, "{} handed out", seen.len());
    assert_eq!(scanned.read, seen.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decoder_that_panics_ends_the_scan_with_its_panic() {
    let (topic, _) = topic_of(5_000).await;
    // A scan that hung on its panicked decoder would never return: bounded, so the test fails.
    let scanning = tokio::task::spawn_blocking(move || {
        let clients = KafkaClients::plain(bootstrap());
        let mut handed = 0_u64;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scan_decoded(
                &clients,
                &scope(&topic),
                &mut |_| true,
                &|_: &mut (), record: Record<'_>| {
                    assert!(record.offset != 700, "a decoder bug at offset 700");
                },
                &mut |()| handed += 1,
            )
        }))
    });
    let outcome = tokio::time::timeout(Duration::from_secs(60), scanning)
        .await
        .expect("the scan ended after its decoder panicked")
        .unwrap();
    let panic = outcome.expect_err("the decoder's panic reaches the caller");
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    assert!(message.contains("a decoder bug at offset 700"), "{message}");
}
