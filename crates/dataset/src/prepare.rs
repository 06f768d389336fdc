//! From rows to training data: seeded splits, scaling fitted on the training rows only.

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

use crate::rows::Row;

#[derive(Debug, Default)]
pub struct Splits {
    /// Normal rows used to fit the weights.
    pub train: Vec<Vec<f32>>,
    /// Normal rows for validation loss and the threshold.
    pub validation: Vec<Vec<f32>>,
    /// Labelled rows (normal and anomalous) kept out of training, for the quality metrics.
    pub holdout: Vec<(Vec<f32>, bool)>,
    /// Anomalies outside the hold-out: an autoencoder learns only what normal looks like.
    pub anomalies_excluded: u64,
    /// Events in validation or hold-out, which a re-read of the range must not train on.
    pub held_out: std::collections::HashSet<(i32, i64)>,
}

/// Shuffles with `seed`; keeps `holdout_split` of labelled rows out; trains on normal rows only
/// (all rows when there are no labels), of which `validation_split` is held for validation.
pub fn split(mut rows: Vec<Row>, validation_split: f64, holdout_split: f64, seed: u64) -> Splits {
    rows.shuffle(&mut StdRng::seed_from_u64(seed));
    let labelled = rows.iter().any(|r| r.label.is_some());
    let holdout_n = if labelled {
        (rows.len() as f64 * holdout_split).round() as usize
    } else {
        0
    };
    let pool = rows.split_off(holdout_n.min(rows.len()));
    let mut held_out: std::collections::HashSet<(i32, i64)> = rows.iter().map(|r| r.id).collect();
    let holdout = rows
        .into_iter()
        .filter_map(|r| r.label.map(|l| (r.values, l)))
        .collect();
    let pool_len = pool.len();
    let normal: Vec<Row> = pool.into_iter().filter(|r| r.label != Some(true)).collect();
    let anomalies_excluded = (pool_len - normal.len()) as u64;
    let validation_n = ((normal.len() as f64) * validation_split).round() as usize;
    let mut train = normal;
    let validation: Vec<Row> = train.split_off(train.len() - validation_n.min(train.len()));
    held_out.extend(validation.iter().map(|r| r.id));
    Splits {
        train: train.into_iter().map(|r| r.values).collect(),
        validation: validation.into_iter().map(|r| r.values).collect(),
        holdout,
        anomalies_excluded,
        held_out,
    }
}

/// Robust location and spread of one feature over the rows a model is fitted on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureStats {
    pub median: f64,
    /// 1.4826 × the median absolute deviation: σ for normal data, blind to up to half the rows.
    pub mad_sigma: f64,
    /// (q99 − q1) / 4.653: σ for normal data, blind to the extreme 1% on each side, and not
    /// zero when most rows share one value (a floor, an idle state).
    pub spread_sigma: f64,
    pub std: f64,
}

impl FeatureStats {
    /// Scale for `(x - median) / scale`: the quantile spread, then the MAD, then the standard
    /// deviation, then 1 for a constant feature. A few gross values cannot inflate it, so they
    /// cannot squash the normal variation of the feature to nothing.
    pub fn scale(&self) -> f64 {
        [self.spread_sigma, self.mad_sigma, self.std]
            .into_iter()
            .find(|s| *s > 1e-9)
            .unwrap_or(1.0)
    }

