//! Producers that cannot go on. librdkafka's idempotent producer gives up for good when it can no
//! longer vouch for its sequence numbers (a broker that lost or rewound its state): every later
//! send fails, so a loop that retries sends would stall forever. Only a new producer goes on.

use rdkafka::{
    ClientContext,
    client::Client,
    error::{KafkaError, RDKafkaErrorCode},
};
use thiserror::Error;

/// Why a producer stopped for good, as librdkafka reports it.
#[derive(Debug, Clone, Error)]
#[error("the Kafka producer failed for good ({code:?}: {reason})")]
pub struct ProducerFailed {
    pub code: RDKafkaErrorCode,
    pub reason: String,
}

/// `Some` once `client`'s producer has failed for good; ask after a send fails, before retrying.
pub fn failed_for_good<C: ClientContext>(client: &Client<C>) -> Option<ProducerFailed> {
    client
        .fatal_error()
        .map(|(code, reason)| ProducerFailed { code, reason })
}

/// Whether `error` refuses one record for good: it is too large for the topic or invalid, and
/// sending it again would be refused again. (The producer itself goes on.)
pub fn refused_for_good(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}
