//! kappa-trainer: trains autoencoder anomaly detectors on a time range of a Kafka topic (Kafka
//! as the data lake), evaluates them on labelled hold-out data, publishes them to kappa-registry
//! with full lineage, and moves an alias only when the new model is not worse than the holder.

mod access;
mod backtest;
pub mod config;
mod error;
mod inspect;
mod job;
mod metrics;
mod monitor;
mod range;
mod round;
mod schema;
mod server;
mod service;
mod spec;
mod store;

pub use config::TrainerConfig;
pub use server::Trainer;
