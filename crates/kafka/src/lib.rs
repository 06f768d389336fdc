//! Kafka plumbing shared by the Kappa services: client configuration from the common flags
//! (Kappa's defaults, then the operator's properties), topic administration, transactions'
//! error kinds. Plumbing only: reading a time range as data is `kappa-dataset`'s, what the
//! models topic means `kappa-modellog`'s, W3C trace context in record headers
//! `kappa_runtime::propagation`'s.

mod admin;
mod config;
mod consumer_errors;
mod context;
mod earliest_local;
mod producer_errors;
mod tiering;

pub use admin::{ModelsTopicSettings, TopicError, ensure_models_topic, ensure_topic};
pub use config::{COMPRESSION, FETCH_QUEUE_BACKOFF, KafkaArgs, KafkaClients};
pub use consumer_errors::is_transient;
pub use context::ReaderContext;
pub use earliest_local::{EarliestLocalError, earliest_local_offsets};
pub use producer_errors::{ProducerFailed, failed_for_good, refused_for_good};
pub use tiering::{Retention, TieringArgs, retention};
