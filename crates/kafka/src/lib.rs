//! Kafka plumbing shared by the Kappa services: client configuration from the common flags
//! (Kappa's defaults, then the operator's properties), topic administration, time ranges and
//! samples of a topic, and W3C trace context in record headers. What the models topic means
//! lives in `kappa-modellog`.

mod admin;
mod config;
mod consumer_errors;
mod context;
mod producer_errors;
pub mod range;
pub mod scan;
pub mod trace_headers;

pub use admin::{ModelsTopicSettings, TopicError, ensure_models_topic, ensure_topic};
pub use config::{FETCH_QUEUE_BACKOFF, KafkaArgs, KafkaClients};
pub use consumer_errors::is_transient;
pub use context::ReaderContext;
pub use producer_errors::{ProducerFailed, failed_for_good};
pub use trace_headers::trace_headers;
