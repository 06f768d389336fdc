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

use kappa_kafka::KafkaClients;

use crate::range::{payload_format, position, range_consumer, resolve};

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
    #[error(transparent)]
    Range(#[from] crate::range::RangeError),
    #[error(
        "no event arrived for {seconds} s while partitions still had events to read: {}{last_error}; {}",
        describe_stuck(.stuck),
        advice(.stuck)
    )]
    Stalled {
        seconds: u64,
        stuck: Vec<Stuck>,
        last_error: String,
    },
}

/// A partition a scan could not finish, and where it stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub partition: i32,
    /// The next offset the scan needed.
    pub at: i64,
    pub end: i64,
    /// Where the partition's remote tier ended when the range was resolved, when known.
    pub earliest_local: Option<i64>,
}

impl Stuck {
    /// The offsets the scan still needed from the remote tier: the segments holding them are
    /// the ones the broker could not serve.
    pub fn remote_part(&self) -> Option<(i64, i64)> {
        let local = self.earliest_local?;
        (self.at < local).then(|| (self.at, local.min(self.end)))
    }
}

fn describe_stuck(stuck: &[Stuck]) -> String {
    let parts: Vec<String> = stuck
        .iter()
        .map(|s| match s.remote_part() {
            Some((from, to)) => format!(
                "partition {} at offset {} of its end {}, on the remote tier: the segments holding offsets [{from}, {to}) were not served",
                s.partition, s.at, s.end
            ),
            None => format!("partition {} at offset {} of its end {}", s.partition, s.at, s.end),
        })
        .collect();
    parts.join("; ")
}

fn advice(stuck: &[Stuck]) -> &'static str {
    if stuck.iter().any(|s| s.remote_part().is_some()) {
        "check the brokers' remote storage (the object store, its credentials, and the broker log's \
         RemoteStorageException): segments there may be missing (the limit is the Kafka timeout, \
         --kafka-timeout-seconds)"
    } else {
        "is the broker reachable? (the limit is the Kafka timeout, --kafka-timeout-seconds)"
    }
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
        partitions: resolve(clients, &consumer, topic, from_ms, to_ms, timeout)?,
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
    // Records seen up to the last idle poll: the clock is read when a poll comes back empty,
    // not once per record (reading it is a measurable part of a fast scan).
    let (mut seen, mut seen_at_idle) = (0_u64, 0_u64);
    while !remaining.is_empty() {
        if !keep_going(scanned.read) {
            return Ok(scanned);
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => message,
            Some(Err(e)) if !kappa_kafka::is_transient(&e) => return Err(e.into()),
            idle => {
                if let Some(Err(e)) = idle {
                    last_error = Some(e);
                }
                if seen != seen_at_idle {
                    (seen_at_idle, last_record) = (seen, Instant::now());
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
                    let mut stuck: Vec<Stuck> = scanned
                        .partitions
                        .iter()
                        .filter_map(|range| {
                            let &end = remaining.get(&range.partition)?;
                            Some(Stuck {
                                partition: range.partition,
                                at: position(&consumer, topic, range.partition).unwrap_or(range.start_offset),
                                end,
                                earliest_local: range.earliest_local_offset,
                            })
                        })
                        .collect();
                    stuck.sort_unstable_by_key(|s| s.partition);
                    return Err(ScanError::Stalled {
                        seconds: timeout.as_secs(),
                        stuck,
                        last_error: last_error
                            .map(|e| format!(" (last consumer error: {e})"))
                            .unwrap_or_default(),
                    });
                }
                continue;
            }
        };
        seen += 1;
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

/// A record handed to a decoder by [`scan_decoded`]: what decoding needs, copied out of
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

/// Records per hand-over, and hand-overs that may be out at once (read, decoding, or waiting
/// for their turn): bounded, a few MiB of typical events.
const BATCH_RECORDS: usize = 512;
const BATCHES: usize = 8;

/// Decoding threads at most: past a few, the one thread reading Kafka is the limit.
const MAX_DECODERS: usize = 4;

/// A [`Record`] in a batch: its payload as a range of the batch's bytes.
struct Held {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    format: PayloadFormat,
    payload: Option<std::ops::Range<usize>>,
}

/// Records read together, then their decoded values. Batches circulate (reader, decoder,
/// caller, back to the reader), so nothing is allocated per record.
struct Batch<T> {
    /// Its place in read order: decoders finish out of order, the caller hands out in order.
    seq: u64,
    bytes: Vec<u8>,
    records: Vec<Held>,
    decoded: Vec<T>,
    /// The decoder panicked on this batch: the caller stops the scan and re-raises it.
    panic: Option<Box<dyn std::any::Any + Send>>,
}

impl Held {
    fn record<'b>(&self, bytes: &'b [u8]) -> Record<'b> {
        Record {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            format: self.format,
            payload: self.payload.clone().map(|range| &bytes[range]),
        }
    }
}

impl<T> Batch<T> {
    fn new() -> Self {
        Self {
            seq: 0,
            bytes: Vec::new(),
            records: Vec::with_capacity(BATCH_RECORDS),
            decoded: Vec::with_capacity(BATCH_RECORDS),
            panic: None,
        }
    }

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
        self.decoded.clear();
    }
}

