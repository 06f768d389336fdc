//! Reads every record of a time range, once: the broker resolves `[from, to)` to
//! per-partition offsets (offsets_for_times), each partition is read from its start offset to
//! its end offset, and each record is handed to the caller, who decides what it means. The
//! trainer builds its training rows on it and backtests replay versions through it, so both
//! read exactly the offsets they record.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use kappa_api::model::PartitionRange;
use kappa_model::schema::{DecodedEvent, EventDecoder, PayloadFormat};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::BorrowedMessage,
};

use crate::{
    KafkaClients,
    range::{payload_format, position, range_consumer, resolve},
};

/// What to read: `topic`'s records whose offsets the broker resolves for `[from_ms, to_ms)`.
#[derive(Debug, Clone)]
pub struct Scan<'a> {
    pub topic: &'a str,
    pub from_ms: i64,
    /// The end the offsets are resolved for: a caller that filters by event time adds its
    /// allowance for late events here and drops what is past its own end.
    pub to_ms: i64,
    /// Bounds each look-up, and how long the read may go without a record.
    pub timeout: Duration,
    /// Names the consumer's throw-away group (`kappa-<purpose>-<uuid>`).
    pub purpose: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(
        "no event arrived for {seconds} s while partitions {partitions:?} still had events to read{last_error}; \
         is the broker reachable? (the limit is the Kafka timeout, --kafka-timeout-seconds)"
    )]
    Stalled {
        seconds: u64,
        partitions: Vec<i32>,
        last_error: String,
    },
}

/// What a scan read: the offsets of every partition, and how many records.
#[derive(Debug, Clone, Default)]
pub struct Scanned {
    pub partitions: Vec<PartitionRange>,
    pub read: u64,
    /// False when `keep_going` stopped the scan before the end.
    pub complete: bool,
}

/// Reads every record of the range and hands it to `on_record`. Blocking; `keep_going` is
/// polled between records (with the count read so far) so a cancel stops it.
pub fn scan(
    clients: &KafkaClients,
    scan: &Scan<'_>,
    keep_going: &mut dyn FnMut(u64) -> bool,
    on_record: &mut dyn FnMut(&BorrowedMessage<'_>),
) -> Result<Scanned, ScanError> {
    let Scan {
        topic,
        from_ms,
        to_ms,
        timeout,
        purpose,
    } = *scan;
    let consumer: BaseConsumer = range_consumer(clients, purpose)?;
    let mut scanned = Scanned {
        partitions: resolve(&consumer, topic, from_ms, to_ms, timeout)?,
        ..Scanned::default()
    };
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for range in scanned.partitions.iter().filter(|r| r.start_offset < r.end_offset) {
        assignment.add_partition_offset(topic, range.partition, Offset::Offset(range.start_offset))?;
        remaining.insert(range.partition, range.end_offset);
    }
    if remaining.is_empty() {
        scanned.complete = true;
        return Ok(scanned);
    }
    consumer.assign(&assignment)?;
    let (mut last_record, mut last_error) = (Instant::now(), None::<KafkaError>);
    while !remaining.is_empty() {
        if !keep_going(scanned.read) {
            return Ok(scanned);
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => message,
            Some(Err(e)) if !crate::is_transient(&e) => return Err(e.into()),
            idle => {
                if let Some(Err(e)) = idle {
                    last_error = Some(e);
                }
                // A transaction marker can be a partition's last offset: no record ever reaches it.
                remaining.retain(|&p, end| {
                    let open = position(&consumer, topic, p).is_none_or(|at| at < *end);
                    if !open {
                        finished(&consumer, topic, p);
                    }
                    open
                });
                if !remaining.is_empty() && last_record.elapsed() >= timeout {
                    let mut partitions: Vec<i32> = remaining.keys().copied().collect();
                    partitions.sort_unstable();
                    return Err(ScanError::Stalled {
                        seconds: timeout.as_secs(),
                        partitions,
                        last_error: last_error
                            .map(|e| format!(" (last consumer error: {e})"))
                            .unwrap_or_default(),
                    });
                }
                continue;
            }
        };
        last_record = Instant::now();
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&end) = remaining.get(&partition) else {
            continue;
        };
        // The range's last record, or one past it: the partition is done.
        if offset + 1 >= end {
            remaining.remove(&partition);
            finished(&consumer, topic, partition);
        }
        if offset >= end {
            continue;
        }
        scanned.read += 1;
        on_record(&message);
    }
    scanned.complete = true;
    Ok(scanned)
}

