//! Reads the events of `[from, to)` from every partition of a topic. Offsets come from the
//! broker's time index (offsets_for_times), and each record's own timestamp is checked as well,
//! so an event outside the range is never used even when timestamps are not monotonic.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use kappa_api::model::PartitionRange;
use kappa_model::sensor::{Event, plausible_range};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Headers,
};

const TIMEOUT: Duration = Duration::from_secs(30);

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

/// The `[start, end)` offsets of each partition for the time range, as the broker resolves them.
pub fn resolve(
    consumer: &BaseConsumer,
    topic: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<PartitionRange>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let at = |ms: i64| -> Result<HashMap<i32, Offset>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(ms))?;
        }
        let found = consumer.offsets_for_times(tpl, TIMEOUT)?;
        Ok(found.elements().iter().map(|e| (e.partition(), e.offset())).collect())
    };
    let (starts, ends) = (at(from_ms)?, at(to_ms)?);
    let mut ranges = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        // No record at or after the time: the range ends (or starts) at the end of the partition.
        let offset = |o: Option<&Offset>| match o {
            Some(Offset::Offset(o)) => *o,
            _ => high,
        };
        ranges.push(PartitionRange {
            partition: p,
            start_offset: offset(starts.get(&p)),
            end_offset: offset(ends.get(&p)),
        });
    }
    Ok(ranges)
}

/// What to read: a topic's events in `[from_ms, to_ms)`, these features, with or without labels.
#[derive(Debug, Clone)]
pub struct RangeQuery {
    pub topic: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub features: Vec<String>,
    pub labelled: bool,
    pub max_rows: usize,
}

/// Reads the range and holds its usable rows; past `max_rows`, a uniform sample of that many
/// (reservoir sampling, seeded), so memory stays bounded whatever the range holds.
pub fn read_range(
    config: &ClientConfig,
    query: &RangeQuery,
    keep_going: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<RangeData, KafkaError> {
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
    config: &ClientConfig,
    query: &RangeQuery,
    keep_going: &mut dyn FnMut(u64, u64) -> bool,
    on_row: &mut dyn FnMut(Row),
) -> Result<RangeData, KafkaError> {
    let RangeQuery {
        topic,
        from_ms,
        to_ms,
        features,
        labelled,
        ..
    } = query;
    let (topic, from_ms, to_ms, labelled) = (topic.as_str(), *from_ms, *to_ms, *labelled);
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", format!("kappa-trainer-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut data = RangeData {
        partitions: resolve(&consumer, topic, from_ms, to_ms)?,
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
        *data.skipped.entry(reason.to_owned()).or_default() += 1;
    };
    while !remaining.is_empty() {
        if !keep_going(data.read, data.skipped_total) {
            break;
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
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
        let timestamp = message.timestamp().to_millis().unwrap_or(i64::MIN);
        if timestamp < from_ms || timestamp >= to_ms {
            skip(&mut data, "outside_time_range");
            continue;
        }
        let protobuf = message.headers().is_some_and(|h| {
            h.iter().any(|x| {
                x.key.eq_ignore_ascii_case("content-type") && x.value == Some(b"application/x-protobuf".as_slice())
            })
        });
        let event = match message.payload().map(|p| Event::decode(p, protobuf)) {
            Some(Ok(event)) => event,
            Some(Err(_)) | None => {
                skip(&mut data, "malformed");
                continue;
            }
        };
        let mut values = Vec::with_capacity(features.len());
        let mut problem: Option<String> = None;
        for f in features {
            match event.fields.get(f).flatten() {
                Some(v) if !v.is_finite() => problem = problem.or(Some("not_finite".to_owned())),
                Some(v) if plausible_range(f).is_some_and(|(lo, hi)| v < lo || v > hi) => {
                    problem = problem.or_else(|| Some(format!("out_of_range:{f}")));
                }
                Some(v) => values.push(v as f32),
                None => problem = problem.or_else(|| Some(format!("missing_feature:{f}"))),
            }
        }
        if let Some(reason) = problem {
            skip(&mut data, &reason);
            continue;
        }
        if labelled && event.failure_occurred.is_none() {
            skip(&mut data, "missing_label");
            continue;
        }
        on_row(Row {
            values,
            label: event.failure_occurred,
            id: (message.partition(), message.offset()),
        });
    }
    Ok(data)
}
