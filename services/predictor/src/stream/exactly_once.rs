//! Exactly-once (`--stream-exactly-once`): events are taken in batches; each batch's
//! predictions and the consumed offsets are written in one Kafka transaction, so a reader with
//! `isolation.level=read_committed` sees each event's prediction exactly once, across crashes
//! (a restarted replica's producer aborts what its predecessor left open) and rebalances (a
//! batch never commits an offset of a partition this replica no longer owns, and a replica
//! the group has moved on from is fenced by the group generation in the transaction).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
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
    let mut refusals = Refusals::default();
    loop {
        let Some(batch) = gather(&consumer, &serving, settings.max_in_flight, &mut errors, &shutdown).await else {
            break;
        };
        if batch.is_empty() {
            continue;
        }
        // Shutting down: nothing of this batch is committed, so all of it is scored again.
        let Some(records) = evaluate_all(batch, &serving).await else {
            break;
        };
        let transaction = Transaction {
            consumer: &consumer,
            producer: &producer,
            topic: &settings.predictions_topic,
            metrics: &metrics,
            shutdown: &shutdown,
        };
        transaction.commit(records, &mut refusals).await?;
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

/// An event, as the refusals know it.
type EventKey = (Arc<str>, i32, i64);

fn key_of(record: &Record) -> EventKey {
    (
        Arc::clone(&record.source.topic),
        record.source.partition,
        record.source.offset,
    )
}

/// Predictions the predictions topic refused for good (too large for it, invalid) in a
/// transaction that was then aborted. Culprits, known to be refused alone, are answered by an
/// error prediction when their batch is scored again; suspects were refused in a batch with
/// others (a topic judges its size limit per batch), so next time each is sent alone to tell.
/// Without this a poison event would abort its batch forever.
#[derive(Default)]
struct Refusals {
    culprits: HashMap<EventKey, String>,
    suspects: HashSet<EventKey>,
}

/// Remembered for batches scored again soon; past this many, something is off (partitions
/// revoked while refused) and they are forgotten.
const MAX_REFUSALS: usize = 10_000;

/// How one transaction's records went.
enum Sent {
    Committed,
    /// A record sent alone was refused for good: the culprit.
    Refused {
        index: usize,
        error: KafkaError,
    },
    /// The transaction failed otherwise; these deliveries may say which records were refused.
    Failed(KafkaError, Vec<(usize, DeliveryFuture)>),
}

/// What one exactly-once transaction writes with.
struct Transaction<'a> {
    consumer: &'a Arc<StreamConsumer<StreamContext>>,
    producer: &'a Arc<FutureProducer>,
    topic: &'a str,
    metrics: &'a StreamMetrics,
    shutdown: &'a CancellationToken,
}

