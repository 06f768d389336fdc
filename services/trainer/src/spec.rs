//! A training spec as it enters: every field of the proto destructured (no `..`, so a field
//! added to `TrainingSpec` breaks the build here instead of being ignored), defaults filled,
//! and whatever cannot work refused with `INVALID_ARGUMENT` naming the field, before any job
//! exists. What the sample of the data can tell (do the paths exist?) is checked next, in
//! `schema::resolve`.

use kappa_api::trainer::{
    BacktestGate, Continuous, PromotionGate, StartTrainingRequest, TrainingSpec, training_spec::Range,
};

use crate::error::TrainerError;

/// Widest hidden layer a job may ask for.
const MAX_WIDTH: u32 = 4096;
/// Most hidden layers and rows a batch a job may ask for: what a caller with the `train` role
/// may make the trainer hold in memory (epochs cost time, which a cancel ends).
const MAX_HIDDEN_LAYERS: usize = 16;
const MAX_BATCH_SIZE: u32 = 65_536;

fn invalid(message: impl Into<String>) -> TrainerError {
    TrainerError::InvalidSpec(message.into())
}

/// A spec whose every field has been checked and defaulted.
#[derive(Debug, Clone)]
pub struct ValidSpec(TrainingSpec);

impl ValidSpec {
    pub fn into_inner(self) -> TrainingSpec {
        self.0
    }
}

impl TryFrom<StartTrainingRequest> for ValidSpec {
    type Error = TrainerError;

    fn try_from(request: StartTrainingRequest) -> Result<Self, TrainerError> {
        let StartTrainingRequest { spec } = request;
        spec.ok_or_else(|| invalid("the request carries no spec"))?.try_into()
    }
}

impl TryFrom<TrainingSpec> for ValidSpec {
    type Error = TrainerError;

    fn try_from(spec: TrainingSpec) -> Result<Self, TrainerError> {
        let TrainingSpec {
            model_name,
            source_topic,
            range,
            features,
            exclude,
            label_field,
            positive_labels,
            time,
            screening,
            hidden_layers,
            epochs,
            batch_size,
            learning_rate,
            validation_split,
            threshold_percentile,
            promote_alias,
            gate,
            seed,
            holdout_split,
            continuous,
            allow_truncated_start,
        } = spec;
        kappa_model::validate_name(&model_name).map_err(|e| invalid(format!("model_name: {e}")))?;
        if source_topic.trim().is_empty() {
            return Err(invalid("source_topic is empty"));
        }
        let range = checked_range(range, continuous)?;
        if epochs == 0 {
            return Err(invalid("epochs must be at least 1"));
        }
        if batch_size > MAX_BATCH_SIZE {
            return Err(invalid(format!("batch_size must be at most {MAX_BATCH_SIZE}")));
        }
        let hidden_layers = if hidden_layers.is_empty() {
            vec![16, 8, 16]
        } else {
            hidden_layers
        };
        if hidden_layers.len() > MAX_HIDDEN_LAYERS {
            return Err(invalid(format!(
                "{} hidden layers asked for; at most {MAX_HIDDEN_LAYERS}",
                hidden_layers.len()
            )));
        }
        if hidden_layers.iter().any(|w| *w == 0 || *w > MAX_WIDTH) {
            return Err(invalid(format!(
                "hidden layer widths must be between 1 and {MAX_WIDTH}"
            )));
        }
        let learning_rate = or_default(learning_rate, 1e-3);
        if !(learning_rate.is_finite() && learning_rate > 0.0 && learning_rate < 1.0) {
            return Err(invalid("learning_rate must be in (0, 1)"));
        }
        let validation_split = or_default(validation_split, 0.1);
        let holdout_split = or_default(holdout_split, 0.2);
        for (name, v) in [("validation_split", validation_split), ("holdout_split", holdout_split)] {
            if !(v > 0.0 && v < 1.0) {
                return Err(invalid(format!("{name} must be in (0, 1)")));
            }
        }
        let threshold_percentile = or_default(threshold_percentile, 99.0);
        if !(threshold_percentile > 0.0 && threshold_percentile <= 100.0) {
            return Err(invalid("threshold_percentile must be in (0, 100]"));
        }
        if !promote_alias.is_empty() {
            kappa_model::validate_alias(&promote_alias).map_err(|e| invalid(format!("promote_alias: {e}")))?;
        }
        check_gate(gate.as_ref(), &range)?;
        let spec = TrainingSpec {
            model_name,
            source_topic,
            range: Some(range),
            features,
            exclude,
            label_field,
            positive_labels,
            time,
            screening,
            hidden_layers,
            epochs,
            batch_size: if batch_size == 0 { 64 } else { batch_size },
            learning_rate,
            validation_split,
            threshold_percentile,
            promote_alias,
            gate,
            seed,
            holdout_split,
            continuous,
            allow_truncated_start,
        };
        crate::schema::check_structure(&spec)?;
        Ok(Self(spec))
    }
}

