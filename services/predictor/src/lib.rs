//! kappa-predictor: serves one model (a name followed through an alias or `latest`) over gRPC,
//! reading versions straight from the models topic and swapping them in without failing a request.
//!
//! Data path: gRPC handlers validate and admit requests, pinning each to the model that is current
//! at admission; a bounded queue feeds dedicated inference threads that batch requests pinned to the
//! same model and run the forward pass; answers go back on oneshot channels. The async workers
//! never run inference.

mod access;
mod batcher;
pub mod config;
mod error;
mod explain;
mod faults;
mod follower;
mod loader;
mod metrics;
mod monitor;
mod occlusion;
mod oip;
mod server;
mod serving;
mod shadow;
mod slot;
mod status;
mod stream;
mod typed;

pub use config::PredictorConfig;
pub use server::Predictor;
