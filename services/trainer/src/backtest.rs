//! Backtest: `kappa backtest` as a call, so a notebook compares versions on a window of the
//! log without a Kafka client of its own. Both run `kappa_backtest`; the trainer's window is
//! bounded by --max-rows, as a backtest gate's is.

use kappa_api::{
    model::PartitionRange,
    trainer::{Agreement, BacktestReport, BacktestRequest, ScoreSummary, TopFeature, VersionBacktest},
};
use kappa_backtest::{FetchError, Window};
use kappa_client::{GetError, Registry, Selector};
use kappa_model::schema::LabelRule;

use crate::{error::TrainerError, service::TrainerService};

/// Versions one call may replay: each is held in memory with its scores for every event.
const MAX_VERSIONS: usize = 8;

impl TrainerService {
    pub(crate) async fn backtest_inner(&self, request: BacktestRequest) -> Result<BacktestReport, TrainerError> {
        let invalid = |m: String| TrainerError::InvalidSpec(m);
        if request.model.is_empty() {
            return Err(invalid("name the model whose versions to replay".into()));
        }
        if request.versions.is_empty() || request.versions.len() > MAX_VERSIONS {
            return Err(invalid(format!(
                "name 1 to {MAX_VERSIONS} versions to replay (numbers or aliases), not {}",
                request.versions.len()
            )));
        }
        let range = request.window.unwrap_or_default();
        if range.from_ms >= range.to_ms {
            return Err(invalid(format!(
                "the window [{}, {}) is empty: from_ms must be before to_ms",
                range.from_ms, range.to_ms
            )));
        }
        let ctx = &self.context;
        let mut registry = Registry::connect_with(ctx.registry.as_str(), &ctx.registry_security)
            .await
            .map_err(|e| TrainerError::Registry {
                context: format!("connecting to kappa-registry at {}", ctx.registry.as_str()),
                status: tonic::Status::unavailable(e.to_string()),
            })?;
        let mut contenders = Vec::with_capacity(request.versions.len());
        for named in &request.versions {
            let selector = match named.parse::<u64>() {
                Ok(v) => Selector::Version(v),
                Err(_) => Selector::Alias(named.clone()),
            };
            let contender = kappa_backtest::fetch(&mut registry, &request.model, selector)
                .await
                .map_err(fetch_failed)?;
            contenders.push(contender);
        }
        let topic = if request.topic.is_empty() {
            let first = &contenders[0].manifest;
            first
                .lineage
                .as_ref()
                .map(|l| l.source_topic.clone())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    invalid(format!(
                        "version {} records no training topic; name the topic to replay",
                        first.version
                    ))
                })?
        } else {
            request.topic
        };
        if !self.topic_exists(&topic).await? {
            return Err(TrainerError::UnknownTopic(topic));
        }
        let window = Window {
            topic,
            from_ms: range.from_ms,
            to_ms: range.to_ms,
            timeout: ctx.kafka_timeout,
            max_events: Some(ctx.max_rows),
        };
        let label =
            (!request.label_field.is_empty()).then(|| LabelRule::new(&request.label_field, &request.positive_labels));
        let kafka = ctx.kafka.clone();
        let report = tokio::task::spawn_blocking(move || kappa_backtest::run(&kafka, &window, &contenders, label))
            .await
            .map_err(|e| TrainerError::Kafka(e.to_string()))?
            .map_err(|e| match e {
                kappa_backtest::BacktestError::Scan(scan) => {
                    TrainerError::Kafka(format!("replaying the window: {scan}"))
                }
                other => invalid(other.to_string()),
            })?;
        Ok(to_proto(report))
    }
}

fn fetch_failed(e: FetchError) -> TrainerError {
    match e {
        // The caller was let in; the trainer's own credentials were refused. Passing the code
        // on would tell the caller its token is wrong.
        FetchError::Registry {
            ref what,
            source: GetError::Status(ref status),
        } if matches!(
            status.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ) =>
        {
            TrainerError::Registry {
                context: format!(
                    "fetching {what}: the registry refused this trainer's own credentials (its --registry-token-file or --registry-tls-* identity)"
                ),
                status: tonic::Status::failed_precondition(status.message()),
            }
        }
        FetchError::Registry {
            ref what,
            source: GetError::Status(ref status),
        } => TrainerError::Registry {
            context: format!("fetching {what}"),
            status: status.clone(),
        },
        other => TrainerError::Registry {
            context: "a version could not take part".into(),
            status: tonic::Status::failed_precondition(other.to_string()),
        },
    }
}

fn to_proto(report: kappa_backtest::Report) -> BacktestReport {
    BacktestReport {
        topic: report.topic,
        from_ms: report.from_ms,
        to_ms: report.to_ms,
        partitions: report
            .offsets
            .iter()
            .map(|o| PartitionRange {
                partition: o.partition,
                start_offset: o.start_offset,
                end_offset: o.end_offset,
                earliest_local_offset: o.earliest_local_offset,
            })
            .collect(),
        read: report.read,
        events: report.events,
        labelled: report.labelled,
        positives: report.positives,
        label_read: report.label_field,
        skipped: report.skipped,
        versions: report
            .versions
            .into_iter()
            .map(|v| VersionBacktest {
                name: v.name,
                version: v.version,
                threshold: v.threshold,
                anomalies: v.anomalies,
                anomaly_rate: v.anomaly_rate,
                scores: Some(ScoreSummary {
                    mean: v.scores.mean,
                    p50: v.scores.p50,
                    p90: v.scores.p90,
                    p99: v.scores.p99,
                    max: v.scores.max,
                }),
                precision: v.precision,
                recall: v.recall,
                f1: v.f1,
                roc_auc: v.roc_auc,
                top_features: v
                    .top_features
                    .into_iter()
                    .map(|t| TopFeature {
                        feature: t.feature,
                        flagged_events: t.flagged_events,
                        mean_share: t.mean_share,
                    })
                    .collect(),
                agreement: v.agreement.map(|a| Agreement {
                    rate: a.rate,
                    only_first: a.only_first,
                    only_this: a.only_this,
                    mean_score_delta: a.mean_score_delta,
                }),
            })
            .collect(),
    }
}
