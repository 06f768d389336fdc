//! The sensor consumer's rebalance handling. Committing before partitions go needs nothing
//! here: with `enable.auto.commit` (at-least-once), librdkafka commits the stored offsets of
//! revoked partitions itself as it removes them, off the async workers. What both modes need is
//! to learn which partitions went, so events read from them and not yet finished are not
//! committed by this replica (their new owner scores them).

use std::sync::Mutex;

use rdkafka::{
    ClientContext,
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
};

#[derive(Debug, Default)]
pub struct StreamContext {
    revoked: Mutex<Vec<(String, i32)>>,
}

impl StreamContext {
    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().expect("revoked lock poisoned"))
    }
}

impl ClientContext for StreamContext {}

impl ConsumerContext for StreamContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        let revoked: Vec<(String, i32)> = partitions
            .elements()
            .iter()
            .map(|p| (p.topic().to_owned(), p.partition()))
            .collect();
        tracing::info!(partitions = ?revoked, "sensor partitions revoked");
        self.revoked.lock().expect("revoked lock poisoned").extend(revoked);
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned: Vec<i32> = partitions.elements().iter().map(|p| p.partition()).collect();
            tracing::info!(partitions = ?assigned, "sensor partitions assigned");
        }
    }
}
