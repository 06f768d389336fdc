//! What every Kappa service does the same way. [`host`] runs a [`Service`]: flags, Kafka clients,
//! TLS and tokens, limits, health and readiness, reflection, `/metrics`, serving and draining.
//! Beside it: logs through `tracing` (human-readable or JSON, with trace ids), OpenTelemetry
//! spans over OTLP and W3C context propagation (gRPC metadata, Kafka headers), and the traced,
//! authenticated gRPC clients.

pub mod args;
pub mod auth;
mod background;
pub mod connection;
mod deadline;
mod graceful;
mod grpc_code;
mod grpc_trace;
mod host;
mod layer;
mod logging;
mod metrics_server;
mod otel;
pub mod propagation;
mod readiness;
pub mod reload;
mod sampling;
mod security;
mod shutdown;
pub mod tls;
pub mod web;

pub use background::run_in_background;
use graceful::{KappaRouter, kappa_server, serve_gracefully};
pub use grpc_code::grpc_code_name;
pub use grpc_trace::{
    GrpcClientTracing, GrpcServerTracing, TracedChannel, TracedClient, TracedServer, traced, traced_with_token,
};
pub use host::{Host, Routes, Running, ServerArgs, Service, host, parse_config, serve};
pub use logging::{LogArgs, LogFormat, Telemetry, init_telemetry};
use metrics_server::serve_metrics;
pub use otel::OtelSettings;
pub use readiness::{Readiness, panic_message};
pub use security::{ServerSecurity, ServerSecurityArgs};
pub use shutdown::shutdown_signal;

/// grpc.health.v1 name that reports SERVING for as long as the process runs and serves gRPC:
/// what a liveness probe asks, while readiness asks the service's own name (NOT_SERVING during
/// a replay, before the first model, or while draining).
pub const LIVENESS_SERVICE: &str = "liveness";

/// The largest HTTP/2 frame a Kappa server or client accepts (it tells its peer so in its
/// SETTINGS). HTTP/2's default of 16 KiB cuts a model's 1 MiB weight chunk into 64 frames, each
/// with its own header, flow-control update and wake-up: on loopback that alone held a bare
/// tonic GetModel to two thirds of its speed with 1 MiB frames. Small unary calls are one frame
/// either way.
pub const HTTP2_MAX_FRAME_SIZE: u32 = 1 << 20;

/// How many bytes one HTTP/2 stream may have in flight before its handler reads them (the
/// initial window a Kappa server or client grants).
pub const HTTP2_STREAM_WINDOW: u32 = 4 << 20;

/// The same for a whole connection: four streams' worth. hyper's server default gives the
/// connection the window of a single stream, so one handler that stops reading for a while (a
/// publish writing its chunk to Kafka) holds every byte its connection may carry, and the other
/// uploads on that channel, starved, are cut off as idle (`--publish-idle-seconds`).
pub const HTTP2_CONNECTION_WINDOW: u32 = 4 * HTTP2_STREAM_WINDOW;

/// Now, in milliseconds since the Unix epoch: the clock of event times, publish times and
/// windows in Kappa's records (0 for a clock set before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// This machine's (or pod's) host name, to tell replicas apart.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".to_owned())
}
