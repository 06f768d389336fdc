//! Detector quality on labelled data: the numbers a model's lineage carries and the
//! champion/challenger gate compares.

/// The one rule that turns a score into a flag, wherever a flag is made (serving, streams,
/// shadows, monitoring, backtests, evaluation): anomalous when strictly above the threshold.
pub fn is_anomalous<T: PartialOrd>(score: T, threshold: T) -> bool {
    score > threshold
}

/// Value below which `p` percent of `values` fall (linear interpolation between ranks).
pub fn percentile(values: &[f32], p: f64) -> f32 {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f32::NAN;
    }
    sorted.sort_by(f32::total_cmp);
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let frac = (rank - lo as f64) as f32;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub roc_auc: f64,
}

/// Precision, recall and F1 at `threshold` (score above it = anomaly), and ROC AUC over all
/// thresholds. `labels[i]` is true for an anomaly. AUC counts ties as half.
pub fn quality(scores: &[f32], labels: &[bool], threshold: f32) -> Quality {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for (s, &l) in scores.iter().zip(labels) {
        match (is_anomalous(*s, threshold), l) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => {}
        }
    }
    let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
    let recall = if tp + fn_ > 0.0 { tp / (tp + fn_) } else { 0.0 };
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Quality {
        precision,
        recall,
        f1,
        roc_auc: roc_auc(scores, labels),
    }
}

/// Probability that a random anomaly scores higher than a random normal sample (Mann–Whitney).
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut ranked: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = ranked.iter().filter(|(_, l)| *l).count() as f64;
    let negatives = ranked.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    // Sum of the (tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < ranked.len() {
        let mut j = i;
        while j < ranked.len() && ranked[j].0 == ranked[i].0 {
            j += 1;
        }
        let average_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += ranked[i..j].iter().filter(|(_, l)| *l).count() as f64 * average_rank;
        i = j;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_random_and_inverted_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &labels), 0.5);
        // Hand count: pairs (pos, neg) = (0.3>0.1 ✓, 0.3>0.4 ✗, 0.8 ✓ ✓) = 3 of 4.
        assert_eq!(roc_auc(&[0.1, 0.4, 0.3, 0.8], &labels), 0.75);
    }

    #[test]
    fn precision_recall_and_percentiles() {
        let q = quality(&[0.1, 0.6, 0.7, 0.2], &[false, false, true, true], 0.5);
        assert_eq!((q.precision, q.recall), (0.5, 0.5));
        assert_eq!(q.f1, 0.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), 3.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 100.0), 5.0);
        assert_eq!(percentile(&[0.0, 10.0], 95.0), 9.5);
    }
}
