//! The predictor's view of the models log: the one follower keeps a fold that retains this
//! model's newest weights (so a fresh publish loads without a second read), and after the first
//! catch-up the version `--follow` designates is announced whenever it changes.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use kappa_api::model::VersionRecord;
use kappa_kafka::KafkaClients;
use kappa_model::signing::TrustedKeys;
use kappa_modellog::{Follow, Lookup, MissingChunks, ModelLog, ModelState, follower};
use kappa_runtime::Readiness;
use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::PredictorMetrics;

/// A version the predictor should serve.
#[derive(Debug, Clone)]
pub struct Target {
    pub version: u64,
    pub record: Arc<VersionRecord>,
    /// Where its chunks are, or which are missing.
    pub chunk_offsets: Result<Vec<i64>, MissingChunks>,
    /// The weights, when the fold still holds them.
    pub bytes: Option<Arc<Vec<u8>>>,
    /// Trace context of the change that made this the target (the publish or the alias move),
    /// which the load continues.
    pub trace: BTreeMap<String, String>,
    /// For an alias moved by event time: the version that scores the events before the move.
    pub earlier: Option<Earlier>,
}

/// The version an alias held before a move that applies from an event time on.
#[derive(Debug, Clone)]
pub struct Earlier {
    /// Events before this event time are scored by `target`.
    pub until_ms: i64,
    pub target: Box<Target>,
}

/// What `follow` designates in `log` now.
fn target(log: &ModelLog, name: &str, follow: &Follow) -> Option<Target> {
    let model = log.model(name)?;
    let version = model.resolve(follow)?;
    let earlier = model.cutover(follow).and_then(|c| {
        let target = version_target(model, c.previous_version, model.change_trace(follow));
        if target.is_none() {
            tracing::warn!(
                version = c.previous_version,
                "the version before the alias's cutover is no longer live; the new version scores every event"
            );
        }
        Some(Earlier {
            until_ms: c.effective_from_ms,
            target: Box::new(target?),
        })
    });
    Some(Target {
        earlier,
        ..version_target(model, version, model.change_trace(follow))?
    })
}

fn version_target(model: &ModelState, version: u64, trace: BTreeMap<String, String>) -> Option<Target> {
    let Lookup::Live(stored) = model.lookup(version) else {
        return None;
    };
    Some(Target {
        version,
        record: Arc::clone(&stored.record),
        chunk_offsets: model.chunk_offsets(version),
        bytes: model.assembled(version),
        trace,
        earlier: None,
    })
}

/// The readiness component of the models-log follower.
const MODELS_LOG: &str = "models_log";

/// The predictor's follower of the models log, opened but not yet reading.
pub struct Follower {
    first: Opened,
    config: KafkaClients,
    topic: String,
    fold: Fold,
    follows: Vec<Follow>,
}

/// What the predictor's fold of the log holds and believes.
#[derive(Clone)]
pub struct Fold {
    /// The model served: the fold holds nothing else.
    pub name: String,
    /// Weights larger than this are not assembled while they pass (the load refuses them).
    pub max_model_bytes: u64,
    /// When set, only what these keys signed moves the predictor (versions, alias moves,
    /// deletions).
    pub trusted_keys: Option<TrustedKeys>,
    /// Where refused records are counted.
    pub metrics: Arc<PredictorMetrics>,
}

/// A follower's fold and its consumer, assigned.
type Opened = (Arc<RwLock<ModelLog>>, follower::Opened);

/// Opens the follower of `fold.name` in `topic` for `follows` (the served version, and the
/// shadow's when there is one): the first consumer is made here, so a configuration librdkafka
/// refuses fails the start-up.
pub fn open(config: &KafkaClients, topic: &str, fold: Fold, follows: &[Follow]) -> Result<Follower, KafkaError> {
    Ok(Follower {
        first: open_log(config, topic, &fold)?,
        config: config.clone(),
        topic: topic.to_owned(),
        fold,
        follows: follows.to_vec(),
    })
}

impl Follower {
    /// Starts following; each receiver yields the targets of its `follows` entry once the topic
    /// has been replayed. One follower reads the topic for all of them. It runs supervised: if it
    /// stops or panics, a new one replays the topic from the beginning and announces the current
    /// targets again (the loaders see they are already serving them).
    pub fn start(
        self,
        readiness: &Arc<Readiness>,
        shutdown: CancellationToken,
    ) -> Vec<watch::Receiver<Option<Target>>> {
        let Self {
            first,
            config,
            topic,
            fold,
            follows,
        } = self;
        let name = fold.name.clone();
        let mut first = Some(first);
        let (senders, receivers): (Vec<_>, Vec<_>) = follows.iter().map(|_| watch::channel(None)).unzip();
        let stop = shutdown.clone();
        readiness.supervise(MODELS_LOG, shutdown, move || {
            let opened = first.take().map_or_else(|| open_log(&config, &topic, &fold), Ok);
            let (senders, name, follows, stop) = (senders.clone(), name.clone(), follows.clone(), stop.clone());
            async move {
                let (log, opened) = opened?;
                let progress = opened.spawn(stop.clone());
                let announcing = follows
                    .iter()
                    .zip(&senders)
                    .map(|(follow, tx)| announce(&log, &progress, &name, follow, tx, &stop));
                futures::future::try_join_all(announcing).await.map(drop)
            }
        });
        receivers
    }
}

fn open_log(config: &KafkaClients, topic: &str, fold: &Fold) -> Result<Opened, KafkaError> {
    let mut log = ModelLog::retaining(&fold.name, fold.max_model_bytes);
    if let Some(keys) = &fold.trusted_keys {
        log = log.verified_by(keys.clone());
    }
    let log = Arc::new(RwLock::new(log));
    let observer: Arc<PredictorMetrics> = Arc::clone(&fold.metrics);
    let opened = follower::open(config, topic, "kappa-predictor-follower", Arc::clone(&log), observer)?;
    Ok((log, opened))
}

