//! Exactly-once (`--stream-exactly-once`): events are taken in batches; each batch's
//! predictions and the consumed offsets are written in one Kafka transaction, so a reader with
//! `isolation.level=read_committed` sees each event's prediction exactly once, across crashes
//! (a restarted replica's producer aborts what its predecessor left open) and rebalances (a
//! batch never commits an offset of a partition this replica no longer owns, and a replica
//! the group has moved on from is fenced by the group generation in the transaction).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
};
use tokio_util::sync::CancellationToken;

use super::{
    ErrorLog, StreamMetrics, StreamSettings, context::StreamContext, event::Arrival, event::Event, event::Record,
    event::TopicNames, event::evaluate_all,
};
use crate::{metrics::ReasonLabels, serving::Serving};

/// How long a batch waits for more events after its first.
const LINGER: Duration = Duration::from_millis(20);
/// Bound on each transactional call; an outage makes them fail and the batch is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn run(
    consumer: Arc<StreamConsumer<StreamContext>>,
    producer: FutureProducer,
    settings: &StreamSettings,
    serving: Arc<Serving>,
    metrics: Arc<StreamMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer = Arc::new(producer);
    // Fences an older producer with this transactional id and aborts what it left open.
    blocking(&producer, |p| p.init_transactions(Duration::from_secs(30)))
        .await
        .context("could not initialise the transactional producer; does the broker allow transactions and this principal its transactional id?")?;
    tracing::info!("exactly-once stream scoring: transactions initialised");
    let mut errors = ErrorLog::default();
    loop {
        let Some(batch) = gather(&consumer, &serving, settings.max_in_flight, &mut errors, &shutdown).await else {
            break;
        };
        if batch.is_empty() {
            continue;
        }
        // Shutting down: nothing of this batch is committed, so all of it is scored again.
        let Some(records) = evaluate_all(batch, &serving, &metrics).await else {
            break;
        };
        commit(
            &consumer,
            &producer,
            &settings.predictions_topic,
            records,
            &metrics,
            &shutdown,
        )
        .await?;
    }
    Ok(())
}

/// Events for the next transaction: waits for one, then takes what arrives within [`LINGER`],
/// up to `max`. Events of partitions revoked meanwhile are dropped: their new owner starts
/// from the last committed offset. `None` at shutdown.
async fn gather(
    consumer: &StreamConsumer<StreamContext>,
    serving: &Serving,
    max: usize,
    errors: &mut ErrorLog,
    shutdown: &CancellationToken,
) -> Option<Vec<Event>> {
    let mut batch: Vec<Event> = Vec::new();
    let mut topics = TopicNames::default();
    let mut deadline: Option<tokio::time::Instant> = None;
    while batch.len() < max {
        let received = match deadline {
            None => tokio::select! {
                () = shutdown.cancelled() => return None,
                received = consumer.recv() => received,
            },
            Some(at) => match tokio::time::timeout_at(at, consumer.recv()).await {
                Ok(received) => received,
                Err(_) => break,
            },
        };
        // A rebalance runs inside `recv`: what was read before it from a revoked partition goes.
        let revoked = consumer.context().take_revoked();
        if !revoked.is_empty() {
            batch.retain(|e| {
                !revoked
                    .iter()
                    .any(|(t, p)| **t == *e.source.topic && *p == e.source.partition)
            });
        }
        match received {
            Ok(message) => {
                batch.push(Arrival::take(&message, &mut topics).read(serving));
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + LINGER);
            }
            Err(e) => {
                errors.note(&e);
                if deadline.is_some() {
                    break;
                }
            }
        }
    }
    Some(batch)
}

/// Writes the batch's predictions and offsets in one transaction. A transaction that fails is
/// aborted and the consumer rewound to the batch's first offsets, so the events are read and
/// scored again; only a fatal producer error (fenced by a newer replica with the same
/// transactional id) ends the task, and its supervisor starts a new producer.
async fn commit(
    consumer: &Arc<StreamConsumer<StreamContext>>,
    producer: &Arc<FutureProducer>,
    topic: &str,
    records: Vec<Record>,
    metrics: &StreamMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Per partition: the first offset of the batch (to rewind to) and the next one to read.
    let mut span: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for r in &records {
        let entry = span
            .entry((r.source.topic.to_string(), r.source.partition))
            .or_insert((r.source.offset, r.source.offset + 1));
        entry.0 = entry.0.min(r.source.offset);
        entry.1 = entry.1.max(r.source.offset + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for ((t, p), (_, next)) in &span {
        offsets.add_partition_offset(t, *p, Offset::Offset(*next))?;
    }
    let group = consumer
        .group_metadata()
        .context("the sensor consumer has no group metadata")?;
    let started = Instant::now();
    let topic = topic.to_owned();
    let count = records.len();
    let outcome = blocking(producer, move |p| {
        p.begin_transaction()?;
        for r in &records {
            let mut out = FutureRecord::to(&topic).key(&r.key).payload(&r.value);
            if let Some(headers) = &r.headers {
                out = out.headers(headers.clone());
            }
            // A full local queue drains as the broker acknowledges; wait, do not drop.
            while let Err((e, back)) = p.send_result(out) {
                match e {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                        std::thread::sleep(Duration::from_millis(5));
                        out = back;
                    }
                    e => return Err(e),
                }
            }
        }
        p.send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT)?;
        p.commit_transaction(CALL_TIMEOUT)
    })
    .await;
    match outcome {
        Ok(()) => {
            metrics
                .transactions
                .get_or_create(&ReasonLabels { reason: "committed" })
                .inc();
            tracing::debug!(
                events = count,
                ms = started.elapsed().as_millis() as u64,
                "transaction committed"
            );
            Ok(())
        }
        Err(e) if is_fatal(&e) => Err(anyhow::Error::new(e).context("the transactional producer failed fatally")),
        Err(e) => {
            tracing::warn!(error = %e, events = count, "the transaction failed; aborting it and scoring the batch again");
            abort(producer, shutdown).await?;
            metrics
                .transactions
                .get_or_create(&ReasonLabels { reason: "aborted" })
                .inc();
            let rewind: Vec<(String, i32, i64)> = span.into_iter().map(|((t, p), (first, _))| (t, p, first)).collect();
            let consumer = Arc::clone(consumer);
            tokio::task::spawn_blocking(move || {
                for (t, p, first) in rewind {
                    // Fails for a partition revoked meanwhile, which its new owner reads anyway.
                    if let Err(e) = consumer.seek(&t, p, Offset::Offset(first), Duration::from_secs(10)) {
                        tracing::debug!(error = %e, partition = p, "not rewound");
                    }
                }
            })
            .await?;
            Ok(())
        }
    }
}

/// Aborts the open transaction, trying again while the broker is away.
async fn abort(producer: &Arc<FutureProducer>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(200);
    loop {
        match blocking(producer, |p| p.abort_transaction(CALL_TIMEOUT)).await {
            Ok(()) => return Ok(()),
            Err(e) if is_fatal(&e) => {
                return Err(anyhow::Error::new(e).context("aborting the transaction failed fatally"));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "aborting the transaction failed; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => e.is_fatal(),
        _ => false,
    }
}

/// Runs a blocking producer call off the async workers.
async fn blocking<T: Send + 'static>(
    producer: &Arc<FutureProducer>,
    call: impl FnOnce(&FutureProducer) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    let producer = Arc::clone(producer);
    match tokio::task::spawn_blocking(move || call(&producer)).await {
        Ok(result) => result,
        // A panic belongs to the task (its supervisor reports and restarts it).
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(KafkaError::Canceled),
    }
}
