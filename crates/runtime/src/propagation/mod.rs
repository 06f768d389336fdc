//! W3C trace context (`traceparent`, `tracestate`) in and out of any carrier: gRPC metadata,
//! Kafka headers, the `trace_context` map of a model record.

use std::collections::BTreeMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::TraceContextExt as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub mod kafka_headers;

/// The context a carrier holds; an empty context (a new root) when it holds none.
pub fn extract(get: impl Fn(&str) -> Option<String>) -> Context {
    // Extractor lends out borrowed strings, so the two W3C fields are read out first.
    let found = Found(
        ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|key| get(key).map(|v| (key, v)))
            .collect(),
    );
    // From an empty context, not the thread's current one: a carrier without trace context
    // means a new root wherever it is read (e.g. inside another operation's span).
    TraceContextPropagator::new().extract_with_context(&Context::new(), &found)
}

struct Found(Vec<(&'static str, String)>);

impl Extractor for Found {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// Writes `cx` into a carrier through `set(key, value)`; nothing when it has no valid span.
pub fn inject(cx: &Context, mut set: impl FnMut(&'static str, String)) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    struct Setter<'a, F>(&'a mut F);
    impl<F: FnMut(&'static str, String)> Injector for Setter<'_, F> {
        fn set(&mut self, key: &str, value: String) {
            match key {
                "traceparent" => (self.0)("traceparent", value),
                "tracestate" if !value.is_empty() => (self.0)("tracestate", value),
                _ => {}
            }
        }
    }
    TraceContextPropagator::new().inject_context(cx, &mut Setter(&mut set));
}

/// The context of a `tracing` span as a string map (stored in model records).
pub fn span_context_map(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    inject(&span.context(), |k, v| {
        map.insert(k.to_owned(), v);
    });
    map
}

/// The context stored in a string map.
pub fn context_from_map(map: &BTreeMap<String, String>) -> Context {
    extract(|key| map.get(key).cloned())
}

/// The trace context of gRPC metadata / HTTP headers.
pub fn context_from_http(headers: &http::HeaderMap) -> Context {
    extract(|key| headers.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned))
}

/// Adds the trace context of `cx` to gRPC metadata / HTTP headers.
pub fn inject_http(cx: &Context, headers: &mut http::HeaderMap) {
    inject(cx, |key, value| {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert(key, value);
        }
    });
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips_through_every_carrier() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        let cx = context_from_http(&headers);
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());

        let mut out = http::HeaderMap::new();
        inject_http(&cx, &mut out);
        assert_eq!(out.get("traceparent").unwrap(), PARENT);
        assert!(out.get("tracestate").is_none(), "an empty tracestate is not sent");

        let mut map = BTreeMap::new();
        inject(&cx, |k, v| {
            map.insert(k.to_owned(), v);
        });
        assert_eq!(context_from_map(&map).span().span_context(), sc);
    }

    #[test]
    fn missing_or_malformed_context_starts_a_new_trace() {
        assert!(!context_from_map(&BTreeMap::new()).span().span_context().is_valid());
        let garbage = BTreeMap::from([("traceparent".to_owned(), "00-zz-yy-01".to_owned())]);
        assert!(!context_from_map(&garbage).span().span_context().is_valid());
        let mut headers = http::HeaderMap::new();
        inject_http(&Context::new(), &mut headers);
        assert!(headers.is_empty(), "no span, nothing injected");
        let with_state = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        ));
        inject_http(&with_state, &mut headers);
        assert_eq!(headers.get("tracestate").unwrap(), "vendor=x");
    }
}
