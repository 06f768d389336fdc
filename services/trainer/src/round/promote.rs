//! Step 6: whether the new version takes the alias, decided in one place: the spec's gate on
//! the hold-out quality, the comparison with the alias's holder on the same hold-out, then the
//! backtest gate on a later window when the spec asks for one. Fails closed: a holder that
//! cannot be read, or a window that cannot be judged, promotes nothing.

use std::sync::Arc;

use kappa_api::{registry as rpb, trainer::TrainingSpec};
use kappa_client::{Registry, Selector};
use kappa_model::{
    admission::Admitted,
    evaluate::{Quality, quality},
};
use tracing::Instrument as _;

use super::publish::Published;
use crate::job::{JobContext, JobHandle, Stop, fail};

/// Decides, moves the alias when the decision says so, and records the decision on the job.
pub async fn promote(
    handle: &Arc<JobHandle>,
    ctx: &JobContext,
    spec: &TrainingSpec,
    published: Published,
    round: &tracing::Span,
) -> Result<(), Stop> {
    let Published {
        version,
        mut registry,
        evaluated,
        holder,
    } = published;
    let (mut promote, mut reason) = decide(
        spec,
        evaluated.quality,
        &holder,
        &evaluated.holdout_rows,
        &evaluated.holdout_labels,
    );
    if let Some(gate) = spec.gate.as_ref().and_then(|g| g.backtest.as_ref()).filter(|_| promote) {
        let challenger = kappa_backtest::Contender::new(evaluated.manifest, kappa_model::Model::Mlp(evaluated.model))
            .map_err(fail)?;
        let (passes, why) = backtest_gate(ctx, spec, gate, challenger, holder)
            .instrument(tracing::info_span!("backtest_gate", model = %spec.model_name))
            .await;
        promote = passes;
        reason = if passes {
            format!("{reason}; {why}")
        } else {
            format!("not promoted: {why} (hold-out: {reason})")
        };
    }
    round.record("promoted", promote);
    tracing::info!(promote, reason, "champion/challenger decision");
    if promote {
        ctx.metrics.promoted.inc();
        registry
            .rpc()
            .set_alias(rpb::SetAliasRequest {
                name: spec.model_name.clone(),
                alias: spec.promote_alias.clone(),
                version,
                effective_from_ms: 0,
            })
            .await
            .map_err(|s| fail(format!("moving the alias failed: {}", s.message())))?;
    }
    handle.update(|job| {
        job.promoted = promote;
        job.promotion_reason = reason;
    });
    Ok(())
}

/// Who holds the alias a job would move.
pub enum Holder {
    /// Nothing: the model or the alias does not exist yet.
    Free,
    // Boxed: a version and its model are large beside the other two.
    Held(Box<(rpb::ModelVersion, Admitted)>),
    /// The registry could not say, or the holder's model does not load. A challenger is then
    /// not compared with anything, so it is not promoted: the gate fails closed.
    Unreadable(String),
}

impl Holder {
    pub fn version(&self) -> u64 {
        match self {
            Holder::Held(held) => held.0.version,
            Holder::Free | Holder::Unreadable(_) => 0,
        }
    }
}

/// The version the alias points at now, with its model.
pub async fn current_holder(registry: &mut Registry, spec: &TrainingSpec) -> Holder {
    let selector = Selector::Alias(spec.promote_alias.clone());
    match registry.get(&spec.model_name, selector).await {
        Ok((header, weights)) => {
            let Some(manifest) = header.manifest.as_ref() else {
                return Holder::Unreadable(format!("version {} has no manifest", header.version));
            };
            match kappa_model::admission::load(manifest, &weights) {
                Ok(admitted) => Holder::Held(Box::new((header, admitted))),
                Err(e) => Holder::Unreadable(format!("version {} does not load: {e}", header.version)),
            }
        }
        Err(kappa_client::GetError::Status(status)) if status.code() == tonic::Code::NotFound => Holder::Free,
        Err(e) => Holder::Unreadable(e.to_string()),
    }
}

