//! Kafka plumbing shared by the Kappa services: client configuration from the common flags,
//! topic administration (the compacted models topic), and the key scheme, record decoding and
//! chunk reading of that topic.

mod admin;
pub mod chunks;
mod config;
mod context;
pub mod keys;
pub mod range;
pub mod records;
pub mod trace_headers;

pub use admin::{ModelsTopicSettings, TopicError, ensure_models_topic};
pub use config::{KafkaArgs, KafkaClients};
pub use context::ReaderContext;
pub use keys::ModelKey;
pub use trace_headers::trace_headers;
