//! The Models pages' state: every model's versions (manifests with lineage and metrics), its
//! aliases and their history, followed through the registry's WatchModels from the start of
//! the log. Versions kept per model and models kept are bounded.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use kappa_api::registry::{ModelVersion, WatchModelsRequest, WatchModelsResponse, watch_models_response::Event};
use kappa_client::{ClientSecurity, Registry};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const VERSIONS_KEPT: usize = 200;
const HISTORY_KEPT: usize = 200;
const MODELS_KEPT: usize = 1000;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One change in a model's log, as the Models page lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub position: i64,
    /// `published`, `deleted`, `alias_set` or `alias_deleted`.
    pub kind: &'static str,
    pub version: u64,
    pub alias: String,
    /// When it was recorded (0 when the log does not say) and by whom (empty without tokens).
    pub at_ms: i64,
    pub by: String,
    /// For an alias moved by event time: events before this time keep the earlier version.
    pub cutover_from_ms: i64,
}

#[derive(Debug, Default)]
struct Model {
    versions: BTreeMap<u64, ModelVersion>,
    aliases: BTreeMap<String, u64>,
    history: VecDeque<Change>,
    /// The model's page as JSON, made on the first request after a change: versions carry
    /// their manifests and reference profiles, too much to serialise on every page load.
    page: Option<Bytes>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelListing {
    pub name: String,
    pub latest_version: u64,
    pub versions: usize,
    pub aliases: BTreeMap<String, u64>,
}

/// A model's page: its versions newest first (as the registry's JSON), aliases and history.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelPage<'a> {
    name: &'a str,
    aliases: &'a BTreeMap<String, u64>,
    versions: Vec<&'a ModelVersion>,
    history: Vec<&'a Change>,
}

#[derive(Debug)]
pub struct Models {
    models: Mutex<BTreeMap<String, Model>>,
    problem: Mutex<Option<String>>,
    /// Bumped on every change, so open pages refresh without a reload.
    changed: watch::Sender<u64>,
}

