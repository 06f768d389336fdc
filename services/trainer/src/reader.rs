//! Reads the events of `[from, to)` from every partition of a topic. Offsets come from the
//! broker's time index (offsets_for_times), and each record's own timestamp is checked as well,
//! so an event outside the range is never used even when timestamps are not monotonic.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use kappa_api::model::PartitionRange;
use kappa_kafka::{
    KafkaClients,
    range::{payload_format, position, range_consumer, resolve},
};
use kappa_model::schema::{DecodedEvent, EventDecoder};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
};

/// One usable event: feature values in the spec's order, and its label when there is one.
#[derive(Debug, Clone)]
pub struct Row {
    pub values: Vec<f32>,
    pub label: Option<bool>,
    /// (partition, offset): identifies the event across re-reads of the range.
    pub id: (i32, i64),
}

#[derive(Debug, Default)]
pub struct RangeData {
    pub partitions: Vec<PartitionRange>,
    pub rows: Vec<Row>,
    pub read: u64,
    pub skipped: BTreeMap<String, u64>,
    /// Sum of `skipped`, kept as it grows so progress reports need not re-sum the reasons.
    pub skipped_total: u64,
    /// Usable events in the range; more than `rows.len()` when the memory cap was reached and
    /// `rows` holds a uniform sample of them.
    pub usable: u64,
}

/// What to read: a topic's events in `[from_ms, to_ms)` of event time, through a schema.
#[derive(Debug, Clone)]
pub struct RangeQuery {
    pub topic: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub decoder: Arc<EventDecoder>,
    /// How far past `to_ms` (by Kafka timestamp) late events are looked for.
    pub lateness_ms: i64,
    pub max_rows: usize,
    /// Bounds each look-up, and how long the read may go without an event.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(
        "no event arrived for {seconds} s while partitions {partitions:?} still had events to read{last_error}; \
         is the broker reachable? (the limit is --kafka-timeout-seconds)"
    )]
    Stalled {
        seconds: u64,
        partitions: Vec<i32>,
        last_error: String,
    },
}

/// Reads the range and holds its usable rows; past `max_rows`, a uniform sample of that many
/// (reservoir sampling, seeded), so memory stays bounded whatever the range holds.
pub fn read_range(
    config: &KafkaClients,
    query: &RangeQuery,
    keep_going: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<RangeData, ReadError> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(0x006b_6170_7061);
    let mut rows = Vec::new();
    let mut seen = 0_u64;
    let mut data = scan_range(config, query, keep_going, &mut |row| {
        seen += 1;
        if rows.len() < query.max_rows {
            rows.push(row);
        } else {
            let j = rng.random_range(0..seen) as usize;
            if j < query.max_rows {
                rows[j] = row;
            }
        }
    })?;
    data.rows = rows;
    data.usable = seen;
    Ok(data)
}

/// Reads every event of the range and hands each usable one to `on_row`; counts the others by
/// reason. Blocking; `keep_going` (rows read and skipped so far) is polled so a cancel stops it.
pub fn scan_range(
    config: &KafkaClients,
    query: &RangeQuery,
    keep_going: &mut dyn FnMut(u64, u64) -> bool,
    on_row: &mut dyn FnMut(Row),
) -> Result<RangeData, ReadError> {
    let RangeQuery {
        topic,
        from_ms,
        to_ms,
        decoder,
        lateness_ms,
        timeout,
        ..
    } = query;
    let (topic, from_ms, to_ms) = (topic.as_str(), *from_ms, *to_ms);
    let consumer: BaseConsumer = range_consumer(config, "trainer")?;
    let mut data = RangeData {
        partitions: resolve(&consumer, topic, from_ms, to_ms.saturating_add(*lateness_ms), *timeout)?,
        ..RangeData::default()
    };
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for range in data.partitions.iter().filter(|r| r.start_offset < r.end_offset) {
        assignment.add_partition_offset(topic, range.partition, Offset::Offset(range.start_offset))?;
        remaining.insert(range.partition, range.end_offset);
    }
    if remaining.is_empty() {
        return Ok(data);
    }
    consumer.assign(&assignment)?;
    let skip = |data: &mut RangeData, reason: &str| {
        data.skipped_total += 1;
        match data.skipped.get_mut(reason) {
            Some(count) => *count += 1,
            None => {
                data.skipped.insert(reason.to_owned(), 1);
            }
        }
    };
    let labelled = decoder.label().is_some();
    let mut event = DecodedEvent::default();
    let (mut last_event, mut last_error) = (Instant::now(), None::<KafkaError>);
    while !remaining.is_empty() {
        if !keep_going(data.read, data.skipped_total) {
            break;
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => message,
            Some(Err(e)) if !kappa_kafka::is_transient(&e) => return Err(e.into()),
            idle => {
                if let Some(Err(e)) = idle {
                    last_error = Some(e);
                }
                // A transaction marker can be a partition's last offset: no record ever reaches it.
                remaining.retain(|&p, end| position(&consumer, topic, p).is_none_or(|at| at < *end));
                if !remaining.is_empty() && last_event.elapsed() >= *timeout {
                    let mut partitions: Vec<i32> = remaining.keys().copied().collect();
                    partitions.sort_unstable();
                    return Err(ReadError::Stalled {
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
        last_event = Instant::now();
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
        data.read += 1;
        let Some(payload) = message.payload() else {
            skip(&mut data, "empty");
            continue;
        };
        if decoder
            .decode_into(payload, payload_format(message.headers()), &mut event)
            .is_err()
        {
            skip(&mut data, "malformed");
            continue;
        }
        let time = if decoder.time().is_some() {
            if event.time_invalid {
                skip(&mut data, "invalid_time");
                continue;
            }
            event.time_ms
        } else {
            message.timestamp().to_millis()
        };
        match time {
            None => {
                skip(&mut data, "missing_time");
                continue;
            }
            Some(t) if t < from_ms || t >= to_ms => {
                skip(&mut data, "outside_time_range");
                continue;
            }
            Some(_) => {}
        }
        let mut values = Vec::with_capacity(decoder.features().len());
        if let Err(problems) = decoder.extend_row(&event, &mut values) {
            // Counted once, by its first problem, so the counts add up to the rows dropped.
            skip(&mut data, &decoder.reason_key(&problems[0]));
            continue;
        }
        if labelled && event.label.is_none() {
            skip(&mut data, "missing_label");
            continue;
        }
        on_row(Row {
            values,
            label: event.label,
            id: (message.partition(), message.offset()),
        });
    }
    Ok(data)
}
