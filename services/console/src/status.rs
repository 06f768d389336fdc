//! How each followed topic is doing, for the pages' status line and the metrics.

use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicState {
    pub topic: String,
    /// What keeps the console from reading it, if anything.
    pub problem: Option<String>,
    pub records: u64,
    pub last_offset: i64,
}

#[derive(Debug)]
pub struct TopicStatus(Mutex<TopicState>);

impl TopicStatus {
    pub fn new(topic: &str) -> Self {
        Self(Mutex::new(TopicState {
            topic: topic.to_owned(),
            problem: Some("not read yet".to_owned()),
            records: 0,
            last_offset: -1,
        }))
    }

    pub fn following(&self) {
        self.0.lock().expect("status lock").problem = None;
    }

    pub fn problem(&self, problem: String) {
        self.0.lock().expect("status lock").problem = Some(problem);
    }

    pub fn record(&self, offset: i64) {
        let mut state = self.0.lock().expect("status lock");
        state.records += 1;
        state.last_offset = offset;
    }

    pub fn get(&self) -> TopicState {
        self.0.lock().expect("status lock").clone()
    }
}
