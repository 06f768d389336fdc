//! Publish: a header, then the weights in chunks; admitted as every predictor will load them;
//! written to the log in one transaction (while they upload when nothing else is writing), and
//! answered once the follower has applied the version record. A refusal at any step leaves
//! nothing a reader sees.

use kappa_api::{
    model::{ModelManifest, VersionRecord},
    registry as pb,
};
use kappa_model::{
    Backend, DigestStream, ModelError,
    admission::{self, Policy, Signature},
};
use kappa_modellog::Put;
use kappa_runtime::propagation::span_context_map;
use tokio::sync::OwnedSemaphorePermit;
use tonic::{Status, Streaming};

use crate::{
    RegistryError,
    catalog::Catalog as _,
    metrics::OutcomeLabels,
    requests::{PublishHeader, Signed},
    service::{RegistryService, WRITE_WAIT, off_the_workers, transaction_span},
    writer::{Transaction, WriteLock},
};

/// How long a publish may keep the log to itself while its client uploads (see [`Upload`]).
const STREAM_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// The weights of a publish, received.
struct Upload {
    weights: Vec<u8>,
    /// Their digest, computed as they arrived.
    check: DigestStream,
    /// The version's transaction, when the chunks went into the log as they arrived.
    streamed: Option<VersionWriter>,
    /// The share of `--max-publish-buffer-bytes` the weights hold until the publish is answered.
    _held: Option<OwnedSemaphorePermit>,
}

/// A step's result, or the version a retry with the same idempotency key already created.
enum Step<T> {
    Next(T),
    // Boxed: an answer is large beside a writer or an upload, and rare.
    Existing(Box<pb::PublishResponse>),
}

impl RegistryService {
    pub(crate) async fn publish_inner(
        &self,
        mut stream: Streaming<pb::PublishRequest>,
        published_by: String,
    ) -> Result<pb::PublishResponse, Status> {
        self.ready()?;
        let idle = self.limits.publish_idle;
        let first = tokio::time::timeout(idle, stream.message())
            .await
            .map_err(|_| RegistryError::Idle(idle))??
            .ok_or_else(|| {
                RegistryError::BadRequest(
                    "the publish stream was empty: send a header, then the weights in chunks".into(),
                )
            })?;
        let header = PublishHeader::try_from(first)?;
        if let Some(existing) = self.deduplicate(&header, &published_by)? {
            return Ok(existing);
        }
        // Refused before the upload when already wrong; checked again under the write lock.
        self.check_version(&header.manifest)?;
        // The version record names the transaction's span: predictors loading it continue there.
        let span = transaction_span();
        let upload = match self.receive(&mut stream, &header, &published_by, &span).await? {
            Step::Next(upload) => upload,
            Step::Existing(existing) => return Ok(*existing),
        };
        let Upload {
            weights,
            check,
            streamed,
            _held,
        } = upload;
        let (weights, manifest) = self
            .admit(header.manifest.clone(), weights, check, &header.signed)
            .await?;
        let mut writer = match streamed {
            Some(writer) => writer,
            None => {
                let lock = self.writer.lock(WRITE_WAIT).await?;
                // A concurrent retry with the same key may have won the lock first.
                match self.open_version(&span, &header, &published_by, lock).await? {
                    Step::Next(writer) => writer,
                    Step::Existing(existing) => return Ok(*existing),
                }
            }
        };
        writer.write_chunks(&weights, true).await?;
        let (name, version) = (manifest.name.clone(), writer.version);
        let record = VersionRecord {
            chunk_count: writer.chunks(),
            manifest: Some(ModelManifest {
                version,
                created_at_ms: kappa_runtime::now_ms(),
                ..manifest
            }),
            idempotency_key: header.idempotency_key,
            deleted: false,
            trace_context: span_context_map(&span),
            published_by: published_by.clone(),
            signature: header.signed.signature,
            signing_key_id: header.signed.key_id,
        };
        let record = Put::version(&name, version, &record);
        self.finish_in(span, writer.transaction, vec![record]).await?;
        self.metrics.published_bytes.inc_by(weights.len() as u64);
        self.metrics
            .publishes
            .get_or_create(&OutcomeLabels { outcome: "created" })
            .inc();
        tracing::info!(
            model = name,
            version,
            bytes = weights.len(),
            principal = published_by,
            "published a new model version"
        );
        Ok(pb::PublishResponse {
            version: Some(self.catalog().model_version(&name, version)?),
            deduplicated: false,
        })
    }

