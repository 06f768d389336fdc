//! Head sampling of inference requests at the server's edge. An untraced request that the
//! sampler would drop anyway gets no span at all: creating one and letting the SDK drop it costs
//! the hot path measurable throughput (see the README's benchmarks). Requests that carry a
//! `traceparent`, and every other call, always get their span and the SDK's decision.

use std::sync::atomic::{AtomicU64, Ordering};

/// Inference requests: the hot path.
pub(crate) const INFERENCE_PREFIXES: [&str; 2] = ["kappa.predictor.v1.Predictor/", "inference.GRPCInferenceService/"];

/// One in this many untraced inference requests gets a span; 1 keeps them all (the SDK then
/// decides, as when `OTEL_TRACES_SAMPLER` is set).
static EVERY_NTH: AtomicU64 = AtomicU64::new(1);
static SEEN: AtomicU64 = AtomicU64::new(0);

/// Sets the share of untraced inference requests that start a trace.
pub(crate) fn set_request_ratio(ratio: f64) {
    let every = if ratio <= 0.0 {
        u64::MAX
    } else {
        (1.0 / ratio.min(1.0)).round() as u64
    };
    EVERY_NTH.store(every.max(1), Ordering::Relaxed);
}

/// Whether a call to `path` (with these headers) should get a span.
pub(crate) fn starts_span(path: &str, headers: &http::HeaderMap) -> bool {
    let every = EVERY_NTH.load(Ordering::Relaxed);
    if every == 1 || headers.contains_key("traceparent") {
        return true;
    }
    let path = path.trim_start_matches('/');
    if !INFERENCE_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return true;
    }
    SEEN.fetch_add(1, Ordering::Relaxed).is_multiple_of(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untraced_inference_is_sampled_at_the_ratio_and_everything_else_always() {
        let traced = {
            let mut h = http::HeaderMap::new();
            h.insert(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            h
        };
        let none = http::HeaderMap::new();
        set_request_ratio(0.01);
        let started = (0..1000)
            .filter(|_| starts_span("/kappa.predictor.v1.Predictor/Predict", &none))
            .count();
        assert_eq!(started, 10);
        assert!(starts_span("/inference.GRPCInferenceService/ModelInfer", &traced));
        assert!(starts_span("/kappa.registry.v1.Registry/Publish", &none));
        set_request_ratio(0.0);
        assert!(!(0..1000).any(|_| starts_span("/kappa.predictor.v1.Predictor/Predict", &none)));
        set_request_ratio(1.0);
        assert!(starts_span("/kappa.predictor.v1.Predictor/Predict", &none));
    }
}
