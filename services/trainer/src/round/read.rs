//! Step 1: the spec's time range of the source topic, read through its schema.

use std::sync::Arc;

use kappa_api::trainer::{JobPhase, TrainingSpec};
use tracing::field::Empty;

use kappa_dataset::rows::{RangeData, RangeQuery, read_range};

use crate::job::{JobContext, JobHandle, Stop, fail, time_range};

/// The range read: what was asked, and the rows it held (a uniform sample past `--max-rows`).
pub struct Read {
    pub query: RangeQuery,
    pub data: RangeData,
}

/// What a job with `spec` reads: its range of its source topic, through its schema.
pub fn range_query(spec: &TrainingSpec, ctx: &JobContext) -> Result<RangeQuery, String> {
    let (from_ms, to_ms) = time_range(spec);
    Ok(RangeQuery {
        topic: spec.source_topic.clone(),
        from_ms,
        to_ms,
        decoder: Arc::new(crate::schema::decoder(spec)?),
        lateness_ms: crate::schema::lateness_ms(spec),
        max_rows: ctx.max_rows,
        timeout: ctx.kafka_timeout,
    })
}

pub async fn read(handle: &Arc<JobHandle>, ctx: &JobContext, spec: &TrainingSpec) -> Result<Read, Stop> {
    let query = range_query(spec, ctx).map_err(fail)?;
    let (from_ms, to_ms) = (query.from_ms, query.to_ms);
    handle.set_phase(
        JobPhase::Reading,
        format!("reading {} over [{from_ms}, {to_ms})", spec.source_topic),
    );
    let data = {
        let (handle, kafka, query) = (Arc::clone(handle), ctx.kafka.clone(), query.clone());
        let span = tracing::info_span!("read_kafka", topic = %query.topic, from_ms, to_ms, events = Empty);
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let data = read_range(&kafka, &query, &mut |read, skipped| {
                handle.report(|p| {
                    p.samples_read = read;
                    p.samples_skipped = skipped;
                });
                !handle.cancel.is_cancelled()
            });
            if let Ok(data) = &data {
                span.record("events", data.read);
            }
            data
        })
        .await
        .map_err(fail)?
        .map_err(|e| fail(format!("reading Kafka failed: {e}")))?
    };
    ctx.metrics.samples_read.inc_by(data.read);
    if handle.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    Ok(Read { query, data })
}
