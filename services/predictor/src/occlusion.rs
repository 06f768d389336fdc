//! The predictor's budget for explanations by median replacement
//! ([`kappa_model::median_replacement`]): a batch's flagged rows are explained after it is
//! scored, within a budget of rows a second shared by the inference threads
//! (`--explain-budget-rows`). Flagged rows past the budget go unexplained, and are counted.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

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

    /// How many of `flagged` rows, each costing one scored row per feature of `features`, may
    /// be explained now (taken from the budget).
    pub fn afford(&self, flagged: usize, features: usize) -> usize {
        self.take_at(flagged * features, features, Instant::now()) / features.max(1)
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

#[cfg(test)]
mod tests {
    use kappa_model::{
        Model,
        example::zero_autoencoder,
        median_replacement::{Outcome, attribute},
    };

    use super::*;

    /// A row's score is the mean of its squared values, so setting feature j to its median m_j
    /// lowers it by (x_j² − m_j²)/3.
    fn squares() -> Model {
        zero_autoencoder(&["a", "b", "c"])
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
            |flagged| budget.afford(flagged, 3),
            &mut shares,
            (&mut scratch.0, &mut scratch.1),
        )
        .unwrap();
        (shares, outcome)
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