/// What an announcement is told apart by: version, weights digest, and the cutover (its time
/// and earlier version), so a move that only changes the cutover is announced too.
type Announced = (u64, String, Option<(i64, u64)>);

/// After the replay, announces the version `follow` designates each time it changes. Returns
/// an error when the follower under it stops before the service does.
async fn announce(
    log: &RwLock<ModelLog>,
    progress: &follower::Progress,
    name: &str,
    follow: &Follow,
    tx: &watch::Sender<Option<Target>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stopped = || {
        if shutdown.is_cancelled() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("the models-topic follower stopped"))
        }
    };
    if !progress.wait_caught_up().await {
        return stopped();
    }
    let mut applied = progress.applied.clone();
    let mut announced: Option<Announced> = None;
    loop {
        let current = target(&log.read().expect("models log lock poisoned"), name, follow);
        let identity = current.as_ref().map(|t| {
            let sha = t
                .record
                .manifest
                .as_ref()
                .map(|m| m.weights_sha256.clone())
                .unwrap_or_default();
            let earlier = t.earlier.as_ref().map(|e| (e.until_ms, e.target.version));
            (t.version, sha, earlier)
        });
        if identity != announced {
            match &current {
                Some(t) => tracing::info!(
                    version = t.version,
                    follow = %follow,
                    earlier_version = t.earlier.as_ref().map(|e| e.target.version),
                    until_ms = t.earlier.as_ref().map(|e| e.until_ms),
                    "new target version"
                ),
                None => {
                    tracing::warn!(model = %name, follow = %follow, "nothing to serve: no such version or alias yet")
                }
            }
            announced = identity;
            if current.is_some() {
                tx.send_replace(current);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = applied.changed() => if changed.is_err() { return stopped() },
        }
    }
}

#[cfg(test)]
mod tests {
    use kappa_api::model::{AliasRecord, ModelManifest, WeightChunk};
    use kappa_modellog::records::LogRecord;
    use prost::Message as _;
    use rdkafka::message::OwnedHeaders;

    use super::*;

    const NO_HEADERS: Option<&OwnedHeaders> = None;

    /// One chunk, then the version record, applied as decoded records.
    fn put_version(log: &mut ModelLog, offset: &mut i64, name: &str, version: u64, data: &[u8]) {
        let chunk = WeightChunk {
            index: 0,
            data: data.to_vec(),
        };
        let (name, value) = (name.to_owned(), chunk.encode_to_vec());
        let chunk = LogRecord::Chunk {
            name: name.clone(),
            version,
            index: 0,
        };
        log.apply_record(*offset, chunk, Some(&value), BTreeMap::new).unwrap();
        let manifest = ModelManifest {
            name: name.clone(),
            version,
            ..Default::default()
        };
        let record = Box::new(VersionRecord {
            manifest: Some(manifest),
            chunk_count: 1,
            ..Default::default()
        });
        log.apply_record(
            *offset + 1,
            LogRecord::Version { name, version, record },
            None,
            BTreeMap::new,
        )
        .unwrap();
        *offset += 2;
    }

    #[test]
    fn follows_latest_or_an_alias_with_the_weights_in_hand() {
        let (mut log, mut offset) = (ModelLog::retaining("m", 1 << 20), 0);
        put_version(&mut log, &mut offset, "m", 1, b"one");
        put_version(&mut log, &mut offset, "other", 1, b"xx");
        put_version(&mut log, &mut offset, "m", 2, b"two");
        let t = target(&log, "m", &Follow::Latest).unwrap();
        assert_eq!(t.version, 2);
        assert_eq!(t.bytes.as_deref().map(Vec::as_slice), Some(&b"two"[..]));
        assert_eq!(t.chunk_offsets, Ok(vec![4]));

        let production = Follow::parse("production");
        assert!(
            target(&log, "m", &production).is_none(),
            "no alias yet: nothing to serve"
        );
        let alias = AliasRecord {
            name: "m".into(),
            alias: "production".into(),
            version: 1,
            ..AliasRecord::default()
        };
        log.apply(
            offset,
            Some(b"alias/m/production"),
            Some(&alias.encode_to_vec()),
            NO_HEADERS,
        )
        .unwrap();
        let t = target(&log, "m", &production).unwrap();
        assert_eq!((t.version, t.chunk_offsets), (1, Ok(vec![0])));
        assert!(t.earlier.is_none());

        // Moved by event time: the target brings the version before the move with it.
        let moved = AliasRecord {
            version: 2,
            cutover: Some(kappa_api::model::Cutover {
                effective_from_ms: 5_000,
                previous_version: 1,
            }),
            ..alias.clone()
        };
        log.apply(
            offset + 1,
            Some(b"alias/m/production"),
            Some(&moved.encode_to_vec()),
            NO_HEADERS,
        )
        .unwrap();
        let t = target(&log, "m", &production).unwrap();
        let earlier = t.earlier.expect("the version before the cutover");
        assert_eq!((t.version, earlier.until_ms, earlier.target.version), (2, 5_000, 1));
        assert_eq!(earlier.target.bytes.as_deref().map(Vec::as_slice), Some(&b"one"[..]));
        // A later plain move ends the cutover.
        log.apply(
            offset + 2,
            Some(b"alias/m/production"),
            Some(&alias.encode_to_vec()),
            NO_HEADERS,
        )
        .unwrap();
        assert!(target(&log, "m", &production).unwrap().earlier.is_none());
    }
}
