//! Time ranges of a topic: the broker resolves `[from, to)` to per-partition offsets with its
//! time index (offsets_for_times), and a sample of the range is read from evenly spaced points
//! of every partition, so it covers the whole range and not just its first minutes.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use kappa_api::model::PartitionRange;
use kappa_model::schema::{PayloadFormat, Sample};

use kappa_kafka::KafkaClients;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Headers,
};

/// The payload format a record's `content-type` header declares (JSON when it has none).
pub fn payload_format<H: Headers>(headers: Option<&H>) -> PayloadFormat {
    let value = headers.and_then(|h| {
        h.iter()
            .find(|x| x.key.eq_ignore_ascii_case("content-type"))
            .and_then(|x| x.value)
    });
    PayloadFormat::from_content_type(value)
}

/// Why a range could not be resolved or sampled.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The broker failed a look-up that needed the remote tier: its time index or segments for
    /// these offsets could not be read there.
    #[error(
        "the broker could not look up {topic}'s offsets by time ({source}), and part of its log is on \
         the remote tier: {}. The segments holding those offsets may be missing or unreadable in \
         the brokers' remote storage: check the object store, its credentials, and the broker \
         log's RemoteStorageException",
        describe_parts(.parts)
    )]
    RemoteTier {
        topic: String,
        parts: Vec<RemotePart>,
        source: Box<KafkaError>,
    },
}

/// Offsets `[from, to)` of a partition that only the remote tier holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemotePart {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

impl std::fmt::Display for RemotePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "partition {} offsets [{}, {})", self.partition, self.from, self.to)
    }
}

fn describe_parts(parts: &[RemotePart]) -> String {
    parts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Where each partition's remote tier ends. Reading does not need it (the broker serves remote
/// offsets like local ones), so a broker that cannot say only warns, and the map is empty.
fn earliest_local_or_warn(clients: &KafkaClients, topic: &str, timeout: Duration) -> BTreeMap<i32, i64> {
    kappa_kafka::earliest_local_offsets(clients, topic, timeout)
        .inspect_err(|e| tracing::warn!(topic, %e, "cannot tell which offsets are on the remote tier"))
        .unwrap_or_default()
}

/// Records of `[from, end)` that only the remote tier held, its local copy starting at `local`.
fn remote_count(from: i64, local: i64, end: i64) -> i64 {
    (local.min(end) - from).max(0)
}

/// The `[start, end)` offsets of each partition for the time range, as the broker resolves them.
/// Each broker look-up is bounded by `timeout`.
pub fn resolve(
    clients: &KafkaClients,
    consumer: &BaseConsumer,
    topic: &str,
    from_ms: i64,
    to_ms: i64,
    timeout: Duration,
) -> Result<Vec<PartitionRange>, RangeError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let local = earliest_local_or_warn(clients, topic, timeout);
    let at = |ms: i64| -> Result<HashMap<i32, Offset>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(ms))?;
        }
        let found = consumer.offsets_for_times(tpl, timeout)?;
        Ok(found.elements().iter().map(|e| (e.partition(), e.offset())).collect())
    };
    // A time look-up in a remote segment reads its time index from the remote tier: when that
    // fails, say which offsets only the remote tier holds.
    let remote_failure = |source: KafkaError| -> RangeError {
        let parts: Vec<RemotePart> = partitions
            .iter()
            .filter_map(|&p| {
                let &to = local.get(&p)?;
                let (from, _) = consumer.fetch_watermarks(topic, p, timeout).ok()?;
                (from < to).then_some(RemotePart { partition: p, from, to })
            })
            .collect();
        if parts.is_empty() {
            RangeError::Kafka(source)
        } else {
            RangeError::RemoteTier {
                topic: topic.to_owned(),
                parts,
                source: Box::new(source),
            }
        }
    };
    let starts = at(from_ms).map_err(remote_failure)?;
    let ends = at(to_ms).map_err(remote_failure)?;
    let mut ranges = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        // No record at or after the time: the range ends (or starts) at the end of the partition.
        let offset = |o: Option<&Offset>| match o {
            Some(Offset::Offset(o)) => *o,
            _ => high,
        };
        ranges.push(PartitionRange {
            partition: p,
            start_offset: offset(starts.get(&p)),
            end_offset: offset(ends.get(&p)),
            earliest_local_offset: local.get(&p).copied(),
        });
    }
    Ok(ranges)
}

/// How many of the range's records were on the remote tier when it was read: those below the
/// partition's earliest local offset. `None` when the broker did not say.
pub fn remote_records(range: &PartitionRange) -> Option<i64> {
    Some(remote_count(
        range.start_offset,
        range.earliest_local_offset?,
        range.end_offset,
    ))
}