    /// How far from the median a value must be to be a gross outlier, or `None` for a
    /// constant feature (nothing to compare a spread with).
    pub fn outlier_distance(&self, max_z: f64) -> Option<f64> {
        let sigma = self.mad_sigma.max(self.spread_sigma);
        (sigma > 1e-9).then_some(max_z * sigma)
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Per-feature robust statistics of `rows` (owned rows, or references to rows held elsewhere).
pub fn fit_stats<R: AsRef<[f32]>>(rows: &[R], features: usize) -> Vec<FeatureStats> {
    let mut column = Vec::with_capacity(rows.len());
    (0..features)
        .map(|i| {
            column.clear();
            column.extend(rows.iter().map(|r| f64::from(r.as_ref()[i])));
            column.sort_unstable_by(f64::total_cmp);
            let median = quantile(&column, 0.5);
            let n = column.len().max(1) as f64;
            let mean = column.iter().sum::<f64>() / n;
            let std = (column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            let spread_sigma = (quantile(&column, 0.99) - quantile(&column, 0.01)) / 4.653;
            let mut deviations: Vec<f64> = column.iter().map(|v| (v - median).abs()).collect();
            deviations.sort_unstable_by(f64::total_cmp);
            FeatureStats {
                median,
                mad_sigma: 1.4826 * quantile(&deviations, 0.5),
                spread_sigma,
                std,
            }
        })
        .collect()
}

/// Gross-outlier bounds per feature; `None` when screening is off.
#[derive(Debug, Clone, Default)]
pub struct Screen {
    bounds: Vec<Option<(f64, f64)>>,
}

impl Screen {
    pub fn fit(stats: &[FeatureStats], max_z: Option<f64>) -> Self {
        let Some(z) = max_z else {
            return Self::default();
        };
        Self {
            bounds: stats
                .iter()
                .map(|s| s.outlier_distance(z).map(|d| (s.median - d, s.median + d)))
                .collect(),
        }
    }

    /// The first feature of `row` that is a gross outlier.
    pub fn outlier(&self, row: &[f32]) -> Option<usize> {
        self.bounds.iter().zip(row).position(|(b, v)| {
            b.is_some_and(|(lo, hi)| {
                let v = f64::from(*v);
                v < lo || v > hi
            })
        })
    }

    /// Keeps the rows inside the bounds; counts the others by their first outlying feature.
    pub fn retain(&self, rows: &mut Vec<Vec<f32>>, dropped: &mut [u64]) {
        rows.retain(|row| match self.outlier(row) {
            Some(i) => {
                dropped[i] += 1;
                false
            }
            None => true,
        });
    }
}

/// Rows scaled with `(x - offset) / scale`, flattened.
pub fn scaled(rows: &[Vec<f32>], offset: &[f64], scale: &[f64]) -> Vec<f32> {
    rows.iter()
        .flat_map(|row| {
            row.iter()
                .zip(offset)
                .zip(scale)
                .map(|((x, o), s)| ((f64::from(*x) - o) / s) as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomalies_never_reach_training_and_splits_are_disjoint() {
        let rows: Vec<Row> = (0..1000_u32)
            .map(|i| Row {
                values: vec![i as f32],
                label: Some(i.is_multiple_of(10)),
                id: (0, i64::from(i)),
                time_ms: i64::from(i),
            })
            .collect();
        let s = split(rows, 0.2, 0.2, 7);
        assert_eq!(s.holdout.len(), 200);
        assert_eq!(s.held_out.len(), s.holdout.len() + s.validation.len());
        assert!(
            s.train
                .iter()
                .chain(&s.validation)
                .all(|r| !(r[0] as usize).is_multiple_of(10))
        );
        let mut all: Vec<u32> = s.train.iter().chain(&s.validation).map(|r| r[0] as u32).collect();
        all.extend(s.holdout.iter().map(|(r, _)| r[0] as u32));
        all.sort_unstable();
        all.dedup();
        let anomalies_in_pool = 100 - s.holdout.iter().filter(|(_, l)| *l).count();
        assert_eq!(all.len(), 1000 - anomalies_in_pool, "every row is used once");
    }

    #[test]
    fn robust_scaling_and_screening_ignore_gross_values() {
        // 1000 rows of a feature spread uniformly over [0, 10), plus a constant and one feature
        // with five absurd readings, as a broken sensor produces.
        let mut rows: Vec<Vec<f32>> = (0..1000)
            .map(|i| vec![(i % 100) as f32 / 10.0, 7.0, 50.0 + (i % 10) as f32])
            .collect();
        for row in rows.iter_mut().take(5) {
            row[2] = 1976.0;
        }
        let stats = fit_stats(&rows, 3);
        // Uniform on [0, 9.9]: median 4.95, q99 - q1 = 9.702 (interpolated), σ-equivalent 2.085.
        assert!((stats[0].median - 4.95).abs() < 1e-6, "{stats:?}");
        assert!((stats[0].scale() - 9.702 / 4.653).abs() < 1e-3, "{stats:?}");
        assert_eq!(stats[1].scale(), 1.0, "a constant feature keeps scale 1");
        // The absurd readings move neither the centre nor the scale of the third feature much.
        assert!(stats[2].scale() < 3.0, "{stats:?}");
        let screen = Screen::fit(&stats, Some(12.0));
        let mut dropped = [0_u64; 3];
        screen.retain(&mut rows, &mut dropped);
        assert_eq!(dropped, [0, 0, 5]);
        assert_eq!(rows.len(), 995);
        // Off means off.
        assert_eq!(Screen::fit(&stats, None).outlier(&[1e9, 1e9, 1e9]), None);
    }
}
