//! The Fleet pages' state: every unit's latest scores, folded from the predictions topic, and a
//! summary of the whole fleet made once a second. Memory is bounded by `--max-units` ×
//! `--unit-points`, whatever the predictions' rate; browsers get the summary, never the stream.

use std::collections::{BTreeMap, HashSet, VecDeque};

use kappa_api::{events::Prediction, model::FeatureContribution};
use serde::Serialize;

/// Latest anomalies the summary lists.
const LATEST_ANOMALIES: usize = 20;
/// Units the summary ranks.
const TOP_UNITS: usize = 25;
/// Seconds of fleet-wide rates the summary carries.
const RATE_SECONDS: usize = 120;
/// Top features kept with a unit's last anomaly.
const FEATURES_KEPT: usize = 3;

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub at_ms: i64,
    pub score: f32,
    pub anomaly: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Feature {
    pub feature: String,
    pub share: f64,
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typical_low: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typical_high: Option<f64>,
}

impl From<FeatureContribution> for Feature {
    fn from(c: FeatureContribution) -> Self {
        Self {
            feature: c.feature,
            share: c.share,
            value: c.value,
            typical_low: c.typical_low,
            typical_high: c.typical_high,
        }
    }
}

#[derive(Debug)]
struct Unit {
    points: VecDeque<Point>,
    /// How many of `points` are anomalies, kept as points come and go so ranking is O(1) a unit.
    flagged_points: usize,
    events: u64,
    anomalies: u64,
    last_seen_ms: i64,
    model: String,
    version: u64,
    /// What made its latest anomaly anomalous (empty for versions that do not explain).
    last_features: Vec<Feature>,
}