/// The ranges' tiers in words: how many records were remote, per partition, of how many.
pub fn describe_tiers(ranges: &[PartitionRange]) -> String {
    let total: i64 = ranges.iter().map(|r| (r.end_offset - r.start_offset).max(0)).sum();
    let remote: Option<Vec<i64>> = ranges.iter().map(remote_records).collect();
    let Some(remote) = remote else {
        return format!("{total} records; which were on the remote tier is unknown (the broker did not say)");
    };
    let parts: Vec<String> = ranges
        .iter()
        .zip(&remote)
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| {
            format!(
                "partition {}: [{}, {})",
                r.partition,
                r.start_offset,
                r.start_offset + n
            )
        })
        .collect();
    let sum: i64 = remote.iter().sum();
    if parts.is_empty() {
        format!("{total} records, all on the brokers' own disks")
    } else {
        format!("{sum} of {total} records from the remote tier ({})", parts.join(", "))
    }
}

/// Where a partition's log is: `[log_start, earliest_local)` only on the remote tier,
/// `[earliest_local, end)` on the brokers' disks too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionTiers {
    pub partition: i32,
    pub log_start: i64,
    /// `None` when the broker could not say (see [`kappa_kafka::earliest_local_offsets`]).
    pub earliest_local: Option<i64>,
    pub end: i64,
}

impl PartitionTiers {
    /// Records only the remote tier holds.
    pub fn remote(&self) -> Option<i64> {
        self.earliest_local
            .map(|local| remote_count(self.log_start, local, self.end))
    }
}

/// Each partition of `topic`: its log start, where its remote tier ends, and its end.
pub fn tiers(clients: &KafkaClients, topic: &str, timeout: Duration) -> Result<Vec<PartitionTiers>, RangeError> {
    let consumer = range_consumer(clients, "tiers")?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let local = earliest_local_or_warn(clients, topic, timeout);
    let mut tiers = Vec::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (log_start, end) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
        tiers.push(PartitionTiers {
            partition: partition.id(),
            log_start,
            earliest_local: local.get(&partition.id()).copied(),
            end,
        });
    }
    tiers.sort_unstable_by_key(|t| t.partition);
    Ok(tiers)
}

/// A consumer for reading ranges: its own throw-away group, no commits, committed data only.
pub fn range_consumer(clients: &KafkaClients, purpose: &str) -> Result<BaseConsumer, KafkaError> {
    let group = format!("kappa-{purpose}-{}", uuid::Uuid::new_v4().simple());
    clients
        .config_with(
            &[
                kappa_kafka::FETCH_QUEUE_BACKOFF,
                // Brokers before Kafka 4.2 serve remote-tier data for one partition per fetch
                // (KIP-405), so such a fetch should carry more than librdkafka's 1 MiB. From 4.2
                // on, brokers read every partition of a fetch from the remote tier at once and
                // 1 MiB measured faster there: docs/tiered-storage.md says how to set it back.
                ("max.partition.fetch.bytes", "8388608"),
            ],
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
            ],
        )
        .create()
}

/// Seek points per partition: enough to cover the range, few enough to stay quick.
const POINTS: i64 = 8;

/// A partition whose retained log starts after the range does: retention (or a delete-records
/// call) removed records the range asked for, so reading it gives less than it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated {
    pub partition: i32,
    /// The first offset still in the log.
    pub log_start: i64,
    /// Timestamp of the oldest retained record, later than the range's start.
    pub oldest_ms: i64,
}

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} keeps offsets from {} on (its oldest event is at {} ms); what came before was deleted by retention",
            self.partition, self.log_start, self.oldest_ms
        )
    }
}

/// What a range holds: its per-partition offsets, a sample, and where its start was deleted.
#[derive(Debug, Clone)]
pub struct RangeSample {
    pub ranges: Vec<PartitionRange>,
    pub samples: Vec<Sample>,
    pub truncated: Vec<Truncated>,
}

/// How much a sample reads, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct SampleLimits {
    /// Most records sampled.
    pub max: usize,
    /// Wall-clock time for reading the sample.
    pub budget: Duration,
    /// Bound on each broker look-up.
    pub timeout: Duration,
}

/// Resolves `[from_ms, to_ms)` of `topic` and samples it with one consumer: the per-partition
/// ranges, up to `max` records (by record timestamp) read from evenly spaced offsets of every
/// partition within `budget` of wall-clock time, and the partitions whose start was deleted.
pub fn sample_range(
    config: &KafkaClients,
    purpose: &str,
    topic: &str,
    from_ms: i64,
    to_ms: i64,
    limits: SampleLimits,
) -> Result<RangeSample, RangeError> {
    let SampleLimits { max, budget, timeout } = limits;
    let consumer = range_consumer(config, purpose)?;
    let ranges = resolve(config, &consumer, topic, from_ms, to_ms, timeout)?;
    let truncated = truncated_starts(&consumer, topic, &ranges, from_ms, timeout)?;
    let samples = sample(&consumer, topic, &ranges, from_ms, to_ms, max, budget)?;
    Ok(RangeSample {
        ranges,
        samples,
        truncated,
    })
}

