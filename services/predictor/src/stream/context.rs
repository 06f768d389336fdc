//! The sensor consumer's rebalance handling: at-least-once commits what is done before its
//! partitions go; both modes learn which partitions went, so events read from them and not yet
//! finished are not committed by this replica (their new owner scores them).

use std::sync::Mutex;

use rdkafka::{
    ClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::{KafkaError, RDKafkaErrorCode},
};

#[derive(Debug)]
pub struct StreamContext {
    commit_on_revoke: bool,
    revoked: Mutex<Vec<(String, i32)>>,
}

impl StreamContext {
    /// `commit_on_revoke`: commit the stored offsets before partitions are revoked
    /// (at-least-once); exactly-once commits offsets only inside its transactions.
    pub fn new(commit_on_revoke: bool) -> Self {
        Self {
            commit_on_revoke,
            revoked: Mutex::default(),
        }
    }

    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().expect("revoked lock poisoned"))
    }
}

impl ClientContext for StreamContext {}

impl ConsumerContext for StreamContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        let revoked: Vec<(String, i32)> = partitions
            .elements()
            .iter()
            .map(|p| (p.topic().to_owned(), p.partition()))
            .collect();
        tracing::info!(partitions = ?revoked, "sensor partitions revoked");
        if self.commit_on_revoke {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "committing before the rebalance failed; the next owner may score some events again")
                }
            }
        }
        self.revoked.lock().expect("revoked lock poisoned").extend(revoked);
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned: Vec<i32> = partitions.elements().iter().map(|p| p.partition()).collect();
            tracing::info!(partitions = ?assigned, "sensor partitions assigned");
        }
    }
}