    /// Receives the weights after `header`, within the size and buffer limits and the idle
    /// time. A model of several chunks, its size declared, goes into the log as it arrives when
    /// no other write is under way, so the upload and the write overlap; otherwise it is
    /// buffered and written after.
    async fn receive(
        &self,
        stream: &mut Streaming<pb::PublishRequest>,
        header: &PublishHeader,
        published_by: &str,
        span: &tracing::Span,
    ) -> Result<Step<Upload>, Status> {
        use pb::publish_request::Part;
        let (manifest, idle) = (&header.manifest, self.limits.publish_idle);
        // The size the client declares (the bytes are checked later) saves growing the buffer,
        // each doubling of which copies it into fresh pages; capped by the limits, so a false
        // size reserves no more than an honest publish could hold.
        if manifest.weights_size > self.max_model_bytes {
            return Err(RegistryError::TooLarge {
                size: manifest.weights_size,
                limit: self.max_model_bytes,
            }
            .into());
        }
        let declared = manifest.weights_size.min(self.limits.publish_buffer_bytes);
        let mut weights = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        let mut held: Option<OwnedSemaphorePermit> = None;
        // Hashed as it arrives (about a millisecond a chunk), not all at once after the upload.
        let mut check = DigestStream::default();
        let streams = declared > self.chunk_bytes as u64;
        let mut streamed = match streams.then(|| self.writer.try_lock()).flatten() {
            Some(lock) => match self.open_version(span, header, published_by, lock).await? {
                Step::Next(writer) => Some(writer),
                Step::Existing(existing) => return Ok(Step::Existing(existing)),
            },
            None => None,
        };
        // How long the upload may keep the log to itself: past it, the transaction is rolled
        // back (on drop) and the rest buffered, so a slow client does not hold up other writes.
        let hold = tokio::time::Instant::now() + STREAM_HOLD;
        loop {
            let waiting = tokio::time::Instant::now();
            let message = loop {
                let wait = match &streamed {
                    Some(_) => idle.min(hold.saturating_duration_since(waiting)),
                    None => idle.saturating_sub(waiting.elapsed()),
                };
                match tokio::time::timeout(wait, stream.message()).await {
                    Ok(message) => break message?,
                    Err(_) if streamed.is_some() && hold <= tokio::time::Instant::now() => {
                        tracing::info!(
                            model = manifest.name,
                            "the upload outlasted the time a streamed publish may hold the log; buffering the rest"
                        );
                        streamed = None;
                    }
                    Err(_) => return Err(RegistryError::Idle(idle).into()),
                }
            };
            let Some(message) = message else { break };
            match message.part {
                Some(Part::Chunk(bytes)) => {
                    let size = (weights.len() + bytes.len()) as u64;
                    if size > self.max_model_bytes {
                        return Err(RegistryError::TooLarge {
                            size,
                            limit: self.max_model_bytes,
                        }
                        .into());
                    }
                    let more = self.limits.buffer(bytes.len())?;
                    match held.as_mut() {
                        Some(permit) => permit.merge(more),
                        None => held = Some(more),
                    }
                    weights.extend_from_slice(&bytes);
                    // A millisecond of hashing a chunk (far more in a debug build) held on an
                    // async worker keeps it from reading the connection's other uploads, which
                    // then look idle; on a blocking thread it holds up this upload alone.
                    (weights, check) = off_the_workers(move || {
                        check.extend(&weights);
                        (weights, check)
                    })
                    .await?;
                    if let Some(writer) = streamed.as_mut() {
                        writer.write_chunks(&weights, false).await?;
                    }
                }
                Some(Part::Header(_)) => {
                    return Err(RegistryError::BadRequest(
                        "a second header arrived; send one header, then only chunks".into(),
                    )
                    .into());
                }
                None => {
                    return Err(
                        RegistryError::BadRequest("a Publish message carried neither header nor chunk".into()).into(),
                    );
                }
            }
        }
        if weights.is_empty() {
            return Err(RegistryError::BadRequest("no weights arrived after the header".into()).into());
        }
        Ok(Step::Next(Upload {
            weights,
            check,
            streamed,
            _held: held,
        }))
    }

    /// Admission (the model built and a probe batch run, as every predictor will before it
    /// serves the version) stays off the async workers; meanwhile librdkafka goes on sending a
    /// streamed publish's chunks. A refused one is rolled back when its writer drops, its last
    /// chunk not yet written. Returns the weights and the manifest with the graph described.
    async fn admit(
        &self,
        manifest: ModelManifest,
        weights: Vec<u8>,
        check: DigestStream,
        signed: &Signed,
    ) -> Result<(Vec<u8>, ModelManifest), RegistryError> {
        let policy = (self.max_model_bytes, self.trusted_keys.clone());
        let signature = signed.clone();
        // Below the priority of the threads serving requests, like a predictor's load.
        let (weights, admitted) = kappa_runtime::run_in_background("admission", move || {
            let (max_bytes, trusted_keys) = policy;
            let policy = Policy {
                max_bytes,
                trusted_keys: trusted_keys.as_ref(),
                backend: Backend::Native,
            };
            let digest = check.finish(&weights);
            let signature = Signature {
                bytes: &signature.signature,
                key_id: &signature.key_id,
            };
            let admitted = admission::admit(manifest, &weights, Some(digest), signature, &policy);
            (weights, admitted)
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("admission failed: {e}")))?;
        match admitted {
            Ok(admitted) => Ok((weights, admitted.manifest)),
            Err(ModelError::Signature(e)) => Err(RegistryError::Forbidden(format!(
                "this registry accepts only models signed by a trusted key: {e}"
            ))),
            Err(ModelError::TooLarge { size, limit }) => Err(RegistryError::TooLarge { size, limit }),
            Err(e) => Err(RegistryError::from(e)),
        }
    }

