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
use kappa_model::schema::{DecodedEvent, EventDecoder};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::BorrowedMessage,
};

use crate::{
    KafkaClients,
    range::{position, range_consumer, resolve},
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
                remaining.retain(|&p, end| position(&consumer, topic, p).is_none_or(|at| at < *end));
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
        let Some(&end) = remaining.get(&message.partition()) else {
            continue;
        };
        if message.offset() >= end {
            remaining.remove(&message.partition());
            continue;
        }
        if message.offset() + 1 >= end {
            remaining.remove(&message.partition());
        }
        scanned.read += 1;
        on_record(&message);
    }
    scanned.complete = true;
    Ok(scanned)
}

/// An event's time as `decoder`'s schema defines it: its time field, or the record's Kafka
/// timestamp when the schema names none. The error is the reason it is skipped.
pub fn event_time(
    decoder: &EventDecoder,
    event: &DecodedEvent,
    message: &BorrowedMessage<'_>,
) -> Result<i64, &'static str> {
    if decoder.time().is_some() {
        if event.time_invalid {
            return Err("invalid_time");
        }
        event.time_ms.ok_or("missing_time")
    } else {
        message.timestamp().to_millis().ok_or("missing_time")
    }
}