impl Models {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            models: Mutex::default(),
            problem: Mutex::new(Some("not connected to the registry yet".into())),
            changed: watch::channel(0).0,
        })
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn problem(&self) -> Option<String> {
        self.problem.lock().expect("models lock").clone()
    }

    pub fn list(&self) -> Vec<ModelListing> {
        let models = self.models.lock().expect("models lock");
        models
            .iter()
            .map(|(name, m)| ModelListing {
                name: name.clone(),
                latest_version: m.versions.keys().next_back().copied().unwrap_or(0),
                versions: m.versions.len(),
                aliases: m.aliases.clone(),
            })
            .collect()
    }

    /// The model's page as JSON (see [`ModelPage`]), serialised once per change of the model.
    pub fn page(&self, name: &str) -> Option<Bytes> {
        let mut models = self.models.lock().expect("models lock");
        let model = models.get_mut(name)?;
        if model.page.is_none() {
            let page = ModelPage {
                name,
                aliases: &model.aliases,
                versions: model.versions.values().rev().collect(),
                history: model.history.iter().rev().collect(),
            };
            model.page = Some(Bytes::from(serde_json::to_vec(&page).expect("a model page serialises")));
        }
        model.page.clone()
    }

    /// The anomaly threshold of a version the console knows.
    pub fn threshold(&self, name: &str, version: u64) -> Option<f64> {
        let models = self.models.lock().expect("models lock");
        let manifest = models.get(name)?.versions.get(&version)?.manifest.as_ref()?;
        Some(manifest.anomaly_threshold)
    }

    fn apply(&self, response: WatchModelsResponse) {
        let Some(event) = response.event else { return };
        let position = response.position;
        let mut models = self.models.lock().expect("models lock");
        let name = match &event {
            Event::Published(p) => p.version.as_ref().map(|v| v.name.clone()),
            Event::Deleted(d) => Some(d.name.clone()),
            Event::AliasSet(a) => Some(a.name.clone()),
            Event::AliasDeleted(a) => Some(a.name.clone()),
        };
        let Some(name) = name else { return };
        if !models.contains_key(&name) && models.len() >= MODELS_KEPT {
            tracing::warn!(
                model = name,
                "the console keeps {MODELS_KEPT} models; this one is not shown"
            );
            return;
        }
        let model = models.entry(name).or_default();
        let change = match event {
            Event::Published(published) => {
                let Some(version) = published.version else { return };
                let change = Change {
                    position,
                    kind: "published",
                    version: version.version,
                    alias: String::new(),
                    at_ms: version.created_at_ms,
                    by: version.published_by.clone(),
                    cutover_from_ms: 0,
                };
                model.versions.insert(version.version, version);
                while model.versions.len() > VERSIONS_KEPT {
                    model.versions.pop_first();
                }
                change
            }
            Event::Deleted(deleted) => {
                model.versions.remove(&deleted.version);
                Change {
                    position,
                    kind: "deleted",
                    version: deleted.version,
                    alias: String::new(),
                    at_ms: 0,
                    by: String::new(),
                    cutover_from_ms: 0,
                }
            }
            Event::AliasSet(set) => {
                model.aliases.insert(set.alias.clone(), set.version);
                Change {
                    position,
                    kind: "alias_set",
                    version: set.version,
                    alias: set.alias,
                    at_ms: set.updated_at_ms,
                    by: set.updated_by,
                    cutover_from_ms: set.cutover.map_or(0, |c| c.effective_from_ms),
                }
            }
            Event::AliasDeleted(deleted) => {
                let version = model.aliases.remove(&deleted.alias).unwrap_or(0);
                Change {
                    position,
                    kind: "alias_deleted",
                    version,
                    alias: deleted.alias,
                    at_ms: 0,
                    by: String::new(),
                    cutover_from_ms: 0,
                }
            }
        };
        model.page = None;
        if model.history.len() == HISTORY_KEPT {
            model.history.pop_front();
        }
        model.history.push_back(change);
        drop(models);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Follows the registry until `stop`, reconnecting (with backoff) where it left off.
    pub async fn follow(self: Arc<Self>, registry: String, security: ClientSecurity, stop: CancellationToken) {
        let mut next = 0_i64;
        let mut backoff = Duration::from_millis(200);
        while !stop.is_cancelled() {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = self.watch(&registry, &security, &mut next) => outcome,
            };
            if let Err(problem) = outcome {
                tracing::warn!(%problem, "the registry's watch ended; reconnecting");
                *self.problem.lock().expect("models lock") = Some(problem);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn watch(&self, registry: &str, security: &ClientSecurity, next: &mut i64) -> Result<(), String> {
        let mut client = Registry::connect_with(registry, security)
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = client
            .rpc()
            .watch_models(WatchModelsRequest {
                from_position: *next,
                name: String::new(),
            })
            .await
            .map_err(|s| format!("WatchModels: {}", s.message()))?
            .into_inner();
        *self.problem.lock().expect("models lock") = None;
        while let Some(response) = stream
            .message()
            .await
            .map_err(|s| format!("WatchModels: {}", s.message()))?
        {
            *next = response.position + 1;
            self.apply(response);
        }
        Err("the registry closed the watch".into())
    }
}

#[cfg(test)]
mod tests {
    use kappa_api::registry::{AliasSet, ModelVersion, VersionPublished};

    use super::*;

    fn event(position: i64, event: Event) -> WatchModelsResponse {
        WatchModelsResponse {
            position,
            event: Some(event),
        }
    }

    fn page(models: &Models, name: &str) -> serde_json::Value {
        serde_json::from_slice(&models.page(name).unwrap()).unwrap()
    }

    #[test]
    fn a_models_page_is_made_once_per_change_and_follows_every_change() {
        let models = Models::new();
        for version in 1..=2 {
            models.apply(event(
                version as i64,
                Event::Published(VersionPublished {
                    version: Some(ModelVersion {
                        name: "m".into(),
                        version,
                        ..ModelVersion::default()
                    }),
                }),
            ));
        }
        let first = models.page("m").unwrap();
        assert!(
            std::ptr::eq(first.as_ptr(), models.page("m").unwrap().as_ptr()),
            "the same bytes until the model changes"
        );
        let before = page(&models, "m");
        assert_eq!(before["versions"][0]["version"], "2", "newest first: {before}");
        assert_eq!(before["versions"].as_array().unwrap().len(), 2);
        models.apply(event(
            3,
            Event::AliasSet(AliasSet {
                name: "m".into(),
                alias: "production".into(),
                version: 1,
                ..AliasSet::default()
            }),
        ));
        let after = page(&models, "m");
        assert_eq!(after["aliases"]["production"], 1, "{after}");
        assert_eq!(after["history"][0]["kind"], "alias_set");
        assert!(models.page("other").is_none());
    }
}