/// proto3 has no "unset" for a double: 0 means "the default".
fn or_default(value: f64, default: f64) -> f64 {
    if value == 0.0 { default } else { value }
}

/// The range a job reads: a time range, the last minutes, or a continuous job's sliding window.
fn checked_range(range: Option<Range>, continuous: Option<Continuous>) -> Result<Range, TrainerError> {
    let range = match continuous {
        Some(c) => {
            if c.window_minutes == 0 {
                return Err(invalid("continuous.window_minutes must be at least 1"));
            }
            if c.every_seconds == 0 && c.every_events == 0 {
                return Err(invalid("continuous needs every_seconds or every_events"));
            }
            if matches!(range, Some(Range::TimeRange(_))) {
                return Err(invalid(
                    "a continuous job trains on a sliding window; leave time_range unset",
                ));
            }
            Range::LastMinutes(c.window_minutes)
        }
        None => range.ok_or_else(|| invalid("give a time_range [from, to) or last_minutes"))?,
    };
    match range {
        Range::TimeRange(r) if r.from_ms >= r.to_ms => Err(invalid(format!(
            "the time range [{}, {}) is empty or inverted; from must be before to",
            r.from_ms, r.to_ms
        ))),
        Range::LastMinutes(0) => Err(invalid("last_minutes must be at least 1")),
        range => Ok(range),
    }
}

fn check_gate(gate: Option<&PromotionGate>, range: &Range) -> Result<(), TrainerError> {
    let Some(gate) = gate else { return Ok(()) };
    let PromotionGate {
        min_roc_auc,
        min_recall,
        max_regression,
        backtest,
    } = gate;
    for v in [*min_roc_auc, *min_recall, *max_regression].into_iter().flatten() {
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid("gate thresholds must be between 0 and 1"));
        }
    }
    let Some(BacktestGate {
        topic: _,
        window,
        metric,
    }) = backtest
    else {
        return Ok(());
    };
    if !metric.is_empty() && !kappa_backtest::METRICS.contains(&metric.as_str()) {
        return Err(invalid(format!(
            "gate.backtest.metric {metric:?} is not one of {}",
            kappa_backtest::METRICS.join(", ")
        )));
    }
    let Some(window) = window.filter(|w| w.from_ms < w.to_ms) else {
        return Err(invalid(
            "gate.backtest.window needs from_ms before to_ms: the later window to replay",
        ));
    };
    match range {
        Range::TimeRange(training) if window.from_ms < training.to_ms => Err(invalid(format!(
            "gate.backtest.window starts at {} ms, inside the training range (which ends at {} ms): \
             a backtest on the training data proves nothing; start it at or after the range's end",
            window.from_ms, training.to_ms
        ))),
        Range::TimeRange(_) => Ok(()),
        Range::LastMinutes(_) => Err(invalid(
            "gate.backtest needs a fixed time_range to come after; with last_minutes or continuous \
             training the window would overlap the data trained on",
        )),
    }
}

#[cfg(test)]
mod tests {
    use kappa_api::trainer::TimeRange;

    use super::*;

    fn spec() -> TrainingSpec {
        TrainingSpec {
            model_name: "fleet".into(),
            source_topic: "sensor-data".into(),
            range: Some(Range::TimeRange(TimeRange { from_ms: 0, to_ms: 10 })),
            epochs: 3,
            ..TrainingSpec::default()
        }
    }

