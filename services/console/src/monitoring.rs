//! The Monitoring page's state: each version's monitoring windows (drift per feature, score
//! drift, anomaly rate against validation) and the agreement of each shadow with the version it
//! shadows, over time. Bounded: windows per version, versions, and shadow buckets.

use std::collections::{BTreeMap, VecDeque};

use kappa_api::events::{MonitoringWindow, ShadowPrediction};
use serde::Serialize;

/// Windows kept per (model, version): a day of one-minute windows... at most.
const WINDOWS_KEPT: usize = 1440;
/// (model, version) series and shadow pairs kept; past it, the one updated least lately goes.
const SERIES_KEPT: usize = 64;
/// Most bins of a score distribution kept (predictors write deciles: 10).
const SCORE_BINS_KEPT: usize = 64;
/// Shadow answers are summed per this many milliseconds.
const SHADOW_BUCKET_MS: i64 = 10_000;
const SHADOW_BUCKETS_KEPT: usize = 8640;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
    pub predictor: String,
    pub events: u64,
    pub anomaly_rate: f64,
    pub reference_anomaly_rate: f64,
    pub score_psi: f64,
    pub psi_threshold: f64,
    /// PSI per feature, in the version's feature order.
    pub psi: Vec<f64>,
    pub drifted: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionSeries {
    pub model: String,
    pub version: u64,
    pub features: Vec<String>,
    pub windows: VecDeque<Window>,
    /// The scores of the latest window that measured them, against the validation scores.
    pub score_distribution: Option<ScoreView>,
    #[serde(skip)]
    touched: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScoreView {
    /// End of the window it is from.
    pub end_ms: i64,
    pub edges: Vec<f64>,
    pub reference_shares: Vec<f64>,
    pub shares: Vec<f64>,
}

impl ScoreView {
    /// `None` for a distribution whose parts do not fit together, or with more bins than kept.
    fn of(window: &MonitoringWindow) -> Option<Self> {
        let d = window.score_distribution.as_ref()?;
        let bins = d.edges.len() + 1;
        (bins <= SCORE_BINS_KEPT && d.shares.len() == bins && d.reference_shares.len() == bins).then(|| Self {
            end_ms: window.window_end_ms,
            edges: d.edges.clone(),
            reference_shares: d.reference_shares.clone(),
            shares: d.shares.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowBucket {
    pub start_ms: i64,
    pub answers: u64,
    /// Both versions gave the same verdict.
    pub agreed: u64,
    /// Normal for the live version, anomalous for the shadow; and the other way.
    pub shadow_only: u64,
    pub live_only: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSeries {
    pub model: String,
    pub live_version: u64,
    pub shadow_version: u64,
    pub buckets: VecDeque<ShadowBucket>,
    #[serde(skip)]
    touched: u64,
}

#[derive(Debug, Default)]
pub struct Monitoring {
    windows: BTreeMap<(String, u64), VersionSeries>,
    shadows: BTreeMap<(String, u64, u64), ShadowSeries>,
    clock: u64,
    pub undecodable: u64,
}

/// The Monitoring page's JSON, borrowed from the series: serialised as it stands, not copied
/// first (a day of windows for 64 versions is megabytes).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MonitoringView<'a> {
    versions: Vec<&'a VersionSeries>,
    shadows: Vec<&'a ShadowSeries>,
    undecodable: u64,
}

/// Before `key` is added to a full `series`, forgets the one updated least lately.
fn make_room<K: Ord + Clone, V>(series: &mut BTreeMap<K, V>, key: &K, touched: impl Fn(&V) -> u64) {
    if series.contains_key(key) || series.len() < SERIES_KEPT {
        return;
    }
    let stalest = series.iter().min_by_key(|(_, s)| touched(s)).map(|(k, _)| k.clone());
    if let Some(stalest) = stalest {
        series.remove(&stalest);
    }
}

impl Monitoring {
    pub fn add_window(&mut self, window: MonitoringWindow) {
        self.clock += 1;
        let key = (window.model_name.clone(), window.model_version);
        make_room(&mut self.windows, &key, |s| s.touched);
        let series = self.windows.entry(key).or_insert_with(|| VersionSeries {
            model: window.model_name.clone(),
            version: window.model_version,
            ..VersionSeries::default()
        });
        series.touched = self.clock;
        // A version's features are fixed: the first window names them, later ones follow.
        if series.features.is_empty() {
            series.features = window.features.iter().map(|f| f.feature.clone()).collect();
        }
        let psi = series
            .features
            .iter()
            .map(|name| {
                window
                    .features
                    .iter()
                    .find(|f| &f.feature == name)
                    .map_or(f64::NAN, |f| f.psi)
            })
            .collect();
        if let Some(scores) = ScoreView::of(&window)
            && series
                .score_distribution
                .as_ref()
                .is_none_or(|s| s.end_ms <= scores.end_ms)
        {
            series.score_distribution = Some(scores);
        }
        if series.windows.len() == WINDOWS_KEPT {
            series.windows.pop_front();
        }
        series.windows.push_back(Window {
            start_ms: window.window_start_ms,
            end_ms: window.window_end_ms,
            predictor: window.predictor,
            events: window.events,
            anomaly_rate: window.anomaly_rate,
            reference_anomaly_rate: window.reference_anomaly_rate,
            score_psi: window.score_psi,
            psi_threshold: window.psi_threshold,
            psi,
            drifted: window.drifted,
        });
    }

    pub fn add_shadow(&mut self, answer: &ShadowPrediction, now_ms: i64) {
        self.clock += 1;
        let key = (answer.model_name.clone(), answer.live_version, answer.shadow_version);
        make_room(&mut self.shadows, &key, |s| s.touched);
        let series = self.shadows.entry(key).or_insert_with(|| ShadowSeries {
            model: answer.model_name.clone(),
            live_version: answer.live_version,
            shadow_version: answer.shadow_version,
            ..ShadowSeries::default()
        });
        series.touched = self.clock;
        let at = if answer.scored_at_ms > 0 {
            answer.scored_at_ms
        } else {
            now_ms
        };
        let start_ms = at - at.rem_euclid(SHADOW_BUCKET_MS);
        if series.buckets.back().is_none_or(|b| b.start_ms < start_ms) {
            if series.buckets.len() == SHADOW_BUCKETS_KEPT {
                series.buckets.pop_front();
            }
            series.buckets.push_back(ShadowBucket {
                start_ms,
                ..ShadowBucket::default()
            });
        }
        // An answer late for its bucket counts in the latest one: buckets never reopen.
        let bucket = series.buckets.back_mut().expect("pushed above");
        bucket.answers += 1;
        match (answer.live_is_anomaly, answer.shadow_is_anomaly) {
            (a, b) if a == b => bucket.agreed += 1,
            (false, true) => bucket.shadow_only += 1,
            _ => bucket.live_only += 1,
        }
    }

    /// The series of `model` (all models when empty), as the page's JSON.
    pub fn view_json(&self, model: &str) -> Vec<u8> {
        let view = MonitoringView {
            versions: self
                .windows
                .values()
                .filter(|s| model.is_empty() || s.model == model)
                .collect(),
            shadows: self
                .shadows
                .values()
                .filter(|s| model.is_empty() || s.model == model)
                .collect(),
            undecodable: self.undecodable,
        };
        serde_json::to_vec(&view).expect("monitoring series serialise")
    }
}

#[cfg(test)]
mod tests {
    use kappa_api::events::ScoreDistribution;

    use super::*;

    fn window(end_ms: i64, distribution: Option<ScoreDistribution>) -> MonitoringWindow {
        MonitoringWindow {
            model_name: "m".into(),
            model_version: 1,
            window_end_ms: end_ms,
            score_distribution: distribution,
            ..MonitoringWindow::default()
        }
    }

    fn deciles(shares: f64) -> ScoreDistribution {
        ScoreDistribution {
            edges: (1..10).map(f64::from).collect(),
            reference_shares: vec![0.1; 10],
            shares: vec![shares; 10],
        }
    }

    #[test]
    fn the_latest_score_distribution_is_kept_and_a_malformed_one_is_ignored() {
        let mut monitoring = Monitoring::default();
        monitoring.add_window(window(1_000, Some(deciles(0.1))));
        monitoring.add_window(window(2_000, None));
        let mut too_many = deciles(0.2);
        too_many.shares.push(0.0);
        monitoring.add_window(window(3_000, Some(too_many)));
        // Windows of several predictors arrive in any order: an older one does not replace it.
        monitoring.add_window(window(500, Some(deciles(0.3))));
        let view: serde_json::Value = serde_json::from_slice(&monitoring.view_json("m")).unwrap();
        let kept = &view["versions"][0]["scoreDistribution"];
        assert_eq!((&kept["endMs"], &kept["shares"][0]), (&1_000.into(), &0.1.into()));
        assert_eq!(view["versions"][0]["windows"].as_array().unwrap().len(), 4);
    }
}
