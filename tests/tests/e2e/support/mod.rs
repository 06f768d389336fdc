//! The end-to-end tests' harness, by topic. Tests `use crate::support::*` and get all of it.

mod fixtures;
mod grpc;
mod kafka;
mod metrics;
mod processes;
mod security;
mod services;
mod tracing;

pub use fixtures::*;
pub use grpc::*;
pub use kafka::*;
pub use metrics::*;
pub use processes::*;
pub use security::*;
pub use services::*;
pub use tracing::*;
