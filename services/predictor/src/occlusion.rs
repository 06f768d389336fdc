//! Explanations for versions that cannot give them in the scoring pass (ONNX graphs, MLPs with a
//! raw output): each feature of a flagged row is set, one at a time, to its training median (from
//! the version's reference profile), and how far the score falls says how much that feature made
//! the row anomalous. Shares are those falls over their sum. A flagged row costs one scored row
//! per feature; a batch's flagged rows are scored together in one pass, after the batch's own,
//! within a budget of rows a second shared by the inference threads (`--explain-budget-rows`).
//! Flagged rows past the budget go unexplained, and are counted.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use kappa_model::{Model, ModelError};

/// Rows a second the attribution may score, refilled continuously; at most a second's worth
/// is saved up.
#[derive(Debug)]
pub struct Budget {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    pub fn per_second(rows: u32) -> Self {
        Self {
            per_second: f64::from(rows),
            state: Mutex::new((f64::from(rows), Instant::now())),
        }
    }

    /// Takes up to `want` rows, in whole multiples of `unit`; the rows granted.
    fn take(&self, want: usize, unit: usize) -> usize {
        self.take_at(want, unit, Instant::now())
    }

    fn take_at(&self, want: usize, unit: usize, now: Instant) -> usize {
        let mut state = self.state.lock().expect("budget lock");
        let (tokens, last) = &mut *state;
        let elapsed = now.saturating_duration_since(*last).min(Duration::from_secs(1));
        *tokens = (*tokens + elapsed.as_secs_f64() * self.per_second).min(self.per_second);
        *last = now;
        let units = (*tokens as usize / unit.max(1)).min(want / unit.max(1));
        let granted = units * unit.max(1);
        *tokens -= granted as f64;
        granted
    }
}

/// What one batch's attribution did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Flagged rows explained.
    pub explained: usize,
    /// Flagged rows left unexplained: over the budget, or no single feature moves the score.
    pub over_budget: usize,
    pub no_single_feature: usize,
}

/// Fills `shares` (`rows × features`) for the flagged rows of a scored batch, NaN for the rows
/// it does not explain (normal ones, and flagged ones over the budget); empty when no row is
/// flagged. `perturbed` and `perturbed_scores` are scratch space kept between batches.
#[allow(clippy::too_many_arguments)]
pub fn attribute(
    model: &Model,
    medians: &[f32],
    threshold: f32,
    inputs: &[f32],
    scores: &[f32],
    budget: &Budget,
    shares: &mut Vec<f32>,
    (perturbed, perturbed_scores): (&mut Vec<f32>, &mut Vec<f32>),
) -> Result<Outcome, ModelError> {
    shares.clear();
    let features = medians.len();
    let flagged: Vec<usize> = (0..scores.len())
        .filter(|&r| kappa_model::is_anomalous(scores[r], threshold))
        .collect();
    if flagged.is_empty() || features == 0 {
        return Ok(Outcome::default());
    }
    let afforded = budget.take(flagged.len() * features, features) / features;
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
    use kappa_model::{
        Backend, Mlp,
        example::{autoencoder_over, random_tensors, serialize_tensors},
    };

    use super::*;

    /// An autoencoder that reconstructs every row as zeros: a row's score is the mean of its
    /// squared values, so setting feature j to its median m_j lowers it by (x_j² − m_j²)/3.
    fn squares() -> Model {
        let manifest = autoencoder_over("squares", &["a", "b", "c"], &[2]);
        let zeros: Vec<_> = random_tensors(&manifest, 1)
            .into_iter()
            .map(|(name, shape, values)| (name, shape, vec![0.0; values.len()]))
            .collect();
        Model::Mlp(Mlp::load(&manifest, &serialize_tensors(&zeros), Backend::Native).unwrap())
    }

    /// Attributes `inputs` as one batch, every median 1 and the threshold 0.5.
    fn explain(model: &Model, inputs: &[f32], budget: &Budget) -> (Vec<f32>, Outcome) {
        let scores = model.score(inputs).unwrap();
        let (mut shares, mut scratch) = (Vec::new(), (Vec::new(), Vec::new()));
        let outcome = attribute(
            model,
            &[1.0; 3],
            0.5,
            inputs,
            &scores,
            budget,
            &mut shares,
            (&mut scratch.0, &mut scratch.1),
        )
        .unwrap();
        (shares, outcome)
    }

    #[test]
    fn each_feature_at_its_median_says_its_share_of_a_flagged_score() {
        let model = squares();
        let inputs = [3.0, 1.0, 0.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let (shares, outcome) = explain(&model, &inputs, &Budget::per_second(1000));
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
    fn flagged_rows_past_the_budget_go_unexplained_and_are_counted() {
        let model = squares();
        let inputs = [3.0, 1.0, 0.0, 2.0, 3.0, 1.0, 4.0, 0.0, 0.0];
        // Two rows' worth (3 features each) a second.
        let budget = Budget::per_second(6);
        let (shares, outcome) = explain(&model, &inputs, &budget);
        assert_eq!((outcome.explained, outcome.over_budget), (2, 1));
        assert!(shares[6..9].iter().all(|s| s.is_nan()));
        let (_, again) = explain(&model, &inputs, &budget);
        assert_eq!(
            (again.explained, again.over_budget),
            (0, 3),
            "the second's budget is spent"
        );
    }

    #[test]
    fn the_budget_grants_whole_rows_and_refills_with_time() {
        let budget = Budget::per_second(100);
        let start = Instant::now();
        assert_eq!(
            budget.take_at(1000, 18, start),
            90,
            "five whole rows of 18 of the 100 saved"
        );
        assert_eq!(budget.take_at(1000, 18, start), 0, "10 left: not a whole row");
        let later = start + Duration::from_millis(500);
        assert_eq!(
            budget.take_at(1000, 18, later),
            54,
            "50 refilled + 10 left = 60: three rows"
        );
        assert_eq!(
            budget.take_at(18, 18, later + Duration::from_secs(10)),
            18,
            "never more than asked"
        );
    }
}
