//! Explanations for models that cannot give them in their scoring pass (ONNX graphs, MLPs with a
//! raw output): each feature of a flagged row is set, one at a time, to its training median (from
//! the version's reference profile, [`crate::drift::reference_medians`]), and how far the score
//! falls says how much that feature made the row anomalous. Shares are those falls over their
//! sum. A flagged row costs one scored row per feature; a batch's flagged rows are scored
//! together in one pass. The predictor bounds the cost with a budget of rows a second; a
//! backtest explains every flagged event.

use crate::{Model, ModelError};

/// What one batch's attribution did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Flagged rows explained.
    pub explained: usize,
    /// Flagged rows the caller could not afford to explain.
    pub over_budget: usize,
    /// Flagged rows no single feature at its median lowers the score of.
    pub no_single_feature: usize,
}

/// Fills `shares` (`rows × features`) for the flagged rows of a scored batch, NaN for the rows
/// it does not explain (normal ones, and flagged ones past what `afford` grants); empty when no
/// row is flagged. `afford` is told how many rows are flagged and answers how many of them (the
/// first ones) may be explained. `perturbed` and `perturbed_scores` are scratch space kept
/// between batches.
#[allow(clippy::too_many_arguments)]
pub fn attribute(
    model: &Model,
    medians: &[f32],
    threshold: f32,
    inputs: &[f32],
    scores: &[f32],
    afford: impl FnOnce(usize) -> usize,
    shares: &mut Vec<f32>,
    (perturbed, perturbed_scores): (&mut Vec<f32>, &mut Vec<f32>),
) -> Result<Outcome, ModelError> {
    shares.clear();
    let features = medians.len();
    let flagged: Vec<usize> = (0..scores.len())
        .filter(|&r| crate::is_anomalous(scores[r], threshold))
        .collect();
    if flagged.is_empty() || features == 0 {
        return Ok(Outcome::default());
    }
    let afforded = afford(flagged.len()).min(flagged.len());
    let mut outcome = Outcome {
        over_budget: flagged.len() - afforded,
        ..Outcome::default()
    };
    shares.resize(scores.len() * features, f32::NAN);
    if afforded == 0 {
        return Ok(outcome);
    }
    perturbed.clear();
    for &r in &flagged[..afforded] {
        let row = &inputs[r * features..(r + 1) * features];
        for (j, median) in medians.iter().enumerate() {
            perturbed.extend_from_slice(row);
            let at = perturbed.len() - features + j;
            perturbed[at] = *median;
        }
    }
    model.score_into(perturbed, perturbed_scores)?;
    for (k, &r) in flagged[..afforded].iter().enumerate() {
        let falls = &perturbed_scores[k * features..(k + 1) * features];
        let fall = |s: f32| if s.is_finite() { (scores[r] - s).max(0.0) } else { 0.0 };
        let total: f32 = falls.iter().copied().map(fall).sum();
        if total > 0.0 && total.is_finite() {
            for (j, &s) in falls.iter().enumerate() {
                shares[r * features + j] = fall(s) / total;
            }
            outcome.explained += 1;
        } else {
            outcome.no_single_feature += 1;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use crate::example::zero_autoencoder;

    use super::*;

    /// A row's score is the mean of its squared values, so setting feature j to its median m_j
    /// lowers it by (x_j² − m_j²)/3.
    fn squares() -> Model {
        zero_autoencoder(&["a", "b", "c"])
    }

    /// Attributes `inputs` as one batch, every median 1 and the threshold 0.5.
    fn explain(inputs: &[f32], affordable: usize) -> (Vec<f32>, Outcome) {
        let model = squares();
        let scores = model.score(inputs).unwrap();
        let (mut shares, mut scratch) = (Vec::new(), (Vec::new(), Vec::new()));
        let outcome = attribute(
            &model,
            &[1.0; 3],
            0.5,
            inputs,
            &scores,
            |_| affordable,
            &mut shares,
            (&mut scratch.0, &mut scratch.1),
        )
        .unwrap();
        (shares, outcome)
    }

    #[test]
    fn each_feature_at_its_median_says_its_share_of_a_flagged_score() {
        let inputs = [3.0, 1.0, 0.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let (shares, outcome) = explain(&inputs, usize::MAX);
        // [3, 1, 0]: only a's square is above its median's; [2, 3, 1]: 3 and 8 of 11.
        let close = |got: &[f32], want: &[f32]| got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6);
        assert!(close(&shares[0..3], &[1.0, 0.0, 0.0]), "{shares:?}");
        assert!(close(&shares[3..6], &[3.0 / 11.0, 8.0 / 11.0, 0.0]), "{shares:?}");
        // [1, 1, 1] is flagged but sits at the medians: no one feature lowers it. [0, 0, 0] is normal.
        assert!(shares[6..12].iter().all(|s| s.is_nan()), "{shares:?}");
        assert_eq!(
            outcome,
            Outcome {
                explained: 2,
                over_budget: 0,
                no_single_feature: 1
            }
        );
    }

    #[test]
    fn flagged_rows_past_what_is_afforded_go_unexplained_and_are_counted() {
        let inputs = [3.0, 1.0, 0.0, 2.0, 3.0, 1.0, 4.0, 0.0, 0.0];
        let (shares, outcome) = explain(&inputs, 2);
        assert_eq!((outcome.explained, outcome.over_budget), (2, 1));
        assert!(shares[6..9].iter().all(|s| s.is_nan()));
        let (shares, outcome) = explain(&inputs, 0);
        assert_eq!((outcome.explained, outcome.over_budget), (0, 3));
        assert!(shares.iter().all(|s| s.is_nan()));
    }
}