/// Stops fetching a partition whose range is read: fetching on would read past the range (for
/// a range in the middle of a topic, possibly much more than the range) for nothing.
fn finished(consumer: &BaseConsumer, topic: &str, partition: i32) {
    let mut done = TopicPartitionList::new();
    done.add_partition(topic, partition);
    if let Err(e) = consumer.pause(&done) {
        tracing::debug!(topic, partition, error = %e, "could not pause a partition read to its end");
    }
}

/// An event's time as `decoder`'s schema defines it: its time field, or the record's Kafka
/// timestamp (`kafka_ms`) when the schema names none. The error is the reason it is skipped.
pub fn event_time(decoder: &EventDecoder, event: &DecodedEvent, kafka_ms: Option<i64>) -> Result<i64, &'static str> {
    if decoder.time().is_some() {
        if event.time_invalid {
            return Err("invalid_time");
        }
        event.time_ms.ok_or("missing_time")
    } else {
        kafka_ms.ok_or("missing_time")
    }
}

/// A record handed over by [`scan_in_background`]: what decoding needs, copied out of
/// librdkafka so the reading thread can go on.
#[derive(Debug, Clone, Copy)]
pub struct Record<'b> {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// From the record's content-type header.
    pub format: PayloadFormat,
    pub payload: Option<&'b [u8]>,
}

/// Records per hand-over, and hand-overs in flight: bounded, a few MiB of typical events.
const BATCH_RECORDS: usize = 512;
const BATCHES_IN_FLIGHT: usize = 4;

/// A [`Record`] in a batch: its payload as a range of the batch's bytes.
struct Held {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    format: PayloadFormat,
    payload: Option<std::ops::Range<usize>>,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    records: Vec<Held>,
}

impl Batch {
    fn push(&mut self, message: &BorrowedMessage<'_>) {
        let payload = message.payload().map(|p| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(p);
            start..self.bytes.len()
        });
        self.records.push(Held {
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            format: payload_format(message.headers()),
            payload,
        });
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }
}

/// [`scan`] with the reading on a thread of its own: librdkafka's polling and the caller's
/// decoding then run side by side, on two cores, instead of taking turns. Records come to
/// `on_record` on the calling thread, in the order they were read, through a bounded hand-over
/// (batches are reused, so nothing is allocated per record); `keep_going` (records handed over
/// so far) is polled between batches.
pub fn scan_in_background(
    clients: &KafkaClients,
    scope: &Scan<'_>,
    keep_going: &mut dyn FnMut(u64) -> bool,
    on_record: &mut dyn FnMut(Record<'_>),
) -> Result<Scanned, ScanError> {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|threads| {
        let (full, filled) = mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT);
        let (spare, spares) = mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT + 2);
        let stop = &stop;
        let reader = std::thread::Builder::new()
            .name("kafka-scan".into())
            .spawn_scoped(threads, move || {
                let mut batch = Batch::default();
                let scanned = scan(clients, scope, &mut |_| !stop.load(Ordering::Relaxed), &mut |message| {
                    batch.push(message);
                    if batch.records.len() >= BATCH_RECORDS {
                        let next = spares.try_recv().unwrap_or_default();
                        // The caller stopped reading: so does the scan.
                        if full.send(std::mem::replace(&mut batch, next)).is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                });
                if !batch.records.is_empty() {
                    let _ = full.send(batch);
                }
                scanned
            })
            .expect("a thread for reading Kafka");
        let mut handed = 0_u64;
        let mut stopped = false;
        for mut batch in filled.iter() {
            for held in &batch.records {
                on_record(Record {
                    partition: held.partition,
                    offset: held.offset,
                    timestamp_ms: held.timestamp_ms,
                    format: held.format,
                    payload: held.payload.clone().map(|range| &batch.bytes[range]),
                });
            }
            handed += batch.records.len() as u64;
            batch.clear();
            let _ = spare.try_send(batch);
            if !keep_going(handed) {
                stop.store(true, Ordering::Relaxed);
                stopped = true;
                break;
            }
        }
        // Unblocks a reader waiting to hand over more.
        drop(filled);
        let mut scanned = reader.join().expect("the Kafka reading thread panicked")?;
        scanned.read = handed;
        scanned.complete &= !stopped;
        Ok(scanned)
    })
}