    fn refusal(spec: TrainingSpec) -> String {
        match ValidSpec::try_from(spec) {
            Err(TrainerError::InvalidSpec(message)) => message,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_filled_where_proto3_cannot_say_unset() {
        let valid = ValidSpec::try_from(spec()).unwrap().into_inner();
        assert_eq!(valid.hidden_layers, [16, 8, 16]);
        assert_eq!(valid.batch_size, 64);
        assert_eq!(valid.learning_rate, 1e-3);
        assert_eq!((valid.validation_split, valid.holdout_split), (0.1, 0.2));
        assert_eq!(valid.threshold_percentile, 99.0);
        let continuous = TrainingSpec {
            range: None,
            continuous: Some(Continuous {
                window_minutes: 5,
                every_seconds: 60,
                ..Continuous::default()
            }),
            ..spec()
        };
        let valid = ValidSpec::try_from(continuous).unwrap().into_inner();
        assert_eq!(valid.range, Some(Range::LastMinutes(5)));
    }

    #[test]
    fn a_backtest_gate_needs_a_known_metric_and_a_window_after_the_training_range() {
        let gated = |window: Option<TimeRange>, metric: &str, range: Range| TrainingSpec {
            range: Some(range),
            gate: Some(PromotionGate {
                backtest: Some(BacktestGate {
                    topic: String::new(),
                    window,
                    metric: metric.into(),
                }),
                ..PromotionGate::default()
            }),
            ..spec()
        };
        let training = Range::TimeRange(TimeRange { from_ms: 0, to_ms: 10 });
        let later = Some(TimeRange { from_ms: 10, to_ms: 20 });
        assert!(ValidSpec::try_from(gated(later, "", training)).is_ok());
        assert!(ValidSpec::try_from(gated(later, "f1", training)).is_ok());
        let message = refusal(gated(later, "accuracy", training));
        assert!(message.contains("\"accuracy\" is not one of roc_auc, f1"), "{message}");
        let message = refusal(gated(None, "", training));
        assert!(
            message.contains("gate.backtest.window needs from_ms before to_ms"),
            "{message}"
        );
        let overlapping = Some(TimeRange { from_ms: 5, to_ms: 20 });
        let message = refusal(gated(overlapping, "", training));
        assert!(message.contains("inside the training range"), "{message}");
        let message = refusal(gated(later, "", Range::LastMinutes(5)));
        assert!(message.contains("needs a fixed time_range"), "{message}");
    }

    #[test]
    fn each_unworkable_field_is_refused_by_name() {
        let cases: Vec<(TrainingSpec, &str)> = vec![
            (
                TrainingSpec {
                    model_name: "Bad/Name".into(),
                    ..spec()
                },
                "model_name",
            ),
            (
                TrainingSpec {
                    source_topic: " ".into(),
                    ..spec()
                },
                "source_topic",
            ),
            (TrainingSpec { range: None, ..spec() }, "time_range"),
            (
                TrainingSpec {
                    range: Some(Range::TimeRange(TimeRange { from_ms: 10, to_ms: 10 })),
                    ..spec()
                },
                "empty or inverted",
            ),
            (
                TrainingSpec {
                    range: Some(Range::LastMinutes(0)),
                    ..spec()
                },
                "last_minutes",
            ),
            (TrainingSpec { epochs: 0, ..spec() }, "epochs"),
            (
                TrainingSpec {
                    batch_size: u32::MAX,
                    ..spec()
                },
                "batch_size",
            ),
            (
                TrainingSpec {
                    hidden_layers: vec![8; 10_000],
                    ..spec()
                },
                "hidden layers",
            ),
            (
                TrainingSpec {
                    hidden_layers: vec![8, 0],
                    ..spec()
                },
                "hidden layer widths",
            ),
            (
                TrainingSpec {
                    learning_rate: f64::NAN,
                    ..spec()
                },
                "learning_rate",
            ),
            (
                TrainingSpec {
                    holdout_split: 1.0,
                    ..spec()
                },
                "holdout_split",
            ),
            (
                TrainingSpec {
                    threshold_percentile: 101.0,
                    ..spec()
                },
                "threshold_percentile",
            ),
            (
                TrainingSpec {
                    promote_alias: "no spaces".into(),
                    ..spec()
                },
                "promote_alias",
            ),
            (
                TrainingSpec {
                    gate: Some(PromotionGate {
                        min_recall: Some(1.5),
                        ..PromotionGate::default()
                    }),
                    ..spec()
                },
                "gate thresholds",
            ),
            (
                TrainingSpec {
                    continuous: Some(Continuous {
                        window_minutes: 5,
                        ..Continuous::default()
                    }),
                    ..spec()
                },
                "every_seconds or every_events",
            ),
            (
                TrainingSpec {
                    label_field: "a..b".into(),
                    ..spec()
                },
                "label_field",
            ),
        ];
        for (spec, field) in cases {
            let message = refusal(spec);
            assert!(message.contains(field), "{field}: {message}");
        }
        let no_spec = ValidSpec::try_from(StartTrainingRequest { spec: None });
        assert!(matches!(no_spec, Err(TrainerError::InvalidSpec(m)) if m.contains("no spec")));
    }
}
