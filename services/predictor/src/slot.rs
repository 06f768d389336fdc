//! The model being served, swapped atomically. Readers take an `Arc` to the current model at
//! admission and keep it for the life of their request, so a swap never changes a request's model.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwapOption;
use kappa_model::{Model, ModelManifest, admission::Admitted, schema::EventDecoder};

use crate::monitor::DriftCounts;

#[derive(Debug)]
pub struct LoadedModel {
    pub name: String,
    pub version: u64,
    pub version_string: String,
    pub manifest: ModelManifest,
    pub model: Model,
    pub threshold: f32,
    /// Column of each feature path in the model's input rows.
    pub feature_index: HashMap<String, usize>,
    pub feature_names: String,
    /// How this version reads an event (stream mode, typed `Predict` with a JSON event).
    pub decoder: EventDecoder,
    /// Live counts against the training reference, for versions whose lineage has one.
    pub drift: Option<DriftCounts>,
    /// Each feature's usual range in training (10th and 90th percentiles of the reference
    /// profile), for explanations; `None` for a feature without a reference.
    pub typical: Vec<Option<(f64, f64)>>,
    /// Each feature's training median, for explaining the flagged rows of a version that does
    /// not explain its scores itself; `None` without a reference profile.
    pub medians: Option<Vec<f32>>,
}

impl LoadedModel {
    /// An admitted version, with the schema its admission compiled.
    pub fn new(admitted: Admitted) -> Self {
        let Admitted {
            manifest,
            model,
            decoder,
        } = admitted;
        let feature_index = manifest
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        let feature_names = manifest
            .features
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let drift = Some(DriftCounts::for_manifest(&manifest));
        let typical = crate::explain::typical_ranges(&manifest);
        let medians = kappa_model::drift::reference_medians(&manifest);
        Self {
            name: manifest.name.clone(),
            version: manifest.version,
            version_string: manifest.version.to_string(),
            threshold: manifest.anomaly_threshold as f32,
            manifest,
            model,
            feature_index,
            feature_names,
            decoder,
            drift,
            typical,
            medians,
        }
    }

    pub fn n_features(&self) -> usize {
        self.model.n_features()
    }
}

/// An alias move that applies by event time: events before `until_ms` are scored by
/// `version` (kept warm as the previous model), later ones by the current model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutover {
    pub until_ms: i64,
    pub version: u64,
}

/// Swaps a slot remembers for its status (GetStatus): enough for a page's history, bounded.
const SWAPS_KEPT: usize = 32;

/// One swap of a slot's current model.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapRecord {
    /// 0 when nothing was served before.
    pub from_version: u64,
    pub to_version: u64,
    pub at_ms: i64,
    /// Back to the warm previous version, not loaded from the log.
    pub warm: bool,
    /// From the version's publish to serving it; `None` for a warm swap back (published long
    /// before) or a publish time unknown.
    pub publish_to_serving_ms: Option<i64>,
}

/// Current model, plus the one before it kept warm so an alias moved back swaps back at once
/// (and so events before a cutover are scored by the version before it).
#[derive(Debug, Default)]
pub struct ModelSlot {
    current: ArcSwapOption<LoadedModel>,
    previous: Mutex<Option<Arc<LoadedModel>>>,
    cutover: ArcSwapOption<Cutover>,
    last_error: Mutex<Option<String>>,
    swaps: Mutex<VecDeque<SwapRecord>>,
}

impl ModelSlot {
    pub fn current(&self) -> Option<Arc<LoadedModel>> {
        self.current.load_full()
    }

    /// The current or the warm previous model with this version.
    pub fn warm(&self, version: u64) -> Option<Arc<LoadedModel>> {
        if let Some(current) = self.current().filter(|m| m.version == version) {
            return Some(current);
        }
        self.previous
            .lock()
            .expect("slot lock poisoned")
            .clone()
            .filter(|m| m.version == version)
    }

    /// Makes `model` current; the model it replaces becomes the warm previous one.
    pub fn swap(&self, model: Arc<LoadedModel>) {
        self.cutover.store(None);
        let old = self.current.swap(Some(model));
        let mut previous = self.previous.lock().expect("slot lock poisoned");
        if let Some(old) = old {
            *previous = Some(old);
        }
    }

    /// Makes `model` current with a cutover: `earlier` (the cutover's version) scores the events
    /// before it. The earlier model and the cutover are in place before the new model is, so no
    /// event before the cutover is scored by the new one while the earlier version is warm.
    /// Without `earlier` (the version was refused) the cutover stays marked and the events
    /// before it fall back to the new model, counted.
    pub fn swap_at(&self, model: Arc<LoadedModel>, cutover: Cutover, earlier: Option<Arc<LoadedModel>>) {
        let mut previous = self.previous.lock().expect("slot lock poisoned");
        match earlier {
            Some(earlier) => *previous = Some(earlier),
            None => {
                if let Some(old) = self.current().filter(|old| !Arc::ptr_eq(old, &model)) {
                    *previous = Some(old);
                }
            }
        }
        self.cutover.store(Some(Arc::new(cutover)));
        self.current.store(Some(model));
    }

    /// Ends the cutover: the current model scores every event.
    pub fn clear_cutover(&self) {
        self.cutover.store(None);
    }

    /// The cutover in force, if the current model came with one.
    pub fn cutover(&self) -> Option<Cutover> {
        self.cutover.load().as_deref().copied()
    }

    pub fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("slot lock poisoned") = error;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("slot lock poisoned").clone()
    }

    /// Remembers a swap (the oldest is forgotten past [`SWAPS_KEPT`]).
    pub fn record_swap(&self, swap: SwapRecord) {
        let mut swaps = self.swaps.lock().expect("slot lock poisoned");
        if swaps.len() == SWAPS_KEPT {
            swaps.pop_front();
        }
        swaps.push_back(swap);
    }

    /// The latest swaps, oldest first.
    pub fn swaps(&self) -> Vec<SwapRecord> {
        self.swaps.lock().expect("slot lock poisoned").iter().cloned().collect()
    }
}