impl Transaction<'_> {
    /// Writes the batch's predictions and offsets in one transaction. A transaction that fails
    /// is aborted and the consumer rewound to the batch's first offsets, so the events are read
    /// and scored again (what the topic refused for good answered by error predictions then);
    /// only a fatal producer error (fenced by a newer replica with the same transactional id)
    /// ends the task, and its supervisor starts a new producer.
    async fn commit(&self, records: Vec<Record>, refusals: &mut Refusals) -> anyhow::Result<()> {
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
        let group = self
            .consumer
            .group_metadata()
            .context("the sensor consumer has no group metadata")?;
        let keys: Vec<EventKey> = records.iter().map(key_of).collect();
        let outcomes: Vec<&'static str> = records.iter().map(|r| r.outcome).collect();
        let mut replaced = 0;
        let records: Vec<Record> = records
            .into_iter()
            .map(|r| match refusals.culprits.get(&key_of(&r)) {
                Some(why) => {
                    replaced += 1;
                    r.refused(why)
                }
                None => r,
            })
            .collect();
        let alone: Vec<bool> = keys.iter().map(|k| refusals.suspects.contains(k)).collect();
        self.metrics.in_flight.set(keys.len() as i64);
        let started = Instant::now();
        let topic = self.topic.to_owned();
        let count = records.len();
        let sent = blocking(self.producer, move |p| {
            Ok(send(p, &topic, &records, &alone, offsets, &group))
        })
        .await?;
        let failure = match sent {
            Sent::Committed => {
                // Counted once committed: a batch scored again after an abort counts once.
                self.metrics.count(outcomes);
                self.metrics.in_flight.set(0);
                if replaced > 0 {
                    self.metrics.refused.inc_by(replaced);
                    tracing::warn!(
                        events = replaced,
                        "the predictions topic refused predictions for good; their events were answered with errors"
                    );
                }
                for key in &keys {
                    refusals.culprits.remove(key);
                    refusals.suspects.remove(key);
                }
                self.metrics
                    .transactions
                    .get_or_create(&ReasonLabels { reason: "committed" })
                    .inc();
                tracing::debug!(
                    events = count,
                    ms = started.elapsed().as_millis() as u64,
                    "transaction committed"
                );
                return Ok(());
            }
            Sent::Failed(e, _) if is_fatal(&e) => {
                return Err(anyhow::Error::new(e).context("the transactional producer failed fatally"));
            }
            Sent::Refused { index, error } => {
                tracing::warn!(%error, events = count, "a prediction sent alone was refused for good; aborting and answering its event with an error");
                refusals.suspects.remove(&keys[index]);
                refusals.culprits.insert(keys[index].clone(), error.to_string());
                abort(self.producer, self.shutdown).await?;
                None
            }
            Sent::Failed(e, deliveries) => {
                tracing::warn!(error = %e, events = count, "the transaction failed; aborting it and scoring the batch again");
                abort(self.producer, self.shutdown).await?;
                Some(deliveries)
            }
        };
        // The deliveries of an aborted transaction have all resolved (delivered or purged).
        for (index, delivery) in failure.into_iter().flatten() {
            if let Ok(Ok(Err((error, _)))) = tokio::time::timeout(CALL_TIMEOUT, delivery).await
                && kappa_kafka::refused_for_good(&error)
            {
                refusals.suspects.insert(keys[index].clone());
            }
        }
        if refusals.culprits.len() + refusals.suspects.len() > MAX_REFUSALS {
            tracing::warn!("forgetting {MAX_REFUSALS} refused predictions of events not scored again");
            *refusals = Refusals::default();
        }
        self.metrics
            .transactions
            .get_or_create(&ReasonLabels { reason: "aborted" })
            .inc();
        let rewind: Vec<(String, i32, i64)> = span.into_iter().map(|((t, p), (first, _))| (t, p, first)).collect();
        let consumer = Arc::clone(self.consumer);
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

/// The transaction itself, on a blocking thread: every record (a suspect alone, flushed and its
/// delivery checked before the next), the offsets, the commit.
fn send(
    p: &FutureProducer,
    topic: &str,
    records: &[Record],
    alone: &[bool],
    offsets: TopicPartitionList,
    group: &rdkafka::consumer::ConsumerGroupMetadata,
) -> Sent {
    if let Err(e) = p.begin_transaction() {
        return Sent::Failed(e, Vec::new());
    }
    let mut deliveries = Vec::with_capacity(records.len());
    for (index, r) in records.iter().enumerate() {
        let mut out = FutureRecord::to(topic).key(&r.key).payload(&r.value);
        if let Some(headers) = &r.headers {
            out = out.headers(headers.clone());
        }
        // A full local queue drains as the broker acknowledges; wait, do not drop.
        let delivery = loop {
            match p.send_result(out) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    std::thread::sleep(Duration::from_millis(5));
                    out = back;
                }
                Err((error, _)) if kappa_kafka::refused_for_good(&error) => return Sent::Refused { index, error },
                Err((e, _)) => return Sent::Failed(e, deliveries),
            }
        };
        if alone[index] {
            if let Err(e) = p.flush(CALL_TIMEOUT) {
                return Sent::Failed(e, deliveries);
            }
            match futures::executor::block_on(delivery) {
                Ok(Err((error, _))) if kappa_kafka::refused_for_good(&error) => return Sent::Refused { index, error },
                Ok(Err((e, _))) => return Sent::Failed(e, deliveries),
                Ok(Ok(_)) | Err(_) => {}
            }
        } else {
            deliveries.push((index, delivery));
        }
    }
    let committed = p
        .send_offsets_to_transaction(&offsets, group, CALL_TIMEOUT)
        .and_then(|()| p.commit_transaction(CALL_TIMEOUT));
    match committed {
        Ok(()) => Sent::Committed,
        Err(e) => Sent::Failed(e, deliveries),
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
