//! Streams a caller may hold at once. A watch holds a Kafka consumer for as long as its caller
//! keeps it open, so one caller (a principal, or without tokens a peer address) holding many
//! would take the streams every other caller needs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Open streams by caller, each at most `limit`.
#[derive(Debug)]
pub struct PerCaller {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One stream of a caller; released when dropped.
#[derive(Debug)]
pub struct Held {
    quota: Arc<PerCaller>,
    caller: String,
}

impl PerCaller {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// One more stream for `caller`, unless it holds `limit` already.
    pub fn take(self: &Arc<Self>, caller: &str) -> Option<Held> {
        let mut held = self.held.lock().expect("quota lock poisoned");
        let count = held.entry(caller.to_owned()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Held {
            quota: Arc::clone(self),
            caller: caller.to_owned(),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.quota.held.lock().expect("quota lock poisoned");
        if let Some(count) = held.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_holds_at_most_the_limit_and_gets_it_back_when_done() {
        let quota = PerCaller::new(2);
        let a1 = quota.take("a").unwrap();
        let _a2 = quota.take("a").unwrap();
        assert!(quota.take("a").is_none());
        assert!(quota.take("b").is_some(), "another caller is not held up");
        drop(a1);
        assert!(quota.take("a").is_some());
        assert!(
            quota.held.lock().unwrap().get("b").is_none(),
            "released streams leave nothing"
        );
    }
}
