//! W3C trace context in Kafka record headers (`traceparent`, `tracestate`), the convention
//! OpenTelemetry's messaging instrumentation uses, so Kappa's traces continue through any
//! producer or consumer that follows it.

use std::collections::BTreeMap;

use super as propagation;
use opentelemetry::Context;
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Headers holding the context of a string map (empty when the map holds none).
pub fn trace_headers(trace: &BTreeMap<String, String>) -> OwnedHeaders {
    trace
        .iter()
        .filter(|(key, _)| matches!(key.as_str(), "traceparent" | "tracestate"))
        .fold(OwnedHeaders::new_with_capacity(2), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        })
}

/// Headers holding `cx`, added to `headers`.
pub fn inject(cx: &Context, mut headers: OwnedHeaders) -> OwnedHeaders {
    propagation::inject(cx, |key, value| {
        headers = std::mem::replace(&mut headers, OwnedHeaders::new()).insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    });
    headers
}

/// The trace context a record's headers carry, as a string map.
pub fn trace_map(headers: Option<&impl Headers>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if let Some(headers) = headers {
        for header in headers.iter() {
            if matches!(header.key, "traceparent" | "tracestate")
                && let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok())
            {
                map.insert(header.key.to_owned(), value.to_owned());
            }
        }
    }
    map
}

/// The trace context a record's headers carry; empty (a new trace) when they carry none.
pub fn extract(headers: Option<&impl Headers>) -> Context {
    propagation::context_from_map(&trace_map(headers))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;

    use super::*;

    #[test]
    fn context_round_trips_through_record_headers() {
        let map = BTreeMap::from([
            (
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            ),
            ("other".to_owned(), "ignored".to_owned()),
        ]);
        let headers = trace_headers(&map);
        assert_eq!(headers.count(), 1, "only W3C fields become headers");
        let cx = extract(Some(&headers));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let again = inject(
            &cx,
            OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some("application/json"),
            }),
        );
        assert_eq!(again.count(), 2);
        assert_eq!(
            trace_map(Some(&again)),
            trace_headers(&map).iter().fold(BTreeMap::new(), |mut m, h| {
                m.insert(h.key.to_owned(), String::from_utf8(h.value.unwrap().to_vec()).unwrap());
                m
            })
        );
        assert!(trace_map(None::<&OwnedHeaders>).is_empty());
    }
}
