//! The registry's only way to change the log: a transactional producer with a fixed
//! transactional id. Creating it fences any older registry with the same id and aborts that
//! registry's unfinished transaction, so readers never see half a write.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use kappa_kafka::KafkaClients;
use kappa_runtime::propagation::kafka_headers::trace_headers;
use kappa_runtime::propagation::span_context_map;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedHeaders,
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
    util::Timeout,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::RegistryError;

/// The broker aborts a transaction left open this long (a registry that died mid-write).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one write may wait for the broker before it is answered UNAVAILABLE.
const COMMIT_WAIT: Duration = Duration::from_secs(15);
/// How long rolling back a failed write, or starting a new producer, may take.
const RECOVERY_WAIT: Duration = Duration::from_secs(10);

pub use kappa_modellog::Put;

pub struct Writer {
    /// Replaced when a failed transaction cannot be rolled back (the broker away): a new
    /// producer with the same transactional id aborts what the old one left open.
    producer: std::sync::Mutex<Option<FutureProducer>>,
    /// The producer's configuration, to make a new one.
    config: rdkafka::ClientConfig,
    topic: String,
    fenced: AtomicBool,
    delay_before_commit: Duration,
    /// Serialises writes: one transaction at a time, and version numbers assigned under it.
    lock: Arc<Mutex<()>>,
}