    /// Under `lock`: the version stored for the header's key already (a retry), or the next
    /// version of its model with its transaction open, whose records carry `span`'s trace
    /// context.
    async fn open_version(
        &self,
        span: &tracing::Span,
        header: &PublishHeader,
        published_by: &str,
        lock: WriteLock,
    ) -> Result<Step<VersionWriter>, RegistryError> {
        if let Some(existing) = self.deduplicate(header, published_by)? {
            return Ok(Step::Existing(Box::new(existing)));
        }
        let version = self.check_version(&header.manifest)?;
        Ok(Step::Next(VersionWriter {
            transaction: self.begin_in(span, lock).await?,
            name: header.manifest.name.clone(),
            version,
            chunk_bytes: self.chunk_bytes,
            written: 0,
        }))
    }

    /// The number the version gets: the next one, which a manifest naming its version (a
    /// signed one must) has to name.
    fn check_version(&self, manifest: &ModelManifest) -> Result<u64, RegistryError> {
        let next = self.catalog().next_version(&manifest.name);
        if manifest.version != 0 && manifest.version != next {
            return Err(RegistryError::VersionTaken {
                name: manifest.name.clone(),
                requested: manifest.version,
                next,
            });
        }
        Ok(next)
    }

    /// The answer to a retry: the version an earlier publish with the header's key created,
    /// when the same principal published it with the same manifest. A key is not a claim on a
    /// version another caller, or another model, can redeem: anything else is refused.
    fn deduplicate(
        &self,
        header: &PublishHeader,
        published_by: &str,
    ) -> Result<Option<pb::PublishResponse>, RegistryError> {
        let (name, key) = (&header.manifest.name, &header.idempotency_key);
        if key.is_empty() {
            return Ok(None);
        }
        let catalog = self.catalog();
        let Some(version) = catalog.version_for_idempotency_key(name, key) else {
            return Ok(None);
        };
        let stored = catalog.version(name, version)?;
        let reused = |why| RegistryError::KeyReused {
            name: name.clone(),
            key: key.clone(),
            version,
            why,
        };
        if stored.record.published_by != published_by {
            return Err(reused("by another principal"));
        }
        if !same_publish(stored.record.manifest.as_ref(), &header.manifest) {
            return Err(reused("with another manifest or other weights"));
        }
        self.metrics
            .publishes
            .get_or_create(&OutcomeLabels {
                outcome: "deduplicated",
            })
            .inc();
        Ok(Some(pb::PublishResponse {
            version: Some(catalog.model_version(name, version)?),
            deduplicated: true,
        }))
    }
}

/// A version being written: its transaction, open under the writer's lock, into which the
/// weights go chunk by chunk, while they upload (a streamed publish) or once they are in.
struct VersionWriter {
    transaction: Transaction,
    name: String,
    /// Assigned under the lock the transaction holds.
    version: u64,
    chunk_bytes: usize,
    /// Bytes of the weights already in chunk records.
    written: usize,
}

impl VersionWriter {
    /// Writes every whole chunk of `weights` not yet written, and with `last` the rest too.
    /// Each record is one copy of at most a chunk; the task yields between them, so a large
    /// model written at once does not hold an async worker for the whole of it.
    async fn write_chunks(&mut self, weights: &[u8], last: bool) -> Result<(), RegistryError> {
        while weights.len() - self.written >= self.chunk_bytes || (last && self.written < weights.len()) {
            let end = weights.len().min(self.written + self.chunk_bytes);
            let index = (self.written / self.chunk_bytes) as u32;
            let record = Put::chunk(&self.name, self.version, index, &weights[self.written..end]);
            self.transaction.send(&record).await?;
            self.written = end;
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// The number of chunk records written.
    fn chunks(&self) -> u32 {
        self.written.div_ceil(self.chunk_bytes) as u32
    }
}

/// Whether `asked` is a retry of the publish that stored `stored`: the same manifest, apart from
/// what the registry stamps (version, time, an ONNX graph's description) and what the retry
/// leaves out (a digest or size it did not declare).
fn same_publish(stored: Option<&ModelManifest>, asked: &ModelManifest) -> bool {
    let Some(stored) = stored else { return false };
    let comparable = |m: &ModelManifest, declared: &ModelManifest| {
        let mut m = m.clone();
        m.version = 0;
        m.created_at_ms = 0;
        if let Some(onnx) = m.onnx.as_mut() {
            onnx.graph = None;
        }
        if declared.weights_sha256.is_empty() {
            m.weights_sha256.clear();
        } else {
            m.weights_sha256.make_ascii_lowercase();
        }
        if declared.weights_size == 0 {
            m.weights_size = 0;
        }
        m
    };
    comparable(stored, asked) == comparable(asked, asked)
}