/// Partitions whose log no longer starts at offset 0, whose range starts at the first retained
/// record, and whose first retained record is younger than `from_ms`: records of the range may
/// be gone. (A range that starts at offset 0, or after the first retained record, is whole.)
pub fn truncated_starts(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[PartitionRange],
    from_ms: i64,
    timeout: Duration,
) -> Result<Vec<Truncated>, KafkaError> {
    let mut truncated = Vec::new();
    for range in ranges {
        let (low, high) = consumer.fetch_watermarks(topic, range.partition, timeout)?;
        if low == 0 || range.start_offset > low || low >= high {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, range.partition, Offset::Offset(low))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = match message {
                Ok(message) => message,
                Err(e) if kappa_kafka::is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            if message.partition() != range.partition || message.offset() < low {
                continue;
            }
            if let Some(oldest_ms) = message.timestamp().to_millis().filter(|t| *t > from_ms) {
                truncated.push(Truncated {
                    partition: range.partition,
                    log_start: low,
                    oldest_ms,
                });
            }
            break;
        }
    }
    Ok(truncated)
}

fn sample(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[PartitionRange],
    from_ms: i64,
    to_ms: i64,
    max: usize,
    budget: Duration,
) -> Result<Vec<Sample>, KafkaError> {
    let deadline = Instant::now() + budget;
    let live: Vec<&PartitionRange> = ranges.iter().filter(|r| r.start_offset < r.end_offset).collect();
    if live.is_empty() || max == 0 {
        return Ok(Vec::new());
    }
    let per_point = (max as i64 / (live.len() as i64 * POINTS)).max(1);
    let mut samples = Vec::with_capacity(max);
    for range in live {
        let span = range.end_offset - range.start_offset;
        let points = POINTS.min((span + per_point - 1) / per_point).max(1);
        for i in 0..points {
            if samples.len() >= max || Instant::now() >= deadline {
                return Ok(samples);
            }
            let start = range.start_offset + span * i / points;
            // Never past the next point, so no record is sampled twice.
            let end = (start + per_point).min(range.start_offset + span * (i + 1) / points);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, range.partition, Offset::Offset(start))?;
            consumer.assign(&tpl)?;
            while samples.len() < max && Instant::now() < deadline {
                let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                    // A transaction marker can be the last offset: no record ever reaches it.
                    if position(consumer, topic, range.partition).is_some_and(|p| p >= end) {
                        break;
                    }
                    continue;
                };
                let message = match message {
                    Ok(message) => message,
                    // Waited out within the sample's budget.
                    Err(e) if kappa_kafka::is_transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                // A fetch of the previous assignment can still deliver: nothing before `start`.
                if message.partition() != range.partition || message.offset() < start {
                    continue;
                }
                if message.offset() >= end {
                    break;
                }
                let timestamp = message.timestamp().to_millis();
                let inside = timestamp.is_none_or(|t| t >= from_ms && t < to_ms);
                if let (true, Some(payload)) = (inside, message.payload()) {
                    samples.push(Sample {
                        payload: payload.to_vec(),
                        format: payload_format(message.headers()),
                        timestamp_ms: timestamp,
                    });
                }
                if message.offset() + 1 >= end {
                    break;
                }
            }
        }
    }
    Ok(samples)
}

/// The consumer's next offset on one partition, when it has one.
pub fn position(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let positions = consumer.position().ok()?;
    let element = positions.find_partition(topic, partition)?;
    match element.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Where one partition of a topic stands relative to a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSince {
    pub partition: i32,
    /// The first offset whose timestamp is at or after the time; `high` when no record is.
    pub start: i64,
    pub low: i64,
    pub high: i64,
}

/// Every partition of `topic` located at `since_ms` (broker time index), with its watermarks;
/// empty when the topic has no partitions (it does not exist yet).
pub fn partitions_since(
    consumer: &BaseConsumer,
    topic: &str,
    since_ms: i64,
    timeout: Duration,
) -> Result<Vec<PartitionSince>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut query = TopicPartitionList::new();
    for p in metadata.topics().first().map(|t| t.partitions()).unwrap_or_default() {
        query.add_partition_offset(topic, p.id(), Offset::Offset(since_ms))?;
    }
    if query.count() == 0 {
        return Ok(Vec::new());
    }
    let mut located = Vec::new();
    for element in consumer.offsets_for_times(query, timeout)?.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
        let start = match element.offset() {
            Offset::Offset(o) => o,
            _ => high,
        }
        .clamp(low, high);
        located.push(PartitionSince {
            partition: element.partition(),
            start,
            low,
            high,
        });
    }
    Ok(located)
}
