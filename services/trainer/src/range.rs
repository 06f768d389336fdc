//! ReadRange: the rows a job with a spec would read, sent to the caller instead of trained on:
//! the same range, schema, decoding and drop reasons (a notebook sees what the trainer sees),
//! bounded by --max-rows like a job.

use std::pin::Pin;

use kappa_api::trainer::{
    RangeColumns, RangeReport, ReadRangeRequest, ReadRangeResponse, RowBatch, StartTrainingRequest,
    read_range_response::Part,
};
use kappa_dataset::rows::read_range;
use tokio_stream::Stream;
use tonic::Status;

use crate::{error::TrainerError, job, service::TrainerService, spec::ValidSpec};

/// Rows a batch message carries: far below gRPC's message limit at hundreds of features.
const ROWS_A_BATCH: usize = 4096;

pub type RangeStream = Pin<Box<dyn Stream<Item = Result<ReadRangeResponse, Status>> + Send>>;

impl TrainerService {
    pub(crate) async fn read_range_inner(&self, request: ReadRangeRequest) -> Result<RangeStream, TrainerError> {
        // What only training uses need not be given to read: valid placeholders for it.
        let spec = request.spec.map(|mut spec| {
            spec.epochs = spec.epochs.max(1);
            if spec.model_name.is_empty() {
                "range".clone_into(&mut spec.model_name);
            }
            spec
        });
        let spec = ValidSpec::try_from(StartTrainingRequest { spec })?.into_inner();
        if !self.topic_exists(&spec.source_topic).await? {
            return Err(TrainerError::UnknownTopic(spec.source_topic));
        }
        let ctx = self.context.clone();
        let (spec, data) = tokio::task::spawn_blocking(move || {
            let mut spec = spec;
            let (from_ms, to_ms) = job::time_range(&spec);
            crate::schema::resolve(&ctx.kafka, &mut spec, from_ms, to_ms, ctx.kafka_timeout)?;
            let query = crate::round::read::range_query(&spec, &ctx).map_err(TrainerError::InvalidSpec)?;
            let data = read_range(&ctx.kafka, &query, &mut |_, _| true)
                .map_err(|e| TrainerError::Kafka(format!("reading the range failed: {e}")))?;
            Ok::<_, TrainerError>((spec, data))
        })
        .await
        .map_err(|e| TrainerError::Kafka(e.to_string()))??;
        let width = spec.features.len();
        let columns = RangeColumns {
            features: spec.features.iter().map(|f| f.path.clone()).collect(),
            label_field: spec.label_field.clone(),
        };
        let report = RangeReport {
            partitions: data.partitions,
            read: data.read,
            usable: data.usable,
            skipped: data.skipped,
            sampled: data.usable > data.rows.len() as u64,
        };
        let batches = data.rows.chunks(ROWS_A_BATCH).map(move |rows| {
            let mut batch = RowBatch {
                partitions: Vec::with_capacity(rows.len()),
                offsets: Vec::with_capacity(rows.len()),
                values: Vec::with_capacity(rows.len() * width),
                labels: Vec::with_capacity(rows.len()),
                event_times_ms: Vec::with_capacity(rows.len()),
            };
            for row in rows {
                batch.partitions.push(row.id.0);
                batch.offsets.push(row.id.1);
                batch.values.extend_from_slice(&row.values);
                batch.labels.push(row.label.map_or(-1, i32::from));
                batch.event_times_ms.push(row.time_ms);
            }
            Part::Rows(batch)
        });
        let parts: Vec<Part> = std::iter::once(Part::Columns(columns))
            .chain(batches)
            .chain(std::iter::once(Part::Report(report)))
            .collect();
        Ok(Box::pin(tokio_stream::iter(
            parts.into_iter().map(|part| Ok(ReadRangeResponse { part: Some(part) })),
        )))
    }
}
