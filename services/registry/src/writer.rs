//! The registry's only way to change the log: a transactional producer with a fixed
//! transactional id. Creating it fences any older registry with the same id and aborts that
//! registry's unfinished transaction, so readers never see half a write.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use kappa_kafka::KafkaClients;
use kappa_kafka::trace_headers;
use kappa_runtime::propagation::span_context_map;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord, Producer},
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

/// One record to write: a value, or `None` for a tombstone.
#[derive(Debug)]
pub struct Put {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

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

    /// Writes `records` in one transaction and returns the offset of the last one once the
    /// transaction has committed. Must be called with the lock held.
    ///
    /// Every record carries the caller's trace context in its Kafka headers, so whoever acts on
    /// it (a predictor swapping models) continues the trace of the change.
    pub async fn commit(self: &Arc<Self>, records: Vec<Put>) -> Result<i64, RegistryError> {
        if self.is_fenced() {
            return Err(RegistryError::Fenced);
        }
        let this = Arc::clone(self);
        let trace = span_context_map(&tracing::Span::current());
        tokio::task::spawn_blocking(move || this.commit_blocking(records, &trace))
            .await
            .map_err(|e| RegistryError::KafkaUnavailable(format!("write task failed: {e}")))?
    }

    fn commit_blocking(&self, records: Vec<Put>, trace: &BTreeMap<String, String>) -> Result<i64, RegistryError> {
        let mut slot = self.producer.lock().expect("producer lock poisoned");
        if slot.is_none() {
            // The last write could not be rolled back: start over with a new producer, whose
            // initialisation aborts what the old one left open (bounded: the broker may be away).
            match new_producer(&self.config, RECOVERY_WAIT) {
                Ok(producer) => {
                    tracing::info!("a new transactional producer replaced the one a failed write left behind");
                    *slot = Some(producer);
                }
                Err(e) => {
                    return Err(RegistryError::KafkaUnavailable(format!(
                        "cannot reach the broker to start a new transactional producer: {e}"
                    )));
                }
            }
        }
        let producer = slot.as_ref().expect("set above");
        match self.try_transaction(producer, &records, &trace_headers(trace)) {
            Ok(offset) => Ok(offset),
            Err(e) => {
                let (error, usable) = self.recover(producer, e);
                if !usable {
                    *slot = None;
                }
                Err(error)
            }
        }
    }

    fn try_transaction(
        &self,
        producer: &FutureProducer,
        records: &[Put],
        headers: &OwnedHeaders,
    ) -> Result<i64, KafkaError> {
        producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(records.len());
        for put in records {
            loop {
                let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
                    .key(&put.key)
                    .partition(0)
                    .headers(headers.clone());
                if let Some(value) = &put.value {
                    record = record.payload(value);
                }
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    // The local queue is full: let librdkafka drain it, then try again.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => return Err(e),
                }
            }
        }
        if !self.delay_before_commit.is_zero() {
            producer.flush(Timeout::After(TRANSACTION_TIMEOUT))?;
            tracing::warn!(delay = ?self.delay_before_commit, "fault injection: holding the transaction open");
            std::thread::sleep(self.delay_before_commit);
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
    }

    /// Turns a failed transaction into the caller's error, and says whether the producer is still
    /// usable: it is after a rollback; it is not when the rollback failed too (the broker away),
    /// and the next write starts a new one. A fenced registry refuses all further writes.
    fn recover(&self, producer: &FutureProducer, error: KafkaError) -> (RegistryError, bool) {
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

/// A transactional producer with `config`, initialised (which aborts whatever an earlier
/// producer with the same id left open, and fences it) within `wait`.
fn new_producer(config: &rdkafka::ClientConfig, wait: Duration) -> Result<FutureProducer, KafkaError> {
    let producer: FutureProducer = config.create()?;
    producer.init_transactions(Timeout::After(wait))?;
    Ok(producer)
}
