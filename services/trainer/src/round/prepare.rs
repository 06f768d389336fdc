//! Step 2: the rows split into train, validation and hold-out; gross outliers screened from
//! what the model is fitted on; the scaling fitted on the training rows.

use std::collections::BTreeMap;

use kappa_api::{
    model::{Distribution, PartitionRange},
    trainer::TrainingSpec,
};
use kappa_model::drift;

use kappa_dataset::{
    prepare::{Screen, Splits, fit_stats, scaled, split},
    rows::{RangeQuery, Row},
};

use super::read::Read;
use crate::job::{Stop, fail};

/// The training and validation rows, scaled and flattened: training consumes them.
pub struct Scaled {
    pub train: Vec<f32>,
    pub validation: Vec<f32>,
}

/// The rows a round trains and evaluates on, and what was set aside and why.
pub struct Prepared {
    pub query: RangeQuery,
    pub partitions: Vec<PartitionRange>,
    pub read_duration: std::time::Duration,
    /// Usable events in the range (more than the splits hold past `--max-rows`).
    pub usable: u64,
    pub splits: Splits,
    /// Rows set aside, by reason (the decoder's, labelled anomalies, outliers per feature).
    pub skipped: BTreeMap<String, u64>,
    pub screen: Screen,
    /// Per feature: the median the rows are centred on, and the scale they are divided by.
    pub offset: Vec<f64>,
    pub scale: Vec<f64>,
    /// Each feature's distribution over every usable row of the range (anomalies and outliers
    /// too): what live data is compared with.
    pub reference: Vec<Distribution>,
    /// Past `--max-rows` the splits came from a uniform sample, and training re-reads the
    /// range from Kafka every epoch.
    pub streamed: bool,
}

pub fn prepare(spec: &TrainingSpec, Read { query, data }: Read) -> Result<(Prepared, Scaled), Stop> {
    let features = spec.features.len();
    // Past the memory cap, `rows` is a uniform sample of the range's usable events.
    let streamed = data.usable > data.rows.len() as u64;
    let reference = feature_profiles(spec, &data.rows);
    let mut splits = split(data.rows, spec.validation_split, spec.holdout_split, spec.seed);
    let mut skipped = data.skipped;
    if splits.anomalies_excluded > 0 {
        skipped.insert(super::train::ANOMALIES_SKIPPED.to_owned(), splits.anomalies_excluded);
    }
    // Gross outliers are screened from the rows the model is fitted on (never from the hold-out,
    // where catching them is the model's job), with statistics of those same rows.
    let fitting: Vec<&Vec<f32>> = splits.train.iter().chain(&splits.validation).collect();
    let screen = Screen::fit(&fit_stats(&fitting, features), crate::schema::screening_z(spec));
    drop(fitting);
    let mut outliers = vec![0_u64; features];
    screen.retain(&mut splits.train, &mut outliers);
    screen.retain(&mut splits.validation, &mut outliers);
    for (feature, count) in spec.features.iter().zip(&outliers).filter(|(_, c)| **c > 0) {
        skipped.insert(format!("outlier:{}", feature.path), *count);
    }
    if splits.train.len() < 2 || splits.validation.is_empty() {
        return Err(fail(format!(
            "only {} usable normal events in the range ({} read, skipped {:?}); widen the range or check the schema",
            splits.train.len() + splits.validation.len(),
            data.read,
            skipped
        )));
    }
    let stats = fit_stats(&splits.train, features);
    let offset: Vec<f64> = stats.iter().map(|s| s.median).collect();
    let scale: Vec<f64> = stats.iter().map(|s| s.scale()).collect();
    let rows = Scaled {
        train: scaled(&splits.train, &offset, &scale),
        validation: scaled(&splits.validation, &offset, &scale),
    };
    let prepared = Prepared {
        streamed,
        query,
        partitions: data.partitions,
        read_duration: data.read_duration,
        usable: data.usable,
        splits,
        skipped,
        screen,
        offset,
        scale,
        reference,
    };
    Ok((prepared, rows))
}

/// Each feature's distribution over the rows of the range, in the spec's feature order.
fn feature_profiles(spec: &TrainingSpec, rows: &[Row]) -> Vec<Distribution> {
    spec.features
        .iter()
        .enumerate()
        .map(|(i, feature)| {
            drift::of(&feature.path, rows.iter().map(|row| f64::from(row.values[i]))).unwrap_or_else(|| Distribution {
                name: feature.path.clone(),
                ..Distribution::default()
            })
        })
        .collect()
}
