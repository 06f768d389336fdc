//! What a backtest found, as JSON for scripts and as text for people.

use std::{collections::BTreeMap, fmt};

use kappa_api::model::PartitionRange;
use kappa_model::evaluate::{Quality, percentile};
use serde::Serialize;

use crate::Contender;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub topic: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// The offsets read, per partition: the same range read again gives the same events.
    pub offsets: Vec<Offsets>,
    /// Records read from those offsets.
    pub read: u64,
    /// Events every version scored.
    pub events: u64,
    /// Of those, events with a label, and how many of them are anomalies.
    pub labelled: u64,
    pub positives: u64,
    /// Whether a label field was read at all (the version's schema or `--label`).
    pub label_field: bool,
    /// Records not scored, by reason (`v<N>:` when one version could not read them).
    pub skipped: BTreeMap<String, u64>,
    pub versions: Vec<VersionReport>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Offsets {
    pub partition: i32,
    pub start_offset: i64,
    pub end_offset: i64,
    /// Where the partition's remote tier ended when the range was read (tiered storage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest_local_offset: Option<i64>,
}

impl From<&PartitionRange> for Offsets {
    fn from(r: &PartitionRange) -> Self {
        Self {
            partition: r.partition,
            start_offset: r.start_offset,
            end_offset: r.end_offset,
            earliest_local_offset: r.earliest_local_offset,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionReport {
    pub name: String,
    pub version: u64,
    pub threshold: f64,
    pub anomalies: u64,
    pub anomaly_rate: f64,
    pub scores: Scores,
    /// Precision, recall, F1 and ROC AUC on the labelled events; absent unless both classes
    /// are among them.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub roc_auc: Option<f64>,
    /// Against the first version (absent for the first).
    pub agreement: Option<Agreement>,
    /// For a version that explains its scores, or has a reference profile to explain its flagged
    /// events by median replacement: the features that had the largest share of a
    /// flagged event's score, the most frequent first.
    pub top_features: Vec<TopFeature>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopFeature {
    pub feature: String,
    /// Flagged events in which it had the largest share.
    pub flagged_events: u64,
    /// Its mean share over all the version's flagged events.
    pub mean_share: f64,
}

/// What made a version's flagged events anomalous, gathered batch by batch: per feature, the
/// flagged events it topped and its shares summed in millionths (integers, so the total does
/// not depend on the order events arrive in, which differs between replays).
#[derive(Debug, Clone, Default)]
pub(crate) struct Blame {
    topped: Vec<u64>,
    share_millionths: Vec<u64>,
    flagged: u64,
}

impl Blame {
    /// Adds one flagged event's shares (one per feature).
    pub(crate) fn flagged(&mut self, shares: &[f32]) {
        if self.topped.len() != shares.len() {
            self.topped.resize(shares.len(), 0);
            self.share_millionths.resize(shares.len(), 0);
        }
        let top = (0..shares.len()).fold(0, |best, i| if shares[i] > shares[best] { i } else { best });
        self.topped[top] += 1;
        for (sum, share) in self.share_millionths.iter_mut().zip(shares) {
            *sum += (f64::from(*share) * 1e6).round() as u64;
        }
        self.flagged += 1;
    }

    /// The features that topped at least one flagged event, the most frequent first (ties by
    /// feature order).
    pub(crate) fn top_features(&self, features: &[String]) -> Vec<TopFeature> {
        let mut top: Vec<TopFeature> = features
            .iter()
            .zip(self.topped.iter().zip(&self.share_millionths))
            .filter(|(_, (topped, _))| **topped > 0)
            .map(|(feature, (topped, millionths))| TopFeature {
                feature: feature.clone(),
                flagged_events: *topped,
                mean_share: *millionths as f64 / 1e6 / self.flagged as f64,
            })
            .collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.flagged_events));
        top
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scores {
    pub mean: f64,
    pub p50: f32,
    pub p90: f32,
    pub p99: f32,
    pub max: f32,
}

/// How two versions' answers compare event by event.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Agreement {
    /// Share of events both flag the same way.
    pub rate: f64,
    /// Events the first version flags and this one does not.
    pub only_first: u64,
    /// Events this version flags and the first does not.
    pub only_this: u64,
    /// Mean of this version's score minus the first's (scores of different versions need not
    /// share a scale; the flags are what to compare).
    pub mean_score_delta: f64,
}

impl Agreement {
    pub fn between(first: &[bool], this: &[bool], first_scores: &[f32], scores: &[f32]) -> Self {
        let n = first.len().max(1) as f64;
        let same = first.iter().zip(this).filter(|(a, b)| a == b).count();
        let only_first = first.iter().zip(this).filter(|(a, b)| **a && !**b).count();
        let only_this = first.iter().zip(this).filter(|(a, b)| !**a && **b).count();
        let delta = order_free_sum(
            first_scores
                .iter()
                .zip(scores)
                .map(|(a, b)| f64::from(*b) - f64::from(*a)),
        );
        Self {
            rate: same as f64 / n,
            only_first: only_first as u64,
            only_this: only_this as u64,
            mean_score_delta: delta / n,
        }
    }
}

impl VersionReport {
    pub(crate) fn new(
        contender: &Contender,
        scores: &[f32],
        flags: &[bool],
        quality: Option<Quality>,
        agreement: Option<Agreement>,
        blame: &Blame,
    ) -> Self {
        let anomalies = flags.iter().filter(|f| **f).count() as u64;
        let n = scores.len();
        let finite = |v: f64| v.is_finite().then_some(v);
        Self {
            name: contender.manifest.name.clone(),
            version: contender.manifest.version,
            threshold: contender.manifest.anomaly_threshold,
            anomalies,
            anomaly_rate: if n == 0 { 0.0 } else { anomalies as f64 / n as f64 },
            scores: Scores {
                mean: if n == 0 {
                    0.0
                } else {
                    order_free_sum(scores.iter().map(|s| f64::from(*s))) / n as f64
                },
                p50: percentile(scores, 50.0),
                p90: percentile(scores, 90.0),
                p99: percentile(scores, 99.0),
                max: percentile(scores, 100.0),
            },
            precision: quality.map(|q| q.precision),
            recall: quality.map(|q| q.recall),
            f1: quality.map(|q| q.f1),
            roc_auc: quality.and_then(|q| finite(q.roc_auc)),
            agreement,
            top_features: blame.top_features(&contender.feature_names()),
        }
    }

    /// The value of a quality metric by its name in the spec (`roc_auc`, `f1`, …).
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "roc_auc" => self.roc_auc,
            "f1" => self.f1,
            "precision" => self.precision,
            "recall" => self.recall,
            _ => None,
        }
    }
}

/// The metrics a gate may compare versions by.
pub const METRICS: [&str; 4] = ["roc_auc", "f1", "precision", "recall"];

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "backtest of {} [{}, {}) ms: {} events scored of {} read",
            self.topic, self.from_ms, self.to_ms, self.events, self.read
        )?;
        let offsets: Vec<String> = self
            .offsets
            .iter()
            .map(|o| format!("{}:[{}, {})", o.partition, o.start_offset, o.end_offset))
            .collect();
        writeln!(f, "  offsets (partition:[start, end)): {}", offsets.join(" "))?;
        if !self.skipped.is_empty() {
            let skipped: Vec<String> = self.skipped.iter().map(|(r, n)| format!("{r} {n}")).collect();
            writeln!(f, "  skipped: {}", skipped.join(", "))?;
        }
        if !self.label_field {
            writeln!(
                f,
                "  no label field (the version's schema names none; --label sets one)"
            )?;
        } else {
            writeln!(f, "  labelled: {} ({} anomalies)", self.labelled, self.positives)?;
        }
        writeln!(
            f,
            "  {:<10} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "version",
            "anomalies",
            "rate",
            "score p50",
            "score p99",
            "threshold",
            "precision",
            "recall",
            "F1",
            "ROC AUC",
            "agreement"
        )?;
        let metric = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
        for v in &self.versions {
            writeln!(
                f,
                "  {:<10} {:>9} {:>8.2}% {:>10.4} {:>10.4} {:>10.4} {:>9} {:>9} {:>9} {:>9} {:>10}",
                format!("v{}", v.version),
                v.anomalies,
                v.anomaly_rate * 100.0,
                v.scores.p50,
                v.scores.p99,
                v.threshold,
                metric(v.precision),
                metric(v.recall),
                metric(v.f1),
                metric(v.roc_auc),
                v.agreement
                    .map_or_else(|| "-".to_owned(), |a| format!("{:.2}%", a.rate * 100.0)),
            )?;
        }
        for v in self.versions.iter().filter(|v| !v.top_features.is_empty()) {
            let named: Vec<String> = v
                .top_features
                .iter()
                .take(3)
                .map(|t| format!("{} in {} (mean share {:.2})", t.feature, t.flagged_events, t.mean_share))
                .collect();
            writeln!(
                f,
                "  v{} flagged events, by the feature with the largest share: {}",
                v.version,
                named.join(", ")
            )?;
        }
        if let Some(first) = self.versions.first() {
            for v in self.versions.iter().skip(1) {
                if let Some(a) = v.agreement {
                    writeln!(
                        f,
                        "  v{} against v{}: v{} flags {} events v{} does not, and misses {} that v{} flags",
                        v.version, first.version, v.version, a.only_this, first.version, a.only_first, first.version
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A sum that does not depend on the order of its terms: partitions are read in parallel, so
/// events arrive in a different order on every replay, and a floating-point sum in arrival
/// order would differ in its last digits between two replays of the same window.
fn order_free_sum(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_unstable_by(f64::total_cmp);
    values.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_counts_flips_each_way_and_the_mean_delta() {
        let first = [true, true, false, false];
        let this = [true, false, true, false];
        let a = Agreement::between(&first, &this, &[1.0, 2.0, 3.0, 4.0], &[2.0, 2.0, 3.0, 2.0]);
        // Same flags on events 0 and 3; deltas +1, 0, 0, -2.
        assert_eq!((a.rate, a.only_first, a.only_this), (0.5, 1, 1));
        assert_eq!(a.mean_score_delta, -0.25);
    }

    #[test]
    fn blame_counts_each_flagged_events_top_feature_and_averages_the_shares() {
        let mut blame = Blame::default();
        blame.flagged(&[0.7, 0.2, 0.1]);
        blame.flagged(&[0.1, 0.6, 0.3]);
        blame.flagged(&[0.5, 0.25, 0.25]);
        let names = ["coolant".to_owned(), "vibration".to_owned(), "speed".to_owned()];
        assert_eq!(
            blame.top_features(&names),
            [
                TopFeature {
                    feature: "coolant".into(),
                    flagged_events: 2,
                    mean_share: 1.3 / 3.0,
                },
                TopFeature {
                    feature: "vibration".into(),
                    flagged_events: 1,
                    mean_share: 1.05 / 3.0,
                },
            ]
        );
        assert!(Blame::default().top_features(&names).is_empty());
    }

    #[test]
    fn sums_do_not_depend_on_the_order_of_their_terms() {
        // In this order a left-to-right sum loses the small terms to rounding; sorted, it does not.
        let terms = [1e16, 1.0, -1e16, 1.0, 3.5, 1e-3];
        let mut reversed = terms;
        reversed.reverse();
        let forward = order_free_sum(terms.into_iter());
        assert_eq!(forward, order_free_sum(reversed.into_iter()));
        assert_ne!(
            terms.iter().sum::<f64>(),
            reversed.iter().sum::<f64>(),
            "the naive sums differ"
        );
    }
}
