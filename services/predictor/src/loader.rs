//! Turns announced targets into served models: fetch the weights if the follower no longer holds
//! them, verify the SHA-256, build, warm up on a probe batch, check the outputs are finite, swap.
//! A version that fails any step is never served; the previous model keeps serving.

use std::{sync::Arc, time::Duration};

use kappa_kafka::KafkaClients;
use kappa_model::{
    Backend,
    admission::{self, Policy, Signature},
    signing::TrustedKeys,
};
use kappa_modellog::chunks;
use kappa_runtime::{Readiness, propagation::context_from_map};
use tokio::sync::watch;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    faults::Faults,
    follower::Target,
    metrics::{PredictorMetrics, ReasonLabels},
    slot::{Cutover, LoadedModel, ModelSlot, SwapRecord},
};

/// The loader's chunk consumers (loads of one slot run one at a time, so one is kept).
pub fn chunk_readers(config: KafkaClients) -> chunks::ChunkReaders {
    chunks::ChunkReaders::new(config, "kappa-predictor-loader", 1)
}

pub struct Loader {
    pub slot: Arc<ModelSlot>,
    pub metrics: Arc<PredictorMetrics>,
    pub readiness: Arc<Readiness>,
    /// Weight chunk consumers, one kept between loads: a swap then skips a consumer's start-up.
    pub chunk_readers: Arc<chunks::ChunkReaders>,
    pub topic: String,
    /// The model this predictor serves (`--model`).
    pub model: String,
    pub backend: Backend,
    /// This replica's gRPC address, to tell replicas apart in a trace.
    pub instance: String,
    /// When set, only versions signed by one of these keys are served.
    pub trusted_keys: Option<TrustedKeys>,
    /// Largest model this predictor loads, in bytes.
    pub max_model_bytes: u64,
    pub faults: Arc<Faults>,
    /// What the slot is for: the served model, or the shadow's (which never touches readiness
    /// or the served model's series).
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serving,
    Shadow,
}

struct LoadFailure {
    reason: &'static str,
    message: String,
}

impl LoadFailure {
    /// The weights could not be read (the broker away, a fetch timed out): worth another try.
    /// Everything else is a property of the version and fails the same way every time.
    fn is_transient(&self) -> bool {
        self.reason == "read_failed"
    }
}

/// The readiness component the loader reports for: is there a model to serve?
pub const MODEL: &str = "model";

/// Delays between tries of a load that failed for a transient reason.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

