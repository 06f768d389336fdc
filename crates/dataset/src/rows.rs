//! Reads the events of `[from, to)` from every partition of a topic. Offsets come from the
//! broker's time index (offsets_for_times), and each record's own timestamp is checked as well,
//! so an event outside the range is never used even when timestamps are not monotonic.

use std::{borrow::Cow, collections::BTreeMap, sync::Arc, time::Duration};

use kappa_api::model::PartitionRange;
use kappa_kafka::KafkaClients;
use kappa_model::schema::{DecodedEvent, EventDecoder};

use crate::scan::{Record, Scan, ScanError, event_time, scan_decoded};

/// One usable event: feature values in the spec's order, and its label when there is one.
#[derive(Debug, Clone)]
pub struct Row {
    pub values: Vec<f32>,
    pub label: Option<bool>,
    /// (partition, offset): identifies the event across re-reads of the range.
    pub id: (i32, i64),
    /// Its event time (the schema's time field, else the record's timestamp), in ms.
    pub time_ms: i64,
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
    /// Wall-clock time the read took, from resolving the range to its last record.
    pub read_duration: Duration,
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

/// Reads the range and holds its usable rows in (partition, offset) order; past `max_rows`, a
/// uniform sample of that many (reservoir sampling, seeded), so memory stays bounded whatever
/// the range holds.
pub fn read_range(
    config: &KafkaClients,
    query: &RangeQuery,
    keep_going: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<RangeData, ScanError> {
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
    // Partitions are read in parallel, so rows arrive interleaved in no fixed order. In
    // (partition, offset) order the same range gives the same rows in the same order on every
    // read, from either tier, and so the same seeded splits and the same model.
    rows.sort_unstable_by_key(|row| row.id);
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
) -> Result<RangeData, ScanError> {
    let RangeQuery {
        topic,
        from_ms,
        to_ms,
        decoder,
        lateness_ms,
        timeout,
        ..
    } = query;
    let (from_ms, to_ms) = (*from_ms, *to_ms);
    let scope = Scan {
        topic,
        from_ms,
        to_ms: to_ms.saturating_add(*lateness_ms),
        timeout: *timeout,
        purpose: "trainer",
    };
    let started = std::time::Instant::now();
    let mut data = RangeData::default();
    let labelled = decoder.label().is_some();
    // Read by `keep_going` while `on_decoded` counts: both closures live through the scan.
    let skipped_total = std::cell::Cell::new(0_u64);
    // Decoding is most of a read's cost: it runs on every core while another thread polls Kafka.
    let decode = |event: &mut DecodedEvent, record: Record<'_>| -> Result<Row, Cow<'static, str>> {
        let payload = record.payload.ok_or("empty")?;
        decoder
            .decode_into(payload, record.format, event)
            .map_err(|_| "malformed")?;
        let time = event_time(decoder, event, record.timestamp_ms)?;
        if time < from_ms || time >= to_ms {
            return Err("outside_time_range".into());
        }
        let mut values = Vec::with_capacity(decoder.features().len());
        // Counted once, by its first problem, so the counts add up to the rows dropped.
        decoder
            .extend_row(event, &mut values)
            .map_err(|problems| decoder.reason_key(&problems[0]))?;
        if labelled && event.label.is_none() {
            return Err("missing_label".into());
        }
        Ok(Row {
            values,
            label: event.label,
            id: (record.partition, record.offset),
            time_ms: time,
        })
    };
    let scanned = scan_decoded(
        config,
        &scope,
        &mut |read| keep_going(read, skipped_total.get()),
        &decode,
        &mut |row| {
            match row {
                Ok(row) => on_row(row),
                Err(reason) => {
                    data.skipped_total += 1;
                    match data.skipped.get_mut(reason.as_ref()) {
                        Some(count) => *count += 1,
                        None => {
                            data.skipped.insert(reason.into_owned(), 1);
                        }
                    }
                }
            }
            skipped_total.set(data.skipped_total);
        },
    )?;
    data.partitions = scanned.partitions;
    data.read = scanned.read;
    data.read_duration = started.elapsed();
    Ok(data)
}