/// Champion/challenger: the new model must pass the gate and score at least as well as the
/// holder on the same hold-out rows (ROC AUC, then F1 on a tie).
fn decide(
    spec: &TrainingSpec,
    new: Option<Quality>,
    holder: &Holder,
    rows: &[Vec<f32>],
    labels: &[bool],
) -> (bool, String) {
    let gate = spec.gate.clone().unwrap_or_default();
    let Some(new) = new else {
        return if gate.min_roc_auc.is_some() || gate.min_recall.is_some() {
            (
                false,
                "not promoted: the gate needs labelled hold-out data with both classes".into(),
            )
        } else {
            (true, "promoted: no labels to evaluate, no gate".into())
        };
    };
    if let Some(min) = gate.min_roc_auc.filter(|m| new.roc_auc < *m) {
        return (
            false,
            format!("not promoted: ROC AUC {:.4} is below the gate {min}", new.roc_auc),
        );
    }
    if let Some(min) = gate.min_recall.filter(|m| new.recall < *m) {
        return (
            false,
            format!("not promoted: recall {:.4} is below the gate {min}", new.recall),
        );
    }
    let (version, model) = match holder {
        Holder::Held(held) => (&held.0, &held.1.model),
        Holder::Free => {
            return (
                true,
                format!(
                    "promoted: passes the gate (ROC AUC {:.4}, recall {:.4}) and the alias was free",
                    new.roc_auc, new.recall
                ),
            );
        }
        Holder::Unreadable(why) => {
            return (
                false,
                format!(
                    "not promoted: the alias {:?} is held by a version that could not be read ({why}), \
                     so the new model could not be compared with it; move the alias by hand once it can",
                    spec.promote_alias
                ),
            );
        }
    };
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let features_match = version.manifest.as_ref().is_some_and(|m| {
        m.features
            .iter()
            .map(|f| f.name.as_str())
            .eq(spec.features.iter().map(|f| f.path.as_str()))
    });
    if !features_match {
        return (
            true,
            format!(
                "promoted: passes the gate; holder v{} uses other features, so it was not compared",
                version.version
            ),
        );
    }
    let old = match model.score(&flat) {
        Ok(scores) => quality(
            &scores,
            labels,
            version.manifest.as_ref().map_or(0.0, |m| m.anomaly_threshold as f32),
        ),
        Err(e) => {
            return (
                true,
                format!("promoted: the holder v{} could not be scored ({e})", version.version),
            );
        }
    };
    let allowance = gate.max_regression.unwrap_or(0.0);
    let better = if allowance > 0.0 {
        new.roc_auc >= old.roc_auc - allowance
    } else {
        (new.roc_auc, new.f1) >= (old.roc_auc, old.f1)
    };
    let allowed = if allowance > 0.0 {
        format!(" - {allowance}")
    } else {
        String::new()
    };
    if better {
        (
            true,
            format!(
                "promoted: ROC AUC {:.4} >= holder v{}'s {:.4}{allowed} on the same hold-out",
                new.roc_auc, version.version, old.roc_auc
            ),
        )
    } else {
        (
            false,
            format!(
                "not promoted: ROC AUC {:.4} < holder v{}'s {:.4}{allowed} on the same hold-out",
                new.roc_auc, version.version, old.roc_auc
            ),
        )
    }
}

/// The backtest gate: the spec's later window replayed through the challenger and the holder;
/// the challenger must reach the holder's metric there, less the gate's allowance. Fails closed:
/// a window without labelled events of both classes, or that cannot be read, promotes nothing.
async fn backtest_gate(
    ctx: &JobContext,
    spec: &TrainingSpec,
    gate: &kappa_api::trainer::BacktestGate,
    challenger: kappa_backtest::Contender,
    holder: Holder,
) -> (bool, String) {
    // The holder's model was loaded for the hold-out comparison; the backtest reuses it.
    let Holder::Held(held) = holder else {
        return (
            true,
            "nothing held the alias, so there was nothing to beat on the backtest window".into(),
        );
    };
    let (version, admitted) = *held;
    let holder_version = version.version;
    let holder = kappa_backtest::Contender::admitted(admitted);
    let range = gate.window.unwrap_or_default();
    if range.to_ms > kappa_runtime::now_ms() {
        return (
            false,
            format!(
                "the backtest window [{}, {}) has not ended yet, so it cannot be judged whole; train again after it",
                range.from_ms, range.to_ms
            ),
        );
    }
    let window = kappa_backtest::Window {
        topic: if gate.topic.is_empty() {
            spec.source_topic.clone()
        } else {
            gate.topic.clone()
        },
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        timeout: ctx.kafka_timeout,
        // What a train caller's window may make the trainer hold: --max-rows events.
        max_events: Some(ctx.max_rows),
    };
    let metric = if gate.metric.is_empty() {
        "roc_auc"
    } else {
        gate.metric.as_str()
    };
    let described = format!("backtest on {} [{}, {})", window.topic, window.from_ms, window.to_ms);
    let kafka = ctx.kafka.clone();
    let span = tracing::Span::current();
    let report = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        kappa_backtest::run(&kafka, &window, &[challenger, holder], None)
    })
    .await;
    let report = match report {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return (false, format!("the {described} failed: {e}")),
        Err(e) => return (false, format!("the {described} failed: {e}")),
    };
    let (new, old) = (&report.versions[0], &report.versions[1]);
    let (Some(new_value), Some(old_value)) = (new.metric(metric), old.metric(metric)) else {
        return (
            false,
            format!(
                "the {described} has {} labelled events ({} anomalies) of {} scored: {metric} needs both classes",
                report.labelled, report.positives, report.events
            ),
        );
    };
    let allowance = spec.gate.as_ref().and_then(|g| g.max_regression).unwrap_or(0.0);
    tracing::info!(metric, new_value, old_value, events = report.events, "backtest gate");
    let comparison = format!(
        "{metric} {new_value:.4} {} holder v{holder_version}'s {old_value:.4}{} on the {described} ({} events)",
        if new_value >= old_value - allowance { ">=" } else { "<" },
        if allowance > 0.0 {
            format!(" - {allowance}")
        } else {
            String::new()
        },
        report.events
    );
    (new_value >= old_value - allowance, comparison)
}

