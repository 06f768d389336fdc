//! Kafka plumbing shared by the Kappa services: client configuration from the common flags
//! (Kappa's defaults, then the operator's properties), topic administration, time ranges and
//! samples of a topic. What the models topic means lives in `kappa-modellog`; W3C trace context
//! in record headers in `kappa_runtime::propagation`.

mod admin;
mod config;
mod consumer_errors;
mod context;
mod producer_errors;
pub mod range;
pub mod scan;

pub use admin::{ModelsTopicSettings, TopicError, ensure_models_topic, ensure_topic};
pub use config::{FETCH_QUEUE_BACKOFF, KafkaArgs, KafkaClients};
pub use consumer_errors::is_transient;
pub use context::ReaderContext;
pub use producer_errors::{ProducerFailed, failed_for_good};
