//! Drift: how far live values have moved from the data a version was trained on, measured as
//! the population stability index (PSI) over the reference's quantile bins. The trainer builds
//! the reference ([`Distribution::of`]); predictors count live values into the same bins
//! ([`Distribution::bin`]) and compare ([`Distribution::psi`]).

use kappa_api::model::{Distribution, ModelManifest, ReferenceProfile};

/// The reference profile a version's lineage carries, when it has one per input feature (what
/// drift and explanations compare live values with); `None` otherwise.
pub fn reference_of(manifest: &ModelManifest) -> Option<&ReferenceProfile> {
    manifest
        .lineage
        .as_ref()
        .and_then(|l| l.reference.as_ref())
        .filter(|r| r.features.len() == manifest.features.len())
}

/// Quantile bins of a reference (deciles).
pub const BINS: usize = 10;

/// The PSI at which a distribution is conventionally said to have shifted (0.1 to 0.2 is a
/// moderate change, past 0.2 a significant one).
pub const PSI_THRESHOLD: f64 = 0.2;

/// A share below this is taken as this, so an empty bin does not make the index infinite.
const FLOOR: f64 = 1e-4;

/// The distribution of `values` (finite ones) as shares of their decile bins; `None` when none
/// is finite.
pub fn of(name: &str, values: impl Iterator<Item = f64>) -> Option<Distribution> {
    let mut sorted: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..BINS)
        .map(|i| sorted[(i * sorted.len() / BINS).min(sorted.len() - 1)])
        .collect();
    edges.dedup();
    // A constant feature still gets an edge at its value: its bins are "below" and "at or above".
    let mut counts = vec![0_u64; edges.len() + 1];
    for v in &sorted {
        counts[bin(&edges, *v)] += 1;
    }
    let total = sorted.len() as f64;
    Some(Distribution {
        name: name.to_owned(),
        edges,
        shares: counts.iter().map(|c| *c as f64 / total).collect(),
    })
}

/// Each feature's training median, read from a version's reference profile: the lower edge of
/// the bin where the cumulative share passes one half (the 5th decile, when the feature has ten
/// distinct deciles). `None` for a version without a usable reference.
pub fn reference_medians(manifest: &ModelManifest) -> Option<Vec<f32>> {
    reference_of(manifest)?.features.iter().map(median).collect()
}

fn median(distribution: &Distribution) -> Option<f32> {
    let mut cumulative = 0.0;
    let bin = distribution.shares.iter().position(|share| {
        cumulative += share;
        // Shares are sums of tenths: past one half by more than their rounding.
        cumulative > 0.5 + 1e-9
    })?;
    let edges = &distribution.edges;
    edges.get(bin.saturating_sub(1)).map(|&e| e as f32)
}

/// The bin of `value`: how many edges are at or below it.
pub fn bin(edges: &[f64], value: f64) -> usize {
    edges.partition_point(|e| *e <= value)
}

/// PSI of live bin `counts` against the reference `shares` (same bins): Σ (q − p) ln(q / p).
/// `None` with no live values.
pub fn psi(shares: &[f64], counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 || shares.len() != counts.len() {
        return None;
    }
    Some(
        shares
            .iter()
            .zip(counts)
            .map(|(p, c)| {
                let (p, q) = (p.max(FLOOR), (*c as f64 / total as f64).max(FLOOR));
                (q - p) * (q / p).ln()
            })
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn the_median_is_read_from_the_deciles() {
        let spread = of("x", (0..1000).map(f64::from)).unwrap();
        assert_eq!(median(&spread), Some(500.0));
        let constant = of("c", std::iter::repeat_n(7.0, 50)).unwrap();
        assert_eq!(median(&constant), Some(7.0));
        // Mostly zeros, a few large values: the median is zero.
        let skewed = of("s", (0..100).map(|i| if i < 80 { 0.0 } else { f64::from(i) })).unwrap();
        assert_eq!(median(&skewed), Some(0.0));
    }

    fn counts(reference: &Distribution, values: impl Iterator<Item = f64>) -> Vec<u64> {
        let mut counts = vec![0; reference.shares.len()];
        for v in values {
            counts[bin(&reference.edges, v)] += 1;
        }
        counts
    }

    #[test]
    fn deciles_hold_a_tenth_each_and_a_constant_has_one_edge() {
        let d = of("x", (0..1000).map(f64::from)).unwrap();
        assert_eq!(d.edges.len(), 9);
        assert!(d.shares.iter().all(|s| (s - 0.1).abs() < 1e-9), "{:?}", d.shares);
        let c = of("c", std::iter::repeat_n(3.0, 50).chain([f64::NAN])).unwrap();
        assert_eq!((c.edges.as_slice(), c.shares.as_slice()), (&[3.0][..], &[0.0, 1.0][..]));
        assert!(of("none", [f64::NAN].into_iter()).is_none());
        assert_eq!(bin(&[1.0, 2.0], 0.5), 0);
        assert_eq!(bin(&[1.0, 2.0], 1.0), 1);
        assert_eq!(bin(&[1.0, 2.0], 9.0), 2);
    }

    #[test]
    fn the_same_distribution_scores_near_zero_and_a_shift_past_the_threshold() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut normal = |mean: f64| -> Vec<f64> {
            (0..5000)
                .map(|_| mean + (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0)
                .collect()
        };
        let reference = of("x", normal(0.0).into_iter()).unwrap();
        let same = psi(&reference.shares, &counts(&reference, normal(0.0).into_iter())).unwrap();
        assert!(same < 0.02, "{same}");
        let shifted = psi(&reference.shares, &counts(&reference, normal(1.0).into_iter())).unwrap();
        assert!(shifted > PSI_THRESHOLD, "{shifted}");
        // Every live value below the reference: large but finite.
        let gone = psi(&reference.shares, &counts(&reference, normal(-100.0).into_iter())).unwrap();
        assert!(gone.is_finite() && gone > 5.0, "{gone}");
        assert_eq!(psi(&reference.shares, &vec![0; reference.shares.len()]), None);
    }
}