#[cfg(test)]
mod tests {
    use kappa_api::{
        model::ModelManifest,
        trainer::{FeatureSpec, PromotionGate},
    };
    use kappa_model::example::{autoencoder_over, random_weights};

    use super::*;

    fn q(roc_auc: f64, recall: f64) -> Quality {
        Quality {
            precision: 0.9,
            recall,
            f1: 0.9,
            roc_auc,
        }
    }

    fn spec(paths: &[&str], gate: PromotionGate) -> TrainingSpec {
        TrainingSpec {
            features: paths
                .iter()
                .map(|p| FeatureSpec {
                    path: (*p).to_owned(),
                    min: None,
                    max: None,
                })
                .collect(),
            gate: Some(gate),
            ..TrainingSpec::default()
        }
    }

    /// A holder over `paths` and labelled rows it scores: anomalies far from normal rows, so
    /// any autoencoder ranks them (ROC AUC 1) unless it is asked about other features.
    fn holder(paths: &[&str]) -> Holder {
        let mut manifest: ModelManifest = autoencoder_over("m", paths, &[2]);
        manifest.version = 3;
        let admitted = kappa_model::admission::load(&manifest, &random_weights(&manifest, 9)).unwrap();
        let version = rpb::ModelVersion {
            version: 3,
            manifest: Some(manifest),
            ..Default::default()
        };
        Holder::Held(Box::new((version, admitted)))
    }

    #[test]
    fn the_gate_and_the_holder_decide_promotion_with_the_reason_said() {
        let paths = ["a", "b.c"];
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|i| if i % 4 == 0 { vec![50.0, -50.0] } else { vec![0.1, 0.0] })
            .collect();
        let labels: Vec<bool> = (0..40).map(|i| i % 4 == 0).collect();
        let no_gate = PromotionGate::default();
        let gate = PromotionGate {
            min_roc_auc: Some(0.9),
            min_recall: Some(0.8),
            max_regression: None,
            backtest: None,
        };

        let (promote, why) = decide(&spec(&paths, no_gate), None, &Holder::Free, &[], &[]);
        assert!(promote && why.contains("no labels"), "{why}");
        let (promote, why) = decide(&spec(&paths, gate.clone()), None, &Holder::Free, &[], &[]);
        assert!(!promote && why.contains("needs labelled hold-out"), "{why}");
        let (promote, why) = decide(
            &spec(&paths, gate.clone()),
            Some(q(0.85, 0.95)),
            &Holder::Free,
            &[],
            &[],
        );
        assert!(
            !promote && why.contains("ROC AUC 0.8500 is below the gate 0.9"),
            "{why}"
        );
        let (promote, why) = decide(&spec(&paths, gate.clone()), Some(q(0.95, 0.5)), &Holder::Free, &[], &[]);
        assert!(!promote && why.contains("recall 0.5000 is below the gate 0.8"), "{why}");
        let (promote, why) = decide(&spec(&paths, gate.clone()), Some(q(0.95, 0.9)), &Holder::Free, &[], &[]);
        assert!(promote && why.contains("the alias was free"), "{why}");

        // The holder ranks these rows perfectly: a challenger below it is not promoted, one a
        // hair below is with an allowance, and a holder over other features is not compared.
        let held = holder(&paths);
        let (promote, why) = decide(&spec(&paths, gate.clone()), Some(q(0.95, 0.9)), &held, &rows, &labels);
        assert!(!promote && why.contains("< holder v3's 1.0000"), "{why}");
        let lenient = PromotionGate {
            max_regression: Some(0.06),
            ..gate.clone()
        };
        let (promote, why) = decide(&spec(&paths, lenient), Some(q(0.95, 0.9)), &held, &rows, &labels);
        assert!(promote && why.contains(">= holder v3's 1.0000 - 0.06"), "{why}");
        let other = holder(&["x", "y"]);
        let (promote, why) = decide(&spec(&paths, gate.clone()), Some(q(0.95, 0.9)), &other, &rows, &labels);
        assert!(promote && why.contains("uses other features"), "{why}");
        // A holder that cannot be read blocks the move: the gate fails closed.
        let unknown = Holder::Unreadable("the registry is unavailable".into());
        let (promote, why) = decide(
            &spec(&paths, gate.clone()),
            Some(q(0.99, 0.99)),
            &unknown,
            &rows,
            &labels,
        );
        assert!(
            !promote && why.contains("could not be read (the registry is unavailable)"),
            "{why}"
        );
    }
}
