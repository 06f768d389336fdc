//! What every Kappa service does the same way: logs through `tracing` (human-readable or JSON),
//! a Prometheus `/metrics` endpoint, and the shutdown signal.

mod graceful;
mod grpc_code;
mod logging;
mod metrics_server;
mod service_main;
mod shutdown;

pub use graceful::serve_gracefully;
pub use grpc_code::grpc_code_name;
pub use logging::{LogArgs, LogFormat, init_logging};
pub use metrics_server::serve_metrics;
pub use service_main::{ServiceStart, service_main};
pub use shutdown::shutdown_signal;
