//! Features for a training spec when none are named: inferred from a sample of the range.

use kappa_api::trainer::FeatureSpec;
use kappa_model::schema::{Profile, infer_features};

/// The features a spec would train on, and why each other field was left out.
pub struct Inferred {
    pub features: Vec<FeatureSpec>,
    pub notes: Vec<String>,
}

/// Every field numeric in at least half of the sampled events, in path order, except the label,
/// the time field and `exclude`, as feature specs without validity rules (the trainer and
/// `kappa data inspect` infer the same).
pub fn features(profile: &Profile, label: &str, time_field: &str, exclude: &[String]) -> Inferred {
    let inferred = infer_features(profile, label, time_field, exclude);
    Inferred {
        features: inferred
            .features
            .into_iter()
            .map(|path| FeatureSpec {
                path,
                min: None,
                max: None,
            })
            .collect(),
        notes: inferred.notes,
    }
}
