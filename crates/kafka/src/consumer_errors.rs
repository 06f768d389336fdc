//! Which consumer errors a reader waits out. librdkafka reports a lost connection to one broker
//! (`BrokerTransportFailure`, `AllBrokersDown`, …) through `poll` and reconnects by itself, and
//! a partition's leadership moves to another broker of a cluster; a reader that failed on those
//! would fail whenever any broker restarts. Authorization and unknown topics do not heal.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// True for errors a reader should wait out (bounded by its own stall limit).
pub fn is_transient(error: &KafkaError) -> bool {
    match error {
        KafkaError::MessageConsumption(code) | KafkaError::Global(code) => !matches!(
            code,
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_broker_is_waited_out_and_a_refusal_is_not() {
        assert!(is_transient(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(is_transient(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!is_transient(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!is_transient(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
        assert!(
            !is_transient(&KafkaError::PartitionEOF(0)),
            "end of partition is not an error to wait out"
        );
    }
}