/// The writer's lock, held from reading the catalog until the write is applied.
pub struct WriteLock(#[allow(dead_code)] OwnedMutexGuard<()>);

impl Writer {
    /// Creates the producer and initialises transactions. Blocking: call from a blocking thread.
    pub fn connect(
        clients: &KafkaClients,
        transactional_id: &str,
        max_message_bytes: usize,
        topic: &str,
        delay_before_commit: Duration,
    ) -> Result<Self, KafkaError> {
        let (max_bytes, timeout) = (
            max_message_bytes.to_string(),
            TRANSACTION_TIMEOUT.as_millis().to_string(),
        );
        // Tunable: batching, record size, transaction timeout. Not: the fencing id and the
        // idempotent, fully acknowledged writes a transaction needs.
        let config = clients.config_with(
            &[
                ("message.max.bytes", &max_bytes),
                ("transaction.timeout.ms", &timeout),
                ("linger.ms", "2"),
            ],
            &[
                ("transactional.id", transactional_id),
                ("enable.idempotence", "true"),
                ("acks", "all"),
            ],
        );
        let producer = new_producer(&config, Duration::from_secs(60))?;
        Ok(Self {
            producer: std::sync::Mutex::new(Some(producer)),
            config,
            topic: topic.to_owned(),
            fenced: AtomicBool::new(false),
            delay_before_commit,
            lock: Arc::new(Mutex::new(())),
        })
    }

    /// Held by a request from reading the catalog until its write is applied, so decisions
    /// made from the catalog (the next version, whether an alias exists) stay true. Owned, so a
    /// write keeps it after its caller hangs up (see `RegistryService::write`). A write still
    /// in flight past `wait` (the broker away) makes the next one UNAVAILABLE, not stuck.
    pub async fn lock(&self, wait: Duration) -> Result<WriteLock, RegistryError> {
        tokio::time::timeout(wait, Arc::clone(&self.lock).lock_owned())
            .await
            .map(WriteLock)
            .map_err(|_| {
                RegistryError::KafkaUnavailable(format!(
                    "an earlier write has not reached the models topic within {wait:?}; retry when the broker is back"
                ))
            })
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// The lock if no other write holds it now: a publish streams its chunks into the log
    /// while they arrive only when it would keep no one waiting.
    pub fn try_lock(&self) -> Option<WriteLock> {
        Arc::clone(&self.lock).try_lock_owned().ok().map(WriteLock)
    }

    /// Opens a transaction under `lock`. Its records carry the current span's trace context
    /// in their Kafka headers, so whoever acts on them (a predictor swapping models) continues
    /// the trace of the change. Built on a blocking thread and handed back from it, so a caller
    /// that hangs up meanwhile leaves a [`Transaction`] whose drop rolls it back.
    pub async fn begin(self: &Arc<Self>, lock: WriteLock) -> Result<Transaction, RegistryError> {
        if self.is_fenced() {
            return Err(RegistryError::Fenced);
        }
        let this = Arc::clone(self);
        let headers = trace_headers(&span_context_map(&tracing::Span::current()));
        tokio::task::spawn_blocking(move || {
            let producer = this.producer()?;
            if let Err(e) = producer.begin_transaction() {
                return Err(this.recover(&producer, e));
            }
            Ok(Transaction {
                writer: this,
                producer,
                headers,
                deliveries: Vec::new(),
                lock: Some(lock),
            })
        })
        .await
        .map_err(|e| RegistryError::KafkaUnavailable(format!("write task failed: {e}")))?
    }

    /// The transactional producer, or a new one when the last write could not be rolled back:
    /// its initialisation aborts what the old one left open (bounded: the broker may be away).
    fn producer(&self) -> Result<FutureProducer, RegistryError> {
        let mut slot = self.producer.lock().expect("producer lock poisoned");
        if let Some(producer) = slot.as_ref() {
            return Ok(producer.clone());
        }
        match new_producer(&self.config, RECOVERY_WAIT) {
            Ok(producer) => {
                tracing::info!("a new transactional producer replaced the one a failed write left behind");
                *slot = Some(producer.clone());
                Ok(producer)
            }
            Err(e) => Err(RegistryError::KafkaUnavailable(format!(
                "cannot reach the broker to start a new transactional producer: {e}"
            ))),
        }
    }

    /// Ends the use of a producer whose transaction could not be rolled back: the next write
    /// starts a new one.
    fn discard(&self) {
        self.producer.lock().expect("producer lock poisoned").take();
    }

    /// Turns a failed transaction into the caller's error, rolling it back; a producer that
    /// cannot be rolled back is discarded.
    fn recover(&self, producer: &FutureProducer, error: KafkaError) -> RegistryError {
        let (error, usable) = self.roll_back(producer, error);
        if !usable {
            self.discard();
        }
        error
    }

    /// Turns a failed transaction into the caller's error, and says whether the producer is still
    /// usable: it is after a rollback; it is not when the rollback failed too (the broker away),
    /// and the next write starts a new one. A fenced registry refuses all further writes.
    fn roll_back(&self, producer: &FutureProducer, error: KafkaError) -> (RegistryError, bool) {
        if let Some((code, reason)) = producer.client().fatal_error() {
            if matches!(
                code,
                RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
            ) {
                self.fenced.store(true, Ordering::Relaxed);
                tracing::error!(
                    ?code,
                    reason,
                    "a newer registry fenced this one; refusing all further writes"
                );
                return (RegistryError::Fenced, false);
            }
            // Any other fatal error ends this producer, not the registry: the next write starts
            // a new one.
            tracing::error!(
                ?code,
                reason,
                "the registry's producer hit a fatal error; the next write starts a new one"
            );
            return (
                RegistryError::KafkaUnavailable(format!("fatal producer error {code:?}: {reason}; retry")),
                false,
            );
        }
        match producer.abort_transaction(Timeout::After(RECOVERY_WAIT)) {
            Ok(()) => {
                tracing::warn!(error = %error, "a registry write failed and was rolled back");
                (RegistryError::KafkaUnavailable(error.to_string()), true)
            }
            Err(abort) => {
                tracing::warn!(error = %error, abort = %abort, "a registry write failed and could not be rolled back; the next write starts a new producer");
                (RegistryError::KafkaUnavailable(error.to_string()), false)
            }
        }
    }
}

/// A transaction open on the models topic under the writer's lock, its records sent as they
/// come and committed together. Dropped before [`Transaction::commit`] (a failed check, a
/// caller that hung up), it is rolled back on a blocking thread and the lock released after.
pub struct Transaction {
    writer: Arc<Writer>,
    producer: FutureProducer,
    headers: OwnedHeaders,
    deliveries: Vec<DeliveryFuture>,
    /// `None` once committed or rolled back.
    lock: Option<WriteLock>,
}

impl Transaction {
    /// Queues `put` in the transaction; librdkafka sends it in the background.
    pub async fn send(&mut self, put: &Put) -> Result<(), RegistryError> {
        loop {
            let mut record = FutureRecord::<str, [u8]>::to(&self.writer.topic)
                .key(&put.key)
                .partition(0)
                .headers(self.headers.clone());
            if let Some(value) = &put.value {
                record = record.payload(value);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.deliveries.push(delivery);
                    return Ok(());
                }
                // The local queue is full: librdkafka drains it in the background.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(self.fail(e).await),
            }
        }
    }

    /// Records sent so far.
    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    /// Commits, and returns the offset of the last record with the lock, which the caller
    /// keeps until the follower has applied the write. On a blocking thread that owns the
    /// transaction: a caller that hangs up leaves the commit to finish.
    pub async fn commit(mut self) -> Result<(i64, WriteLock), RegistryError> {
        let lock = self.lock.take().expect("an open transaction holds the lock");
        let (writer, producer) = (Arc::clone(&self.writer), self.producer.clone());
        let deliveries = std::mem::take(&mut self.deliveries);
        tokio::task::spawn_blocking(move || {
            let committed = (|| {
                if !writer.delay_before_commit.is_zero() {
                    producer.flush(Timeout::After(TRANSACTION_TIMEOUT))?;
                    tracing::warn!(delay = ?writer.delay_before_commit, "fault injection: holding the transaction open");
                    std::thread::sleep(writer.delay_before_commit);
                }
                producer.commit_transaction(Timeout::After(COMMIT_WAIT))?;
                let mut last = -1;
                for delivery in deliveries {
                    match futures::executor::block_on(delivery) {
                        Ok(Ok(delivered)) => last = last.max(delivered.offset),
                        Ok(Err((e, _))) => return Err(e),
                        Err(_) => return Err(KafkaError::Canceled),
                    }
                }
                Ok(last)
            })();
            committed
                .map(|offset| (offset, lock))
                .map_err(|e| writer.recover(&producer, e))
        })
        .await
        .map_err(|e| RegistryError::KafkaUnavailable(format!("write task failed: {e}")))?
    }

    /// Rolls back after a failed send, releasing the lock once that is done.
    async fn fail(&mut self, error: KafkaError) -> RegistryError {
        let lock = self.lock.take();
        let (writer, producer) = (Arc::clone(&self.writer), self.producer.clone());
        tokio::task::spawn_blocking(move || {
            let error = writer.recover(&producer, error);
            drop(lock);
            error
        })
        .await
        .unwrap_or_else(|e| RegistryError::KafkaUnavailable(format!("write task failed: {e}")))
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else { return };
        let (writer, producer) = (Arc::clone(&self.writer), self.producer.clone());
        let roll_back = move || {
            match producer.abort_transaction(Timeout::After(RECOVERY_WAIT)) {
                Ok(()) => tracing::info!("rolled back a write that was abandoned before its commit"),
                Err(e) => {
                    tracing::warn!(error = %e, "an abandoned write could not be rolled back; the next write starts a new producer");
                    writer.discard();
                }
            }
            drop(lock);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(roll_back)),
            Err(_) => roll_back(),
        }
    }
}

/// A transactional producer with `config`, initialised (which aborts whatever an earlier
/// producer with the same id left open, and fences it) within `wait`.
fn new_producer(config: &rdkafka::ClientConfig, wait: Duration) -> Result<FutureProducer, KafkaError> {
    let producer: FutureProducer = config.create()?;
    producer.init_transactions(Timeout::After(wait))?;
    Ok(producer)
}
