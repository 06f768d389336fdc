//! kappa-registry: a versioned model store whose only storage is a compacted Kafka topic.
//!
//! The registry is a view of the log. A follower consumes the models topic (`read_committed`)
//! and is the only thing that changes the in-memory [`catalog::Catalog`]; writes go to Kafka in
//! one transaction and are answered once the follower has applied them, so every answer reflects
//! what a restarted registry, or any predictor reading the topic, would see.

mod access;
pub mod catalog;
pub mod config;
mod error;
mod metrics;
mod publish;
mod quota;
mod reader;
mod requests;
mod server;
mod service;
mod writer;

pub use config::RegistryConfig;
pub use error::RegistryError;
pub use server::Registry;
