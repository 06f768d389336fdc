//! From rows to training data: seeded splits, scaling fitted on the training rows only.

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

use crate::reader::Row;

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

/// Mean and standard deviation per feature (population); a constant feature gets scale 1.
pub fn fit_scaling(rows: &[Vec<f32>], features: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0; features];
    for row in rows {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += f64::from(*v) / n;
        }
    }
    let mut scale = vec![0.0; features];
    for row in rows {
        for ((s, v), m) in scale.iter_mut().zip(row).zip(&mean) {
            *s += (f64::from(*v) - m).powi(2) / n;
        }
    }
    let scale = scale
        .into_iter()
        .map(|v: f64| if v.sqrt() > 1e-9 { v.sqrt() } else { 1.0 })
        .collect();
    (mean, scale)
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
        let (m, sd) = fit_scaling(&[vec![1.0, 5.0], vec![3.0, 5.0]], 2);
        assert_eq!((m, sd), (vec![2.0, 5.0], vec![1.0, 1.0]));
    }
}
