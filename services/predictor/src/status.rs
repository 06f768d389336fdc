//! `GetStatus`: what a replica serves and how it came to, read from the slots and readiness.

use kappa_api::predictor::{PredictorStatus, Swap};

use crate::{serving::Serving, slot::SwapRecord};

pub fn status(serving: &Serving) -> PredictorStatus {
    let problems = serving.readiness.problems();
    let cutover = serving.slot.cutover();
    PredictorStatus {
        model_name: serving.model_name.clone(),
        follows: serving.follows.clone(),
        serving_version: serving.slot.current().map_or(0, |m| m.version),
        ready: serving.readiness.is_ready(),
        problems,
        shadow_version: serving
            .shadow
            .as_ref()
            .and_then(|s| s.slot.current())
            .map_or(0, |m| m.version),
        swaps: serving.slot.swaps().into_iter().map(swap).collect(),
        instance: serving.instance.clone(),
        last_error: serving.slot.last_error().unwrap_or_default(),
        cutover_until_ms: cutover.map_or(0, |c| c.until_ms),
        cutover_version: cutover.map_or(0, |c| c.version),
    }
}

fn swap(record: SwapRecord) -> Swap {
    Swap {
        from_version: record.from_version,
        to_version: record.to_version,
        at_ms: record.at_ms,
        publish_to_serving_ms: record.publish_to_serving_ms.unwrap_or(0) as f64,
        kind: if record.warm { "warm" } else { "loaded" }.to_owned(),
    }
}