impl Unit {
    fn recent_rate(&self) -> f64 {
        self.flagged_points as f64 / self.points.len().max(1) as f64
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    pub key: String,
    pub at_ms: i64,
    pub score: f64,
    pub model: String,
    pub version: u64,
    pub top_features: Vec<Feature>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitSummary {
    pub key: String,
    /// Share of its kept scores that were anomalies.
    pub recent_rate: f64,
    pub events: u64,
    pub anomalies: u64,
    pub last_seen_ms: i64,
    pub last_score: f32,
    pub top_features: Vec<Feature>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetSummary {
    pub at_ms: i64,
    pub units: usize,
    pub forgotten_units: u64,
    pub events: u64,
    pub anomalies: u64,
    pub errors: u64,
    /// Per second, oldest first: predictions and anomalies received.
    pub events_per_second: Vec<u32>,
    pub anomalies_per_second: Vec<u32>,
    /// Units ranked by their recent anomaly rate.
    pub top_units: Vec<UnitSummary>,
    /// Latest anomalies, newest first.
    pub latest: Vec<Anomaly>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitDetail {
    pub key: String,
    pub model: String,
    pub version: u64,
    pub events: u64,
    pub anomalies: u64,
    pub last_seen_ms: i64,
    pub points: Vec<Point>,
    pub top_features: Vec<Feature>,
}

/// Per-second counts of the last [`RATE_SECONDS`], by arrival.
#[derive(Debug)]
struct Rates {
    second: i64,
    events: VecDeque<u32>,
    anomalies: VecDeque<u32>,
}

impl Rates {
    fn new() -> Self {
        Self {
            second: 0,
            events: VecDeque::from(vec![0; RATE_SECONDS]),
            anomalies: VecDeque::from(vec![0; RATE_SECONDS]),
        }
    }

    /// Moves the window to `now_ms`'s second, zeroing the seconds nothing arrived in.
    fn advance(&mut self, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        let gap = (second - self.second).clamp(0, RATE_SECONDS as i64) as usize;
        for _ in 0..gap {
            self.events.pop_front();
            self.events.push_back(0);
            self.anomalies.pop_front();
            self.anomalies.push_back(0);
        }
        self.second = self.second.max(second);
    }

    fn count(&mut self, now_ms: i64, anomaly: bool) {
        self.advance(now_ms);
        *self.events.back_mut().expect("never empty") += 1;
        if anomaly {
            *self.anomalies.back_mut().expect("never empty") += 1;
        }
    }
}

#[derive(Debug)]
pub struct Fleet {
    /// Ordered by key, so the unit search reads the matches of a prefix straight off the tree.
    units: BTreeMap<String, Unit>,
    /// The units with an anomaly among their points: the ones the summary ranks.
    flagged: HashSet<String>,
    max_units: usize,
    points: usize,
    latest: VecDeque<Anomaly>,
    rates: Rates,
    events: u64,
    anomalies: u64,
    errors: u64,
    forgotten: u64,
}

impl Fleet {
    pub fn new(max_units: usize, points: usize) -> Self {
        Self {
            units: BTreeMap::new(),
            flagged: HashSet::new(),
            max_units,
            points,
            latest: VecDeque::with_capacity(LATEST_ANOMALIES),
            rates: Rates::new(),
            events: 0,
            anomalies: 0,
            errors: 0,
            forgotten: 0,
        }
    }

    /// Folds one prediction record in, received at `now_ms`.
    pub fn add(&mut self, prediction: Prediction, now_ms: i64) {
        if !prediction.error.is_empty() {
            self.errors += 1;
            return;
        }
        let anomaly = prediction.is_anomaly;
        self.events += 1;
        self.anomalies += u64::from(anomaly);
        self.rates.count(now_ms, anomaly);
        let at_ms = if prediction.event_time_ms > 0 {
            prediction.event_time_ms
        } else {
            now_ms
        };
        let point = Point {
            at_ms,
            score: prediction.score as f32,
            anomaly,
        };
        let features: Vec<Feature> = prediction
            .top_features
            .into_iter()
            .take(FEATURES_KEPT)
            .map(Feature::from)
            .collect();
        if anomaly {
            if self.latest.len() == LATEST_ANOMALIES {
                self.latest.pop_back();
            }
            self.latest.push_front(Anomaly {
                key: prediction.key.clone(),
                at_ms,
                score: prediction.score,
                model: prediction.model_name.clone(),
                version: prediction.model_version,
                top_features: features.clone(),
            });
        }
        let (points, key) = (self.points, prediction.key);
        if !self.units.contains_key(&key) {
            if self.units.len() >= self.max_units {
                self.forget_the_oldest();
            }
            let unit = Unit {
                points: VecDeque::with_capacity(points),
                flagged_points: 0,
                events: 0,
                anomalies: 0,
                last_seen_ms: 0,
                model: String::new(),
                version: 0,
                last_features: Vec::new(),
            };
            self.units.insert(key.clone(), unit);
        }
        let unit = self.units.get_mut(&key).expect("inserted above");
        let was_flagged = unit.flagged_points > 0;
        if unit.points.len() == points
            && let Some(oldest) = unit.points.pop_front()
        {
            unit.flagged_points -= usize::from(oldest.anomaly);
        }
        unit.points.push_back(point);
        unit.flagged_points += usize::from(anomaly);
        unit.events += 1;
        unit.anomalies += u64::from(anomaly);
        unit.last_seen_ms = unit.last_seen_ms.max(at_ms);
        if unit.version != prediction.model_version || unit.model != prediction.model_name {
            unit.model = prediction.model_name;
            unit.version = prediction.model_version;
        }
        if anomaly {
            unit.last_features = features;
        }
        match (was_flagged, unit.flagged_points > 0) {
            (false, true) => {
                self.flagged.insert(key);
            }
            (true, false) => {
                self.flagged.remove(&key);
            }
            _ => {}
        }
    }

    /// Forgets the units silent the longest: one in a hundred of them at once, so the scan it
    /// takes is paid once per that many new units.
    fn forget_the_oldest(&mut self) {
        let mut seen: Vec<i64> = self.units.values().map(|u| u.last_seen_ms).collect();
        let count = (seen.len() / 100).max(1);
        let (_, cutoff, _) = seen.select_nth_unstable(count - 1);
        let cutoff = *cutoff;
        let (mut left, flagged) = (count, &mut self.flagged);
        self.units.retain(|key, unit| {
            if left > 0 && unit.last_seen_ms <= cutoff {
                left -= 1;
                if unit.flagged_points > 0 {
                    flagged.remove(key);
                }
                false
            } else {
                true
            }
        });
        self.forgotten += (count - left) as u64;
    }

    pub fn summary(&mut self, now_ms: i64) -> FleetSummary {
        self.rates.advance(now_ms);
        // Only the units with an anomaly among their points can rank: a few per cent of them,
        // so the fleet's lock is held for those, not for every unit.
        let mut ranked: Vec<(&String, &Unit, f64)> = self
            .flagged
            .iter()
            .filter_map(|key| self.units.get_key_value(key))
            .map(|(key, unit)| (key, unit, unit.recent_rate()))
            .collect();
        let top = TOP_UNITS.min(ranked.len());
        let order = |a: &(&String, &Unit, f64), b: &(&String, &Unit, f64)| {
            b.2.total_cmp(&a.2)
                .then(b.1.last_seen_ms.cmp(&a.1.last_seen_ms))
                .then(a.0.cmp(b.0))
        };
        if top > 0 && top < ranked.len() {
            ranked.select_nth_unstable_by(top - 1, order);
        }
        ranked.truncate(top);
        ranked.sort_unstable_by(order);
        FleetSummary {
            at_ms: now_ms,
            units: self.units.len(),
            forgotten_units: self.forgotten,
            events: self.events,
            anomalies: self.anomalies,
            errors: self.errors,
            events_per_second: self.rates.events.iter().copied().collect(),
            anomalies_per_second: self.rates.anomalies.iter().copied().collect(),
            top_units: ranked
                .into_iter()
                .map(|(key, unit, rate)| UnitSummary {
                    key: key.clone(),
                    recent_rate: rate,
                    events: unit.events,
                    anomalies: unit.anomalies,
                    last_seen_ms: unit.last_seen_ms,
                    last_score: unit.points.back().map_or(0.0, |p| p.score),
                    top_features: unit.last_features.clone(),
                })
                .collect(),
            latest: self.latest.iter().cloned().collect(),
        }
    }

    pub fn unit(&self, key: &str) -> Option<UnitDetail> {
        self.units.get(key).map(|unit| UnitDetail {
            key: key.to_owned(),
            model: unit.model.clone(),
            version: unit.version,
            events: unit.events,
            anomalies: unit.anomalies,
            last_seen_ms: unit.last_seen_ms,
            points: unit.points.iter().copied().collect(),
            top_features: unit.last_features.clone(),
        })
    }

    /// The first `limit` keys starting with `prefix`, in order (the unit search box): O(log units
    /// + limit).
    pub fn find(&self, prefix: &str, limit: usize) -> Vec<String> {
        self.units
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(key: &str, at_ms: i64, score: f64, anomaly: bool) -> Prediction {
        Prediction {
            key: key.into(),
            event_time_ms: at_ms,
            score,
            is_anomaly: anomaly,
            model_name: "m".into(),
            model_version: 1,
            ..Default::default()
        }
    }

    #[test]
    fn the_fleet_stays_within_its_bound_by_forgetting_the_units_silent_the_longest() {
        let mut fleet = Fleet::new(1000, 4);
        // 2000 keys in turn, twice and a half: the last 1000 events are u0..u999's.
        for i in 0..5000_i64 {
            fleet.add(prediction(&format!("u{}", i % 2000), i, i as f64, i % 10 == 0), 1_000);
        }
        let summary = fleet.summary(1_000);
        assert!(summary.units <= 1000, "{}", summary.units);
        assert!(summary.forgotten_units >= 3000, "{}", summary.forgotten_units);
        assert!(fleet.unit("u1999").is_none(), "last seen before all of u0..u999");
        let kept = fleet.unit("u999").expect("seen last of all");
        let times: Vec<i64> = kept.points.iter().map(|p| p.at_ms).collect();
        assert_eq!(times, vec![4999], "a forgotten unit starts over when it comes back");
    }

    #[test]
    fn a_unit_leaves_the_ranking_when_its_anomaly_ages_out_or_it_is_forgotten() {
        let mut fleet = Fleet::new(2, 4);
        fleet.add(prediction("once", 0, 9.0, true), 1_000);
        fleet.add(prediction("other", 1, 9.0, true), 1_000);
        let ranked = |fleet: &mut Fleet| -> Vec<String> {
            let mut keys: Vec<String> = fleet.summary(1_000).top_units.into_iter().map(|u| u.key).collect();
            keys.sort();
            keys
        };
        assert_eq!(ranked(&mut fleet), ["once", "other"]);
        // Four normal points push the anomaly out of "once"'s latest four.
        for i in 2..6 {
            fleet.add(prediction("once", i, 1.0, false), 1_000);
        }
        assert_eq!(ranked(&mut fleet), ["other"]);
        // A third unit makes room: "other", silent the longest, is forgotten and ranks no more.
        fleet.add(prediction("third", 7, 1.0, false), 1_000);
        assert!(fleet.unit("other").is_none());
        assert!(ranked(&mut fleet).is_empty());
    }

    #[test]
    fn the_unit_search_gives_the_first_keys_of_a_prefix_in_order() {
        let mut fleet = Fleet::new(100, 4);
        for key in ["car2", "car10", "bus1", "car1", "carz"] {
            fleet.add(prediction(key, 1_000, 0.1, false), 1_000);
        }
        assert_eq!(fleet.find("car1", 10), ["car1", "car10"]);
        assert_eq!(fleet.find("", 2), ["bus1", "car1"]);
        assert_eq!(fleet.find("car", 3), ["car1", "car10", "car2"]);
        assert!(fleet.find("z", 5).is_empty());
    }

    #[test]
    fn a_unit_keeps_its_latest_points_oldest_first() {
        let mut fleet = Fleet::new(10, 3);
        for i in 0..5 {
            fleet.add(prediction("a", i, i as f64, i == 4), 0);
        }
        let unit = fleet.unit("a").unwrap();
        assert_eq!(unit.points.iter().map(|p| p.at_ms).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!((unit.events, unit.anomalies), (5, 1));
    }

    #[test]
    fn the_summary_ranks_units_by_their_recent_anomaly_rate() {
        let mut fleet = Fleet::new(100, 4);
        for i in 0..4 {
            fleet.add(prediction("always", i, 9.0, true), 5_000);
            fleet.add(prediction("half", i, 5.0, i % 2 == 0), 5_000);
            fleet.add(prediction("never", i, 1.0, false), 5_000);
        }
        let summary = fleet.summary(5_000);
        let ranked: Vec<(&str, f64)> = summary
            .top_units
            .iter()
            .map(|u| (u.key.as_str(), u.recent_rate))
            .collect();
        assert_eq!(ranked, vec![("always", 1.0), ("half", 0.5)]);
        assert_eq!(summary.latest.len(), 6);
        let latest: Vec<&str> = summary.latest.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            latest,
            ["always", "half", "always", "always", "half", "always"],
            "newest first"
        );
        assert_eq!(summary.events_per_second.last(), Some(&12));
        assert_eq!(summary.anomalies_per_second.last(), Some(&6));
    }

    #[test]
    fn rates_move_with_the_clock() {
        let mut fleet = Fleet::new(10, 4);
        fleet.add(prediction("a", 0, 1.0, true), 10_000);
        let later = fleet.summary(12_500);
        let n = later.events_per_second.len();
        assert_eq!(&later.events_per_second[n - 3..], &[1, 0, 0]);
    }
}