/// [`scan`] with decoding spread over threads: one thread polls Kafka, `decode` runs on as many
/// threads as there are cores (each with its own `S`, scratch space it may reuse), and
/// `on_decoded` gets each record's result on the calling thread, in the order the records were
/// read, so what the caller builds does not depend on which thread was quicker. Memory stays
/// bounded: a fixed set of batches circulates, and the reader waits when all are out.
/// `keep_going` (results handed out so far) is polled between batches. A panic in `decode`
/// stops the scan and is re-raised here.
pub fn scan_decoded<S, T>(
    clients: &KafkaClients,
    scope: &Scan<'_>,
    keep_going: &mut dyn FnMut(u64) -> bool,
    decode: &(dyn Fn(&mut S, Record<'_>) -> T + Sync),
    on_decoded: &mut dyn FnMut(T),
) -> Result<Scanned, ScanError>
where
    S: Default,
    T: Send,
{
    use std::sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    };
    let decoders = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DECODERS));
    let stop = AtomicBool::new(false);
    let (to_decode, undecoded) = mpsc::sync_channel::<Batch<T>>(BATCHES);
    // Decoders take turns taking a batch, not decoding one.
    let undecoded = Mutex::new(undecoded);
    std::thread::scope(|threads| {
        let (to_caller, decoded) = mpsc::sync_channel::<Batch<T>>(BATCHES);
        let (to_reader, spares) = mpsc::sync_channel::<Batch<T>>(BATCHES);
        for _ in 0..BATCHES {
            to_reader
                .send(Batch::new())
                .expect("the spares channel holds every batch");
        }
        let stop = &stop;
        let reader = std::thread::Builder::new()
            .name("kafka-scan".into())
            .spawn_scoped(threads, move || {
                let mut seq = 0_u64;
                let mut batch = spares.recv().ok();
                let mut hand_over = |batch: &mut Option<Batch<T>>, last: bool| {
                    if let Some(mut full) = batch.take() {
                        full.seq = seq;
                        seq += 1;
                        // Decoders gone means the caller stopped: so does the scan.
                        if to_decode.send(full).is_err() {
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                    if !last {
                        // Every batch is out: wait for the caller to hand one back.
                        *batch = spares.recv().ok();
                        if batch.is_none() {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                };
                let scanned = scan(clients, scope, &mut |_| !stop.load(Ordering::Relaxed), &mut |message| {
                    let Some(held) = batch.as_mut() else { return };
                    held.push(message);
                    if held.records.len() >= BATCH_RECORDS {
                        hand_over(&mut batch, false);
                    }
                });
                if batch.as_ref().is_some_and(|b| !b.records.is_empty()) {
                    hand_over(&mut batch, true);
                }
                scanned
            })
            .expect("a thread for reading Kafka");
        for n in 0..decoders {
            let (undecoded, to_caller) = (&undecoded, to_caller.clone());
            std::thread::Builder::new()
                .name(format!("scan-decode-{n}"))
                .spawn_scoped(threads, move || {
                    let mut scratch = S::default();
                    loop {
                        let next = undecoded.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(mut batch) = next else { return };
                        let Batch {
                            records,
                            bytes,
                            decoded,
                            ..
                        } = &mut batch;
                        let decoding = std::panic::AssertUnwindSafe(|| {
                            decoded.extend(records.iter().map(|held| decode(&mut scratch, held.record(bytes))));
                        });
                        let panicked = std::panic::catch_unwind(decoding).err();
                        let last = panicked.is_some();
                        batch.panic = panicked;
                        if to_caller.send(batch).is_err() || last {
                            return;
                        }
                    }
                })
                .expect("a thread for decoding Kafka records");
        }
        drop(to_caller);
        let mut handed = 0_u64;
        let mut stopped = false;
        let mut panic = None;
        // Batches decoded ahead of their turn; at most BATCHES exist at all.
        let mut waiting: Vec<Batch<T>> = Vec::with_capacity(BATCHES);
        let mut next_seq = 0_u64;
        'scan: for batch in decoded.iter() {
            waiting.push(batch);
            while let Some(at) = waiting.iter().position(|b| b.seq == next_seq) {
                let mut batch = waiting.swap_remove(at);
                next_seq += 1;
                if let Some(p) = batch.panic.take() {
                    panic = Some(p);
                    stopped = true;
                    break 'scan;
                }
                handed += batch.decoded.len() as u64;
                batch.decoded.drain(..).for_each(&mut *on_decoded);
                batch.clear();
                let _ = to_reader.send(batch);
                if !keep_going(handed) {
                    stopped = true;
                    break 'scan;
                }
            }
        }
        // Unblocks a reader and decoders waiting to hand over more.
        stop.store(true, Ordering::Relaxed);
        drop((decoded, to_reader, waiting));
        let scanned = reader.join().expect("the Kafka reading thread panicked");
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
        let mut scanned = scanned?;
        scanned.read = handed;
        scanned.complete &= !stopped;
        Ok(scanned)
    })
}