impl Loader {
    /// Serves each target as it is announced, until the announcements end. A load that failed
    /// for a transient reason is tried again with backoff until it succeeds or a new target
    /// replaces it. Runs supervised: when restarted, it picks up the current target.
    pub async fn run(self: Arc<Self>, mut targets: watch::Receiver<Option<Target>>) -> anyhow::Result<()> {
        targets.mark_changed();
        let mut retry: Option<(Target, Duration)> = None;
        loop {
            let (target, delay) = match retry.take() {
                None => {
                    if targets.changed().await.is_err() {
                        return Ok(());
                    }
                    (targets.borrow_and_update().clone(), FIRST_RETRY)
                }
                Some((target, delay)) => tokio::select! {
                    changed = targets.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        (targets.borrow_and_update().clone(), FIRST_RETRY)
                    }
                    () = tokio::time::sleep(delay) => {
                        self.metrics.load_retries.inc();
                        (Some(target), (delay * 2).min(MAX_RETRY))
                    }
                },
            };
            let Some(target) = target else { continue };
            self.faults.before_serving(target.version);
            if let Err(failure) = self.serve(target.clone()).await {
                if failure.is_transient() {
                    self.refused(target.version, &failure, Some(delay));
                    retry = Some((target, delay));
                } else {
                    self.refused(target.version, &failure, None);
                }
            }
        }
    }

    /// Records a version that could not be served: in the metrics, the log, the status detail,
    /// and in readiness when nothing else is being served.
    fn refused(&self, version: u64, failure: &LoadFailure, retry_in: Option<Duration>) {
        self.metrics
            .load_failures
            .get_or_create(&ReasonLabels { reason: failure.reason })
            .inc();
        let message = match retry_in {
            Some(delay) => format!(
                "version {version} not loaded yet: {}; trying again in {delay:?}",
                failure.message
            ),
            None => format!("version {version} refused: {}", failure.message),
        };
        match self.slot.current() {
            _ if self.role == Role::Shadow => {
                tracing::error!(
                    version,
                    reason = failure.reason,
                    "{message}; the shadow does not change"
                );
            }
            Some(current) => tracing::error!(
                version,
                reason = failure.reason,
                serving = current.version,
                "{message}; the previous model keeps serving"
            ),
            None => {
                tracing::error!(version, reason = failure.reason, "{message}; nothing to serve");
                self.readiness.report(MODEL, message.clone());
            }
        }
        self.slot.set_error(Some(message));
    }

    /// Serves `target` inside a `model.load` span that continues the trace of the change behind
    /// it, so the publish (or alias move) and every predictor's load, verification, warm-up and
    /// swap read as one trace.
    async fn serve(&self, target: Target) -> Result<(), LoadFailure> {
        let span = tracing::info_span!(
            "model.load",
            model = target.record.manifest.as_ref().map_or("", |m| m.name.as_str()),
            version = target.version,
            instance = %self.instance,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(context_from_map(&target.trace));
        self.serve_in_span(target).instrument(span).await
    }

    async fn serve_in_span(&self, target: Target) -> Result<(), LoadFailure> {
        let version = target.version;
        let published_ms = target.record.manifest.as_ref().map_or(0, |m| m.created_at_ms);
        let span = tracing::Span::current();
        let earlier = self.earlier(&target).await?;
        if let Some(current) = self.slot.current().filter(|m| m.version == version) {
            // Already serving it; the cutover may still be new (a restart, or a move that
            // only changed the effective time).
            match earlier {
                Some((cutover, model)) => self.slot.swap_at(current, cutover, model),
                None => self.slot.clear_cutover(),
            }
            self.note_cutover();
            span.record("outcome", "already_serving");
            return Ok(());
        }
        let from_version = self.slot.current().map_or(0, |m| m.version);
        let (model, warm) = match self.slot.warm(version) {
            Some(warm) => {
                tracing::info!(version, "swapping back to the warm previous version");
                span.record("outcome", "warm_swap_back");
                (warm, true)
            }
            None => match self.load(target).await {
                Ok(model) => (model, false),
                Err(failure) => {
                    span.record("outcome", failure.reason);
                    span.record("otel.status_code", "ERROR");
                    return Err(failure);
                }
            },
        };
        tracing::info_span!("swap").in_scope(|| match earlier {
            Some((cutover, earlier)) => {
                tracing::info!(
                    version,
                    earlier = cutover.version,
                    until_ms = cutover.until_ms,
                    "cutover by event time"
                );
                self.slot.swap_at(model, cutover, earlier);
            }
            None => self.slot.swap(model),
        });
        self.note_cutover();
        span.record("outcome", "swapped");
        self.slot.set_error(None);
        let now_ms = kappa_runtime::now_ms();
        self.slot.record_swap(SwapRecord {
            from_version,
            to_version: version,
            at_ms: now_ms,
            warm,
            publish_to_serving_ms: (published_ms > 0 && !warm).then(|| (now_ms - published_ms).max(0)),
        });
        if self.role == Role::Shadow {
            self.metrics.shadow_version.set(version as i64);
            tracing::info!(version, "the shadow now scores with this version");
            return Ok(());
        }
        self.metrics.swaps.inc();
        self.metrics.loaded_version.set(version as i64);
        self.metrics.model_ready.set(1.0);
        if published_ms > 0 {
            self.metrics
                .swap_latency
                .observe((now_ms - published_ms).max(0) as f64 / 1000.0);
        }
        self.readiness.clear(MODEL);
        tracing::info!(version, publish_to_serving_ms = now_ms - published_ms, "now serving");
        Ok(())
    }

    /// The cutover a target comes with, and the model for the events before it, warm or loaded
    /// now. A version that cannot be read yet fails the whole target (tried again); one that can
    /// never be served leaves the new version scoring those events too, said in the log, the
    /// failure count and `cutover_fallbacks`.
    async fn earlier(&self, target: &Target) -> Result<Option<(Cutover, Option<Arc<LoadedModel>>)>, LoadFailure> {
        let Some(earlier) = &target.earlier else {
            return Ok(None);
        };
        let version = earlier.target.version;
        let cutover = Cutover {
            until_ms: earlier.until_ms,
            version,
        };
        if let Some(warm) = self.slot.warm(version) {
            return Ok(Some((cutover, Some(warm))));
        }
        let span = tracing::info_span!("load_earlier", version, until_ms = earlier.until_ms);
        match self.load((*earlier.target).clone()).instrument(span).await {
            Ok(model) => Ok(Some((cutover, Some(model)))),
            Err(failure) if failure.is_transient() => Err(failure),
            Err(failure) => {
                self.metrics
                    .load_failures
                    .get_or_create(&ReasonLabels { reason: failure.reason })
                    .inc();
                tracing::error!(
                    version,
                    reason = failure.reason,
                    "the version before the cutover is refused: {}; version {} scores the events before it too",
                    failure.message,
                    target.version
                );
                Ok(Some((cutover, None)))
            }
        }
    }

    /// The cutover in force, in the served model's series (the shadow's slot has its own).
    fn note_cutover(&self) {
        if self.role == Role::Serving {
            self.metrics
                .cutover_from_ms
                .set(self.slot.cutover().map_or(0, |c| c.until_ms));
        }
    }

    async fn load(&self, target: Target) -> Result<Arc<LoadedModel>, LoadFailure> {
        let manifest = target.record.manifest.clone().ok_or_else(|| LoadFailure {
            reason: "no_manifest",
            message: "the version record carries no manifest".into(),
        })?;
        // What is served is what the log key names, the signature covers, and --model asks for
        // (the fold checks the first two agree; this holds whatever the fold becomes).
        if manifest.name != self.model || manifest.version != target.version {
            return Err(LoadFailure {
                reason: "signature",
                message: format!(
                    "its manifest names {:?} version {}, not {:?} version {} as this predictor serves",
                    manifest.name, manifest.version, self.model, target.version
                ),
            });
        }
        // Before any weights are fetched (admission checks it again, with the rest): anyone who
        // can write to the topic can write a version with a matching digest; only a trusted
        // key's signature makes it worth reading.
        if let Some(trusted) = &self.trusted_keys {
            let record = &target.record;
            tracing::info_span!("verify_signature", key = record.signing_key_id.as_str())
                .in_scope(|| trusted.verify(&manifest, &record.signature, &record.signing_key_id))
                .map_err(|e| LoadFailure {
                    reason: "signature",
                    message: e.to_string(),
                })?;
        }
        if manifest.weights_size > self.max_model_bytes {
            return Err(LoadFailure {
                reason: "too_large",
                message: format!(
                    "its weights are {} bytes, over this predictor's --max-model-bytes of {}",
                    manifest.weights_size, self.max_model_bytes
                ),
            });
        }
        // Never hold more than the manifest declares: a forged record could point at far more.
        let declared = manifest.weights_size as usize;
        let bytes = match target.bytes {
            Some(bytes) => bytes,
            None => {
                let offsets = target.chunk_offsets.map_err(|e| LoadFailure {
                    reason: "missing_chunks",
                    message: e.to_string(),
                })?;
                let (readers, topic, expected) = (Arc::clone(&self.chunk_readers), self.topic.clone(), offsets.len());
                let fetch = tracing::info_span!("fetch_weights", chunks = expected);
                self.faults.before_weight_read().map_err(|message| LoadFailure {
                    reason: "read_failed",
                    message,
                })?;
                tokio::task::spawn_blocking(move || {
                    let _entered = fetch.enter();
                    // Sized once (within --max-model-bytes, checked above): growing a buffer of
                    // 100 MiB copies it into fresh pages at every doubling.
                    let mut bytes = Vec::with_capacity(declared);
                    readers
                        .read(&topic, &offsets, |data| {
                            bytes.extend_from_slice(&data);
                            bytes.len() <= declared
                        })
                        .map(|()| Arc::new(bytes))
                })
                .await
                .map_err(|e| LoadFailure {
                    reason: "read_failed",
                    message: format!("the chunk reader stopped: {e}"),
                })?
                .map_err(|e| LoadFailure {
                    reason: "read_failed",
                    message: e.to_string(),
                })?
            }
        };
        let (backend, trusted_keys, max_bytes) = (self.backend, self.trusted_keys.clone(), self.max_model_bytes);
        let record = target.record;
        let parent = tracing::Span::current();
        // A forged model that makes the build panic is a refused version, not a dead loader.
        // Admission runs below the inference threads' priority: a roll-out yields the cores to
        // the requests the current version is answering.
        kappa_runtime::run_in_background("model-load", move || {
            let policy = Policy {
                max_bytes,
                trusted_keys: trusted_keys.as_ref(),
                backend,
            };
            let signature = Signature {
                bytes: &record.signature,
                key_id: &record.signing_key_id,
            };
            parent.in_scope(|| build(manifest, &bytes, signature, &policy))
        })
        .await
        .unwrap_or_else(|message| {
            Err(LoadFailure {
                reason: "invalid_model",
                message: format!("building the model panicked: {message}"),
            })
        })
    }
}

/// Admission, on a background thread (hashing, building and the probe batch are CPU work): the
/// same decision the registry made before it wrote the version, made again on what came out
/// of the log.
fn build(
    manifest: kappa_model::ModelManifest,
    bytes: &[u8],
    signature: Signature,
    policy: &Policy,
) -> Result<Arc<LoadedModel>, LoadFailure> {
    let admitted = admission::admit(manifest, bytes, None, signature, policy).map_err(|e| LoadFailure {
        reason: e.reason(),
        message: e.to_string(),
    })?;
    Ok(Arc::new(LoadedModel::new(admitted)))
}
