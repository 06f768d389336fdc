//! What made a score: each feature's share of it, as a version that explains its scores
//! computes in the scoring pass (an autoencoder's reconstruction error, feature by feature),
//! with the event's value set against the feature's usual range in training.

use kappa_api::model::{FeatureContribution, ModelManifest};

use crate::slot::LoadedModel;

/// Each feature's 10th and 90th percentiles in the version's training data, from the reference
/// profile its lineage carries (deciles: the first and last edges); `None` where there is none.
pub fn typical_ranges(manifest: &ModelManifest) -> Vec<Option<(f64, f64)>> {
    let reference = kappa_model::drift::reference_of(manifest);
    (0..manifest.features.len())
        .map(|i| {
            let edges = &reference?.features[i].edges;
            Some((*edges.first()?, *edges.last()?))
        })
        .collect()
}

/// `x` to `digits` significant digits, as the f64 nearest that decimal: what an f32 holds, written
/// the way it was meant (`86.123`, not the `86.12300109863281` a plain widening prints), so records
/// stay short.
fn decimal(x: f32, digits: i32) -> f64 {
    let x = f64::from(x);
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10_f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// The `top` features with the largest shares of one row's score, largest first (ties in
/// feature order), with the row's values. `row` and `shares` are the row's inputs and shares;
/// none for a row that was not explained.
pub fn contributions(model: &LoadedModel, row: &[f32], shares: &[f32], top: usize) -> Vec<FeatureContribution> {
    // A row the median replacement did not explain (over its budget, or normal) has NaN shares.
    if shares.iter().any(|s| s.is_nan()) {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..shares.len().min(row.len())).collect();
    order.sort_by(|&a, &b| shares[b].total_cmp(&shares[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(top)
        .map(|i| {
            let typical = model.typical.get(i).copied().flatten();
            FeatureContribution {
                feature: model.manifest.features[i].name.clone(),
                share: decimal(shares[i], 6),
                value: decimal(row[i], 7),
                typical_low: typical.map(|(low, _)| low),
                typical_high: typical.map(|(_, high)| high),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn values_are_written_as_the_decimals_they_were() {
        assert_eq!(decimal(86.123_f32, 7).to_string(), "86.123");
        assert_eq!(decimal(0.283_945_74_f32, 6).to_string(), "0.283946");
        assert_eq!(decimal(-1250.5_f32, 7).to_string(), "-1250.5");
        assert_eq!(decimal(3.0e-7_f32, 7).to_string(), "0.0000003");
        assert_eq!(decimal(0.0, 7), 0.0);
        assert!(decimal(f32::NAN, 7).is_nan());
    }
}
