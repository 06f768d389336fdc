//! Tracing: the test Jaeger and W3C trace context.

/// The local Jaeger's query API (host:port) that `make test` starts.
pub fn jaeger_api() -> String {
    std::env::var("KAPPA_TEST_JAEGER_API").unwrap_or_else(|_| "127.0.0.1:16686".to_owned())
}

/// Environment that makes a service export its spans to the test Jaeger, promptly.
pub fn tracing_env() -> Vec<(String, String)> {
    let otlp = std::env::var("KAPPA_TEST_OTLP_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4317".to_owned());
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), otlp),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        // A batch whose export times out is dropped: under the whole suite's load the local
        // Jaeger can take longer than the default 10 s to take one.
        ("OTEL_EXPORTER_OTLP_TIMEOUT".to_owned(), "30000".to_owned()),
    ]
}

/// A fresh W3C `traceparent` (sampled) and its trace and span ids, as a client would send.
pub fn new_traceparent() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}
