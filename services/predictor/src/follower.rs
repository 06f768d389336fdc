//! The predictor's view of the models log: the one follower keeps a fold that retains this
//! model's newest weights (so a fresh publish loads without a second read), and after the first
//! catch-up the version `--follow` designates is announced whenever it changes.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use kappa_api::model::VersionRecord;
use kappa_kafka::KafkaClients;
use kappa_modellog::{
    Follow, Lookup, MissingChunks, ModelLog,
    follower::{self, LogOnly},
};
use kappa_runtime::Readiness;
use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
}

/// What `follow` designates in `log` now.
fn target(log: &ModelLog, name: &str, follow: &Follow) -> Option<Target> {
    let model = log.model(name)?;
    let version = model.resolve(follow)?;
    let Lookup::Live(stored) = model.lookup(version) else {
        return None;
    };
    Some(Target {
        version,
        record: Arc::clone(&stored.record),
        chunk_offsets: model.chunk_offsets(version),
        bytes: model.assembled(version),
        trace: model.change_trace(follow),
    })
}

/// The readiness component of the models-log follower.
const MODELS_LOG: &str = "models_log";

/// Starts following; the receiver yields targets once the topic has been replayed. The follower
/// runs supervised: if it stops or panics, a new one replays the topic from the beginning and
/// announces the current target again (the loader sees it is already serving it).
pub fn start(
    config: &KafkaClients,
    topic: &str,
    name: &str,
    follow: &Follow,
    readiness: &Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Option<Target>>, KafkaError> {
    // The first follower starts here, so a configuration librdkafka refuses fails the start-up.
    let mut first = Some(open(config, topic, name, shutdown.clone())?);
    let (tx, rx) = watch::channel(None);
    let (config, topic, name, follow) = (config.clone(), topic.to_owned(), name.to_owned(), follow.clone());
    let stop = shutdown.clone();
    readiness.supervise(MODELS_LOG, shutdown, move || {
        let opened = first
            .take()
            .map_or_else(|| open(&config, &topic, &name, stop.clone()), Ok);
        let (tx, name, follow, stop) = (tx.clone(), name.clone(), follow.clone(), stop.clone());
        async move {
            let (log, progress) = opened?;
            announce(&log, &progress, &name, &follow, &tx, &stop).await
        }
    });
    Ok(rx)
}

fn open(
    config: &KafkaClients,
    topic: &str,
    name: &str,
    shutdown: CancellationToken,
) -> Result<(Arc<RwLock<ModelLog>>, follower::Progress), KafkaError> {
    let log = Arc::new(RwLock::new(ModelLog::retaining(name)));
    let progress = follower::spawn(
        config,
        topic,
        "kappa-predictor-follower",
        Arc::clone(&log),
        Arc::new(LogOnly),
        shutdown,
    )?;
    Ok((log, progress))
}

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
    let mut announced: Option<(u64, String)> = None;
    loop {
        let current = target(&log.read().expect("models log lock poisoned"), name, follow);
        let identity = current.as_ref().map(|t| {
            let sha = t
                .record
                .manifest
                .as_ref()
                .map(|m| m.weights_sha256.clone())
                .unwrap_or_default();
            (t.version, sha)
        });
        if identity != announced {
            match &current {
                Some(t) => tracing::info!(version = t.version, follow = %follow, "new target version"),
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
        log.apply_record(*offset, chunk, Some(&value), BTreeMap::new);
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
        );
        *offset += 2;
    }

    #[test]
    fn follows_latest_or_an_alias_with_the_weights_in_hand() {
        let (mut log, mut offset) = (ModelLog::retaining("m"), 0);
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
    }
}
