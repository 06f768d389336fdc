//! How a shadow version's answers compare with the live version's on the same live traffic,
//! window by window: agreement of the anomaly flags, flips each way, and the score deltas.
//! `kappa compare` prints it and the trainer's CompareShadow returns it, both from here.

use std::collections::BTreeMap;

use kappa_api::events::ShadowPrediction;
use serde::Serialize;

/// One window's comparison of a (live, shadow) pair of versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowWindow {
    pub window_start_ms: i64,
    pub live_version: u64,
    pub shadow_version: u64,
    pub answers: u64,
    /// Share of answers whose flags agree.
    pub agreement: f64,
    /// Flagged by the live version only, and by the shadow only.
    pub live_only: u64,
    pub shadow_only: u64,
    /// Mean of shadow minus live score, and of its absolute value.
    pub mean_delta: f64,
    pub mean_abs_delta: f64,
    #[serde(skip)]
    agreeing: u64,
}

/// Shadow answers of one model summed into windows of `window_ms` (by when the shadow scored).
#[derive(Debug)]
pub struct ShadowSummary {
    model: String,
    since_ms: i64,
    window_ms: i64,
    windows: BTreeMap<(i64, u64, u64), ShadowWindow>,
    /// Records of the topic that were not shadow answers.
    pub unreadable: u64,
}

impl ShadowSummary {
    /// Answers of `model` scored at or after `since_ms`, in windows of `window_ms` (> 0).
    pub fn new(model: &str, since_ms: i64, window_ms: i64) -> Self {
        Self {
            model: model.to_owned(),
            since_ms,
            window_ms: window_ms.max(1),
            windows: BTreeMap::new(),
            unreadable: 0,
        }
    }

    /// Adds one record of the shadow topic.
    pub fn add(&mut self, payload: Option<&[u8]>) {
        let Some(answer) = payload.and_then(|p| serde_json::from_slice::<ShadowPrediction>(p).ok()) else {
            self.unreadable += 1;
            return;
        };
        if answer.model_name != self.model || answer.scored_at_ms < self.since_ms {
            return;
        }
        let start = answer.scored_at_ms - answer.scored_at_ms.rem_euclid(self.window_ms);
        let w = self
            .windows
            .entry((start, answer.live_version, answer.shadow_version))
            .or_insert_with(|| ShadowWindow {
                window_start_ms: start,
                live_version: answer.live_version,
                shadow_version: answer.shadow_version,
                ..ShadowWindow::default()
            });
        w.answers += 1;
        match (answer.live_is_anomaly, answer.shadow_is_anomaly) {
            (true, false) => w.live_only += 1,
            (false, true) => w.shadow_only += 1,
            _ => w.agreeing += 1,
        }
        let delta = answer.shadow_score - answer.live_score;
        w.mean_delta += delta;
        w.mean_abs_delta += delta.abs();
    }

    /// The windows in time order (then by versions), their shares and means computed.
    pub fn finish(self) -> Vec<ShadowWindow> {
        self.windows
            .into_values()
            .map(|mut w| {
                let n = w.answers.max(1) as f64;
                w.agreement = w.agreeing as f64 / n;
                w.mean_delta /= n;
                w.mean_abs_delta /= n;
                w
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(model: &str, at: i64, live: (f64, bool), shadow: (f64, bool)) -> Vec<u8> {
        serde_json::to_vec(&ShadowPrediction {
            model_name: model.into(),
            live_version: 1,
            live_score: live.0,
            live_is_anomaly: live.1,
            shadow_version: 2,
            shadow_score: shadow.0,
            shadow_is_anomaly: shadow.1,
            scored_at_ms: at,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn answers_are_summed_per_window_and_pair_of_versions() {
        let mut summary = ShadowSummary::new("m", 1_000, 60_000);
        for record in [
            answer("m", 61_000, (0.5, false), (0.7, true)),
            answer("m", 62_000, (0.9, true), (0.8, true)),
            answer("m", 125_000, (0.9, true), (0.1, false)),
            answer("other", 62_000, (0.0, false), (9.0, true)),
            answer("m", 500, (0.0, false), (9.0, true)),
        ] {
            summary.add(Some(&record));
        }
        summary.add(Some(b"{not json"));
        assert_eq!(summary.unreadable, 1);
        let windows = summary.finish();
        assert_eq!(windows.len(), 2, "{windows:?}");
        let first = &windows[0];
        assert_eq!(
            (first.window_start_ms, first.answers, first.shadow_only, first.live_only),
            (60_000, 2, 1, 0)
        );
        assert!((first.agreement - 0.5).abs() < 1e-12);
        assert!((first.mean_delta - 0.05).abs() < 1e-12, "{first:?}");
        assert!((first.mean_abs_delta - 0.15).abs() < 1e-12, "{first:?}");
        assert_eq!((windows[1].window_start_ms, windows[1].live_only), (120_000, 1));
    }
}
