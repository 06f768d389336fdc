//! Kafka plumbing shared by the Kappa services: client configuration from the common flags,
//! topic administration (the compacted models topic), and the key scheme of that topic.

mod admin;
mod config;
mod context;
pub mod keys;

pub use admin::{ModelsTopicSettings, TopicError, ensure_models_topic};
pub use config::KafkaArgs;
pub use context::ReaderContext;
pub use keys::ModelKey;
